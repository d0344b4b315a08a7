import type {
  Light,
  LightChange,
  LightFields,
  LightPatch,
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

/**
 * Rebuilds a change with its keys in one fixed order, as `canonicalLight`
 * does, so that two equal changes serialise to the same JSON.
 */
export function canonicalPatch(change: LightPatch): LightPatch {
  const result: LightPatch = {};
  if (change.metadata !== undefined)
    result.metadata = { name: change.metadata.name };
  if (change.on !== undefined) result.on = { on: change.on.on };
  if (change.dimming !== undefined) {
    result.dimming = { brightness: change.dimming.brightness };
  }
  if (change.color_temperature !== undefined) {
    result.color_temperature = { mirek: change.color_temperature.mirek };
  }
  if (change.color !== undefined) {
    result.color = { xy: { x: change.color.xy.x, y: change.color.xy.y } };
  }
  return result;
}

/**
 * Returns true when two lights have the same ID and the same value in each
 * field that `canonicalLight` keeps. It runs once per light a bridge
 * reports, so it compares the fields without building copies.
 */
export function lightsEqual(a: Light, b: Light): boolean {
  return (
    a.id === b.id &&
    a.on.on === b.on.on &&
    sameWhenPresent(a.metadata, b.metadata, (x, y) => x.name === y.name) &&
    sameWhenPresent(
      a.dimming,
      b.dimming,
      (x, y) => x.brightness === y.brightness,
    ) &&
    sameWhenPresent(
      a.color_temperature,
      b.color_temperature,
      (x, y) => x.mirek === y.mirek,
    ) &&
    sameWhenPresent(
      a.color,
      b.color,
      (x, y) => x.xy.x === y.xy.x && x.xy.y === y.xy.y,
    )
  );
}

/** Returns true when both values are absent, or both present and `equal`. */
function sameWhenPresent<T>(
  a: T | undefined,
  b: T | undefined,
  equal: (a: T, b: T) => boolean,
): boolean {
  if (a === undefined || b === undefined) return a === b;
  return equal(a, b);
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
