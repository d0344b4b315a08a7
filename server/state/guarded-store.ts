import { RelayError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import type { StateStore } from "./store.ts";

/**
 * Wraps a store so that any failure of its backend (Redis down, command
 * rejected while reconnecting) reaches callers as `UNAVAILABLE`, which the
 * contract marks safe to retry. The original error is logged, with repeats
 * counted per second rather than logged one by one.
 */
export function guardStore(store: StateStore, logger: Logger): StateStore {
  let suppressed = 0;
  let windowStart = 0;

  const report = (method: string, error: unknown): void => {
    const now = Date.now();
    if (now - windowStart >= 1000) {
      logger.error(
        { err: error, method, suppressed },
        "state store request failed",
      );
      windowStart = now;
      suppressed = 0;
    } else {
      suppressed += 1;
    }
  };

  return new Proxy(store, {
    get(target, property, receiver) {
      const value = Reflect.get(target, property, receiver) as unknown;
      if (typeof value !== "function" || property === "close") return value;
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
