import { requestShutdown } from "./cluster/shutdown.ts";
import type { Logger } from "./logger.ts";
import { RepeatLimiter } from "./logging/repeat-limiter.ts";

/** Rate of the "unhandled promise rejection" line, per error message. */
const rejectionLog = new RepeatLimiter(1000);

/**
 * Installs the handlers of errors that escaped every other handler.
 *
 * An unhandled promise rejection is logged at `error`, at most once a
 * second per message with the count left out, and the process goes on:
 * the promise's own work failed, not the process.
 *
 * An uncaught exception leaves the process in an unknown state, so it is
 * logged at `fatal` and the process shuts down as on SIGTERM, but exits
 * with code 1. Its connections drain first, so one failing code path does
 * not cut every client's work in flight. The primary restarts a worker,
 * and PM2 restarts a primary. A second uncaught exception, or one before
 * the shutdown handler is installed, exits at once.
 */
export function installCrashHandlers(logger: Logger): void {
  process.on("unhandledRejection", (reason) => {
    const key = reason instanceof Error ? reason.message : String(reason);
    const suppressed = rejectionLog.admit(key);
    if (suppressed === null) return;
    logger.error({ err: reason, suppressed }, "unhandled promise rejection");
  });

  let crashed = false;
  process.on("uncaughtException", (error) => {
    if (!crashed) {
      crashed = true;
      logger.fatal({ err: error }, "uncaught exception, shutting down");
      if (requestShutdown("uncaught exception", 1)) return;
    } else {
      logger.fatal({ err: error }, "uncaught exception while shutting down");
    }
    logger.flush?.();
    process.exit(1);
  });
}
