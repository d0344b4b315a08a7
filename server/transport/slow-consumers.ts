import { Socket as NetSocket } from "node:net";
import { Counter } from "prom-client";
import type { Socket } from "socket.io";
import type { Logger } from "../logger.ts";
import { RepeatLimiter } from "../logging/repeat-limiter.ts";
import { relayRegistry } from "../metrics/relay-metrics.ts";
import { socketLogFields } from "./handshake.ts";

const slowAppDisconnects = new Counter({
  name: "relay_slow_app_disconnects_total",
  help: "App connections closed because more than APP_MAX_BUFFERED_BYTES waited to be sent to them.",
  registers: [relayRegistry],
});

/** Rate of the "slow consumer" log line, across all connections of the process. */
const disconnectLog = new RepeatLimiter(1000);

type EngineSocket = Socket["conn"];

/** Size of an Engine.IO packet's data: a string of encoded Socket.IO packets, or binary. */
function packetBytes(data: unknown): number {
  if (typeof data === "string") return Buffer.byteLength(data);
  if (ArrayBuffer.isView(data) || data instanceof ArrayBuffer) {
    return data.byteLength;
  }
  return 0;
}

/**
 * Returns the `ws` WebSocket of a websocket transport, or undefined for
 * polling. NOTE: engine.io 6.6 keeps it in the transport's untyped
 * `socket` field, so an engine.io upgrade may move it.
 */
function webSocketOf(
  conn: EngineSocket,
): { bufferedAmount: number; terminate: () => void } | undefined {
  const socket = (conn.transport as { socket?: unknown }).socket;
  if (typeof socket !== "object" || socket === null) return undefined;
  const candidate = socket as { bufferedAmount?: unknown; terminate?: unknown };
  if (
    typeof candidate.bufferedAmount !== "number" ||
    typeof candidate.terminate !== "function"
  ) {
    return undefined;
  }
  return candidate as { bufferedAmount: number; terminate: () => void };
}

/**
 * Returns the TCP socket under a `ws` WebSocket. NOTE: ws 8 keeps it in
 * the untyped `_socket` field, so a ws upgrade may move it.
 */
function tcpSocketOf(ws: object): NetSocket | undefined {
  const socket = (ws as { _socket?: unknown })._socket;
  return socket instanceof NetSocket ? socket : undefined;
}

/**
 * Closes the connection of `socket` once more than `maxBufferedBytes` wait
 * to be sent to it, so a client on a slow or stalled link cannot grow the
 * process's memory without bound.
 *
 * The bytes waiting are those of the packets in Engine.IO's write buffer,
 * where they wait while the transport is busy, plus those the websocket
 * has accepted but not yet passed to the kernel (`bufferedAmount` of `ws`).
 * The check runs whenever a packet is queued, on the backlog before that
 * packet, so a single large event on a healthy link never trips it. The
 * close discards the queued events and drops the TCP connection without
 * a closing handshake, which would wait behind the backlog. A websocket's
 * connection is reset, so the kernel also discards the bytes it still
 * holds for the client (megabytes on a stalled link) instead of keeping
 * them until the client reads or TCP gives up. The client sees its
 * connection drop and reconnects.
 */
export function closeWhenBacklogged(
  socket: Socket,
  maxBufferedBytes: number,
  logger: Logger,
): void {
  const conn = socket.conn;
  /** Bytes of the packets in Engine.IO's write buffer, emptied at each flush. */
  let queuedBytes = 0;
  let closing = false;

  const onPacketCreate = (packet: { data?: unknown }): void => {
    if (closing) return;
    const ws = webSocketOf(conn);
    const backlog = queuedBytes + (ws?.bufferedAmount ?? 0);
    queuedBytes += packetBytes(packet.data);
    if (backlog <= maxBufferedBytes) return;
    closing = true;
    slowAppDisconnects.inc();
    const suppressed = disconnectLog.admit("slow-consumer");
    if (suppressed !== null) {
      logger.warn(
        {
          ...socketLogFields(socket),
          bufferedBytes: backlog,
          maxBufferedBytes,
          transport: conn.transport.name,
          suppressed,
        },
        "app connection closed: too many bytes waiting to be sent, the client is too slow",
      );
    }
    // Closing here would run inside Engine.IO's send and Socket.IO's
    // broadcast loop, so it waits until they return.
    process.nextTick(() => {
      const tcp = ws === undefined ? undefined : tcpSocketOf(ws);
      conn.close(true);
      if (tcp === undefined) ws?.terminate();
      else tcp.resetAndDestroy();
    });
  };
  const onFlush = (): void => {
    queuedBytes = 0;
  };

  conn.on("packetCreate", onPacketCreate);
  conn.on("flush", onFlush);
  socket.once("disconnect", () => {
    conn.off("packetCreate", onPacketCreate);
    conn.off("flush", onFlush);
  });
}
