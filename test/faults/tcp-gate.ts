// A loopback TCP forwarder that a fault test can close and reopen on the same port. Clients see
// what they would see of a crashed server: established connections reset, new ones refused; after
// `open()` the same address answers again. It stands in front of a shared component (the S3 server)
// so one test can take "it" down without stopping what other tests use.
import { connect, createServer, type Server, type Socket } from "node:net";

export class TcpGate {
  private server: Server | undefined;
  private readonly sockets = new Set<Socket>();
  private port = 0;

  constructor(
    private readonly targetHost: string,
    private readonly targetPort: number,
  ) {}

  /** Starts forwarding; the first call picks a free port, later calls reuse it. */
  async open(): Promise<number> {
    const server = createServer((client) => {
      const upstream = connect(this.targetPort, this.targetHost);
      for (const s of [client, upstream]) {
        this.sockets.add(s);
        s.once("close", () => this.sockets.delete(s));
        s.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve, reject) => {
      server.once("error", (err) =>
        reject(
          new Error(
            `TcpGate to ${this.targetHost}:${this.targetPort}: listen on ${this.port}: ${err.message}`,
          ),
        ),
      );
      server.listen(this.port, "127.0.0.1", resolve);
    });
    this.server = server;
    const address = server.address();
    if (address && typeof address === "object") this.port = address.port;
    return this.port;
  }

  /** Refuses new connections and resets the open ones, like a process that died. */
  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    for (const s of this.sockets) s.resetAndDestroy();
    this.sockets.clear();
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }
}
