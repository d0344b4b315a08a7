import type { Socket } from "socket.io";
import type { Logger } from "../logger.ts";
import { socketFloodDisconnects } from "../metrics/relay-metrics.ts";
import { socketLogFields } from "./handshake.ts";

/**
 * Factor from `REQUESTS_PER_SOCKET_PER_10S` to the events of any kind that
 * a connection may send in 10 s before it is closed as a flood. A client
 * that waits when it gets `RATE_LIMITED` stays far below it.
 */
export const FLOOD_FACTOR = 4;

/** Window over which a connection's events are counted, in ms. */
export const FLOOD_WINDOW_MS = 10_000;

/** The events of one connection in the current window. */
interface EventWindow {
  startedAt: number;
  events: number;
}

/**
 * Counts every event that a connection sends, known or not, and closes a
 * connection that sends more than `maxEvents` in FLOOD_WINDOW_MS. The
 * request limit answers the requests over it with `RATE_LIMITED`, and
 * some events skip that limit, but each answer still costs the worker as
 * much as the request. A client that ignores them would slow every other
 * connection of the worker.
 */
export class FloodGuard {
  private readonly windows = new WeakMap<Socket, EventWindow>();

  constructor(
    private readonly maxEvents: number,
    private readonly logger: Logger,
    private readonly now: () => number = () => performance.now(),
  ) {}

  /**
   * Counts one event of `socket`. Returns false once the socket is over
   * the limit, and disconnects it at the first event over it.
   */
  admit(socket: Socket): boolean {
    const now = this.now();
    let window = this.windows.get(socket);
    if (window === undefined) {
      window = { startedAt: now, events: 0 };
      this.windows.set(socket, window);
    } else if (now - window.startedAt >= FLOOD_WINDOW_MS) {
      window.startedAt = now;
      window.events = 0;
    }
    window.events += 1;
    if (window.events <= this.maxEvents) return true;
    if (window.events === this.maxEvents + 1) {
      this.logger.warn(
        {
          ...socketLogFields(socket),
          maxEvents: this.maxEvents,
          windowMs: FLOOD_WINDOW_MS,
        },
        "connection sent too many events, disconnecting it",
      );
      socketFloodDisconnects.inc({ namespace: socket.nsp.name });
      socket.disconnect(true);
    }
    return false;
  }
}
