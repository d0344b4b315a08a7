import createDebug from "debug";
import { io, type Socket } from "socket.io-client";
import {
  DEFAULT_BACKOFF,
  backoffDelay,
  validateBackoff,
  type BackoffOptions,
} from "./backoff.ts";
import {
  RelayClientError,
  readHandshakeError,
  type RelayClientErrorCode,
} from "./errors.ts";
import { MAX_TOKEN_LENGTH, type AckCallback } from "./protocol.ts";
import { TypedEmitter, type EventsMap } from "./typed-emitter.ts";

const debug = createDebug("relay-sdk:connection");

/**
 * Connection state of a client. `replaced`, `unauthorized` and `closed` are
 * final: the client never connects again.
 */
export type ConnectionState =
  | "idle"
  | "connecting"
  | "connected"
  | "reconnecting"
  | "replaced"
  | "unauthorized"
  | "closed";

/** The final states, after which a client never connects again. */
export type FinalState = "replaced" | "unauthorized" | "closed";

const FINAL_STATES: ReadonlySet<ConnectionState> = new Set<FinalState>([
  "replaced",
  "unauthorized",
  "closed",
]);

/** Returns true when `state` is final. */
export function isFinalState(state: ConnectionState): state is FinalState {
  return FINAL_STATES.has(state);
}

/** Payload of the `state` event, emitted on every change of state. */
export interface StateChangeEvent {
  state: ConnectionState;
  previous: ConnectionState;
  /** Cause of leaving `connected` or of a failed attempt, when there is one. */
  error?: RelayClientError;
}

/** Payload of the `retry` event, emitted whenever a reconnect is scheduled. */
export interface RetryEvent {
  /** 1 for the first retry after a connection or a failed attempt. */
  attempt: number;
  delayMs: number;
  /** The failure that made the retry necessary. */
  error: RelayClientError;
}

export interface ConnectionEvents {
  state: (event: StateChangeEvent) => void;
  retry: (event: RetryEvent) => void;
}

/** Transports of Socket.IO's client, tried in the given order. */
export type TransportName = "polling" | "websocket" | "webtransport";

export interface ConnectionOptions {
  url: string;
  namespace: string;
  token: string;
  transports: TransportName[];
  reconnect?: BackoffOptions | undefined;
  /** Source of jitter; `Math.random` unless a test injects one. */
  random?: () => number;
}

/** Payload of a request event `(payload, ack) => void`. */
export type RequestPayload<Handler> = Handler extends (
  payload: infer Payload,
  ack: never,
) => void
  ? Payload
  : never;
/** Acknowledgement `data` of a request event `(payload, ack) => void`. */
export type RequestData<Handler> = Handler extends (
  payload: never,
  ack: AckCallback<infer Data>,
) => void
  ? Data
  : never;

/**
 * One Socket.IO connection to a relay namespace with the SDK's own
 * reconnect loop. Socket.IO's reconnection is off, because this loop must
 * treat a rejected token as final and honour the relay's `retryAfterMs`.
 */
export class RelayConnection<
  ListenEvents extends EventsMap<ListenEvents>,
  EmitEvents,
> extends TypedEmitter<ConnectionEvents> {
  private readonly socket: Socket;
  private readonly backoff: BackoffOptions;
  private readonly random: () => number;
  private currentState: ConnectionState = "idle";
  private finalError: RelayClientError | undefined;
  private attempt = 0;
  private retryTimer: ReturnType<typeof setTimeout> | undefined;
  private readonly inFlight = new Set<(error: RelayClientError) => void>();
  private readonly tokenTooLong: boolean;

  constructor(options: ConnectionOptions) {
    super();
    this.backoff = validateBackoff(options.reconnect ?? DEFAULT_BACKOFF);
    this.random = options.random ?? Math.random;
    this.socket = io(joinUrl(options.url, options.namespace), {
      autoConnect: false,
      reconnection: false,
      // A Manager of its own, so no other client's options apply to it.
      forceNew: true,
      transports: options.transports,
      auth: { token: options.token },
    });
    this.tokenTooLong = options.token.length > MAX_TOKEN_LENGTH;
    this.socket.on("connect", () => this.onConnect());
    this.socket.on("connect_error", (error) => this.onConnectError(error));
    this.socket.on("disconnect", (reason) => this.onDisconnect(reason));
  }

  get state(): ConnectionState {
    return this.currentState;
  }

  get connected(): boolean {
    return this.socket.connected;
  }

  /** Reconnect delay bounds after validation. */
  get backoffOptions(): BackoffOptions {
    return this.backoff;
  }

  /**
   * Starts connecting when idle. Resolves once connected; rejects when the
   * connection reaches a final state first. Network failures do not reject:
   * the loop keeps retrying.
   */
  open(): Promise<void> {
    if (this.currentState === "connected") return Promise.resolve();
    if (isFinalState(this.currentState)) {
      return Promise.reject(this.describeFinalState());
    }
    if (this.tokenTooLong) {
      // The relay rejects such a token with UNAUTHORIZED. Over its message
      // limit it closes the connection without a response instead, which
      // would look like a network failure and be retried forever.
      this.close(
        "unauthorized",
        new RelayClientError(
          "UNAUTHORIZED",
          `token is longer than the relay's limit of ${MAX_TOKEN_LENGTH} characters`,
        ),
      );
      return Promise.reject(this.describeFinalState());
    }
    const outcome = this.waitForOutcome();
    if (this.currentState === "idle") {
      this.setState("connecting");
      this.socket.connect();
    }
    return outcome;
  }

  /**
   * Ends the connection for good in `state`, cancels a scheduled retry and
   * rejects every request in flight with `UNAVAILABLE`.
   */
  close(state: FinalState = "closed", error?: RelayClientError): void {
    if (isFinalState(this.currentState)) return;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.finalError = error;
    // The state changes first, so the disconnect handler finds a final state.
    this.setState(state, error);
    this.socket.disconnect();
    this.rejectInFlight(new RelayClientError("UNAVAILABLE", `client ${state}`));
  }

  /** Adds a listener for an event that the relay sends. */
  listen<Event extends keyof ListenEvents & string>(
    event: Event,
    listener: ListenEvents[Event],
  ): void {
    // The socket is untyped inside this class, and `ListenEvents` types
    // the listener for callers.
    const forward = listener as unknown as (...received: unknown[]) => void;
    this.socket.on(event, ((...args: unknown[]) => {
      const last = args.length - 1;
      const ack = args[last];
      if (typeof ack === "function") {
        args[last] = this.ackOnThisConnection(
          event,
          ack as (...answer: unknown[]) => void,
        );
      }
      forward(...args);
    }) as never);
  }

  /**
   * Wraps an acknowledgement so that it is dropped once the connection it
   * belongs to has ended. Socket.IO would send a late one on the next
   * connection, where its ID may match another pending request of the
   * relay, so an answer could reach the wrong command.
   */
  private ackOnThisConnection(
    event: string,
    ack: (...answer: unknown[]) => void,
  ): (...answer: unknown[]) => void {
    const socketId = this.socket.id;
    return (...answer) => {
      if (!this.socket.connected || this.socket.id !== socketId) {
        debug("dropped the answer to %s from an ended connection", event);
        return;
      }
      ack(...answer);
    };
  }

  /**
   * Sends a request event and resolves with its acknowledgement's `data`.
   * Rejects with a RelayClientError: the relay's code for a failed
   * acknowledgement, `TIMEOUT` when no acknowledgement arrives within
   * `timeoutMs`, and `UNAVAILABLE` when not connected or cut by a disconnect.
   */
  request<Event extends keyof EmitEvents & string>(
    event: Event,
    payload: RequestPayload<EmitEvents[Event]>,
    timeoutMs: number,
  ): Promise<RequestData<EmitEvents[Event]>> {
    if (!this.socket.connected) {
      const message = `cannot send ${event}: client is ${this.currentState}`;
      return Promise.reject(new RelayClientError("UNAVAILABLE", message));
    }
    return new Promise((resolve, reject) => {
      const cut = (error: RelayClientError) => reject(error);
      this.inFlight.add(cut);
      this.socket
        .timeout(timeoutMs)
        .emit(event, payload, (timedOut: Error | null, response: unknown) => {
          // A disconnect has already rejected this request.
          if (!this.inFlight.delete(cut)) return;
          if (timedOut) {
            const message = `${event} timed out after ${timeoutMs} ms`;
            reject(new RelayClientError("TIMEOUT", message));
            return;
          }
          settleAck(event, response, resolve, reject);
        });
    });
  }

  private onConnect(): void {
    this.attempt = 0;
    debug(
      "connected to %s as %s",
      this.socket.io.opts.hostname,
      this.socket.id,
    );
    this.setState("connected");
  }

  private onConnectError(error: Error): void {
    if (isFinalState(this.currentState)) return;
    const data = readHandshakeError(error);
    const code: RelayClientErrorCode = data?.code ?? "UNAVAILABLE";
    const failure = new RelayClientError(code, error.message, {
      retryAfterMs: data?.retryAfterMs,
      cause: error,
    });
    debug("connect failed: %s (%s)", error.message, code);
    if (code === "UNAUTHORIZED" || code === "FORBIDDEN") {
      this.close("unauthorized", failure);
      return;
    }
    const retryAfterMs = code === "RATE_LIMITED" ? data?.retryAfterMs : 0;
    this.scheduleRetry(failure, retryAfterMs ?? 0);
  }

  private onDisconnect(reason: Socket.DisconnectReason): void {
    const error = new RelayClientError(
      "UNAVAILABLE",
      `disconnected: ${reason}`,
    );
    this.rejectInFlight(error);
    if (isFinalState(this.currentState)) return;
    debug("disconnected: %s", reason);
    this.scheduleRetry(error, 0);
  }

  /**
   * Schedules the next connect attempt after the backoff delay, or, when
   * the relay sent `retryAfterMs`, after that wait plus a random 0 to
   * `minDelayMs`. The relay may send many clients the same `retryAfterMs`,
   * and the random part keeps them from returning together. The random part
   * does not grow with the attempt, because `retryAfterMs` already says when
   * the relay expects to have room.
   */
  private scheduleRetry(error: RelayClientError, retryAfterMs: number): void {
    this.attempt += 1;
    const delayMs =
      retryAfterMs > 0
        ? retryAfterMs + this.random() * this.backoff.minDelayMs
        : backoffDelay(this.attempt, this.backoff, this.random);
    debug("retry %d in %d ms", this.attempt, Math.round(delayMs));
    this.setState("reconnecting", error);
    this.emit("retry", { attempt: this.attempt, delayMs, error });
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.socket.connect();
    }, delayMs);
  }

  private setState(state: ConnectionState, error?: RelayClientError): void {
    const previous = this.currentState;
    if (state === previous) return;
    this.currentState = state;
    debug("state %s -> %s", previous, state);
    const event: StateChangeEvent = { state, previous };
    if (error !== undefined) event.error = error;
    this.emit("state", event);
  }

  private waitForOutcome(): Promise<void> {
    return new Promise((resolve, reject) => {
      const onState = ({ state }: StateChangeEvent) => {
        if (state === "connected") {
          this.off("state", onState);
          resolve();
        } else if (isFinalState(state)) {
          this.off("state", onState);
          reject(this.describeFinalState());
        }
      };
      this.on("state", onState);
    });
  }

  private describeFinalState(): RelayClientError {
    return (
      this.finalError ??
      new RelayClientError("UNAVAILABLE", `client ${this.currentState}`)
    );
  }

  private rejectInFlight(error: RelayClientError): void {
    const cuts = [...this.inFlight];
    this.inFlight.clear();
    for (const cut of cuts) cut(error);
  }
}

function settleAck<Data>(
  event: string,
  response: unknown,
  resolve: (data: Data) => void,
  reject: (error: RelayClientError) => void,
): void {
  if (typeof response === "object" && response !== null && "ok" in response) {
    if (response.ok === true && "data" in response) {
      resolve(response.data as Data);
      return;
    }
    if (response.ok === false && "error" in response) {
      reject(RelayClientError.fromBody(response.error));
      return;
    }
  }
  reject(
    new RelayClientError("INTERNAL", `malformed acknowledgement of ${event}`),
  );
}

/** Appends `namespace` to the relay's origin, dropping trailing slashes. */
function joinUrl(url: string, namespace: string): string {
  return `${url.replace(/\/+$/, "")}${namespace}`;
}
