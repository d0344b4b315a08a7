import type {
  BridgeSnapshotEvent,
  BridgeState,
  LightsChangedEvent,
} from "./protocol.ts";

/** A versioned event of a bridge, tagged with its event name. */
export type VersionedEvent =
  | { name: "lights:changed"; event: LightsChangedEvent }
  | { name: "bridge:snapshot"; event: BridgeSnapshotEvent };

/**
 * Action for a received event: pass it on (`deliver`), keep it until the
 * subscribe in flight is acknowledged (`buffer`), drop it because the bridge
 * is not tracked (`ignore`), or subscribe again after a version gap (`resync`).
 */
export type ReceiveOutcome = "deliver" | "buffer" | "ignore" | "resync";

/**
 * Result of a subscribe acknowledgement. `synced` carries the state with the
 * newer buffered events applied. `untracked` carries the acknowledged state
 * unchanged, because the bridge was forgotten or another round began
 * meanwhile. `gap` means the buffered events skip a version, so the caller
 * must subscribe again.
 */
export type SettleOutcome =
  | { status: "synced"; state: BridgeState }
  | { status: "untracked"; state: BridgeState }
  | { status: "gap" };

type Entry =
  | { phase: "syncing"; round: number; buffer: VersionedEvent[] }
  | { phase: "synced"; version: number };

/**
 * Version bookkeeping of an app's subscribed bridges. Every accepted write
 * that changes a bridge's state adds 1 to its version, so a `lights:changed`
 * whose version is not exactly the known one plus 1 means a missed or
 * repeated event, and the app must subscribe again. A `bridge:snapshot`
 * carries the whole state, so its version is adopted as it is.
 *
 * The class does no I/O: the AppClient calls begin() before sending
 * `bridge:subscribe`, settle() with the round number and the
 * acknowledgement, and receive() for every versioned event.
 */
export class VersionTracker {
  private readonly entries = new Map<string, Entry>();
  private lastRound = 0;

  /**
   * Starts a subscribe round for `bridgeId` and returns its number for
   * settle(). The bridge's events are buffered until then. Events received
   * before the request is sent are not kept, because the acknowledgement's
   * state already contains their writes.
   */
  begin(bridgeId: string): number {
    this.lastRound += 1;
    const round = this.lastRound;
    this.entries.set(bridgeId, { phase: "syncing", round, buffer: [] });
    return round;
  }

  /**
   * Applies the acknowledgement of subscribe round `round`. Buffered events
   * with a version at or below the acknowledged one are dropped, and the
   * newer ones are applied to the returned state in the order received.
   */
  settle(round: number, acknowledged: BridgeState): SettleOutcome {
    const { bridgeId } = acknowledged;
    const entry = this.entries.get(bridgeId);
    if (entry?.phase !== "syncing" || entry.round !== round) {
      return { status: "untracked", state: acknowledged };
    }
    let state: BridgeState = {
      ...acknowledged,
      lights: [...acknowledged.lights],
    };
    for (const item of entry.buffer) {
      if (item.event.version <= state.version) continue;
      const next = applyEvent(state, item);
      if (next === undefined) {
        this.begin(bridgeId);
        return { status: "gap" };
      }
      state = next;
    }
    this.entries.set(bridgeId, { phase: "synced", version: state.version });
    return { status: "synced", state };
  }

  /** Decides what to do with a versioned event and records its version. */
  receive(item: VersionedEvent): ReceiveOutcome {
    const { bridgeId, version } = item.event;
    const entry = this.entries.get(bridgeId);
    if (entry === undefined) return "ignore";
    if (entry.phase === "syncing") {
      entry.buffer.push(item);
      return "buffer";
    }
    if (item.name === "bridge:snapshot" || version === entry.version + 1) {
      entry.version = version;
      return "deliver";
    }
    this.begin(bridgeId);
    return "resync";
  }

  /** Stops tracking `bridgeId`; its later events are ignored. */
  forget(bridgeId: string): void {
    this.entries.delete(bridgeId);
  }

  /** Returns true while `bridgeId` is tracked (subscribed or subscribing). */
  has(bridgeId: string): boolean {
    return this.entries.has(bridgeId);
  }

  /** Returns the last applied version, or undefined while subscribing. */
  versionOf(bridgeId: string): number | undefined {
    const entry = this.entries.get(bridgeId);
    return entry?.phase === "synced" ? entry.version : undefined;
  }

  /** Returns the IDs of every tracked bridge. */
  bridgeIds(): string[] {
    return [...this.entries.keys()];
  }

  /** Forgets every bridge. */
  clear(): void {
    this.entries.clear();
  }
}

/**
 * Returns `state` with `item` applied, or undefined when `item` is a
 * `lights:changed` that does not follow `state.version` directly.
 */
function applyEvent(
  state: BridgeState,
  item: VersionedEvent,
): BridgeState | undefined {
  const { version, lights } = item.event;
  if (item.name === "bridge:snapshot") return { ...state, version, lights };
  if (version !== state.version + 1) return undefined;
  // A `lights:changed` carries each changed light's whole document.
  const byId = new Map(state.lights.map((light) => [light.id, light]));
  for (const light of lights) byId.set(light.id, light);
  return { ...state, version, lights: [...byId.values()] };
}
