/** A command-line mistake; the tools print it with a pointer to --help. */
export class UsageError extends Error {}

/** Parses `value` of `flag` as a whole number from `min` to `max`, or throws a UsageError. */
export function parseInteger(
  flag: string,
  value: string,
  min: number,
  max: number,
): number {
  const number = /^\d+$/.test(value) ? Number(value) : Number.NaN;
  if (!Number.isSafeInteger(number) || number < min || number > max) {
    throw new UsageError(
      `invalid ${flag} ${JSON.stringify(value)}: expected a whole number from ${min} to ${max}`,
    );
  }
  return number;
}
