import { once } from "node:events";
import net from "node:net";

/**
 * Opens a loopback TCP connection and returns the peer socket that
 * receives. From the check phase it runs `beforeWrite`, writes to the
 * connection, and blocks the event loop for `stallMs`, so that the loop
 * goes on with the timers phase before it reads the data. `read` resolves
 * with what `onData` returns when the data is read. The sockets close
 * afterwards.
 */
export async function readAfterStall<T>(options: {
  stallMs: number;
  beforeWrite?: () => void;
  onData: () => T;
  /** Called with `settle`, for a result that may come before the data. */
  race?: (settle: (value: T) => void) => void;
}): Promise<T> {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  const client = net.connect(port, "127.0.0.1");
  const [peer] = (await once(server, "connection")) as [net.Socket];
  try {
    return await new Promise<T>((resolve) => {
      let settled = false;
      const settle = (value: T): void => {
        if (settled) return;
        settled = true;
        resolve(value);
      };
      peer.once("data", () => settle(options.onData()));
      options.race?.(settle);
      setImmediate(() => {
        options.beforeWrite?.();
        client.write("payload");
        const until = performance.now() + options.stallMs;
        while (performance.now() < until) {
          // The process is stalled: nothing runs.
        }
      });
    });
  } finally {
    client.destroy();
    peer.destroy();
    server.close();
  }
}
