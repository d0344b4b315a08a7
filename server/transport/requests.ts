import type { Socket } from "socket.io";
import type { Ack } from "../../client-sdk/src/protocol.ts";
import { RelayError, toErrorBody } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { outcomeOf, socketRequests } from "../metrics/relay-metrics.ts";

export interface RequestContext {
  socket: Socket;
  logger: Logger;
}

export type RequestHandler<T> = (
  payload: unknown,
  context: RequestContext,
) => Promise<T>;

export interface RequestOptions {
  maxPayloadBytes: number;
  logger: Logger;
}

/** Throws `PAYLOAD_TOO_LARGE` when `payload`, measured as JSON, is over `maxBytes`. */
function checkPayloadSize(payload: unknown, maxBytes: number): void {
  if (payload === undefined) return;
  let bytes: number;
  try {
    bytes = Buffer.byteLength(JSON.stringify(payload) ?? "", "utf8");
  } catch {
    // JSON.stringify overflows the stack on very deep nesting, which no
    // payload of the contract has.
    throw new RelayError(
      "INVALID_PAYLOAD",
      "invalid payload: nested too deeply",
    );
  }
  if (bytes > maxBytes) {
    throw new RelayError(
      "PAYLOAD_TOO_LARGE",
      `payload is over the limit of ${maxBytes} bytes`,
    );
  }
}

/**
 * Splits an event's arguments into the payload (the first argument) and
 * the acknowledgement callback, which Socket.IO always passes last.
 */
function splitArguments(args: unknown[]): { payload: unknown; ack: unknown } {
  const last = args[args.length - 1];
  if (typeof last !== "function") return { payload: args[0], ack: undefined };
  return { payload: args.length > 1 ? args[0] : undefined, ack: last };
}

/**
 * Rejects a request for an event that `socket`'s namespace does not serve
 * with `INVALID_PAYLOAD`, so a client with a callback is not left waiting.
 */
export function rejectUnknownEvents(socket: Socket, logger: Logger): void {
  socket.onAny((event: string, ...args: unknown[]) => {
    if (socket.listenerCount(event) > 0) return;
    const { ack } = splitArguments(args);
    logger.debug({ event, socketId: socket.id }, "rejected an unknown event");
    if (typeof ack !== "function") return;
    const error = new RelayError(
      "INVALID_PAYLOAD",
      `unknown event ${JSON.stringify(String(event).slice(0, 64))} on ${socket.nsp.name}`,
    );
    (ack as (response: Ack<never>) => void)({
      ok: false,
      error: error.toBody(),
    });
  });
}

/**
 * Wraps a request handler in the contract's acknowledgement rules: a request
 * without a callback is ignored, the callback is called exactly once, an
 * oversized payload is `PAYLOAD_TOO_LARGE`, and an unexpected error is
 * logged in full but answered only as `INTERNAL`.
 */
export function onRequest<T>(
  socket: Socket,
  event: string,
  handler: RequestHandler<T>,
  options: RequestOptions,
): void {
  socket.on(event, async (...args: unknown[]) => {
    const { payload, ack } = splitArguments(args);
    const logger = options.logger.child({ event });
    if (typeof ack !== "function") {
      logger.debug("ignored a request without an acknowledgement callback");
      return;
    }
    const respond = ack as (response: Ack<T>) => void;
    try {
      checkPayloadSize(payload, options.maxPayloadBytes);
      const data = await handler(payload, { socket, logger });
      respond({ ok: true, data });
      socketRequests.inc({ event, outcome: "ok" });
    } catch (error) {
      if (error instanceof RelayError) {
        logger.debug(
          { code: error.code, reason: error.message },
          "request rejected",
        );
      } else {
        logger.error({ err: error }, "request handler failed");
      }
      respond({ ok: false, error: toErrorBody(error) });
      socketRequests.inc({ event, outcome: outcomeOf(error) });
    }
  });
}
