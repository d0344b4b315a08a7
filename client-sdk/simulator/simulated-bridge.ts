import { readFileSync } from "node:fs";
import type { BridgeCommandAnswer } from "../src/bridge-client.ts";
import type {
  Light,
  LightChange,
  LightFields,
  LightSetCommand,
} from "../src/protocol.ts";

/** A CLIP v2 light document: the contract's fields plus the many others a bridge sends. */
export type LightDocument = Light & Record<string, unknown>;

/** The fixture's location, next to the sources (the simulator runs them through tsx). */
export const FIXTURE_URL = new URL(
  "../fixtures/hue-clip-v2-resources.json",
  import.meta.url,
);

/** Prefix of every simulated bridge ID: a Hue bridge's first five bytes. */
const BRIDGE_ID_PREFIX = "001788fffe";
/** Number of distinct IDs: six hexadecimal digits after the prefix. */
export const MAX_SIMULATED_BRIDGES = 0x1000000;

const FIELD_NAMES = [
  "metadata",
  "on",
  "dimming",
  "color_temperature",
  "color",
] as const satisfies readonly (keyof LightFields)[];

/**
 * Reads the `light` resources of a CLIP v2 resource dump. Throws when the
 * file is not a JSON array or a light lacks `id` or `on.on`.
 */
export function loadFixtureLights(url: URL = FIXTURE_URL): LightDocument[] {
  const resources: unknown = JSON.parse(readFileSync(url, "utf8"));
  if (!Array.isArray(resources)) {
    throw new Error(`invalid fixture ${url.pathname}: expected a JSON array`);
  }
  const lights = resources.filter(
    (resource): resource is Record<string, unknown> =>
      typeof resource === "object" &&
      resource !== null &&
      resource.type === "light",
  );
  for (const light of lights) {
    const on = light.on as { on?: unknown } | undefined;
    if (typeof light.id !== "string" || typeof on?.on !== "boolean") {
      throw new Error(
        `invalid light ${JSON.stringify(light.id)} in ${url.pathname}: missing id or on.on`,
      );
    }
  }
  return lights as LightDocument[];
}

/** Returns the ID of simulated bridge `index` (0-based): `001788fffe` and 6 hex digits. */
export function simulatedBridgeId(index: number): string {
  if (!Number.isInteger(index) || index < 0 || index >= MAX_SIMULATED_BRIDGES) {
    throw new RangeError(
      `invalid bridge index ${index}: must be 0 to ${MAX_SIMULATED_BRIDGES - 1}`,
    );
  }
  return `${BRIDGE_ID_PREFIX}${index.toString(16).padStart(6, "0")}`;
}

/** Returns the light trimmed to the contract's fields, as the relay stores it. */
export function trimLight(document: LightDocument): Light {
  const light: Light = {
    id: document.id,
    type: "light",
    on: { on: document.on.on },
  };
  if (document.metadata !== undefined) {
    light.metadata = { name: document.metadata.name };
  }
  if (document.dimming !== undefined) {
    light.dimming = { brightness: document.dimming.brightness };
  }
  if (document.color_temperature !== undefined) {
    light.color_temperature = { mirek: document.color_temperature.mirek };
  }
  if (document.color !== undefined) {
    const { x, y } = document.color.xy;
    light.color = { xy: { x, y } };
  }
  return light;
}

/**
 * Returns a seeded pseudo-random generator of numbers in `[0, 1)`
 * (mulberry32), so a simulation can be repeated with the same `--seed`.
 */
export function createRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let value = state;
    value = Math.imul(value ^ (value >>> 15), value | 1);
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61);
    return ((value ^ (value >>> 14)) >>> 0) / 0x100000000;
  };
}

/** The light state of one simulated bridge, kept as full CLIP v2 documents. */
export class SimulatedBridge {
  private readonly lights = new Map<string, LightDocument>();

  constructor(
    readonly bridgeId: string,
    documents: LightDocument[],
  ) {
    for (const document of documents) {
      this.lights.set(document.id, structuredClone(document));
    }
  }

  /** Returns copies of every light document, as sent in a snapshot. */
  documents(): LightDocument[] {
    return [...this.lights.values()].map((document) =>
      structuredClone(document),
    );
  }

  /**
   * Applies a `light:set` command: each top-level field of the change
   * replaces the stored one whole. Answers `NOT_FOUND` for an unknown light.
   */
  applyCommand(command: LightSetCommand): BridgeCommandAnswer {
    const document = this.lights.get(command.lightId);
    if (document === undefined) {
      const message = `no light ${JSON.stringify(command.lightId)} on bridge ${this.bridgeId}`;
      return { ok: false, error: { code: "NOT_FOUND", message } };
    }
    for (const field of FIELD_NAMES) {
      const value = command.change[field];
      if (value !== undefined) {
        Object.assign(document, { [field]: structuredClone(value) });
      }
    }
    return { ok: true, data: { light: trimLight(document) } };
  }

  /** Switches a random light on or off, as a wall switch would, and returns the change. */
  toggleRandomLight(random: () => number): LightChange {
    const documents = [...this.lights.values()];
    const document = documents[Math.floor(random() * documents.length)];
    if (document === undefined)
      throw new Error(`bridge ${this.bridgeId} has no lights`);
    document.on = { on: !document.on.on };
    return { id: document.id, on: { on: document.on.on } };
  }
}
