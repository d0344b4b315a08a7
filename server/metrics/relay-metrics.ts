import {
  Counter,
  Gauge,
  Histogram,
  Registry,
  collectDefaultMetrics,
} from "prom-client";
import { RelayError } from "../errors.ts";

/**
 * The relay process's Prometheus metrics. Every worker and the embedded
 * relay fill this registry. In a cluster the primary sums the workers'
 * registries by metric name and labels, so no label names a worker, and
 * each metric reads as a figure for the whole machine.
 * docs/operations.md lists every metric with its labels.
 */
export const relayRegistry = new Registry();

collectDefaultMetrics({ register: relayRegistry });

/** Latency buckets in seconds, from a same-worker round trip to the default command timeout. */
const COMMAND_BUCKETS = [
  0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];

/** Sources of the connection gauges: one per relay built in this process. */
interface ConnectionSource {
  bridges: () => number;
  apps: () => number;
}
const connectionSources = new Set<ConnectionSource>();

const sumOf = (read: (source: ConnectionSource) => number): number => {
  let total = 0;
  for (const source of connectionSources) total += read(source);
  return total;
};

new Gauge({
  name: "relay_bridges_connected",
  help: "Bridges whose connection this process holds and has claimed.",
  registers: [relayRegistry],
  collect() {
    this.set(sumOf((source) => source.bridges()));
  },
});

new Gauge({
  name: "relay_apps_connected",
  help: "App sockets connected to the /app namespace of this process.",
  registers: [relayRegistry],
  collect() {
    this.set(sumOf((source) => source.apps()));
  },
});

/** Adds a relay's connections to the gauges; returns a function that removes them. */
export function trackConnections(source: ConnectionSource): () => void {
  connectionSources.add(source);
  return () => connectionSources.delete(source);
}

/** Returns the outcome label of a failed request: the contract's error code, or `INTERNAL`. */
export function outcomeOf(error: unknown): string {
  return error instanceof RelayError ? error.code : "INTERNAL";
}

export const handshakes = new Counter({
  name: "relay_handshakes_total",
  help: "Socket.IO handshakes by namespace and outcome (accepted, or the rejection's error code).",
  labelNames: ["namespace", "outcome"] as const,
  registers: [relayRegistry],
});

export const socketRequests = new Counter({
  name: "relay_socket_requests_total",
  help: "Socket.IO request events acknowledged, by event and outcome (ok, or the error code).",
  labelNames: ["event", "outcome"] as const,
  registers: [relayRegistry],
});

export const socketFloodDisconnects = new Counter({
  name: "relay_socket_flood_disconnects_total",
  help: "Connections closed for sending more events in 10 s than FLOOD_FACTOR times REQUESTS_PER_SOCKET_PER_10S, by namespace.",
  labelNames: ["namespace"] as const,
  registers: [relayRegistry],
});

export const requestsInFlightRejected = new Counter({
  name: "relay_requests_in_flight_rejected_total",
  help: "Requests rejected with RATE_LIMITED on arrival because their connection had too many requests, or payload bytes, not yet acknowledged, by namespace.",
  labelNames: ["namespace"] as const,
  registers: [relayRegistry],
});

const commands = new Counter({
  name: "relay_commands_total",
  help: "light:set commands that passed validation, grants and rate limits, by outcome (ok, or the error code).",
  labelNames: ["outcome"] as const,
  registers: [relayRegistry],
});

const commandDuration = new Histogram({
  name: "relay_command_duration_seconds",
  help: "Time from a validated light:set command to its result, in seconds, by outcome.",
  labelNames: ["outcome"] as const,
  buckets: COMMAND_BUCKETS,
  registers: [relayRegistry],
});

/** Runs a command and records its outcome and duration. */
export async function observeCommand<T>(run: () => Promise<T>): Promise<T> {
  const stopTimer = commandDuration.startTimer();
  let outcome = "ok";
  try {
    return await run();
  } catch (error) {
    outcome = outcomeOf(error);
    throw error;
  } finally {
    stopTimer({ outcome });
    commands.inc({ outcome });
  }
}

export const stateWrites = new Counter({
  name: "relay_state_writes_total",
  help: "State writes sent to the store, by kind (snapshot, change) and result (written, fenced, conflict).",
  labelNames: ["kind", "result"] as const,
  registers: [relayRegistry],
});

export const broadcasts = new Counter({
  name: "relay_broadcasts_total",
  help: "Events broadcast to the apps subscribed to a bridge, by event.",
  labelNames: ["event"] as const,
  registers: [relayRegistry],
});

export const redisErrors = new Counter({
  name: "relay_redis_errors_total",
  help: "Errors reported by a Redis client connection, by client role (main, subscriber).",
  labelNames: ["role"] as const,
  registers: [relayRegistry],
});

export const redisReconnects = new Counter({
  name: "relay_redis_reconnects_total",
  help: "Reconnection attempts of a Redis client connection, by client role.",
  labelNames: ["role"] as const,
  registers: [relayRegistry],
});

export const httpRequests = new Counter({
  name: "relay_http_requests_total",
  help: "HTTP requests completed, by method, route pattern and status code.",
  labelNames: ["method", "route", "status"] as const,
  registers: [relayRegistry],
});

export const httpDuration = new Histogram({
  name: "relay_http_request_duration_seconds",
  help: "Time to respond to an HTTP request, in seconds, by method and route pattern.",
  labelNames: ["method", "route"] as const,
  buckets: COMMAND_BUCKETS,
  registers: [relayRegistry],
});

export const presenceLeaseRenewals = new Counter({
  name: "relay_presence_lease_renewals_total",
  help: "Presence lease renewals by result: renewed, restored (the lease had lapsed), sweeping or failed.",
  labelNames: ["result"] as const,
  registers: [relayRegistry],
});

export const presenceSweptBridges = new Counter({
  name: "relay_presence_swept_bridges_total",
  help: "Bridges released because the lease of the process holding them expired.",
  registers: [relayRegistry],
});
