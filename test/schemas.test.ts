import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import type { z } from "zod";
import { RelayError } from "../server/errors.ts";
import {
  appLightSetPayloadSchema,
  bridgeRefusalAnswerSchema,
  bridgeSuccessAnswerSchema,
  bridgeIdPayloadSchema,
  changedPayloadSchema,
  snapshotPayloadSchema,
} from "../server/protocol/schemas.ts";
import { parsePayload } from "../server/protocol/validate.ts";

interface Resource {
  id: string;
  type: string;
  [field: string]: unknown;
}

/** Reads the `light` resources of a real Hue bridge's CLIP v2 resource dump. */
function readRealLights(): Resource[] {
  const path = new URL(
    "../client-sdk/fixtures/hue-clip-v2-resources.json",
    import.meta.url,
  );
  const resources = JSON.parse(readFileSync(path, "utf8")) as Resource[];
  return resources.filter((resource) => resource.type === "light");
}

const REAL_LIGHTS = readRealLights();

/** Reads the `metadata.name` of every resource in the dump, lights or not. */
function readRealNames(): string[] {
  const path = new URL(
    "../client-sdk/fixtures/hue-clip-v2-resources.json",
    import.meta.url,
  );
  const resources = JSON.parse(readFileSync(path, "utf8")) as Resource[];
  // Rooms, zones, scenes and devices carry the same kind of user-given
  // name as lights, so they show what real names contain.
  const names: string[] = [];
  for (const resource of resources) {
    const metadata = resource["metadata"] as { name?: unknown } | undefined;
    if (typeof metadata?.name === "string") names.push(metadata.name);
  }
  return names;
}

const REAL_NAMES = readRealNames();
const FIRST_REAL_LIGHT_ID = "01b1da1b-2cb1-eb71-5391-63b5ae1ceb6c";
/** The fixture's first light after the relay drops the fields it does not keep. */
const FIRST_REAL_LIGHT_TRIMMED = {
  id: FIRST_REAL_LIGHT_ID,
  type: "light",
  metadata: { name: "Light 1" },
  on: { on: false },
  dimming: { brightness: 81.03 },
  color_temperature: { mirek: null },
  color: { xy: { x: 0.5974, y: 0.36 } },
};

function realLight(id: string): Resource {
  const found = REAL_LIGHTS.find((resource) => resource.id === id);
  assert.ok(found, `light ${id} is missing from the fixture`);
  return found;
}

/** Parses `input` and returns the RelayError that `parsePayload` must throw. */
function parseFailure(schema: z.ZodType, input: unknown): RelayError {
  try {
    parsePayload(schema, input);
  } catch (error) {
    assert.ok(error instanceof RelayError, `expected RelayError: ${error}`);
    return error;
  }
  assert.fail("expected the payload to be rejected");
}

/** Asserts that `input` is INVALID_PAYLOAD and that the message names `field`. */
function assertInvalidField(
  schema: z.ZodType,
  input: unknown,
  field: string,
): void {
  const error = parseFailure(schema, input);
  assert.equal(error.code, "INVALID_PAYLOAD");
  assert.ok(
    error.message.startsWith(`invalid ${field}:`),
    `message ${JSON.stringify(error.message)} does not name ${field}`,
  );
}

function minimalLight(id: string, fields: object = {}): object {
  return { id, on: { on: true }, ...fields };
}

function snapshotOf(...lights: object[]): { lights: object[] } {
  return { lights };
}

/** Builds a snapshot whose only light carries `fields`, for range checks. */
function snapshotWith(fields: object): { lights: object[] } {
  return snapshotOf(minimalLight("lamp", fields));
}

describe("snapshot payload schema", () => {
  it("accepts real CLIP v2 lights", () => {
    assert.equal(REAL_LIGHTS.length, 8);
    const parsed = parsePayload(snapshotPayloadSchema, {
      lights: REAL_LIGHTS,
    });
    assert.equal(parsed.lights.length, REAL_LIGHTS.length);
  });

  it("trims real light to contract", () => {
    const input = realLight(FIRST_REAL_LIGHT_ID);
    const [light] = parsePayload(snapshotPayloadSchema, {
      lights: [input],
    }).lights;
    assert.deepEqual(light, FIRST_REAL_LIGHT_TRIMMED);
  });

  it("drops unknown nested fields", () => {
    const [light] = parsePayload(snapshotPayloadSchema, {
      lights: [realLight(FIRST_REAL_LIGHT_ID)],
    }).lights;
    assert.ok(light);
    assert.deepEqual(Object.keys(light).sort(), [
      "color",
      "color_temperature",
      "dimming",
      "id",
      "metadata",
      "on",
      "type",
    ]);
    assert.deepEqual(Object.keys(light.metadata ?? {}), ["name"]);
    assert.deepEqual(Object.keys(light.dimming ?? {}), ["brightness"]);
    assert.deepEqual(Object.keys(light.color_temperature ?? {}), ["mirek"]);
    assert.deepEqual(Object.keys(light.color ?? {}), ["xy"]);
  });

  it("adds type when absent", () => {
    const [light] = parsePayload(
      snapshotPayloadSchema,
      snapshotOf(minimalLight("lamp")),
    ).lights;
    assert.equal(light?.type, "light");
  });

  it("rejects another resource type", () => {
    assertInvalidField(
      snapshotPayloadSchema,
      snapshotOf(minimalLight("lamp", { type: "grouped_light" })),
      "lights[0].type",
    );
  });

  it("accepts light without metadata", () => {
    const [light] = parsePayload(
      snapshotPayloadSchema,
      snapshotOf(minimalLight("lamp")),
    ).lights;
    assert.deepEqual(light, { id: "lamp", type: "light", on: { on: true } });
  });

  it("requires on in snapshot", () => {
    assertInvalidField(
      snapshotPayloadSchema,
      snapshotOf({ id: "lamp", dimming: { brightness: 5 } }),
      "lights[0].on",
    );
  });

  it("ignores __proto__ and constructor keys", () => {
    const input: unknown = JSON.parse(
      `{"lights": [{
        "id": "lamp",
        "on": {"on": true, "__proto__": {"polluted": true}},
        "metadata": {"name": "Hall", "constructor": {"prototype": {"polluted": true}}},
        "__proto__": {"polluted": true, "dimming": {"brightness": 7}},
        "constructor": {"prototype": {"polluted": true}}
      }],
      "__proto__": {"polluted": true}}`,
    );

    const parsed = parsePayload(snapshotPayloadSchema, input);
    const light = parsed.lights[0];
    assert.ok(light);
    assert.deepEqual(light, {
      id: "lamp",
      type: "light",
      on: { on: true },
      metadata: { name: "Hall" },
    });

    assert.equal(Object.getPrototypeOf(parsed), Object.prototype);
    assert.equal(Object.getPrototypeOf(light), Object.prototype);
    assert.equal(Object.getPrototypeOf(light.on), Object.prototype);
    assert.equal(Object.getPrototypeOf(light.metadata), Object.prototype);
    assert.equal(Object.hasOwn(light, "__proto__"), false);
    assert.equal(Object.hasOwn(light, "constructor"), false);
    assert.equal(light.constructor, Object);

    assert.equal(light.dimming, undefined);
    assert.equal(Reflect.get(light, "polluted"), undefined);
    assert.equal(Reflect.get(light.on, "polluted"), undefined);
    assert.equal(Reflect.get({}, "polluted"), undefined);
    assert.equal(Reflect.get(Object.prototype, "polluted"), undefined);
  });

  describe("light id", () => {
    const validIds = [
      "a",
      "Z",
      "0",
      "_",
      "-",
      "lamp_2-B",
      FIRST_REAL_LIGHT_ID,
      "x".repeat(64),
    ];
    for (const id of validIds) {
      it(`accepts id ${JSON.stringify(id.slice(0, 20))}`, () => {
        const [light] = parsePayload(
          snapshotPayloadSchema,
          snapshotOf(minimalLight(id)),
        ).lights;
        assert.equal(light?.id, id);
      });
    }

    const invalidIds: [string, unknown][] = [
      ["empty string", ""],
      ["65 characters", "x".repeat(65)],
      ["space", "a b"],
      ["dot", "a.b"],
      ["slash", "a/b"],
      ["trailing newline", "lamp\n"],
      ["non-ASCII letter", "lämp"],
      ["number", 7],
      ["null", null],
    ];
    for (const [label, id] of invalidIds) {
      it(`rejects id with ${label}`, () => {
        assertInvalidField(
          snapshotPayloadSchema,
          snapshotOf({ id, on: { on: true } }),
          "lights[0].id",
        );
      });
    }
  });

  describe("metadata name", () => {
    const accepted: [string, string][] = [
      ["one character", "a"],
      ["32 ASCII characters", "n".repeat(32)],
      ["32 emoji code points", "💡".repeat(32)],
      ["32 CJK characters", "灯".repeat(32)],
      ["spaces and tilde", " Desk ~ lamp "],
      ["no-break space", "Desk\u00a0lamp"],
      ["first character after C1", "\u00a1Hola"],
    ];
    for (const [label, name] of accepted) {
      it(`accepts ${label}`, () => {
        const [light] = parsePayload(
          snapshotPayloadSchema,
          snapshotWith({ metadata: { name } }),
        ).lights;
        assert.equal(light?.metadata?.name, name);
      });
    }

    const rejected: [string, unknown][] = [
      ["empty name", ""],
      ["33 ASCII characters", "n".repeat(33)],
      ["33 emoji code points", "💡".repeat(33)],
      ["non-string name", 12],
      ["missing name", undefined],
      ["unpaired surrogate", "Hall \ud83d"],
    ];
    for (const [label, name] of rejected) {
      it(`rejects ${label}`, () => {
        assertInvalidField(
          snapshotPayloadSchema,
          snapshotWith({ metadata: { name } }),
          "lights[0].metadata.name",
        );
      });
    }

    const controlCharacters: [string, string, string][] = [
      ["NUL", "\u0000", "U+0000"],
      ["tab", "Desk\tlamp", "U+0009"],
      ["newline", "Hall\nway", "U+000A"],
      ["carriage return", "Hall\r", "U+000D"],
      ["escape sequence", "\u001b[31mRed", "U+001B"],
      ["unit separator", "Lamp\u001f", "U+001F"],
      ["DEL", "Lamp\u007f", "U+007F"],
      ["first C1 control", "\u0080Lamp", "U+0080"],
      ["C1 next line", "Lamp\u0085", "U+0085"],
      ["C1 CSI", "\u009b31mRed", "U+009B"],
      ["last C1 control", "Lamp\u009f", "U+009F"],
    ];
    for (const [label, name, codePoint] of controlCharacters) {
      it(`rejects ${label} in name`, () => {
        const input = snapshotWith({ metadata: { name } });
        const error = parseFailure(snapshotPayloadSchema, input);
        assert.equal(error.code, "INVALID_PAYLOAD");
        assert.match(error.message, /^invalid lights\[0\]\.metadata\.name: /);
        assert.match(error.message, /must not contain control characters/);
        assert.ok(
          error.message.includes(`found ${codePoint}`),
          `message ${JSON.stringify(error.message)} does not name ${codePoint}`,
        );
      });
    }

    it("counts control position in code points", () => {
      const input = snapshotWith({ metadata: { name: "💡💡\n" } });
      const error = parseFailure(snapshotPayloadSchema, input);
      assert.match(error.message, /found U\+000A at code point 3$/);
    });

    const visibleNames: [string, string][] = [
      ["family emoji", "\u{1F468}\u200D\u{1F469}\u200D\u{1F467} room"],
      ["rainbow flag", "\u{1F3F3}\uFE0F\u200D\u{1F308}"],
      ["technologist with skin tone", "\u{1F9D1}\u{1F3FD}\u200D\u{1F4BB} desk"],
      ["heart on fire", "\u2764\uFE0F\u200D\u{1F525}"],
      ["emoji variation selector", "\u2600\uFE0F Sun"],
      ["ideographic variation selector", "\u845B\u{E0100}"],
      ["Arabic letters", "\u0645\u0635\u0628\u0627\u062D"],
      ["Hebrew letters", "\u05DE\u05E0\u05D5\u05E8\u05D4"],
      ["Hangul syllables", "\uAC70\uC2E4 \uC870\uBA85"],
      ["Devanagari vowel signs", "\u0932\u0948\u0902\u092A"],
      // "bedroom" in Persian, with U+200C between two letters
      [
        "Persian non-joiner",
        "\u0627\u062A\u0627\u0642\u200C\u062E\u0648\u0627\u0628",
      ],
      // "Sri" in Sinhala, with U+200D after the virama
      ["Sinhala joiner", "\u0DC1\u0DCA\u200D\u0DBB\u0DD3"],
      // Devanagari half form of KA before SSA
      ["Devanagari joiner", "\u0915\u094D\u200D\u0937"],
      ["unassigned code point", "Lamp \u0378"],
    ];
    for (const [label, name] of visibleNames) {
      it(`accepts ${label}`, () => {
        const [light] = parsePayload(
          snapshotPayloadSchema,
          snapshotWith({ metadata: { name } }),
        ).lights;
        assert.equal(light?.metadata?.name, name);
      });
    }

    const invisibleCharacters: [string, string, string][] = [
      ["soft hyphen", "Desk\u00ADlamp", "U+00AD"],
      ["combining grapheme joiner", "Lamp\u034F", "U+034F"],
      ["Arabic letter mark", "\u061CLamp", "U+061C"],
      ["Hangul choseong filler", "\u115F", "U+115F"],
      ["Mongolian vowel separator", "Lamp\u180E", "U+180E"],
      ["zero-width space", "Desk\u200Blamp", "U+200B"],
      ["zero-width non-joiner", "Desk\u200Clamp", "U+200C"],
      ["zero-width joiner in letters", "Desk\u200Dlamp", "U+200D"],
      ["left-to-right mark", "Lamp\u200E", "U+200E"],
      ["right-to-left mark", "\u200FLamp", "U+200F"],
      ["line separator", "Hall\u2028way", "U+2028"],
      ["paragraph separator", "Hall\u2029way", "U+2029"],
      ["left-to-right embedding", "\u202ALamp", "U+202A"],
      ["right-to-left override", "Lamp \u202Ephgj.exe", "U+202E"],
      ["word joiner", "Desk\u2060lamp", "U+2060"],
      ["unassigned default-ignorable", "Lamp\u2065", "U+2065"],
      ["left-to-right isolate", "\u2066Lamp\u2069", "U+2066"],
      ["pop directional isolate", "Lamp\u2069", "U+2069"],
      ["Hangul filler", "\u3164", "U+3164"],
      ["noncharacter U+FDD0", "Lamp\uFDD0", "U+FDD0"],
      ["byte order mark", "\uFEFFLamp", "U+FEFF"],
      ["halfwidth Hangul filler", "Lamp\uFFA0", "U+FFA0"],
      ["interlinear annotation anchor", "Lamp\uFFF9", "U+FFF9"],
      ["noncharacter U+FFFE", "Lamp\uFFFE", "U+FFFE"],
      ["noncharacter U+10FFFF", "Lamp\u{10FFFF}", "U+10FFFF"],
      ["language tag", "\u{E0001}Lamp", "U+E0001"],
      ["tag letter", "Lamp\u{E0041}", "U+E0041"],
      [
        "Scotland flag tag sequence",
        "\u{1F3F4}\u{E0067}\u{E0062}\u{E0073}\u{E0063}\u{E0074}\u{E007F}",
        "U+E0067",
      ],
      ["joiner after last emoji", "\u{1F4A1}\u200D", "U+200D"],
      ["joiner before first emoji", "\u200D\u{1F4A1}", "U+200D"],
      ["joiner from emoji to letter", "\u{1F4A1}\u200Da", "U+200D"],
      ["joiner from letter to emoji", "a\u200D\u{1F4A1}", "U+200D"],
      ["two joiners between emoji", "\u{1F4A1}\u200D\u200D\u{1F4A1}", "U+200D"],
      ["non-joiner after Arabic letter", "\u0645\u200C Lamp", "U+200C"],
      ["non-joiner from Arabic to Latin", "\u0645\u200Cb", "U+200C"],
      ["non-joiner at start of Persian", "\u200C\u0645\u06CC", "U+200C"],
      ["two non-joiners in Persian", "\u0645\u200C\u200C\u06CC", "U+200C"],
      ["joiner between Hebrew letters", "\u05DE\u200D\u05E0", "U+200D"],
    ];
    for (const [label, name, codePoint] of invisibleCharacters) {
      it(`rejects ${label} in name`, () => {
        const input = snapshotWith({ metadata: { name } });
        const error = parseFailure(snapshotPayloadSchema, input);
        assert.equal(error.code, "INVALID_PAYLOAD");
        assert.match(error.message, /^invalid lights\[0\]\.metadata\.name: /);
        assert.match(
          error.message,
          /must not contain invisible or direction-changing characters/,
        );
        assert.ok(
          error.message.includes(`found ${codePoint}`),
          `message ${JSON.stringify(error.message)} does not name ${codePoint}`,
        );
      });
    }

    it("counts invisible position in code points", () => {
      const input = snapshotWith({
        metadata: { name: "\u{1F4A1}\u{1F4A1}\u202E" },
      });
      const error = parseFailure(snapshotPayloadSchema, input);
      assert.match(error.message, /found U\+202E at code point 3$/);
    });

    it("explains where a joiner is allowed", () => {
      const input = snapshotWith({ metadata: { name: "a\u200Db" } });
      const error = parseFailure(snapshotPayloadSchema, input);
      assert.match(
        error.message,
        /found U\+200D at code point 2\. U\+200D is allowed only between two emoji, or between letters of a script that needs it$/,
      );
    });

    it("explains where a non-joiner is allowed", () => {
      const input = snapshotWith({ metadata: { name: "a\u200Cb" } });
      const error = parseFailure(snapshotPayloadSchema, input);
      assert.match(
        error.message,
        /found U\+200C at code point 2\. U\+200C is allowed only between letters of a script that needs it$/,
      );
    });

    it("reports control before invisible character", () => {
      const input = snapshotWith({ metadata: { name: "\u202ELamp\n" } });
      const error = parseFailure(snapshotPayloadSchema, input);
      assert.match(error.message, /must not contain control characters/);
      assert.match(error.message, /found U\+000A at code point 6$/);
    });

    it("accepts every name of real dump", () => {
      assert.equal(REAL_NAMES.length, 95);
      for (const name of REAL_NAMES) {
        const [light] = parsePayload(
          snapshotPayloadSchema,
          snapshotWith({ metadata: { name } }),
        ).lights;
        assert.equal(light?.metadata?.name, name);
      }
    });
  });

  describe("dimming brightness", () => {
    for (const brightness of [0, 0.02, 50, 81.03, 100]) {
      it(`accepts brightness ${brightness}`, () => {
        const [light] = parsePayload(
          snapshotPayloadSchema,
          snapshotWith({ dimming: { brightness } }),
        ).lights;
        assert.equal(light?.dimming?.brightness, brightness);
      });
    }

    const rejected: unknown[] = [-0.01, 100.01, "50", null, NaN, Infinity];
    for (const brightness of rejected) {
      it(`rejects brightness ${String(brightness)}`, () => {
        assertInvalidField(
          snapshotPayloadSchema,
          snapshotWith({ dimming: { brightness } }),
          "lights[0].dimming.brightness",
        );
      });
    }
  });

  describe("color temperature mirek", () => {
    for (const mirek of [50, 153, 500, 1000, null]) {
      it(`accepts mirek ${String(mirek)}`, () => {
        const [light] = parsePayload(
          snapshotPayloadSchema,
          snapshotWith({ color_temperature: { mirek } }),
        ).lights;
        assert.equal(light?.color_temperature?.mirek, mirek);
      });
    }

    const rejected: unknown[] = [49, 1001, 153.5, "153", undefined];
    for (const mirek of rejected) {
      it(`rejects mirek ${String(mirek)}`, () => {
        assertInvalidField(
          snapshotPayloadSchema,
          snapshotWith({ color_temperature: { mirek } }),
          "lights[0].color_temperature.mirek",
        );
      });
    }

    it("names the range for a huge mirek", () => {
      const error = parseFailure(
        snapshotPayloadSchema,
        snapshotWith({ color_temperature: { mirek: 1e300 } }),
      );
      assert.match(error.message, /<=1000/);
    });
  });

  describe("color xy", () => {
    const accepted = [
      { x: 0, y: 0 },
      { x: 1, y: 1 },
      { x: 0.5974, y: 0.36 },
    ];
    for (const xy of accepted) {
      it(`accepts xy ${xy.x},${xy.y}`, () => {
        const [light] = parsePayload(
          snapshotPayloadSchema,
          snapshotWith({ color: { xy } }),
        ).lights;
        assert.deepEqual(light?.color, { xy });
      });
    }

    const rejected: [object, string][] = [
      [{ x: -0.1, y: 0.3 }, "x"],
      [{ x: 1.1, y: 0.3 }, "x"],
      [{ x: 0.3, y: -0.1 }, "y"],
      [{ x: 0.3, y: 1.1 }, "y"],
      [{ x: "0.3", y: 0.3 }, "x"],
    ];
    for (const [xy, coordinate] of rejected) {
      it(`rejects xy ${JSON.stringify(xy)}`, () => {
        assertInvalidField(
          snapshotPayloadSchema,
          snapshotWith({ color: { xy } }),
          `lights[0].color.xy.${coordinate}`,
        );
      });
    }
  });

  describe("light count and ids", () => {
    /** Returns copies of the real light documents (0.9-2.8 KB of JSON each) with distinct ids. */
    function realSizedLights(count: number): object[] {
      return Array.from({ length: count }, (_, index) => {
        const template = REAL_LIGHTS[index % REAL_LIGHTS.length];
        return { ...template, id: `light-${index}` };
      });
    }

    it("accepts 150 real-sized lights", () => {
      const parsed = parsePayload(
        snapshotPayloadSchema,
        snapshotOf(...realSizedLights(150)),
      );
      assert.equal(parsed.lights.length, 150);
    });

    it("rejects 151 lights", () => {
      assertInvalidField(
        snapshotPayloadSchema,
        snapshotOf(...realSizedLights(151)),
        "lights",
      );
    });

    it("accepts empty snapshot", () => {
      const parsed = parsePayload(snapshotPayloadSchema, { lights: [] });
      assert.deepEqual(parsed.lights, []);
    });

    it("rejects duplicate light ids", () => {
      assertInvalidField(
        snapshotPayloadSchema,
        snapshotOf(minimalLight("a"), minimalLight("b"), minimalLight("a")),
        "lights[2].id",
      );
    });

    it("treats ids case-sensitively", () => {
      const parsed = parsePayload(
        snapshotPayloadSchema,
        snapshotOf(minimalLight("lamp"), minimalLight("LAMP")),
      );
      assert.equal(parsed.lights.length, 2);
    });

    it("rejects missing lights array", () => {
      assertInvalidField(snapshotPayloadSchema, {}, "lights");
    });
  });

  describe("error message path", () => {
    it("names path lights[2].dimming.brightness", () => {
      const error = parseFailure(
        snapshotPayloadSchema,
        snapshotOf(
          minimalLight("a"),
          minimalLight("b"),
          minimalLight("c", { dimming: { brightness: 101 } }),
        ),
      );
      assert.equal(error.code, "INVALID_PAYLOAD");
      assert.match(
        error.message,
        /^invalid lights\[2\]\.dimming\.brightness: /,
      );
    });

    it("names payload when not object", () => {
      const error = parseFailure(snapshotPayloadSchema, null);
      assert.equal(error.code, "INVALID_PAYLOAD");
      assert.match(error.message, /^invalid payload: /);
    });
  });
});

describe("changed payload schema", () => {
  function changesOf(...lights: object[]): { lights: object[] } {
    return { lights };
  }

  const singleFieldChanges: [string, object][] = [
    ["metadata", { metadata: { name: "Desk" } }],
    ["on", { on: { on: false } }],
    ["dimming", { dimming: { brightness: 0 } }],
    ["color_temperature", { color_temperature: { mirek: 366 } }],
    ["null mirek", { color_temperature: { mirek: null } }],
    ["color", { color: { xy: { x: 0.2, y: 0.7 } } }],
  ];
  for (const [label, fields] of singleFieldChanges) {
    it(`accepts change of ${label}`, () => {
      const parsed = parsePayload(
        changedPayloadSchema,
        changesOf({ id: "lamp", ...fields }),
      );
      assert.deepEqual(parsed.lights, [{ id: "lamp", ...fields }]);
    });
  }

  it("rejects change with id only", () => {
    assertInvalidField(
      changedPayloadSchema,
      changesOf({ id: "lamp", on: { on: true } }, { id: "desk" }),
      "lights[1]",
    );
  });

  it("rejects control character in name", () => {
    assertInvalidField(
      changedPayloadSchema,
      changesOf({ id: "lamp", metadata: { name: "Desk\nlamp" } }),
      "lights[0].metadata.name",
    );
  });

  it("rejects invisible character in name", () => {
    assertInvalidField(
      changedPayloadSchema,
      changesOf({ id: "lamp", metadata: { name: "Desk\u202Elamp" } }),
      "lights[0].metadata.name",
    );
  });

  it("rejects another resource type in change", () => {
    assertInvalidField(
      changedPayloadSchema,
      changesOf({ id: "lamp", type: "grouped_light", on: { on: true } }),
      "lights[0].type",
    );
  });

  it("accepts and drops type light in change", () => {
    const parsed = parsePayload(
      changedPayloadSchema,
      changesOf({ id: "lamp", type: "light", on: { on: true } }),
    );
    assert.deepEqual(parsed.lights, [{ id: "lamp", on: { on: true } }]);
  });

  it("rejects change with type only", () => {
    assertInvalidField(
      changedPayloadSchema,
      changesOf({ id: "lamp", type: "light" }),
      "lights[0]",
    );
  });

  it("rejects change with unknown fields only", () => {
    assertInvalidField(
      changedPayloadSchema,
      changesOf({ id: "lamp", dimming_delta: { action: "up" } }),
      "lights[0]",
    );
  });

  it("rejects change without id", () => {
    assertInvalidField(
      changedPayloadSchema,
      changesOf({ on: { on: true } }),
      "lights[0].id",
    );
  });

  const incompleteChanges: [string, object, string][] = [
    ["dimming without brightness", { dimming: {} }, "dimming.brightness"],
    [
      "dimming with delta only",
      { dimming: { min_dim_level: 0.2 } },
      "dimming.brightness",
    ],
    ["color.xy with only x", { color: { xy: { x: 0.3 } } }, "color.xy.y"],
    ["color.xy with only y", { color: { xy: { y: 0.3 } } }, "color.xy.x"],
    ["color without xy", { color: { gamut_type: "C" } }, "color.xy"],
    ["metadata without name", { metadata: {} }, "metadata.name"],
    ["on without on", { on: {} }, "on.on"],
    [
      "color_temperature without mirek",
      { color_temperature: { mirek_valid: true } },
      "color_temperature.mirek",
    ],
  ];
  for (const [label, fields, field] of incompleteChanges) {
    it(`rejects ${label}`, () => {
      assertInvalidField(
        changedPayloadSchema,
        changesOf({ id: "lamp", ...fields }),
        `lights[0].${field}`,
      );
    });
  }

  it("drops unknown fields of change", () => {
    const parsed = parsePayload(
      changedPayloadSchema,
      changesOf({
        id: "lamp",
        type: "light",
        dimming: { brightness: 40, min_dim_level: 0.2 },
        dynamics: { speed: 0.5 },
      }),
    );
    assert.deepEqual(parsed.lights, [
      { id: "lamp", dimming: { brightness: 40 } },
    ]);
  });

  it("rejects duplicate change ids", () => {
    assertInvalidField(
      changedPayloadSchema,
      changesOf(
        { id: "lamp", on: { on: true } },
        { id: "lamp", on: { on: false } },
      ),
      "lights[1].id",
    );
  });

  it("accepts 150 changes", () => {
    const changes = Array.from({ length: 150 }, (_, index) => ({
      id: `light-${index}`,
      on: { on: true },
    }));
    const parsed = parsePayload(changedPayloadSchema, changesOf(...changes));
    assert.equal(parsed.lights.length, 150);
  });

  it("rejects 151 changes", () => {
    const changes = Array.from({ length: 151 }, (_, index) => ({
      id: `light-${index}`,
      on: { on: true },
    }));
    assertInvalidField(changedPayloadSchema, changesOf(...changes), "lights");
  });

  it("ignores __proto__ in change", () => {
    const input: unknown = JSON.parse(
      `{"lights": [{"id": "lamp", "__proto__": {"on": {"on": true}}, "constructor": {"on": {"on": true}}}]}`,
    );
    assertInvalidField(changedPayloadSchema, input, "lights[0]");
    assert.equal(Reflect.get(Object.prototype, "on"), undefined);
  });
});

describe("app light:set payload schema", () => {
  const BRIDGE_ID = "001788fffe4f3a2b";

  function lightSet(fields: object = {}): object {
    return {
      bridgeId: BRIDGE_ID,
      lightId: "lamp",
      change: { on: { on: true } },
      ...fields,
    };
  }

  it("accepts minimal light:set payload", () => {
    const parsed = parsePayload(appLightSetPayloadSchema, lightSet());
    assert.deepEqual(parsed, {
      bridgeId: BRIDGE_ID,
      lightId: "lamp",
      change: { on: { on: true } },
    });
  });

  it("rejects another resource type in change", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ change: { type: "scene", on: { on: true } } }),
      "change.type",
    );
  });

  it("accepts and drops type light in change", () => {
    const parsed = parsePayload(
      appLightSetPayloadSchema,
      lightSet({ change: { type: "light", on: { on: true } } }),
    );
    assert.deepEqual(parsed.change, { on: { on: true } });
  });

  it("rejects empty change", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ change: {} }),
      "change",
    );
  });

  it("rejects incomplete change field", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ change: { color: { xy: { x: 0.4 } } } }),
      "change.color.xy.y",
    );
  });

  it("drops change id equal to lightId", () => {
    const parsed = parsePayload(
      appLightSetPayloadSchema,
      lightSet({ change: { id: "lamp", on: { on: false } } }),
    );
    assert.deepEqual(parsed.change, { on: { on: false } });
  });

  const otherIds: [string, unknown, RegExp][] = [
    ["another light's id", "other", /"other" differs from lightId "lamp"/],
    ["id in another case", "LAMP", /"LAMP" differs from lightId "lamp"/],
    ["numeric id", 7, /must be a string, got number/],
    ["null id", null, /must be a string, got null/],
  ];
  for (const [label, id, reason] of otherIds) {
    it(`rejects change with ${label}`, () => {
      const input = lightSet({ change: { id, on: { on: false } } });
      const error = parseFailure(appLightSetPayloadSchema, input);
      assert.equal(error.code, "INVALID_PAYLOAD");
      assert.match(error.message, /^invalid change\.id: /);
      assert.match(error.message, reason);
    });
  }

  it("names id of id-only change", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ change: { id: "other" } }),
      "change.id",
    );
  });

  it("rejects id-only change of lightId", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ change: { id: "lamp" } }),
      "change",
    );
  });

  it("names invalid lightId before change id", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ lightId: "../lamp", change: { id: "other" } }),
      "lightId",
    );
  });

  it("rejects control character in name", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ change: { metadata: { name: "Desk\u0085lamp" } } }),
      "change.metadata.name",
    );
  });

  it("rejects invisible character in name", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ change: { metadata: { name: "Desk\u200Blamp" } } }),
      "change.metadata.name",
    );
  });

  it("rejects invalid light id", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ lightId: "../lamp" }),
      "lightId",
    );
  });

  it("accepts 64-character command id", () => {
    const commandId = "c".repeat(64);
    const parsed = parsePayload(
      appLightSetPayloadSchema,
      lightSet({ commandId }),
    );
    assert.equal(parsed.commandId, commandId);
  });

  it("rejects 65-character command id", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ commandId: "c".repeat(65) }),
      "commandId",
    );
  });

  it("rejects unpaired surrogates in command id", () => {
    for (const commandId of ["\ud800", "a\udfff", "\udfff\ud800"]) {
      assertInvalidField(
        appLightSetPayloadSchema,
        lightSet({ commandId }),
        "commandId",
      );
    }
  });

  const forbiddenIdCharacters: [string, string][] = [
    ["line feed", "a\nb"],
    ["next line", "a\u0085b"],
    ["control sequence introducer", "a\u009B31m"],
    ["right-to-left override", "abc\u202E"],
    ["zero-width space", "a\u200Bb"],
    ["line separator", "a\u2028b"],
  ];
  for (const [label, commandId] of forbiddenIdCharacters) {
    it(`rejects ${label} in command id`, () => {
      assertInvalidField(
        appLightSetPayloadSchema,
        lightSet({ commandId }),
        "commandId",
      );
      const error = parseFailure(
        appLightSetPayloadSchema,
        lightSet({ commandId }),
      );
      assert.match(
        error.message,
        /must not contain control, format or line-separator characters, found U\+[0-9A-F]{4} at code point \d+$/,
      );
    });
  }

  it("accepts paired surrogates in command id", () => {
    const commandId = "lamp-\u{1F4A1}";
    const parsed = parsePayload(
      appLightSetPayloadSchema,
      lightSet({ commandId }),
    );
    assert.equal(parsed.commandId, commandId);
  });

  it("rejects non-string command id", () => {
    assertInvalidField(
      appLightSetPayloadSchema,
      lightSet({ commandId: 42 }),
      "commandId",
    );
  });
});

describe("bridge id schema", () => {
  const accepted: [string, string][] = [
    ["001788fffe4f3a2b", "001788fffe4f3a2b"],
    ["001788FFFE4F3A2B", "001788fffe4f3a2b"],
    ["001788FfFe4f3A2b", "001788fffe4f3a2b"],
    ["0123456789abcdef", "0123456789abcdef"],
  ];
  for (const [input, expected] of accepted) {
    it(`normalises ${input} to lowercase`, () => {
      const subscribe = parsePayload(bridgeIdPayloadSchema, {
        bridgeId: input,
      });
      assert.equal(subscribe.bridgeId, expected);
      const command = parsePayload(appLightSetPayloadSchema, {
        bridgeId: input,
        lightId: "lamp",
        change: { on: { on: true } },
      });
      assert.equal(command.bridgeId, expected);
    });
  }

  const rejected: [string, unknown][] = [
    ["15 digits", "001788fffe4f3a2"],
    ["17 digits", "001788fffe4f3a2b0"],
    ["non-hex digit", "001788fffe4f3a2g"],
    ["colon separators", "00:17:88:ff:fe:4f:3a:2b"],
    ["dash separators", "001788-fffe-4f3a2b"],
    ["0x prefix", "0x001788fffe4f3a2b"],
    ["surrounding spaces", " 001788fffe4f3a2b "],
    ["fullwidth digits", "００１７８８fffe4f3a2b"],
    ["empty string", ""],
    ["number", 1234567890123456],
    ["null", null],
  ];
  for (const [label, bridgeId] of rejected) {
    it(`rejects bridge id with ${label}`, () => {
      assertInvalidField(bridgeIdPayloadSchema, { bridgeId }, "bridgeId");
    });
  }
});

describe("bridge answer schemas", () => {
  it("trims light of success answer", () => {
    const answer = parsePayload(bridgeSuccessAnswerSchema, {
      ok: true,
      data: { light: realLight(FIRST_REAL_LIGHT_ID) },
    });
    const { type: _type, ...expected } = FIRST_REAL_LIGHT_TRIMMED;
    assert.deepEqual(answer.data.light, expected);
  });

  it("accepts a partial success light", () => {
    const answer = parsePayload(bridgeSuccessAnswerSchema, {
      ok: true,
      data: { light: { id: "lamp", dimming: { brightness: 42 } } },
    });
    assert.deepEqual(answer.data.light, {
      id: "lamp",
      dimming: { brightness: 42 },
    });
  });

  it("accepts refusal with code", () => {
    const answer = parsePayload(bridgeRefusalAnswerSchema, {
      ok: false,
      error: { code: "LIGHT_UNREACHABLE", message: "light is unreachable" },
    });
    assert.deepEqual(answer, {
      ok: false,
      error: { code: "LIGHT_UNREACHABLE", message: "light is unreachable" },
    });
  });

  const malformedSuccess: [string, unknown][] = [
    ["answer without ok", { data: { light: minimalLight("lamp") } }],
    ["success without light", { ok: true, data: {} }],
    [
      "success with invalid light",
      { ok: true, data: { light: minimalLight("lamp", { dimming: {} }) } },
    ],
    [
      "success light without fields",
      { ok: true, data: { light: { id: "lamp" } } },
    ],
    [
      "success name with control character",
      {
        ok: true,
        data: { light: { id: "lamp", metadata: { name: "Lamp\u009b" } } },
      },
    ],
    [
      "success name with invisible character",
      {
        ok: true,
        data: { light: { id: "lamp", metadata: { name: "Lamp\u2066" } } },
      },
    ],
    [
      "success light of another type",
      {
        ok: true,
        data: { light: minimalLight("lamp", { type: "grouped_light" }) },
      },
    ],
    ["non-object answer", "ok"],
  ];
  for (const [label, answer] of malformedSuccess) {
    it(`rejects ${label}`, () => {
      const error = parseFailure(bridgeSuccessAnswerSchema, answer);
      assert.equal(error.code, "INVALID_PAYLOAD");
    });
  }

  const malformedRefusal: [string, unknown][] = [
    ["refusal without error", { ok: false }],
    [
      "refusal with empty code",
      { ok: false, error: { code: "", message: "" } },
    ],
  ];
  for (const [label, answer] of malformedRefusal) {
    it(`rejects ${label}`, () => {
      const error = parseFailure(bridgeRefusalAnswerSchema, answer);
      assert.equal(error.code, "INVALID_PAYLOAD");
    });
  }
});
