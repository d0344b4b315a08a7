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

function payloadBytes(payload: unknown): number {
  if (payload === undefined) return 0;
  try {
    return Buffer.byteLength(JSON.stringify(payload) ?? "", "utf8");
  } catch {
    return Number.POSITIVE_INFINITY;
  }
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
    let [payload, ack] = args;
    if (ack === undefined && typeof payload === "function") {
      ack = payload;
      payload = undefined;
    }
    const logger = options.logger.child({ event });
    if (typeof ack !== "function") {
      logger.debug("ignored a request without an acknowledgement callback");
      return;
    }
    const respond = ack as (response: Ack<T>) => void;
    try {
      if (payloadBytes(payload) > options.maxPayloadBytes) {
        throw new RelayError(
          "PAYLOAD_TOO_LARGE",
          `payload is over the limit of ${options.maxPayloadBytes} bytes`,
        );
      }
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
