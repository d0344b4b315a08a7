import type { Socket } from "socket.io";
import type { Ack } from "../../client-sdk/src/protocol.ts";
import { RelayError, toErrorBody } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { outcomeOf, socketRequests } from "../metrics/relay-metrics.ts";

/** Serves one request event for `socket`; resolves with the answer's `data`. */
export type RequestHandler = (
  payload: unknown,
  socket: Socket,
) => Promise<unknown>;

export interface RequestOptions {
  maxPayloadBytes: number;
  logger: Logger;
  /** IDs that log lines about a socket's requests carry; the socket ID alone by default. */
  logFields?: (socket: Socket) => Record<string, unknown>;
}

/**
 * Listener for `socket.onAny`. Socket.IO calls it with the socket that
 * received the event as `this`, so one listener can serve every socket of
 * a namespace.
 */
export type RequestListener = (
  this: Socket,
  event: string,
  ...args: unknown[]
) => void;

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

function socketIdField(socket: Socket): Record<string, unknown> {
  return { socketId: socket.id };
}

/**
 * Returns the one listener that serves the request events of a namespace
 * for all its sockets, with the contract's acknowledgement rules:
 * - a request without a callback is ignored;
 * - the callback is called exactly once;
 * - an oversized payload is `PAYLOAD_TOO_LARGE`;
 * - an event missing from `handlers` is `INVALID_PAYLOAD`;
 * - an unexpected error is logged in full but answered only as `INTERNAL`.
 *
 * Registering it with `socket.onAny` costs a socket one array entry,
 * where a listener per event and socket cost closures for each.
 */
export function requestListener(
  handlers: Readonly<Record<string, RequestHandler>>,
  options: RequestOptions,
): RequestListener {
  // A Map, so an event named like an Object.prototype key finds no handler.
  const table = new Map(Object.entries(handlers));
  const logFields = options.logFields ?? socketIdField;
  return function serveRequest(this: Socket, event, ...args) {
    const { payload, ack } = splitArguments(args);
    const handler = table.get(event);
    if (typeof ack !== "function") {
      options.logger.debug(
        { ...logFields(this), event },
        "ignored a request without an acknowledgement callback",
      );
      return;
    }
    const respond = ack as (response: Ack<unknown>) => void;
    if (handler === undefined) {
      rejectUnknownEvent(this, event, respond, options.logger, logFields);
      return;
    }
    void answer(this, event, payload, handler, respond, options, logFields);
  };
}

function rejectUnknownEvent(
  socket: Socket,
  event: string,
  respond: (response: Ack<unknown>) => void,
  logger: Logger,
  logFields: (socket: Socket) => Record<string, unknown>,
): void {
  const name = JSON.stringify(String(event).slice(0, 64));
  logger.debug(
    { ...logFields(socket), event: name },
    "rejected an unknown event",
  );
  const error = new RelayError(
    "INVALID_PAYLOAD",
    `unknown event ${name} on ${socket.nsp.name}`,
  );
  respond({ ok: false, error: error.toBody() });
}

async function answer(
  socket: Socket,
  event: string,
  payload: unknown,
  handler: RequestHandler,
  respond: (response: Ack<unknown>) => void,
  options: RequestOptions,
  logFields: (socket: Socket) => Record<string, unknown>,
): Promise<void> {
  try {
    checkPayloadSize(payload, options.maxPayloadBytes);
    const data = await handler(payload, socket);
    respond({ ok: true, data });
    socketRequests.inc({ event, outcome: "ok" });
  } catch (error) {
    if (error instanceof RelayError) {
      options.logger.debug(
        {
          ...logFields(socket),
          event,
          code: error.code,
          reason: error.message,
        },
        "request rejected",
      );
    } else {
      options.logger.error(
        { ...logFields(socket), event, err: error },
        "request handler failed",
      );
    }
    respond({ ok: false, error: toErrorBody(error) });
    socketRequests.inc({ event, outcome: outcomeOf(error) });
  }
}
