import os from "node:os";
import { z } from "zod";
import { parsePublicKey } from "./auth/public-key.ts";
import {
  defaultConnectionReserve,
  defaultMaxConnections,
} from "./cluster/open-files-limit.ts";
import {
  DEFAULT_LINGER_MAX_BYTES,
  DEFAULT_LINGER_TIMEOUT_MS,
  type LingerLimits,
} from "./http/lingering-close.ts";

/** Minimum length of an HS256 secret, in AUTH_SECRET or the secret file, in characters. */
export const MIN_SECRET_LENGTH = 32;

/**
 * Relay configuration, read once from environment variables at start.
 * Every variable is documented in the README's configuration table.
 */

const wholeNumber = (name: string) =>
  z
    .string()
    .trim()
    .regex(/^\d+$/, `${name} must be a whole number of decimal digits`)
    .transform(Number);

const positiveInt = (
  name: string,
  fallback: number,
  max = Number.MAX_SAFE_INTEGER,
) =>
  wholeNumber(name)
    .pipe(
      z
        .number()
        .positive(`${name} must be greater than 0`)
        .max(max, `${name} must be at most ${max}`),
    )
    .default(fallback);

/** Highest MAX_PAYLOAD_BYTES: the transport buffers twice the limit per message. */
const MAX_PAYLOAD_LIMIT = 64 * 1024 * 1024;
/**
 * Highest duration setting, one day in ms. Node runs a timer of 2^31 ms
 * or more after 1 ms instead, so a larger value would turn a timeout
 * into an immediate one.
 */
const MAX_DURATION_MS = 86_400_000;
/** Highest WORKERS: more processes than this on one machine is a typo, not a plan. */
const MAX_WORKERS = 256;
/**
 * Lowest APP_MAX_BUFFERED_BYTES. One full bridge state of 150 lights is up
 * to about 55 KB of JSON, and a backlog of one such event is normal.
 */
const MIN_APP_BUFFERED_BYTES = 64 * 1024;

const optionalText = z
  .string()
  .optional()
  .transform((value) =>
    value === undefined || value.trim() === "" ? undefined : value,
  );

/** An example value of REDIS_CLUSTER_NODES, for error messages. */
const CLUSTER_NODES_EXAMPLE = "redis://10.0.0.5:6379,redis://10.0.0.6:6379";

/**
 * Returns what is wrong with entry `position` (from 1) of
 * REDIS_CLUSTER_NODES, or undefined when it is a valid redis:// URL. The
 * message names the entry by position rather than by its text, which may
 * contain a password.
 */
function clusterNodeProblem(
  entry: string,
  position: number,
): string | undefined {
  const name = `REDIS_CLUSTER_NODES entry ${position}`;
  if (entry === "")
    return `${name} is empty: separate the URLs by single commas, such as ${CLUSTER_NODES_EXAMPLE}`;
  let url: URL;
  try {
    url = new URL(entry);
  } catch {
    return `${name} is not a URL: expected one such as redis://10.0.0.5:6379`;
  }
  if (!["redis:", "rediss:"].includes(url.protocol) || url.hostname === "")
    return `${name} must be a redis:// or rediss:// URL with a host, such as redis://10.0.0.5:6379`;
  if (url.pathname !== "" && url.pathname !== "/" && url.pathname !== "/0")
    return `${name} names a database (${url.pathname}), but Redis Cluster has database 0 only: remove the path`;
  if (!credentialsDecode(url))
    return `${name} has an invalid percent-encoding in its user name or password: write % as %25`;
  return undefined;
}

/**
 * Returns whether the user name and password of `url` decode: a `%` not
 * followed by two hex digits makes the Redis client throw `URIError`.
 */
function credentialsDecode(url: URL): boolean {
  try {
    decodeURIComponent(url.username);
    decodeURIComponent(url.password);
    return true;
  } catch {
    return false;
  }
}

/** Returns the user name and password of a URL, for comparing entries. */
function credentialsOf(entry: string): string {
  const { username, password } = new URL(entry);
  return `${username}:${password}`;
}

const clusterNodeUrls = z
  .string()
  .transform((value) => value.split(",").map((entry) => entry.trim()))
  .superRefine((entries, context) => {
    const problems = entries
      .map((entry, index) => clusterNodeProblem(entry, index + 1))
      .filter((problem) => problem !== undefined);
    for (const message of problems)
      context.addIssue({ code: "custom", message });
    if (problems.length > 0) return;
    if (new Set(entries.map((entry) => new URL(entry).protocol)).size > 1) {
      context.addIssue({
        code: "custom",
        message:
          "REDIS_CLUSTER_NODES entries must all use redis:// or all rediss://, because the relay connects to every cluster node the same way",
      });
    }
    if (new Set(entries.map(credentialsOf)).size > 1) {
      context.addIssue({
        code: "custom",
        message:
          "REDIS_CLUSTER_NODES entries must all carry the same user name and password, because the relay uses one set for every cluster node",
      });
    }
  })
  .transform((entries) => entries as [string, ...string[]]);

const envSchema = z.object({
  NODE_ENV: z.string().default("development"),
  PORT: wholeNumber("PORT")
    .pipe(z.number().max(65535, "PORT must be between 0 and 65535"))
    .default(8080),
  HOST: z.string().min(1).default("0.0.0.0"),
  WORKERS: positiveInt("WORKERS", os.availableParallelism(), MAX_WORKERS),
  REDIS_URL: optionalText.pipe(
    z
      .string()
      .regex(/^rediss?:\/\//, "REDIS_URL must start with redis:// or rediss://")
      .refine(
        (value) => !URL.canParse(value) || credentialsDecode(new URL(value)),
        "REDIS_URL has an invalid percent-encoding in its user name or password: write % as %25",
      )
      .optional(),
  ),
  REDIS_CLUSTER_NODES: optionalText.pipe(clusterNodeUrls.optional()),
  REDIS_KEY_PREFIX: z
    .string()
    .regex(
      /^[A-Za-z0-9_.-]{1,32}$/,
      "REDIS_KEY_PREFIX must be 1-32 of A-Z a-z 0-9 _ . -",
    )
    .default("relay"),
  AUTH_SECRET: optionalText.pipe(
    z
      .string()
      .min(
        MIN_SECRET_LENGTH,
        `AUTH_SECRET must be at least ${MIN_SECRET_LENGTH} characters`,
      )
      .optional(),
  ),
  AUTH_PUBLIC_KEY: optionalText
    .transform((pem) => pem?.replace(/\\n/g, "\n"))
    .superRefine((pem, context) => {
      if (pem === undefined) return;
      try {
        parsePublicKey(pem);
      } catch (error) {
        context.addIssue({ code: "custom", message: (error as Error).message });
      }
    }),
  AUTH_ISSUER: optionalText,
  AUTH_AUDIENCE: optionalText,
  AUTH_SECRET_FILE: z.string().min(1).default(".data/auth-secret"),
  COMMAND_TIMEOUT_MS: positiveInt("COMMAND_TIMEOUT_MS", 5000, MAX_DURATION_MS),
  REDIS_COMMAND_TIMEOUT_MS: positiveInt(
    "REDIS_COMMAND_TIMEOUT_MS",
    1000,
    MAX_DURATION_MS,
  ),
  PRESENCE_HEARTBEAT_MS: positiveInt(
    "PRESENCE_HEARTBEAT_MS",
    5000,
    MAX_DURATION_MS,
  ).pipe(z.number().min(100, "PRESENCE_HEARTBEAT_MS must be at least 100")),
  MAX_PAYLOAD_BYTES: positiveInt(
    "MAX_PAYLOAD_BYTES",
    1024 * 1024,
    MAX_PAYLOAD_LIMIT,
  ),
  HANDSHAKES_PER_ADDRESS_PER_MINUTE: positiveInt(
    "HANDSHAKES_PER_ADDRESS_PER_MINUTE",
    1200,
  ),
  HANDSHAKES_PER_IDENTITY_PER_MINUTE: positiveInt(
    "HANDSHAKES_PER_IDENTITY_PER_MINUTE",
    30,
  ),
  HANDSHAKES_PER_WORKER_PER_SECOND: positiveInt(
    "HANDSHAKES_PER_WORKER_PER_SECOND",
    200,
  ),
  APP_MAX_BUFFERED_BYTES: positiveInt(
    "APP_MAX_BUFFERED_BYTES",
    1024 * 1024,
  ).pipe(
    z
      .number()
      .min(
        MIN_APP_BUFFERED_BYTES,
        `APP_MAX_BUFFERED_BYTES must be at least ${MIN_APP_BUFFERED_BYTES}`,
      ),
  ),
  REQUESTS_PER_SOCKET_PER_10S: positiveInt("REQUESTS_PER_SOCKET_PER_10S", 300),
  UNANSWERED_COMMANDS_PER_BRIDGE: positiveInt(
    "UNANSWERED_COMMANDS_PER_BRIDGE",
    256,
  ),
  WORKER_UNRESPONSIVE_MS: positiveInt(
    "WORKER_UNRESPONSIVE_MS",
    5000,
    MAX_DURATION_MS,
  ).pipe(z.number().min(100, "WORKER_UNRESPONSIVE_MS must be at least 100")),
  STARTUP_WAIT_LOG_INTERVAL_MS: positiveInt(
    "STARTUP_WAIT_LOG_INTERVAL_MS",
    10_000,
    MAX_DURATION_MS,
  ).pipe(
    z.number().min(100, "STARTUP_WAIT_LOG_INTERVAL_MS must be at least 100"),
  ),
  REQUEST_BODY_TIMEOUT_MS: positiveInt(
    "REQUEST_BODY_TIMEOUT_MS",
    30000,
    MAX_DURATION_MS,
  ).pipe(z.number().min(100, "REQUEST_BODY_TIMEOUT_MS must be at least 100")),
  LINGER_TIMEOUT_MS: positiveInt(
    "LINGER_TIMEOUT_MS",
    DEFAULT_LINGER_TIMEOUT_MS,
    MAX_DURATION_MS,
  ),
  LINGER_MAX_BYTES: positiveInt("LINGER_MAX_BYTES", DEFAULT_LINGER_MAX_BYTES),
  MAX_CONNECTIONS: wholeNumber("MAX_CONNECTIONS")
    .pipe(z.number().positive("MAX_CONNECTIONS must be greater than 0"))
    .optional(),
  MAX_CONNECTIONS_RESERVE: wholeNumber("MAX_CONNECTIONS_RESERVE").optional(),
  SHUTDOWN_TIMEOUT_MS: positiveInt(
    "SHUTDOWN_TIMEOUT_MS",
    10000,
    MAX_DURATION_MS,
  ),
  DRAIN_WINDOW_MS: wholeNumber("DRAIN_WINDOW_MS").optional(),
  RESTART_SURGE: wholeNumber("RESTART_SURGE")
    .pipe(z.number().positive("RESTART_SURGE must be greater than 0"))
    .optional(),
  LOG_LEVEL: z
    .enum(["fatal", "error", "warn", "info", "debug", "trace", "silent"], {
      error:
        "LOG_LEVEL must be one of fatal, error, warn, info, debug, trace, silent",
    })
    .default("info"),
  LOG_FORMAT: z
    .enum(["json", "pretty"], { error: "LOG_FORMAT must be json or pretty" })
    .optional(),
});

export type Env = z.output<typeof envSchema>;

/** The Redis that the relay processes share state through. */
export type RedisTarget =
  /** One Redis server, from REDIS_URL. */
  | { kind: "standalone"; url: string }
  /**
   * A Redis Cluster, from REDIS_CLUSTER_NODES: URLs of some of its nodes,
   * from which the client reads the whole topology.
   */
  | { kind: "cluster"; nodeUrls: [string, ...string[]] };

export interface RelayConfig {
  production: boolean;
  port: number;
  host: string;
  workers: number;
  /**
   * Replacement workers a rolling restart starts at a time, each batch
   * draining as many old workers before the next starts. Unset: all at once.
   */
  restartSurge: number | undefined;
  /** Unset in embedded mode: one process, state in memory. */
  redis: RedisTarget | undefined;
  redisKeyPrefix: string;
  auth: {
    secret: string | undefined;
    publicKeyPem: string | undefined;
    issuer: string | undefined;
    audience: string | undefined;
    secretFile: string;
  };
  commandTimeoutMs: number;
  /** Time Redis has to reply to one command, in ms, before it fails. */
  redisCommandTimeoutMs: number;
  /** Presence heartbeat: leases are renewed twice per heartbeat and a dead process's bridges are offline within two. */
  presenceHeartbeatMs: number;
  maxPayloadBytes: number;
  limits: {
    handshakesPerAddressPerMinute: number;
    handshakesPerIdentityPerMinute: number;
    /** Handshakes one process admits per second, checked before any other work. */
    handshakesPerWorkerPerSecond: number;
    requestsPerSocketPer10s: number;
    /** Commands one bridge connection may leave unanswered before more are refused. */
    unansweredCommandsPerBridge: number;
    /** Bytes waiting to be sent to one app connection before the relay closes it. */
    appMaxBufferedBytes: number;
  };
  /** Time a worker may leave the primary's ping unanswered before it gets no new connections. */
  workerUnresponsiveMs: number;
  /**
   * Interval of the warnings logged while a worker waits for Redis at
   * start and while the primary has no ready worker, in ms.
   */
  startupWaitLogIntervalMs: number;
  /** Time an HTTP request may take to send its body after its header, in ms. */
  requestBodyTimeoutMs: number;
  /** Bounds of the lingering close of an HTTP connection the relay ended while the client still sends. */
  linger: LingerLimits;
  /**
   * Connections one process keeps open before it closes new ones on
   * arrival. Unset where the limit on open files cannot be read or is
   * unlimited: no cap.
   */
  maxConnections: number | undefined;
  /**
   * Connections a relay process accepts above `maxConnections`, only to
   * serve health checks, metrics and requests of its Engine.IO sessions.
   */
  connectionReserve: number;
  shutdownTimeoutMs: number;
  /** Time over which a draining process spreads the closing of its connections, in ms. */
  drainWindowMs: number;
  logLevel: Env["LOG_LEVEL"];
  logFormat: "json" | "pretty";
}

/** Thrown with every invalid variable listed, one per line. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** Drops unset and blank variables, so that `PORT=` means the default rather than 0. */
function withoutBlanks(env: NodeJS.ProcessEnv): Record<string, string> {
  const entries = Object.entries(env).filter(
    (entry): entry is [string, string] =>
      entry[1] !== undefined && entry[1].trim() !== "",
  );
  return Object.fromEntries(entries);
}

/** DRAIN_WINDOW_MS when unset, unless half of SHUTDOWN_TIMEOUT_MS is less. */
const DEFAULT_DRAIN_WINDOW_MS = 3000;

/**
 * Returns the drain window: `value`, or the default when unset. Throws a
 * ConfigError unless the window ends before the shutdown deadline, because
 * connections still open at the deadline are cut.
 */
function drainWindow(
  value: number | undefined,
  shutdownTimeoutMs: number,
): number {
  if (value === undefined)
    return Math.min(DEFAULT_DRAIN_WINDOW_MS, Math.floor(shutdownTimeoutMs / 2));
  if (value >= shutdownTimeoutMs) {
    throw new ConfigError(
      `invalid configuration:\n  DRAIN_WINDOW_MS: ${value} must be less than SHUTDOWN_TIMEOUT_MS (${shutdownTimeoutMs}), ` +
        "because connections still open at the shutdown deadline are cut. Lower DRAIN_WINDOW_MS or raise SHUTDOWN_TIMEOUT_MS",
    );
  }
  return value;
}

/** Returns the Redis that `parsed` names. Throws a ConfigError when it names two. */
function redisTarget(parsed: Env): RedisTarget | undefined {
  if (
    parsed.REDIS_URL !== undefined &&
    parsed.REDIS_CLUSTER_NODES !== undefined
  ) {
    throw new ConfigError(
      "invalid configuration:\n  REDIS_CLUSTER_NODES: REDIS_URL is set as well. Set REDIS_URL for one Redis server or REDIS_CLUSTER_NODES for a Redis Cluster, not both",
    );
  }
  if (parsed.REDIS_URL !== undefined)
    return { kind: "standalone", url: parsed.REDIS_URL };
  if (parsed.REDIS_CLUSTER_NODES !== undefined)
    return { kind: "cluster", nodeUrls: parsed.REDIS_CLUSTER_NODES };
  return undefined;
}

/** Parses and validates the relay's configuration from `env`. */
export function loadConfig(env: NodeJS.ProcessEnv = process.env): RelayConfig {
  const result = envSchema.safeParse(withoutBlanks(env));
  if (!result.success) {
    const lines = result.error.issues.map(
      (issue) => `  ${issue.path.join(".")}: ${issue.message}`,
    );
    throw new ConfigError(`invalid configuration:\n${lines.join("\n")}`);
  }
  const parsed = result.data;
  const production = parsed.NODE_ENV === "production";
  const maxConnections = parsed.MAX_CONNECTIONS ?? defaultMaxConnections();
  if (production && !parsed.AUTH_SECRET && !parsed.AUTH_PUBLIC_KEY) {
    throw new ConfigError(
      "invalid configuration:\n  AUTH_SECRET or AUTH_PUBLIC_KEY must be set when NODE_ENV=production",
    );
  }
  return {
    production,
    port: parsed.PORT,
    host: parsed.HOST,
    workers: parsed.WORKERS,
    restartSurge: parsed.RESTART_SURGE,
    redis: redisTarget(parsed),
    redisKeyPrefix: parsed.REDIS_KEY_PREFIX,
    auth: {
      secret: parsed.AUTH_SECRET,
      publicKeyPem: parsed.AUTH_PUBLIC_KEY,
      issuer: parsed.AUTH_ISSUER,
      audience: parsed.AUTH_AUDIENCE,
      secretFile: parsed.AUTH_SECRET_FILE,
    },
    commandTimeoutMs: parsed.COMMAND_TIMEOUT_MS,
    redisCommandTimeoutMs: parsed.REDIS_COMMAND_TIMEOUT_MS,
    presenceHeartbeatMs: parsed.PRESENCE_HEARTBEAT_MS,
    maxPayloadBytes: parsed.MAX_PAYLOAD_BYTES,
    limits: {
      handshakesPerAddressPerMinute: parsed.HANDSHAKES_PER_ADDRESS_PER_MINUTE,
      handshakesPerIdentityPerMinute: parsed.HANDSHAKES_PER_IDENTITY_PER_MINUTE,
      handshakesPerWorkerPerSecond: parsed.HANDSHAKES_PER_WORKER_PER_SECOND,
      requestsPerSocketPer10s: parsed.REQUESTS_PER_SOCKET_PER_10S,
      unansweredCommandsPerBridge: parsed.UNANSWERED_COMMANDS_PER_BRIDGE,
      appMaxBufferedBytes: parsed.APP_MAX_BUFFERED_BYTES,
    },
    workerUnresponsiveMs: parsed.WORKER_UNRESPONSIVE_MS,
    startupWaitLogIntervalMs: parsed.STARTUP_WAIT_LOG_INTERVAL_MS,
    requestBodyTimeoutMs: parsed.REQUEST_BODY_TIMEOUT_MS,
    linger: {
      timeoutMs: parsed.LINGER_TIMEOUT_MS,
      maxBytes: parsed.LINGER_MAX_BYTES,
    },
    maxConnections,
    connectionReserve:
      parsed.MAX_CONNECTIONS_RESERVE ??
      defaultConnectionReserve(maxConnections),
    shutdownTimeoutMs: parsed.SHUTDOWN_TIMEOUT_MS,
    drainWindowMs: drainWindow(
      parsed.DRAIN_WINDOW_MS,
      parsed.SHUTDOWN_TIMEOUT_MS,
    ),
    logLevel: parsed.LOG_LEVEL,
    logFormat: parsed.LOG_FORMAT ?? (production ? "json" : "pretty"),
  };
}
