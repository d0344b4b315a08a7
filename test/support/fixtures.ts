import { readFileSync } from "node:fs";

interface Resource {
  id: string;
  type: string;
  [field: string]: unknown;
}

/** Returns the `light` resources of the real Hue CLIP v2 dump, as a bridge sends them. */
export function realLights(): Resource[] {
  const path = new URL(
    "../../client-sdk/fixtures/hue-clip-v2-resources.json",
    import.meta.url,
  );
  const resources = JSON.parse(readFileSync(path, "utf8")) as Resource[];
  return resources.filter((resource) => resource.type === "light");
}

/** Returns a small valid light document. */
export function light(
  id: string,
  on = false,
  brightness = 50,
): Record<string, unknown> {
  return {
    id,
    on: { on },
    dimming: { brightness },
    metadata: { name: `Lamp ${id}` },
  };
}
