#!/usr/bin/env bash
# Run HERE, where the git history is: the native/ sources of <rev> that differ from the working tree,
# laid out in .gpu/base/ (files <rev> lacks listed in .gpu/base/.absent), for bench/gpu/ab_builds.sh
# to build the "base" side of an A/B from on the GPU machine, which gets the tree but not its history.
# Carry .gpu with the device call.
# Usage: bash bench/gpu/ab_prepare.sh <rev>
set -euo pipefail
cd "$(dirname "$0")/../.."
rev=${1:?usage: bench/gpu/ab_prepare.sh <rev>}
git rev-parse --verify --quiet "$rev^{commit}" > /dev/null || { echo "ab_prepare: $rev is not a commit" >&2; exit 2; }
rm -rf .gpu/base
mkdir -p .gpu/base
git rev-parse --short "$rev" > .gpu/base/.rev
: > .gpu/base/.absent
{ git diff --no-renames --name-only "$rev" -- native; git ls-files --others --exclude-standard native; } | sort -u | while read -r f; do
  if git cat-file -e "$rev:$f" 2> /dev/null; then
    mkdir -p ".gpu/base/$(dirname "$f")"
    git show "$rev:$f" > ".gpu/base/$f"
  else
    echo "$f" >> .gpu/base/.absent
  fi
done
changed=$(find .gpu/base -type f ! -path .gpu/base/.rev ! -path .gpu/base/.absent | wc -l)
[ "$changed" -gt 0 ] || [ -s .gpu/base/.absent ] || { echo "ab_prepare: native/ is the same at $rev" >&2; exit 2; }
echo "base $(cat .gpu/base/.rev): $changed files as they were there, $(wc -l < .gpu/base/.absent) not there"
