import { readFileSync } from "node:fs";

/** Most descriptors kept free below the process's limit for Redis, files and logs. */
const MAX_RESERVED_DESCRIPTORS = 1000;
/** Share of a small descriptor limit kept free instead, when that is less. */
const RESERVED_SHARE = 0.1;

/**
 * Returns the soft limit on open files from a `/proc/<pid>/limits` text,
 * or undefined when it is missing or unlimited.
 */
export function openFilesLimit(limits: string): number | undefined {
  const line = /^Max open files\s+(\d+)/m.exec(limits);
  if (line?.[1] === undefined) return undefined;
  return Number(line[1]);
}

/**
 * Returns the default of MAX_CONNECTIONS: the process's limit on open
 * files, less a reserve, so that a flood of connections leaves descriptors
 * for Redis reconnects and log files. Node raises its soft limit to the
 * hard one at start (seen with 1,024 and 20,000), and this reads the
 * raised value. Returns undefined
 * where the limit cannot be read (outside Linux): no cap then.
 */
export function defaultMaxConnections(
  limitsFile = "/proc/self/limits",
): number | undefined {
  let text: string;
  try {
    text = readFileSync(limitsFile, "utf8");
  } catch {
    return undefined;
  }
  const limit = openFilesLimit(text);
  if (limit === undefined) return undefined;
  const reserve = Math.min(
    MAX_RESERVED_DESCRIPTORS,
    Math.ceil(limit * RESERVED_SHARE),
  );
  return Math.max(1, limit - reserve);
}

/** Bounds of the default reserve above MAX_CONNECTIONS, in connections. */
const MIN_CONNECTION_RESERVE = 4;
const MAX_CONNECTION_RESERVE = 100;

/**
 * Returns the default of MAX_CONNECTIONS_RESERVE: 1% of `maxConnections`,
 * at least 4 and at most 100, and 0 without a cap. With the default
 * MAX_CONNECTIONS, it takes about a tenth of the descriptors kept free.
 */
export function defaultConnectionReserve(
  maxConnections: number | undefined,
): number {
  if (maxConnections === undefined) return 0;
  return Math.min(
    MAX_CONNECTION_RESERVE,
    Math.max(MIN_CONNECTION_RESERVE, Math.ceil(maxConnections / 100)),
  );
}
