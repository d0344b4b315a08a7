import { once } from "node:events";
import { connect, createServer, type Socket } from "node:net";

/** A loopback TCP proxy that can cut and restore the path to a server. */
export interface TcpProxy {
  port: number;
  /** `redis://127.0.0.1:<port>`, for a proxy in front of Redis. */
  redisUrl: string;
  /** Stops listening and destroys every open connection. */
  cut: () => Promise<void>;
  /** Listens again on the same port. */
  restore: () => Promise<void>;
  /**
   * Delays the server's replies on open and new connections, while
   * requests still reach the server, as a slow return path does.
   */
  holdReplies: () => void;
  /** Forwards the delayed replies, and later ones at once. */
  passReplies: () => void;
  /**
   * Destroys the open connections whose first 64 KiB of requests do not
   * contain `marker`, and delays the replies on new connections until
   * `passReplies()`. A Redis client that reconnects then stays in its
   * handshake, not ready, while the connections that sent `marker` keep
   * working.
   */
  cutAllBut: (marker: string) => void;
  /**
   * Destroys the open connections whose first requests contain `marker`,
   * such as a Redis subscriber's, and closes new connections on arrival
   * until `admitNew()`, while the other open connections keep working.
   */
  cutOnly: (marker: string) => void;
  /** Forwards new connections again after `cutOnly`. */
  admitNew: () => void;
  /**
   * Destroys the first connection that then sends a request containing
   * `marker`, without forwarding that request to the server, and resolves
   * once it did. The search is per chunk read, so a marker split across
   * two reads is missed.
   */
  dropOnRequest: (marker: string) => Promise<void>;
  close: () => Promise<void>;
}

/** Bytes of each connection's first requests that `cutAllBut` searches. */
const REQUEST_PREFIX_BYTES = 64 * 1024;

/** Starts a proxy on a free loopback port that forwards to `targetPort`. */
export async function startTcpProxy(targetPort: number): Promise<TcpProxy> {
  const sockets = new Set<Socket>();
  const track = (socket: Socket): void => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
  };
  const replies = new Map<Socket, Socket>();
  /** Server sockets whose replies are delayed. */
  const heldUpstreams = new Set<Socket>();
  /** First requests of each client connection, up to REQUEST_PREFIX_BYTES. */
  const requestPrefixes = new Map<Socket, string>();
  let holding = false;
  /** True while new connections are closed on arrival. */
  let refusing = false;
  let trap: { marker: string; sprung: () => void } | undefined;
  const forward = (client: Socket): void => {
    if (refusing) {
      client.destroy();
      return;
    }
    const upstream = connect({ host: "127.0.0.1", port: targetPort });
    track(client);
    track(upstream);
    requestPrefixes.set(client, "");
    // Added before the pipe, so it runs before the chunk is forwarded.
    client.on("data", (chunk: Buffer) => {
      const prefix = requestPrefixes.get(client);
      if (prefix !== undefined && prefix.length < REQUEST_PREFIX_BYTES) {
        requestPrefixes.set(client, prefix + chunk.toString("latin1"));
      }
      if (trap === undefined || !chunk.includes(trap.marker)) return;
      const { sprung } = trap;
      trap = undefined;
      upstream.destroy();
      client.destroy();
      sprung();
    });
    client.on("error", () => upstream.destroy());
    upstream.on("error", () => client.destroy());
    client.once("close", () => {
      requestPrefixes.delete(client);
      upstream.destroy();
    });
    upstream.once("close", () => {
      replies.delete(upstream);
      heldUpstreams.delete(upstream);
      client.destroy();
    });
    client.pipe(upstream);
    replies.set(upstream, client);
    if (holding) heldUpstreams.add(upstream);
    else upstream.pipe(client);
  };
  let server = createServer(forward);
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  if (typeof address !== "object" || address === null)
    throw new Error("the TCP proxy has no port");
  const port = address.port;
  const stopListening = async (): Promise<void> => {
    if (!server.listening) return;
    const closed = once(server, "close");
    server.close();
    for (const socket of sockets) socket.destroy();
    await closed;
  };
  /** Destroys the connections whose first requests match. */
  const cutWhere = (matches: (prefix: string) => boolean): void => {
    for (const [upstream, client] of replies) {
      if (!matches(requestPrefixes.get(client) ?? "")) continue;
      upstream.destroy();
      client.destroy();
    }
  };
  return {
    port,
    redisUrl: `redis://127.0.0.1:${port}`,
    cut: stopListening,
    restore: async () => {
      if (server.listening) return;
      server = createServer(forward);
      server.listen(port, "127.0.0.1");
      await once(server, "listening");
    },
    holdReplies: () => {
      holding = true;
      for (const [upstream, client] of replies) {
        if (heldUpstreams.has(upstream)) continue;
        upstream.unpipe(client);
        upstream.pause();
        heldUpstreams.add(upstream);
      }
    },
    passReplies: () => {
      holding = false;
      for (const upstream of heldUpstreams) {
        const client = replies.get(upstream);
        if (client !== undefined) upstream.pipe(client);
      }
      heldUpstreams.clear();
    },
    cutAllBut: (marker) => {
      holding = true;
      cutWhere((prefix) => !prefix.includes(marker));
    },
    cutOnly: (marker) => {
      refusing = true;
      cutWhere((prefix) => prefix.includes(marker));
    },
    admitNew: () => {
      refusing = false;
    },
    dropOnRequest: (marker) =>
      new Promise((resolve) => {
        trap = { marker, sprung: resolve };
      }),
    close: stopListening,
  };
}
