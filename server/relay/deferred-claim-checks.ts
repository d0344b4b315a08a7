/** A check of a bridge claim that another server requested and that could not run yet. */
export interface DeferredClaimCheck {
  bridgeId: string;
  /** Socket of this process that the claim names. */
  socketId: string;
  /** Server and socket of the session that found the claim. */
  requester: { serverId: string; socketId: string };
  /** True when the requester takes the claim over itself (see the `checkClaim` bus message). */
  takeOver: boolean;
}

/** Outcome of `DeferredClaimChecks.add`. */
export type DeferResult = "added" | "replaced" | "full";

/**
 * Claim checks kept until this process's Redis connection is back, at
 * most one per bridge (the latest request). The requesting server sends
 * its check again every second until the claim is resolved, so a check
 * that is dropped here, because the queue is full or the check is older
 * than `maxAgeMs`, only waits for that next request. The bounds cap the
 * memory that an outage can take.
 */
export class DeferredClaimChecks {
  /** Checks in the order of their latest request, so that the oldest come first. */
  private readonly checks = new Map<
    string,
    { check: DeferredClaimCheck; deferredAt: number }
  >();

  constructor(
    private readonly maxChecks: number,
    private readonly maxAgeMs: number,
  ) {}

  get size(): number {
    return this.checks.size;
  }

  /**
   * Stores `check`, replacing an earlier check of its bridge. When the
   * queue is full after the expired checks are dropped, `check` is not
   * stored and the result is "full".
   */
  add(check: DeferredClaimCheck, now = Date.now()): DeferResult {
    const replaced = this.checks.delete(check.bridgeId);
    this.dropExpired(now);
    if (this.checks.size >= this.maxChecks) return "full";
    this.checks.set(check.bridgeId, { check, deferredAt: now });
    return replaced ? "replaced" : "added";
  }

  /** Removes every check and returns those not older than `maxAgeMs`, oldest first. */
  takeAll(now = Date.now()): DeferredClaimCheck[] {
    this.dropExpired(now);
    const checks = [...this.checks.values()].map(({ check }) => check);
    this.checks.clear();
    return checks;
  }

  private dropExpired(now: number): void {
    for (const [bridgeId, { deferredAt }] of this.checks) {
      if (now - deferredAt <= this.maxAgeMs) return;
      this.checks.delete(bridgeId);
    }
  }
}
