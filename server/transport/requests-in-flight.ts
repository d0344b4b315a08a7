import type { Socket } from "socket.io";
import { RelayError } from "../errors.ts";
import { requestsInFlightRejected } from "../metrics/relay-metrics.ts";

/** Limit on the requests of one connection that are still being served. */
export interface InFlightLimit {
  /** Requests received and not yet acknowledged. */
  requests: number;
  /** Bytes of their payloads, measured as JSON. A single request is admitted at any size. */
  bytes: number;
}

/** Delay before a client rejected for a full backlog should retry, in ms. */
export const IN_FLIGHT_RETRY_AFTER_MS = 500;

/** Number of maximum-size payloads one connection may have in service (4 MiB at the 1 MiB default). */
const PAYLOADS_IN_FLIGHT = 4;

/** Returns a limit of `requests` waiting requests and PAYLOADS_IN_FLIGHT payloads of `maxPayloadBytes`. */
export function inFlightLimit(
  requests: number,
  maxPayloadBytes: number,
): InFlightLimit {
  return { requests, bytes: PAYLOADS_IN_FLIGHT * maxPayloadBytes };
}

interface Backlog {
  requests: number;
  bytes: number;
}

/**
 * Counts each connection's requests in service and the bytes of their
 * payloads, and rejects a request past the limit at once. A bridge's
 * request limit runs in its write's turn, so without this bound every
 * payload sent while its writes wait for Redis would stay in memory, and
 * its offline presence would wait for all of them. Idle connections have
 * no entry.
 */
export class RequestsInFlight {
  private readonly backlogs = new WeakMap<Socket, Backlog>();

  constructor(private readonly limit: InFlightLimit) {}

  /**
   * Counts a request of `bytes` against `socket`'s backlog, or throws
   * `RATE_LIMITED` when it would pass the limit. Call `release` with the
   * same bytes once the request is acknowledged.
   */
  admit(socket: Socket, bytes: number): void {
    const backlog = this.backlogs.get(socket);
    if (backlog === undefined) {
      this.backlogs.set(socket, { requests: 1, bytes });
      return;
    }
    if (
      backlog.requests >= this.limit.requests ||
      backlog.bytes + bytes > this.limit.bytes
    ) {
      requestsInFlightRejected.inc({ namespace: socket.nsp.name });
      throw new RelayError(
        "RATE_LIMITED",
        `too many requests in service on this connection (max ${this.limit.requests} requests, ${this.limit.bytes} bytes of payload); retry after the earlier ones are acknowledged`,
        { retryAfterMs: IN_FLIGHT_RETRY_AFTER_MS },
      );
    }
    backlog.requests += 1;
    backlog.bytes += bytes;
  }

  release(socket: Socket, bytes: number): void {
    const backlog = this.backlogs.get(socket);
    if (backlog === undefined) return;
    backlog.requests -= 1;
    backlog.bytes -= bytes;
    if (backlog.requests <= 0) this.backlogs.delete(socket);
  }
}
