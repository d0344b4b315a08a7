import type { Light, LightPatch } from "../src/protocol.ts";

/** The fields a light card controls, each sent as its own command. */
export type ControlField = "on" | "dimming" | "color_temperature";

interface PendingChange {
  patch: LightPatch;
  sequence: number;
}

/**
 * One light as the page shows it: the state the relay confirmed, with the
 * user's changes laid over it until the relay acknowledges them. A change
 * that the relay rejects is dropped, so the light goes back to the
 * confirmed state.
 *
 * Events from the relay arrive in version order, but the acknowledgement
 * of a command may arrive before or after the `lights:changed` of the same
 * write, because they travel separately through a cluster. So an
 * acknowledgement's light is adopted only when no event touched the light
 * since the command was sent. Otherwise the event is as new as the
 * acknowledgement or newer, and the event of every write arrives in the end.
 */
export class OptimisticLight {
  private confirmedLight: Light;
  private relayUpdates = 0;
  private lastSequence = 0;
  private readonly pending = new Map<ControlField, PendingChange>();

  constructor(light: Light) {
    this.confirmedLight = light;
  }

  /** The light as the relay last confirmed it. */
  get confirmed(): Light {
    return this.confirmedLight;
  }

  /** Number of relay events applied so far; pass it to acknowledge(). */
  get updateCount(): number {
    return this.relayUpdates;
  }

  /** Returns the light to show: the confirmed state with pending changes laid over it. */
  view(): Light {
    let light = this.confirmedLight;
    for (const { patch } of this.pending.values())
      light = { ...light, ...patch };
    return light;
  }

  /** Returns true while a change of `field` (any field when omitted) waits for the relay's acknowledgement. */
  isPending(field?: ControlField): boolean {
    return field === undefined
      ? this.pending.size > 0
      : this.pending.has(field);
  }

  /** Lays a user's change over the light and returns its sequence number. */
  applyLocal(field: ControlField, patch: LightPatch): number {
    this.lastSequence += 1;
    this.pending.set(field, { patch, sequence: this.lastSequence });
    return this.lastSequence;
  }

  /** Adopts the light from a relay event (`lights:changed`, a snapshot or a resync). */
  applyRelay(light: Light): void {
    this.confirmedLight = light;
    this.relayUpdates += 1;
  }

  /**
   * Records the relay's successful acknowledgement of change `sequence` of
   * `field`, which was sent when updateCount was `updatesAtSend`.
   */
  acknowledge(
    field: ControlField,
    sequence: number,
    light: Light,
    updatesAtSend: number,
  ): void {
    if (this.relayUpdates === updatesAtSend) this.confirmedLight = light;
    if (this.pending.get(field)?.sequence === sequence) {
      this.pending.delete(field);
    }
  }

  /**
   * Drops change `sequence` of `field` after the relay rejected it, and
   * returns true when the field went back to the confirmed value. It
   * returns false when a newer change of the field is still pending.
   */
  reject(field: ControlField, sequence: number): boolean {
    if (this.pending.get(field)?.sequence !== sequence) return false;
    this.pending.delete(field);
    return true;
  }
}
