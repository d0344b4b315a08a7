import { RelayError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { StateStore } from "./store.ts";

/**
 * Wraps a store so that any failure of its backend (Redis down, command
 * rejected while reconnecting) reaches callers as `UNAVAILABLE`, which the
 * contract marks safe to retry. The first failure in each `windowMs` is
 * logged with its error, and the rest of the window's failures are counted
 * in one line when it ends.
 */
export function guardStore(
  store: StateStore,
  logger: Logger,
  windowMs = 1000,
): StateStore {
  let windowStart = -Infinity;
  let suppressed: Record<string, number> = {};
  let summary: NodeJS.Timeout | undefined;

  const reportSuppressed = (): void => {
    clearTimeout(summary);
    summary = undefined;
    const count = Object.values(suppressed).reduce((sum, n) => sum + n, 0);
    logger.error(
      { suppressed: count, methods: suppressed },
      "state store requests failed after the one logged",
    );
    suppressed = {};
  };

  /** Logs the count of a window cut short by `close()`. */
  const reportBeforeClose = (): void => {
    if (summary !== undefined) reportSuppressed();
  };

  const report = (method: string, error: unknown): void => {
    const now = Date.now();
    if (now - windowStart >= windowMs) {
      logger.error({ err: error, method }, "state store request failed");
      windowStart = now;
      return;
    }
    suppressed[method] = (suppressed[method] ?? 0) + 1;
    summary ??= setTimeout(reportSuppressed, windowStart + windowMs - now);
    summary.unref();
  };

  return new Proxy(store, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (typeof value !== "function") return value;
      if (property === "close") {
        return (...args: unknown[]) => {
          reportBeforeClose();
          return (value as (...a: unknown[]) => unknown).apply(target, args);
        };
      }
      return async (...args: unknown[]) => {
        try {
          return await (value as (...a: unknown[]) => Promise<unknown>).apply(
            target,
            args,
          );
        } catch (error) {
          if (error instanceof RelayError) throw error;
          report(String(property), error);
          throw new RelayError(
            "UNAVAILABLE",
            "state store is unavailable, retry later",
          );
        }
      };
    },
  });
}
