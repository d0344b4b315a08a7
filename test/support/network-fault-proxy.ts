import { connect, createServer, type Server, type Socket } from "node:net";

/** Listen backlog, which Linux caps at net.core.somaxconn (4096 by default). */
const ACCEPT_BACKLOG = 4096;

/**
 * A loopback TCP proxy to a relay that can fail like a network: `cut()`
 * destroys every connection at once, and `pause()` stops reading from the
 * relay, so the relay's writes back up as they would to a stalled client.
 */
export class NetworkFaultProxy {
  private readonly server: Server;
  private readonly pairs = new Set<[Socket, Socket]>();
  private paused = false;

  constructor(targetPort: number) {
    this.server = createServer((downstream) => {
      const upstream = connect({ host: "127.0.0.1", port: targetPort });
      const pair: [Socket, Socket] = [downstream, upstream];
      this.pairs.add(pair);
      downstream.setNoDelay(true);
      upstream.setNoDelay(true);
      downstream.pipe(upstream);
      upstream.pipe(downstream);
      if (this.paused) upstream.pause();
      const close = (): void => {
        this.pairs.delete(pair);
        downstream.destroy();
        upstream.destroy();
      };
      downstream.once("close", close);
      upstream.once("close", close);
      downstream.on("error", close);
      upstream.on("error", close);
    });
  }

  /** Starts listening on a free loopback port and returns it. */
  async listen(): Promise<number> {
    // A reconnect storm opens every connection at once: with a short accept
    // queue the kernel drops SYNs and clients wait for TCP's retransmits.
    await new Promise<void>((resolve) =>
      this.server.listen(
        { port: 0, host: "127.0.0.1", backlog: ACCEPT_BACKLOG },
        resolve,
      ),
    );
    const address = this.server.address();
    if (typeof address !== "object" || address === null) {
      throw new Error("proxy has no TCP address");
    }
    return address.port;
  }

  /** Destroys every open connection on both sides and returns how many there were. */
  cut(): number {
    const pairs = [...this.pairs];
    for (const [downstream, upstream] of pairs) {
      downstream.destroy();
      upstream.destroy();
    }
    return pairs.length;
  }

  /** Returns the local ports of the open connections to the relay, which are the relay's remote ports. */
  upstreamPorts(): number[] {
    return [...this.pairs].flatMap(([, upstream]) =>
      upstream.localPort === undefined ? [] : [upstream.localPort],
    );
  }

  /** Stops reading from the relay on every connection, present and future. */
  pause(): void {
    this.paused = true;
    for (const [, upstream] of this.pairs) upstream.pause();
  }

  /** Reads from the relay again. */
  resume(): void {
    this.paused = false;
    for (const [downstream, upstream] of this.pairs) {
      // pipe() resumes the source only on the destination's `drain`.
      if (!downstream.writableNeedDrain) upstream.resume();
    }
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((resolve) => this.server.close(() => resolve()));
  }
}
