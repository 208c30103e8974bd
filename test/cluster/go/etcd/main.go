// Command etcd is upstream etcd's server entrypoint, built from go.etcd.io/etcd/server/v3 so the
// pinned release comes from the Go module proxy rather than a downloaded tarball.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
