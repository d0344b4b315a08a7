/**
 * A lock directory that lets one process at a time build into a folder.
 * Creating a directory is atomic, so of several processes calling
 * `mkdir` on the same path, exactly one succeeds.
 */
import {
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";

/** Age in ms after which a lock counts as left behind by a crashed build. */
export const STALE_LOCK_MS = 120_000;
/** Interval in ms at which a waiting process checks the lock again. */
const POLL_MS = 100;
/** File inside the lock directory naming the process that holds it. */
const OWNER_FILE = "owner";

/** Creates the lock directory `lock`, returning false when another process holds it. */
export function tryLock(lock: string): boolean {
  try {
    mkdirSync(lock);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "EEXIST") return false;
    throw error;
  }
  writeFileSync(
    join(lock, OWNER_FILE),
    `pid ${process.pid}, since ${new Date().toISOString()}\n`,
  );
  return true;
}

/** Removes the lock directory `lock` that this process holds. */
export function unlock(lock: string): void {
  rmSync(lock, { recursive: true, force: true });
}

/**
 * Removes `lock` when it is older than STALE_LOCK_MS and returns true if it
 * did, or when the lock is already gone. Returns false while the lock is live.
 */
export function removeStaleLock(lock: string): boolean {
  const age = lockAgeMs(lock);
  if (age === undefined) return true;
  if (age <= STALE_LOCK_MS) return false;
  console.error(
    `taking over the build lock ${lock} (${describeOwner(lock)}), ` +
      `${Math.round(age / 1000)} s old`,
  );
  // Renaming is a single atomic step, so of two processes that both found
  // the lock stale, only one moves it away, and the other gets ENOENT.
  // NOTE: a process that found the lock stale can still move a fresh lock
  // that another process created between this one's stat and rename.
  const moved = `${lock}.stale-${process.pid}-${Date.now()}`;
  try {
    renameSync(lock, moved);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return true;
    throw error;
  }
  rmSync(moved, { recursive: true, force: true });
  return true;
}

/** Returns the age of the lock directory in ms, or undefined when it is missing. */
function lockAgeMs(lock: string): number | undefined {
  try {
    return Date.now() - statSync(lock).mtimeMs;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}

/** Returns the owner line that the locking process wrote, for log messages. */
export function describeOwner(lock: string): string {
  try {
    return readFileSync(join(lock, OWNER_FILE), "utf8").trim();
  } catch {
    return "owner unknown";
  }
}

/** Blocks this thread for POLL_MS, as the callers of ensureCompiled expect a synchronous call. */
export function sleepPollInterval(): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, POLL_MS);
}
