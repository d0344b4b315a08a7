/** Units of a relative time, largest first, with their length in seconds. */
const UNITS: [Intl.RelativeTimeFormatUnit, number][] = [
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["week", 7 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
  ["second", 1],
];

/** Differences below this many seconds read "just now". */
const JUST_NOW_SECONDS = 10;

/**
 * Formats an ISO 8601 time relative to `nowMs`, such as "5 minutes ago",
 * in `locale` (the browser's language when undefined). Returns the input
 * unchanged when it is not a valid time.
 */
export function formatRelativeTime(
  iso: string,
  nowMs: number,
  locale?: string,
): string {
  const timeMs = Date.parse(iso);
  if (Number.isNaN(timeMs)) return iso;
  const seconds = (timeMs - nowMs) / 1000;
  if (Math.abs(seconds) < JUST_NOW_SECONDS) return "just now";
  const format = new Intl.RelativeTimeFormat(locale, { numeric: "auto" });
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size || unit === "second") {
      return format.format(Math.round(seconds / size), unit);
    }
  }
  return iso;
}
