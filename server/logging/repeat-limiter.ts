/**
 * Lets the first event of each key through per time window and counts the
 * rest. A client retrying a bad token in a loop then produces one log line
 * per window, with the count of the lines left out.
 */
export class RepeatLimiter {
  private readonly windows = new Map<
    string,
    { start: number; suppressed: number }
  >();

  constructor(private readonly windowMs: number) {}

  /**
   * Returns the number of events of `key` suppressed since the last one let
   * through, or null when this one should be suppressed too.
   */
  admit(key: string, now = Date.now()): number | null {
    const window = this.windows.get(key);
    if (window !== undefined && now - window.start < this.windowMs) {
      window.suppressed += 1;
      return null;
    }
    const suppressed = window?.suppressed ?? 0;
    this.windows.set(key, { start: now, suppressed: 0 });
    return suppressed;
  }
}
