import assert from "node:assert/strict";
import type { Light } from "../client-sdk/src/protocol.ts";
import { LightCache } from "../server/relay/light-cache.ts";

function lamp(id: string, brightness = 50): Light {
  return { id, type: "light", on: { on: true }, dimming: { brightness } };
}

describe("LightCache", () => {
  it("returns remembered lights", () => {
    const cache = new LightCache();
    cache.remember("b1", 1, 4, [lamp("a"), lamp("b")]);
    assert.deepEqual(cache.get("b1", 1, ["b", "a"]), {
      version: 4,
      lights: [lamp("b"), lamp("a")],
    });
  });

  it("misses when one light is absent", () => {
    const cache = new LightCache();
    cache.remember("b1", 1, 4, [lamp("a")]);
    assert.equal(cache.get("b1", 1, ["a", "b"]), undefined);
    assert.equal(cache.get("b2", 1, ["a"]), undefined);
  });

  it("misses under another epoch", () => {
    const cache = new LightCache();
    cache.remember("b1", 1, 4, [lamp("a")]);
    assert.equal(cache.get("b1", 2, ["a"]), undefined);
    assert.equal(cache.has("b1", 2, "a"), false);
    assert.equal(cache.has("b1", 1, "a"), true);
  });

  it("merges reads of one version", () => {
    const cache = new LightCache();
    cache.remember("b1", 1, 4, [lamp("a")]);
    cache.remember("b1", 1, 4, [lamp("b")]);
    assert.equal(cache.get("b1", 1, ["a", "b"])?.version, 4);
  });

  it("replaces lights of another version", () => {
    const cache = new LightCache();
    cache.remember("b1", 1, 4, [lamp("a")]);
    cache.remember("b1", 1, 5, [lamp("b")]);
    assert.equal(cache.has("b1", 1, "a"), false);
    assert.equal(cache.get("b1", 1, ["b"])?.version, 5);
  });

  it("keeps untouched lights on a write", () => {
    const cache = new LightCache();
    cache.remember("b1", 1, 4, [lamp("a"), lamp("b")]);
    cache.advance("b1", 1, 4, 5, [lamp("a", 10)]);
    assert.deepEqual(cache.get("b1", 1, ["a", "b"]), {
      version: 5,
      lights: [lamp("a", 10), lamp("b")],
    });
  });

  it("drops other lights after a write from another version", () => {
    const cache = new LightCache();
    cache.remember("b1", 1, 4, [lamp("a"), lamp("b")]);
    cache.advance("b1", 1, 6, 7, [lamp("a", 10)]);
    assert.equal(cache.has("b1", 1, "b"), false);
    assert.equal(cache.get("b1", 1, ["a"])?.version, 7);
  });

  it("evicts the least recently used bridge", () => {
    const cache = new LightCache(2);
    cache.remember("b1", 1, 1, [lamp("a")]);
    cache.remember("b2", 1, 1, [lamp("a")]);
    assert.ok(cache.get("b1", 1, ["a"]));
    cache.remember("b3", 1, 1, [lamp("a")]);
    assert.equal(cache.size, 2);
    assert.equal(cache.has("b2", 1, "a"), false);
    assert.equal(cache.has("b1", 1, "a"), true);
    assert.equal(cache.has("b3", 1, "a"), true);
  });

  it("forgets a bridge", () => {
    const cache = new LightCache();
    cache.remember("b1", 1, 1, [lamp("a")]);
    cache.forget("b1");
    assert.equal(cache.size, 0);
  });
});
