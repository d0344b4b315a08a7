import { pino, type Logger } from "pino";
import type { RelayConfig } from "./config.ts";

export type { Logger };

/**
 * Paths removed from every log line, so that no token or credential is
 * written even when a whole handshake or request object is logged.
 */
export const REDACTED_PATHS = [
  "token",
  "*.token",
  "auth.token",
  "*.auth.token",
  "handshake.auth",
  "headers.authorization",
  "*.headers.authorization",
  "req.headers.authorization",
  "authorization",
  "*.authorization",
  "headers.cookie",
  "*.headers.cookie",
  "req.headers.cookie",
  "secret",
  "*.secret",
];

/** Creates the process logger: JSON in production, pretty text in development. */
export function createLogger(
  config: Pick<RelayConfig, "logLevel" | "logFormat">,
  bindings: Record<string, unknown> = {},
): Logger {
  const options = {
    level: config.logLevel,
    base: { pid: process.pid, ...bindings },
    redact: { paths: REDACTED_PATHS, censor: "[redacted]" },
  };
  if (config.logFormat === "pretty") {
    return pino({
      ...options,
      transport: {
        target: "pino-pretty",
        options: {
          colorize: true,
          ignore: "hostname",
          translateTime: "SYS:HH:MM:ss.l",
        },
      },
    });
  }
  // Synchronous, because pino's default stream writes in the background
  // and flushes synchronously on exit. sonic-boom 4.2 retries that flush
  // every 100 ms for good once stdout's reader is gone (EPIPE), so the
  // process never exited. A synchronous write fails with EPIPE at once,
  // and pino then drops the logs that follow.
  // NOTE: A reader that stops reading without closing the pipe now blocks
  // the process on its next line once the pipe's buffer is full, where the
  // background stream kept the lines in memory.
  return pino(options, pino.destination({ dest: 1, sync: true }));
}
