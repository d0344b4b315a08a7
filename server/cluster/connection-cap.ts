import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { Counter } from "prom-client";
import { RelayError, toErrorBody } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { RepeatLimiter } from "../logging/repeat-limiter.ts";
import { relayRegistry } from "../metrics/relay-metrics.ts";

/** Time between two log lines about rejected connections, in ms. */
const REJECTION_LOG_WINDOW_MS = 10_000;

const connectionsRejected = new Counter({
  name: "relay_connections_rejected_total",
  help: "Connections closed on arrival, and requests answered 503, because MAX_CONNECTIONS were open on the process.",
  registers: [relayRegistry],
});

/** Counts rejected connections. */
interface RejectionCounter {
  inc(): void;
}

/** Returns a function that counts a rejected connection and logs it, once per window. */
function rejectionReporter(
  max: number,
  logger: Logger,
  counter: RejectionCounter,
): () => void {
  const repeats = new RepeatLimiter(REJECTION_LOG_WINDOW_MS);
  return () => {
    counter.inc();
    const suppressed = repeats.admit("rejected");
    if (suppressed === null) return;
    logger.warn(
      { maxConnections: max, suppressed },
      "rejected a connection: MAX_CONNECTIONS connections are open on this process; raise the open-files limit and MAX_CONNECTIONS, or add processes",
    );
  };
}

/**
 * Closes each connection that arrives while `max` are open on the cluster
 * primary's server. Node closes them before the `connection` event. The
 * primary counts them in its own registry, since /metrics serves the
 * workers' registries and the primary's.
 *
 * NOTE: the primary keeps no reserve for health checks, as the relay's
 * own server does (`capRelayConnections`). It counts only connections it
 * has not handed to a worker yet, so it reaches `max` only when that many
 * clients connect and send no complete request header.
 *
 * Node lowers a server's count when it sends a socket to a worker, and
 * counts a socket queued behind one the worker has not acknowledged yet
 * until it is sent. On Node 20.20 a send to a worker that has died but
 * whose closed IPC channel the primary has not read yet reports success,
 * because Node ignores the failed write. So @socket.io/sticky does not
 * destroy the socket, and the count drops once. Node then keeps the
 * socket's handle open, and the queue unsent, until the primary exits.
 * `rerouteHandoffsOnExit` hands those sockets to live workers or closes
 * them, so each is counted once and no client waits on a dead worker.
 */
export function capListenedConnections(
  server: Server,
  max: number,
  logger: Logger,
  counter: RejectionCounter = connectionsRejected,
): void {
  server.maxConnections = max;
  server.on("drop", rejectionReporter(max, logger, counter));
}

/**
 * Time a connection admitted into the reserve above MAX_CONNECTIONS has
 * to send its request's header, in ms. A health probe or a poll sends its
 * header at once, so this only bounds how long idle connections hold the
 * reserve. It is shorter than the 10 s that other connections get.
 */
export const RESERVE_HEADERS_TIMEOUT_MS = 2000;
/**
 * `Retry-After` of the 503 sent at the cap, in s. NOTE: a hint, not a
 * measured time: it matches the largest reconnection delay of
 * socket.io-client 4 by default, and a balancer may retry elsewhere first.
 */
export const CAP_RETRY_AFTER_S = 5;
/** Paths that a process serves at the cap, for GET and HEAD requests. */
const PROBE_PATHS = new Set(["/healthz", "/readyz", "/metrics"]);

/** Limits on the connections one process keeps open. */
export interface ConnectionCap {
  /** Connections open before new Engine.IO sessions and API requests get 503. */
  max: number;
  /**
   * Connections accepted above `max` only to serve health checks, metrics
   * and requests of Engine.IO sessions that the process has. Connections
   * past `max + reserve` are closed on arrival.
   */
  reserve: number;
}

/**
 * Returns a predicate that is true for the requests a process serves at
 * the cap: a GET or HEAD of `/healthz`, `/readyz` or `/metrics`, or an
 * Engine.IO request (under `engineIoPath`) that carries a `sid`. Those are
 * the polls and the websocket upgrade of a session, not a handshake.
 * Engine.IO answers a `sid` that names no session of this process with
 * `400` itself, so no session is tracked here.
 */
export function servedAtCap(
  engineIoPath: string,
): (request: IncomingMessage) => boolean {
  return (request) => {
    const url = request.url ?? "";
    const queryStart = url.indexOf("?");
    const path = queryStart < 0 ? url : url.slice(0, queryStart);
    if (path.startsWith(engineIoPath)) {
      if (queryStart < 0) return false;
      return new URLSearchParams(url.slice(queryStart + 1)).has("sid");
    }
    const probe = request.method === "GET" || request.method === "HEAD";
    return probe && PROBE_PATHS.has(path);
  };
}

/** Returns the contract's error body of a request rejected at the cap. */
function capErrorBody(max: number): string {
  return JSON.stringify({
    error: toErrorBody(
      new RelayError(
        "UNAVAILABLE",
        `this process has ${max} connections open, its MAX_CONNECTIONS; connect again later or to another process`,
      ),
    ),
  });
}

/** Sends `503 UNAVAILABLE` with `Retry-After` and closes the connection after it. */
function sendUnavailable(response: ServerResponse, max: number): void {
  const body = capErrorBody(max);
  response.writeHead(503, {
    "Content-Type": "application/json; charset=utf-8",
    "Content-Length": Buffer.byteLength(body),
    "Retry-After": String(CAP_RETRY_AFTER_S),
    Connection: "close",
  });
  response.end(body);
}

/** Writes a raw `503 UNAVAILABLE` on an upgrade's `connection`, then closes it. */
function rejectUpgrade(connection: Duplex, max: number): void {
  const body = capErrorBody(max);
  connection.end(
    "HTTP/1.1 503 Service Unavailable\r\n" +
      "Content-Type: application/json; charset=utf-8\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\n` +
      `Retry-After: ${CAP_RETRY_AFTER_S}\r\n` +
      "Connection: close\r\n" +
      "\r\n" +
      body,
    // The server keeps connections half-open, so the end alone would wait
    // for the client to close its side.
    () => connection.destroy(),
  );
}

type Listener = (...args: unknown[]) => void;

/** Replaces the `event` listeners of `server` with one that calls `wrap` with them. */
function wrapListeners(
  server: Server,
  event: "request" | "upgrade",
  wrap: (serve: Listener) => Listener,
): void {
  const listeners = server.listeners(event) as Listener[];
  server.removeAllListeners(event);
  const serve: Listener = (...args) => {
    for (const listener of listeners) listener.apply(server, args);
  };
  server.on(event, wrap(serve));
}

/**
 * Caps the connections of a relay's HTTP server at `cap.max`, with a
 * reserve of `cap.reserve` above it for requests that must not fail when
 * the process is full.
 *
 * A connection that arrives while `max` are open is admitted into the
 * reserve. It gets `RESERVE_HEADERS_TIMEOUT_MS` to send its header, and
 * one request, since its response carries `Connection: close`. A request
 * that `isServedAtCap` accepts is served as usual. Any other request gets
 * `503 UNAVAILABLE` with `Retry-After`, so a new Engine.IO session is
 * rejected with an HTTP response instead of a bare close. A connection
 * that arrives while `max + reserve` are open is closed at once.
 *
 * `listens` is true for a server that accepts its connections itself (the
 * embedded relay). Node then closes the connections past the reserve
 * before the `connection` event, as `server.maxConnections` does. A
 * cluster worker's server gets its connections from the primary instead,
 * and counts them here. Other `connection` listeners still run on a
 * closed connection, but serve nothing: @socket.io/sticky pushes the
 * request's first bytes into it after them, and a destroyed stream drops
 * them.
 *
 * Call this once Socket.IO and every listener that may serve a request or
 * an upgrade are attached: it wraps the `request` and `upgrade`
 * listeners present at the call. Listeners added later run for every
 * request, rejected or not.
 */
export function capRelayConnections(
  server: Server,
  cap: ConnectionCap,
  isServedAtCap: (request: IncomingMessage) => boolean,
  logger: Logger,
  options: { listens: boolean },
): void {
  const rejected = rejectionReporter(cap.max, logger, connectionsRejected);
  const limit = cap.max + cap.reserve;
  if (options.listens) {
    server.maxConnections = limit;
    server.on("drop", rejected);
  }
  /** Connections in the reserve, each with its header timer until its request arrives. */
  const reserved = new WeakMap<Duplex, NodeJS.Timeout | undefined>();
  let open = 0;
  const onClose = function (this: Duplex): void {
    open -= 1;
    clearTimeout(reserved.get(this));
  };
  server.prependListener("connection", (connection: Duplex) => {
    if (open >= limit) {
      connection.destroy();
      rejected();
      return;
    }
    if (open >= cap.max) {
      const timer = setTimeout(
        () => connection.destroy(),
        RESERVE_HEADERS_TIMEOUT_MS,
      );
      timer.unref();
      reserved.set(connection, timer);
    }
    open += 1;
    connection.once("close", onClose);
  });

  /** Returns true when `request` arrived on a reserve connection, and stops its header timer. */
  const inReserve = (request: IncomingMessage): boolean => {
    const connection = request.socket as Duplex;
    if (!reserved.has(connection)) return false;
    clearTimeout(reserved.get(connection));
    reserved.set(connection, undefined);
    return true;
  };
  wrapListeners(server, "request", (serve) => (...args) => {
    const request = args[0] as IncomingMessage;
    const response = args[1] as ServerResponse;
    if (!inReserve(request)) {
      serve(...args);
    } else if (isServedAtCap(request)) {
      // One request per reserve connection, so its slot frees soon.
      response.setHeader("Connection", "close");
      serve(...args);
    } else {
      rejected();
      sendUnavailable(response, cap.max);
    }
  });
  wrapListeners(server, "upgrade", (serve) => (...args) => {
    const request = args[0] as IncomingMessage;
    if (!inReserve(request) || isServedAtCap(request)) {
      serve(...args);
      return;
    }
    rejected();
    rejectUpgrade(args[1] as Duplex, cap.max);
  });
}
