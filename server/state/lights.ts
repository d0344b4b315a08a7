import type {
  Light,
  LightChange,
  LightFields,
} from "../../client-sdk/src/protocol.ts";

const FIELD_NAMES = [
  "metadata",
  "on",
  "dimming",
  "color_temperature",
  "color",
] as const satisfies readonly (keyof LightFields)[];

/**
 * Rebuilds a light with its keys in one fixed order, so that two equal
 * lights serialise to the same JSON and can be compared as strings.
 */
export function canonicalLight(light: Light): Light {
  const result: Light = { id: light.id, type: "light", on: light.on };
  if (light.metadata !== undefined)
    result.metadata = { name: light.metadata.name };
  result.on = { on: light.on.on };
  if (light.dimming !== undefined) {
    result.dimming = { brightness: light.dimming.brightness };
  }
  if (light.color_temperature !== undefined) {
    result.color_temperature = { mirek: light.color_temperature.mirek };
  }
  if (light.color !== undefined) {
    result.color = { xy: { x: light.color.xy.x, y: light.color.xy.y } };
  }
  return result;
}

export function lightsEqual(a: Light, b: Light): boolean {
  return (
    JSON.stringify(canonicalLight(a)) === JSON.stringify(canonicalLight(b))
  );
}

/** Applies a change: each top-level field it carries replaces the stored one whole. */
export function applyChange(current: Light, change: LightChange): Light {
  const next: Light = { ...current };
  for (const field of FIELD_NAMES) {
    const value = change[field];
    if (value !== undefined) Object.assign(next, { [field]: value });
  }
  return canonicalLight(next);
}

/** Returns true when `next` differs from `current` as a set of lights keyed by id. */
export function snapshotDiffers(current: Light[], next: Light[]): boolean {
  if (current.length !== next.length) return true;
  const byId = new Map(current.map((light) => [light.id, light]));
  return next.some((light) => {
    const stored = byId.get(light.id);
    return stored === undefined || !lightsEqual(stored, light);
  });
}
