import type { Socket } from "socket.io";
import type { Ack } from "../../client-sdk/src/protocol.ts";
import { RelayError, toErrorBody } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { outcomeOf, socketRequests } from "../metrics/relay-metrics.ts";
import { FloodGuard } from "./flood-guard.ts";
import { socketLogFields } from "./handshake.ts";
import { type InFlightLimit, RequestsInFlight } from "./requests-in-flight.ts";

/** Serves one request event for `socket` and resolves with the acknowledgement's `data`. */
export type RequestHandler = (
  payload: unknown,
  socket: Socket,
) => Promise<unknown>;

export interface RequestOptions {
  maxPayloadBytes: number;
  /** Events of any kind that a connection may send per FLOOD_WINDOW_MS before it is closed. */
  maxEventsPerWindow: number;
  /** Limit on the requests of one connection not yet acknowledged. */
  inFlight: InFlightLimit;
  logger: Logger;
}

/**
 * A listener shared by the sockets of a namespace. Node's EventEmitter and
 * Socket.IO's `onAny` call it with the socket that received the event as
 * `this`, so one function serves every socket.
 */
export type SocketListener<Args extends unknown[] = unknown[]> = (
  this: Socket,
  ...args: Args
) => void;

/** The listeners that serve a namespace's request events, built once per namespace. */
export interface RequestListeners {
  /** One listener per request event, registered with `socket.on`. */
  readonly byEvent: ReadonlyMap<string, SocketListener>;
  /** Listener for events that no handler serves, registered with `socket.onAny`. */
  readonly unknown: SocketListener;
}

/**
 * Returns the size of `payload` measured as JSON, and throws
 * `PAYLOAD_TOO_LARGE` when it is over `maxBytes`.
 */
function checkPayloadSize(payload: unknown, maxBytes: number): number {
  if (payload === undefined) return 0;
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
  return bytes;
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
 * Returns the listeners that serve the request events of a namespace for
 * all its sockets, with the contract's acknowledgement rules:
 * - a request without a callback is ignored;
 * - the callback is called once, on every path;
 * - an oversized payload is `PAYLOAD_TOO_LARGE`;
 * - an event missing from `handlers` is `INVALID_PAYLOAD`;
 * - an unexpected error is logged in full, and the client gets only `INTERNAL`.
 *
 * The listeners are registered per event, not behind one `onAny`, because
 * Socket.IO runs socket middleware (the drain's) only before the listeners
 * of an event, and calls `onAny` listeners before any middleware.
 */
export function requestListeners(
  handlers: Readonly<Record<string, RequestHandler>>,
  options: RequestOptions,
): RequestListeners {
  const byEvent = new Map<string, SocketListener>();
  const floodGuard = new FloodGuard(options.maxEventsPerWindow, options.logger);
  const inFlight = new RequestsInFlight(options.inFlight);
  for (const [event, handler] of Object.entries(handlers)) {
    byEvent.set(event, function serveRequest(this: Socket, ...args) {
      const { payload, ack } = splitArguments(args);
      if (typeof ack !== "function") {
        options.logger.debug(
          { ...socketLogFields(this), event },
          "ignored a request without an acknowledgement callback",
        );
        return;
      }
      const respond = ack as (response: Ack<unknown>) => void;
      void answer(this, event, payload, handler, respond, inFlight, options);
    });
  }
  // Socket.IO calls `onAny` listeners first for every event, and drops an
  // event whose socket this disconnected.
  const unknown: SocketListener = function rejectUnknown(
    this: Socket,
    event,
    ...args
  ) {
    if (!floodGuard.admit(this)) return;
    // A Map, so an event named like an Object.prototype key is unknown.
    if (typeof event === "string" && byEvent.has(event)) return;
    const { ack } = splitArguments(args);
    if (typeof ack !== "function") {
      options.logger.debug(
        { ...socketLogFields(this), event: quotedEventName(event) },
        "ignored an unknown event without an acknowledgement callback",
      );
      return;
    }
    rejectUnknownEvent(
      this,
      event,
      ack as (response: Ack<unknown>) => void,
      options.logger,
    );
  };
  return { byEvent, unknown };
}

/** Registers a namespace's shared request listeners on `socket`. */
export function serveRequests(
  socket: Socket,
  listeners: RequestListeners,
): void {
  for (const [event, listener] of listeners.byEvent) {
    socket.on(event, listener);
  }
  socket.onAny(listeners.unknown);
}

/** Returns an event name for logs and errors: quoted, at most 64 characters. */
function quotedEventName(event: unknown): string {
  return JSON.stringify(String(event).slice(0, 64));
}

function rejectUnknownEvent(
  socket: Socket,
  event: unknown,
  respond: (response: Ack<unknown>) => void,
  logger: Logger,
): void {
  const name = quotedEventName(event);
  logger.debug(
    { ...socketLogFields(socket), event: name },
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
  inFlight: RequestsInFlight,
  options: RequestOptions,
): Promise<void> {
  let admittedBytes: number | undefined;
  try {
    const bytes = checkPayloadSize(payload, options.maxPayloadBytes);
    inFlight.admit(socket, bytes);
    admittedBytes = bytes;
    const data = await handler(payload, socket);
    respond({ ok: true, data });
    socketRequests.inc({ event, outcome: "ok" });
  } catch (error) {
    if (error instanceof RelayError) {
      options.logger.debug(
        {
          ...socketLogFields(socket),
          event,
          code: error.code,
          reason: error.message,
        },
        "request rejected",
      );
    } else {
      options.logger.error(
        { ...socketLogFields(socket), event, err: error },
        "request handler failed",
      );
    }
    respond({ ok: false, error: toErrorBody(error) });
    socketRequests.inc({ event, outcome: outcomeOf(error) });
  } finally {
    if (admittedBytes !== undefined) inFlight.release(socket, admittedBytes);
  }
}
