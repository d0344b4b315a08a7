import type { BridgePresence } from "./protocol.ts";

/** Presence of one bridge as last delivered. */
interface DeliveredPresence {
  epoch: number;
  online: boolean;
}

/**
 * Presence events of a bridge come from whichever server claims or
 * releases it, so two of them can arrive in the wrong order. This keeps
 * the last presence delivered per bridge and drops the two stale cases
 * that the epoch identifies:
 * - an offline event of an older connection while a newer one is online,
 * - an online event of a connection already reported offline.
 *
 * Anything else is delivered, also a lower epoch that comes online: Redis
 * that lost its data starts the count again at 1.
 */
export class PresenceOrder {
  private readonly delivered = new Map<string, DeliveredPresence>();

  /**
   * Returns true when `event` should be delivered, and records it. An
   * event without an epoch, as from an older relay, is always delivered.
   */
  accept(event: BridgePresence): boolean {
    if (!Number.isSafeInteger(event.epoch)) return true;
    const last = this.delivered.get(event.bridgeId);
    if (last !== undefined && isStale(event, last)) return false;
    this.record(event);
    return true;
  }

  /** Records presence that the relay acknowledged, such as a subscribe's state. */
  record(presence: BridgePresence): void {
    if (!Number.isSafeInteger(presence.epoch)) {
      this.delivered.delete(presence.bridgeId);
      return;
    }
    this.delivered.set(presence.bridgeId, {
      epoch: presence.epoch,
      online: presence.online,
    });
  }

  forget(bridgeId: string): void {
    this.delivered.delete(bridgeId);
  }

  clear(): void {
    this.delivered.clear();
  }
}

function isStale(event: BridgePresence, last: DeliveredPresence): boolean {
  if (event.online) return !last.online && event.epoch === last.epoch;
  return last.online && event.epoch < last.epoch;
}
