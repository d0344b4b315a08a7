import assert from "node:assert/strict";
import type { Light } from "../client-sdk/src/protocol.ts";
import { canonicalLight, lightsEqual } from "../server/state/lights.ts";

const base: Light = {
  id: "a",
  type: "light",
  metadata: { name: "Desk" },
  on: { on: true },
  dimming: { brightness: 50 },
  color_temperature: { mirek: 300 },
  color: { xy: { x: 0.31, y: 0.32 } },
};

/** Lights that differ from `base` in one field each. */
const variants: [string, Light][] = [
  ["id", { ...base, id: "b" }],
  ["name", { ...base, metadata: { name: "Shelf" } }],
  ["no metadata", { ...base, metadata: undefined }],
  ["on", { ...base, on: { on: false } }],
  ["brightness", { ...base, dimming: { brightness: 51 } }],
  ["no dimming", { ...base, dimming: undefined }],
  ["mirek", { ...base, color_temperature: { mirek: 301 } }],
  ["mirek null", { ...base, color_temperature: { mirek: null } }],
  ["no color temperature", { ...base, color_temperature: undefined }],
  ["x", { ...base, color: { xy: { x: 0.3, y: 0.32 } } }],
  ["y", { ...base, color: { xy: { x: 0.31, y: 0.3 } } }],
  ["no color", { ...base, color: undefined }],
];

describe("lightsEqual", () => {
  it("matches a copy in another key order", () => {
    const reordered = JSON.parse(
      JSON.stringify({ color: base.color, ...base }),
    ) as Light;
    assert.equal(lightsEqual(base, reordered), true);
  });

  it("ignores fields a light does not store", () => {
    const extra = { ...base, owner: { rid: "x" } } as Light;
    assert.equal(lightsEqual(base, extra), true);
  });

  for (const [field, variant] of variants) {
    it(`tells lights apart by ${field}`, () => {
      assert.equal(lightsEqual(base, variant), false);
      assert.equal(lightsEqual(variant, base), false);
    });

    it(`agrees with the canonical JSON for ${field}`, () => {
      const sameJson =
        JSON.stringify(canonicalLight(base)) ===
        JSON.stringify(canonicalLight(variant));
      assert.equal(lightsEqual(base, variant), sameJson);
    });
  }
});
