/** Options of a RecentAnswers cache. */
export interface RecentAnswersOptions {
  /**
   * Milliseconds an answer is kept after it settles.
   * @default 60000
   */
  ttlMs?: number;
  /**
   * Maximum number of keys kept, pending ones included. A new key beyond
   * it drops the key that was seen first.
   * @default 1000
   */
  maxEntries?: number;
  /** Clock in milliseconds, injectable for tests. */
  now?: () => number;
}

interface Entry<T> {
  answer: Promise<T>;
  /** Time at which the entry is forgotten, or undefined while pending. */
  expiresAt: number | undefined;
}

/**
 * The answers of recently run operations, by key, so that a repeated key
 * gets the first answer instead of running again. A repeat that arrives
 * while the first run is pending gets the same promise. A settled answer,
 * fulfilled or rejected, is kept for `ttlMs`.
 *
 * No timer runs: expired entries are dropped when a key is looked up.
 *
 * @example
 * const answers = new RecentAnswers<Answer>();
 * const answer = await answers.run(command.commandId, () => apply(command));
 */
export class RecentAnswers<T> {
  private readonly entries = new Map<string, Entry<T>>();
  private readonly ttlMs: number;
  private readonly maxEntries: number;
  private readonly now: () => number;

  constructor(options: RecentAnswersOptions = {}) {
    const { ttlMs = 60_000, maxEntries = 1000, now = Date.now } = options;
    if (!Number.isFinite(ttlMs) || ttlMs < 0) {
      throw new RangeError(
        `invalid ttlMs ${ttlMs}: must be a finite number, 0 or more`,
      );
    }
    if (!Number.isInteger(maxEntries) || maxEntries < 1) {
      throw new RangeError(
        `invalid maxEntries ${maxEntries}: must be a whole number, 1 or more`,
      );
    }
    this.ttlMs = ttlMs;
    this.maxEntries = maxEntries;
    this.now = now;
  }

  /** Number of keys kept, including pending ones and expired ones not yet dropped. */
  get size(): number {
    return this.entries.size;
  }

  /**
   * Returns the pending or kept answer of `key`, or else calls `operation`
   * and keeps its answer. An exception thrown by `operation` becomes a
   * rejected answer, which repeats receive too.
   */
  run(key: string, operation: () => T | Promise<T>): Promise<T> {
    const now = this.now();
    this.dropExpired(now);
    const known = this.entries.get(key);
    if (known !== undefined && !this.isExpired(known, now)) return known.answer;
    this.entries.delete(key);

    const answer = new Promise<T>((resolve) => resolve(operation()));
    const entry: Entry<T> = { answer, expiresAt: undefined };
    const startExpiry = (): void => {
      entry.expiresAt = this.now() + this.ttlMs;
    };
    // As the rejection handler, startExpiry also keeps a rejection from
    // counting as unhandled. The caller still receives it through `answer`.
    void answer.then(startExpiry, startExpiry);
    this.add(key, entry);
    return answer;
  }

  /** Forgets every key. Callers already waiting keep their promise. */
  clear(): void {
    this.entries.clear();
  }

  private add(key: string, entry: Entry<T>): void {
    while (this.entries.size >= this.maxEntries) {
      const oldest = this.entries.keys().next();
      if (oldest.done === true) break;
      this.entries.delete(oldest.value);
    }
    this.entries.set(key, entry);
  }

  private isExpired(entry: Entry<T>, now: number): boolean {
    return entry.expiresAt !== undefined && now >= entry.expiresAt;
  }

  /**
   * Drops expired entries from the oldest end, stepping over pending ones,
   * up to the first one that is still kept. Answers usually settle in the
   * order their keys arrived, so this frees nearly all of them. An expired
   * entry behind a kept one stays until its key is looked up or evicted.
   */
  private dropExpired(now: number): void {
    for (const [key, entry] of this.entries) {
      if (entry.expiresAt === undefined) continue;
      if (now < entry.expiresAt) break;
      this.entries.delete(key);
    }
  }
}
