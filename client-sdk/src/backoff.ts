/**
 * Reconnect delays: exponential backoff with full jitter, so that a fleet
 * of clients cut off at the same moment does not retry in lockstep.
 */

/** Bounds of a retry delay. */
export interface BackoffOptions {
  /**
   * Minimum delay, in milliseconds.
   * @default 1000
   */
  minDelayMs: number;
  /**
   * Maximum delay, in milliseconds.
   * @default 30000
   */
  maxDelayMs: number;
}

/** Delay bounds used when a client is given none. */
export const DEFAULT_BACKOFF: Readonly<BackoffOptions> = {
  minDelayMs: 1000,
  maxDelayMs: 30_000,
};

/**
 * Throws a RangeError unless `options` has `0 < minDelayMs <= maxDelayMs`,
 * both finite. A zero minimum would make every delay zero.
 */
export function validateBackoff(options: BackoffOptions): BackoffOptions {
  const { minDelayMs, maxDelayMs } = options;
  if (!Number.isFinite(minDelayMs) || minDelayMs <= 0) {
    throw new RangeError(
      `invalid minDelayMs ${minDelayMs}: must be a finite number above 0`,
    );
  }
  if (!Number.isFinite(maxDelayMs) || maxDelayMs < minDelayMs) {
    throw new RangeError(
      `invalid maxDelayMs ${maxDelayMs}: must be finite and at least minDelayMs (${minDelayMs})`,
    );
  }
  return { minDelayMs, maxDelayMs };
}

/**
 * Returns the delay before retry number `attempt`: a uniform random value in
 * `[minDelayMs, min(maxDelayMs, minDelayMs * 2^attempt)]`.
 *
 * @param attempt - 0 or more. The clients pass 1 for the first retry, so
 *   even the first wave of a fleet is spread over `[min, 2 * min]`.
 * @param random - returns a number in `[0, 1)`; injectable for tests.
 * @example
 * backoffDelay(3, { minDelayMs: 1000, maxDelayMs: 30000 }); // 1000 to 8000
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions,
  random: () => number = Math.random,
): number {
  if (!Number.isInteger(attempt) || attempt < 0) {
    throw new RangeError(
      `invalid attempt ${attempt}: must be a whole number, 0 or more`,
    );
  }
  const { minDelayMs, maxDelayMs } = validateBackoff(options);
  // 2 ** attempt becomes Infinity for large attempts, and Math.min caps it.
  const ceiling = Math.min(maxDelayMs, minDelayMs * 2 ** attempt);
  return minDelayMs + random() * (ceiling - minDelayMs);
}
