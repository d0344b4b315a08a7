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

/**
 * Opens two loopback TCP connections and writes to both in one loop turn,
 * so that their data is read in the same poll phase, in write order (as
 * observed on Linux).
 * The first one's data callback blocks the event loop for `stallMs`, and
 * the result is what `onSecond` returns when the second one's data is read.
 */
export async function readBehindStalledCallback<T>(options: {
  stallMs: number;
  onSecond: () => T;
}): Promise<T> {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  const peers: net.Socket[] = [];
  server.on("connection", (peer: net.Socket) => peers.push(peer));
  const clients = [
    net.connect(port, "127.0.0.1"),
    net.connect(port, "127.0.0.1"),
  ];
  try {
    await Promise.all(clients.map((client) => once(client, "connect")));
    while (peers.length < 2) await once(server, "connection");
    // Peers arrive in accept order, which need not be the clients' order.
    const [first, second] = peers as [net.Socket, net.Socket];
    const [firstClient, secondClient] =
      first.remotePort === clients[0]!.localPort
        ? clients
        : [clients[1]!, clients[0]!];
    return await new Promise<T>((resolve) => {
      first.once("data", () => {
        const until = performance.now() + options.stallMs;
        while (performance.now() < until) {
          // A slow handler: nothing else runs.
        }
      });
      second.once("data", () => resolve(options.onSecond()));
      setImmediate(() => {
        firstClient!.write("first");
        secondClient!.write("second");
      });
    });
  } finally {
    for (const socket of [...clients, ...peers]) socket.destroy();
    server.close();
  }
}
