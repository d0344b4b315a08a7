import { z } from "zod";
import {
  MAX_COMMAND_ID_LENGTH,
  MAX_LIGHTS_PER_BRIDGE,
  normalizeBridgeId,
} from "../../client-sdk/src/protocol.ts";

/**
 * Schemas of every payload the relay accepts. Objects strip unknown keys,
 * so a full CLIP v2 light document is accepted and trimmed, and keys such
 * as `__proto__` never reach the relay's state.
 */

const MAX_NAME_CODE_POINTS = 32;

export const lightIdSchema = z
  .string()
  .regex(/^[A-Za-z0-9_-]{1,64}$/, "must be 1-64 of A-Z a-z 0-9 _ -");

export const bridgeIdSchema = z.string().transform((value, context) => {
  const id = normalizeBridgeId(value);
  if (id === null) {
    context.addIssue({
      code: "custom",
      message: `must be 16 hexadecimal digits, got ${JSON.stringify(value.slice(0, 40))}`,
    });
    return z.NEVER;
  }
  return id;
});

/** Matches a UTF-16 surrogate that is not part of a pair. */
const LONE_SURROGATE = /\p{Cs}/u;

/** Matches a C0 or C1 control character or DEL: U+0000-U+001F, U+007F-U+009F. */
const CONTROL_CHARACTER = /\p{Cc}/u;

/** Matches a character that a command ID must not contain: Cc, Cf, Zl or Zp. */
const ID_FORBIDDEN_CHARACTER = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}]/u;

/**
 * Matches a character that is invisible or changes the direction or lines
 * of the text around it. These are the format characters (Cf, such as
 * U+00AD, U+200B, U+202E, U+2066-U+2069 and U+FEFF), U+2028 and U+2029
 * (Zl, Zp) and the noncharacters. They also include the default-ignorable
 * code points other than variation selectors, which adds the Hangul
 * fillers (U+115F, U+1160, U+3164, U+FFA0), U+034F, U+17B4-U+17B5 and the
 * unassigned code points that renderers show as nothing. Variation
 * selectors stay allowed because emoji need U+FE0F. Other unassigned code
 * points pass, because a relay on an older Node.js would otherwise reject
 * a newer emoji, and with it the bridge's whole write.
 *
 * NOTE: tag characters (U+E0020-U+E007F) are Cf, so the flags of England,
 * Scotland and Wales, which are tag sequences, are rejected.
 */
const INVISIBLE_CHARACTER =
  /[\p{Cf}\p{Zl}\p{Zp}\p{Noncharacter_Code_Point}]|(?!\p{Variation_Selector})\p{Default_Ignorable_Code_Point}/gu;

/**
 * Matches a zero-width joiner (U+200D) between two emoji, where UAX #29
 * rule GB11 keeps it inside one grapheme cluster. Emoji ZWJ sequences
 * need it, such as family (U+1F468 U+200D U+1F469 U+200D U+1F467) and
 * rainbow flag (U+1F3F3 U+FE0F U+200D U+1F308). Extended_Pictographic
 * also covers code points reserved for future emoji, so sequences newer
 * than the runtime's Unicode data pass. A joiner between two emoji that
 * form no sequence passes too, and shows as nothing between them.
 */
const EMOJI_ZERO_WIDTH_JOINER =
  /(?<=\p{Extended_Pictographic}[\p{Grapheme_Extend}\p{Emoji_Modifier}]*)\u200D(?=\p{Extended_Pictographic})/uy;

/**
 * A letter or mark of a script whose spelling needs U+200C or U+200D
 * between letters. In the Arabic-type scripts the joiners choose a
 * letter's joined or separate form. In the Brahmic scripts they choose
 * how a consonant after a virama is written.
 */
const JOINING_SCRIPT_LETTER = String.raw`(?:(?=[\p{L}\p{M}])[\p{scx=Arab}\p{scx=Syrc}\p{scx=Nkoo}\p{scx=Mong}\p{scx=Deva}\p{scx=Beng}\p{scx=Guru}\p{scx=Gujr}\p{scx=Orya}\p{scx=Taml}\p{scx=Telu}\p{scx=Knda}\p{scx=Mlym}\p{scx=Sinh}\p{scx=Khmr}\p{scx=Mymr}])`;

/**
 * Matches U+200C or U+200D between two letters or marks of those scripts,
 * as Persian (U+0645 U+06CC U+200C U+062E) and Sinhala (U+0DC1 U+0DCA
 * U+200D U+0DBB) write them. There the joiner changes the shapes around
 * it, so it is not invisible. This approximates the contexts of UAX #31
 * section 2.3, which need the joining type and virama properties that
 * JavaScript regular expressions lack.
 */
const SCRIPT_JOINER = new RegExp(
  String.raw`(?<=${JOINING_SCRIPT_LETTER})[\u200C\u200D](?=${JOINING_SCRIPT_LETTER})`,
  "uy",
);

/** Returns true when the invisible character at `index` of `name` is a joiner in one of the contexts that need it. */
function isNeededJoiner(name: string, index: number): boolean {
  EMOJI_ZERO_WIDTH_JOINER.lastIndex = index;
  if (EMOJI_ZERO_WIDTH_JOINER.test(name)) return true;
  SCRIPT_JOINER.lastIndex = index;
  return SCRIPT_JOINER.test(name);
}

/** Returns the index of the first invisible character in `name`, or -1. */
function findInvisibleCharacter(name: string): number {
  for (const match of name.matchAll(INVISIBLE_CHARACTER)) {
    if (!isNeededJoiner(name, match.index)) return match.index;
  }
  return -1;
}

/** Describes the code point at UTF-16 `index` of `name`, e.g. `U+000A at code point 3`. */
function describeCodePointAt(name: string, index: number): string {
  const position = [...name.slice(0, index)].length + 1;
  const hex = name.codePointAt(index)!.toString(16).toUpperCase();
  return `U+${hex.padStart(4, "0")} at code point ${position}`;
}

const nameSchema = z
  .string()
  .refine((name) => {
    const length = [...name].length;
    return length >= 1 && length <= MAX_NAME_CODE_POINTS;
  }, `must be 1-${MAX_NAME_CODE_POINTS} characters`)
  // As commandIds: a lone surrogate turns into U+FFFD in UTF-8 consumers.
  .refine((name) => !LONE_SURROGATE.test(name), {
    message: "must be well-formed Unicode: it has an unpaired surrogate",
  })
  // Names are shown on dashboards and in logs, where a control character
  // is invisible or acts on the terminal. JSON escapes only U+0000-U+001F,
  // so U+007F-U+009F would reach a log reader as they are.
  .superRefine((name, context) => {
    const match = CONTROL_CHARACTER.exec(name);
    if (match === null) return;
    context.addIssue({
      code: "custom",
      message: `must not contain control characters (U+0000-U+001F, U+007F-U+009F), found ${describeCodePointAt(name, match.index)}`,
    });
  })
  // A dashboard would show such a name as another one: a right-to-left
  // override reverses the text after it, and a zero-width space makes two
  // names that look the same.
  .superRefine((name, context) => {
    const index = findInvisibleCharacter(name);
    if (index === -1) return;
    const joinerHint =
      name[index] === "\u200D"
        ? ". U+200D is allowed only between two emoji, or between letters of a script that needs it"
        : name[index] === "\u200C"
          ? ". U+200C is allowed only between letters of a script that needs it"
          : "";
    context.addIssue({
      code: "custom",
      message: `must not contain invisible or direction-changing characters (Unicode format characters, line and paragraph separators, default-ignorable code points and noncharacters), found ${describeCodePointAt(name, index)}${joinerHint}`,
    });
  });

const fieldSchemas = {
  metadata: z.object({ name: nameSchema }),
  on: z.object({ on: z.boolean() }),
  dimming: z.object({ brightness: z.number().min(0).max(100) }),
  color_temperature: z.object({
    // The range comes first, so that a huge value is reported against it
    // rather than against the largest safe integer.
    mirek: z.number().min(50).max(1000).int().nullable(),
  }),
  color: z.object({
    xy: z.object({
      x: z.number().min(0).max(1),
      y: z.number().min(0).max(1),
    }),
  }),
};

/**
 * The `type` of a light: optional on input, but when present it must be
 * "light". A CLIP v2 `grouped_light` or `scene` has other fields and rules,
 * so a bridge or app that sends one is rejected rather than stored as a light.
 */
const lightTypeSchema = z.literal("light").optional();

/** A light document; the output always carries `type: "light"`. */
export const lightSchema = z
  .object({
    id: lightIdSchema,
    type: lightTypeSchema,
    metadata: fieldSchemas.metadata.optional(),
    on: fieldSchemas.on,
    dimming: fieldSchemas.dimming.optional(),
    color_temperature: fieldSchemas.color_temperature.optional(),
    color: fieldSchemas.color.optional(),
  })
  .transform(({ type: _type, ...light }) => ({
    ...light,
    type: "light" as const,
  }));

/**
 * A light change without `id`: at least one field, each complete. A `type`
 * other than "light" is rejected, and the output drops `type`, which is not
 * a field that a change sets.
 */
export const lightPatchSchema = z
  .object({
    type: lightTypeSchema,
    metadata: fieldSchemas.metadata.optional(),
    on: fieldSchemas.on.optional(),
    dimming: fieldSchemas.dimming.optional(),
    color_temperature: fieldSchemas.color_temperature.optional(),
    color: fieldSchemas.color.optional(),
  })
  .refine(
    ({ type: _type, ...fields }) =>
      Object.values(fields).some((field) => field !== undefined),
    "must carry at least one of metadata, on, dimming, color_temperature, color",
  )
  .transform(({ type: _type, ...patch }) => patch);

/** A light change: `id` plus the fields of a patch, whose `type` is checked and dropped as in `lightPatchSchema`. */
export const lightChangeSchema = z
  .object({
    id: lightIdSchema,
    type: lightTypeSchema,
    metadata: fieldSchemas.metadata.optional(),
    on: fieldSchemas.on.optional(),
    dimming: fieldSchemas.dimming.optional(),
    color_temperature: fieldSchemas.color_temperature.optional(),
    color: fieldSchemas.color.optional(),
  })
  .refine(
    ({ id: _id, type: _type, ...fields }) =>
      Object.values(fields).some((field) => field !== undefined),
    "must carry at least one of metadata, on, dimming, color_temperature, color",
  )
  .transform(({ type: _type, ...change }) => change);

function uniqueIds<T extends { id: string }>(
  lights: T[],
  context: z.RefinementCtx,
): void {
  const seen = new Map<string, number>();
  lights.forEach((light, index) => {
    const first = seen.get(light.id);
    if (first !== undefined) {
      context.addIssue({
        code: "custom",
        path: [index, "id"],
        message: `duplicates lights[${first}].id ${JSON.stringify(light.id)}`,
      });
    }
    seen.set(light.id, index);
  });
}

const lightListSchema = z
  .array(lightSchema)
  .max(
    MAX_LIGHTS_PER_BRIDGE,
    `must hold at most ${MAX_LIGHTS_PER_BRIDGE} lights`,
  )
  .superRefine(uniqueIds);

const changeListSchema = z
  .array(lightChangeSchema)
  .min(1, "must hold at least one light change")
  .max(
    MAX_LIGHTS_PER_BRIDGE,
    `must hold at most ${MAX_LIGHTS_PER_BRIDGE} lights`,
  )
  .superRefine(uniqueIds);

export const snapshotPayloadSchema = z.object({ lights: lightListSchema });
export const changedPayloadSchema = z.object({ lights: changeListSchema });
// Null too: socket.io-client sends an `undefined` argument as null.
export const emptyPayloadSchema = z.object({}).nullish();
export const bridgeIdPayloadSchema = z.object({ bridgeId: bridgeIdSchema });

export const commandIdSchema = z
  .string()
  .min(1, "must not be empty")
  .max(
    MAX_COMMAND_ID_LENGTH,
    `must be at most ${MAX_COMMAND_ID_LENGTH} characters`,
  )
  // Redis keys are UTF-8, where every lone surrogate becomes U+FFFD, so
  // two such IDs would name one remembered answer.
  .refine((id) => !LONE_SURROGATE.test(id), {
    message: "must be well-formed Unicode: it has an unpaired surrogate",
  })
  // The ID is logged and sent to the bridge, where such a character could
  // forge a log line or hide part of the ID.
  .superRefine((id, context) => {
    const match = ID_FORBIDDEN_CHARACTER.exec(id);
    if (match === null) return;
    context.addIssue({
      code: "custom",
      message: `must not contain control, format or line-separator characters, found ${describeCodePointAt(id, match.index)}`,
    });
  });

/**
 * Adds an issue at `change.id` when it is not a string or differs from
 * `lightId`. The patch schema drops `id`, so such an `id` would otherwise
 * be ignored and the command sent to `lightId`. An equal `id` passes, so
 * an app may send back a light document it read.
 */
function rejectOtherChangeId(payload: unknown, context: z.RefinementCtx): void {
  if (typeof payload !== "object" || payload === null) return;
  const { lightId, change } = payload as { lightId: unknown; change: unknown };
  if (!lightIdSchema.safeParse(lightId).success) return;
  if (typeof change !== "object" || change === null) return;
  if (!Object.hasOwn(change, "id")) return;
  const { id } = change as { id: unknown };
  if (id === lightId) return;
  const hint = "Leave change.id out or set it to lightId";
  const message =
    typeof id === "string"
      ? `${JSON.stringify(id.slice(0, 80))} differs from lightId ${JSON.stringify(lightId)}. ${hint}`
      : `must be a string, got ${id === null ? "null" : typeof id}. ${hint}`;
  context.addIssue({ code: "custom", path: ["change", "id"], message });
}

/**
 * An app's `light:set`. As in the HTTP API, `change.id` is compared with
 * a valid `lightId` before the other fields are parsed, so a change with
 * only another light's `id` is reported by that `id`.
 */
export const appLightSetPayloadSchema = z
  .unknown()
  .superRefine(rejectOtherChangeId)
  .pipe(
    z.object({
      bridgeId: bridgeIdSchema,
      lightId: lightIdSchema,
      change: lightPatchSchema,
      commandId: commandIdSchema.optional(),
    }),
  );

/**
 * A bridge's successful answer to `light:set`. Its light is applied as a
 * state change, so it may be the whole document or only the changed fields.
 */
export const bridgeSuccessAnswerSchema = z.object({
  ok: z.literal(true),
  data: z.object({ light: lightChangeSchema }),
});

/** A bridge's refusal of `light:set`, with its own error code. */
export const bridgeRefusalAnswerSchema = z.object({
  ok: z.literal(false),
  error: z.object({
    code: z.string().min(1).max(64),
    message: z.string().max(500),
  }),
});
