import type { Light } from "../../client-sdk/src/protocol.ts";

/** Bridges whose lights the cache keeps; the least recently used leaves first. */
export const LIGHT_CACHE_MAX_BRIDGES = 1000;

interface CachedBridge {
  epoch: number;
  version: number;
  lights: Map<string, Light>;
}

/**
 * Copies of stored lights of the bridges connected to this process, as of
 * its own last read or write of them. The process with a bridge's
 * connection is the only one that writes its lights, so a copy made under the bridge's current
 * epoch stays current until that process writes again. The writer still
 * writes with the version it read, so a stale copy (Redis lost its data,
 * another writer raced) makes the write conflict instead of losing a change.
 *
 * Only bridges whose lights were changed or read for a change enter the
 * cache, and at most `maxBridges` of them, so idle bridges cost nothing.
 */
export class LightCache {
  private readonly bridges = new Map<string, CachedBridge>();

  constructor(private readonly maxBridges = LIGHT_CACHE_MAX_BRIDGES) {}

  /** Returns the version and the lights `ids` when all are cached under `epoch`. */
  get(
    bridgeId: string,
    epoch: number,
    ids: string[],
  ): { version: number; lights: Light[] } | undefined {
    const cached = this.bridges.get(bridgeId);
    if (cached === undefined || cached.epoch !== epoch) return undefined;
    const lights: Light[] = [];
    for (const id of ids) {
      const light = cached.lights.get(id);
      if (light === undefined) return undefined;
      lights.push(light);
    }
    this.touch(bridgeId, cached);
    return { version: cached.version, lights };
  }

  /** Returns true when the light `lightId` is cached under `epoch`. */
  has(bridgeId: string, epoch: number, lightId: string): boolean {
    const cached = this.bridges.get(bridgeId);
    return cached?.epoch === epoch && cached.lights.has(lightId);
  }

  /**
   * Records lights read from the store at `version`. A copy of the same
   * epoch and version keeps its other lights; any other copy is replaced,
   * because its lights may have changed since.
   */
  remember(
    bridgeId: string,
    epoch: number,
    version: number,
    lights: Light[],
  ): void {
    this.advance(bridgeId, epoch, version, version, lights);
  }

  /**
   * Records a write of `lights` that took the stored state from version
   * `from` to `to`. A copy at `from` keeps its other lights, which the
   * write did not touch.
   */
  advance(
    bridgeId: string,
    epoch: number,
    from: number,
    to: number,
    lights: Light[],
  ): void {
    const previous = this.bridges.get(bridgeId);
    const same = previous?.epoch === epoch && previous.version === from;
    this.store(bridgeId, epoch, to, same ? previous.lights : new Map(), lights);
  }

  /** Drops the bridge's copy, after a write that found another state than the copy. */
  forget(bridgeId: string): void {
    this.bridges.delete(bridgeId);
  }

  /** Drops every bridge's copy. */
  clear(): void {
    this.bridges.clear();
  }

  get size(): number {
    return this.bridges.size;
  }

  private store(
    bridgeId: string,
    epoch: number,
    version: number,
    base: Map<string, Light>,
    lights: Light[],
  ): void {
    for (const light of lights) base.set(light.id, light);
    this.touch(bridgeId, { epoch, version, lights: base });
    if (this.bridges.size > this.maxBridges) {
      const oldest = this.bridges.keys().next().value;
      if (oldest !== undefined) this.bridges.delete(oldest);
    }
  }

  /** Moves the bridge to the most recently used end of the map. */
  private touch(bridgeId: string, cached: CachedBridge): void {
    this.bridges.delete(bridgeId);
    this.bridges.set(bridgeId, cached);
  }
}
