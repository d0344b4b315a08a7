import { z } from "zod";
import {
  ERROR_CODES,
  type Ack,
  type Light,
  type LightPatch,
} from "../../client-sdk/src/protocol.ts";
import {
  bridgeIdSchema,
  commandIdSchema,
  lightIdSchema,
  lightPatchSchema,
  lightSchema,
} from "../protocol/schemas.ts";
import { describeFirstIssue } from "../protocol/validate.ts";

/**
 * Schemas of the messages that one relay process sends straight to another
 * over the server bus. Objects strip unknown keys, so a field that a newer
 * relay adds is ignored rather than rejected. They strip rather than pass
 * such keys because the command router spreads a command message into the
 * command it executes, which would then carry fields that no type shows.
 *
 * Fields that an app or bridge sent use the schemas that checked them on
 * arrival, because handlers send them on to a bridge or an app as they
 * are. IDs that relays make up (request, server and socket IDs) need only
 * be non-empty strings.
 *
 * NOTE: a relay whose protocol schemas accept more than these (another
 * version with a longer name limit, for example) can send messages that
 * this relay drops, and the app waiting for them then gets TIMEOUT.
 */

const relayIdSchema = z.string().min(1);

/** An error of an acknowledgement, as ErrorBody in the protocol. */
const errorBodySchema = z.object({
  // STATUS_BY_CODE has no HTTP status for an unknown code, so the HTTP API
  // would fail to send it.
  code: z.enum(ERROR_CODES),
  message: z.string(),
  retryAfterMs: z.number().nonnegative().optional(),
  details: z.object({ code: z.string(), message: z.string() }).optional(),
});

/** The acknowledgement of a command that the bridge's process sends back. */
const commandAnswerSchema = z.discriminatedUnion("ok", [
  z.object({ ok: z.literal(true), data: z.object({ light: lightSchema }) }),
  z.object({ ok: z.literal(false), error: errorBodySchema }),
]);

const commandMessageSchema = z.object({
  type: z.literal("command"),
  requestId: relayIdSchema,
  /** Server ID of the process that waits for the reply. */
  origin: relayIdSchema,
  bridgeId: bridgeIdSchema,
  commandId: commandIdSchema,
  lightId: lightIdSchema,
  change: lightPatchSchema,
  // Older relays send neither field.
  idempotent: z.boolean().optional(),
  /** Time (ms since the epoch) by which the bridge must answer for the reply to reach the origin in time. */
  deadline: z.number().optional(),
});

const replyMessageSchema = z.object({
  type: z.literal("reply"),
  requestId: relayIdSchema,
  answer: commandAnswerSchema,
});

const replaceMessageSchema = z.object({
  type: z.literal("replace"),
  bridgeId: bridgeIdSchema,
  socketId: relayIdSchema,
});

const reclaimMessageSchema = z.object({
  type: z.literal("reclaim"),
  bridgeId: bridgeIdSchema,
  socketId: relayIdSchema,
  /**
   * A gone socket whose claim the receiver takes over for `socketId`, in
   * one step. Older relays send no such field, and ignore it.
   */
  staleSocketId: relayIdSchema.optional(),
});

/**
 * Asks the server that a bridge's claim names whether it still has socket
 * `socketId`, because Redis data restored from an older copy can name a
 * socket that is gone. The server sends `replace` for the requester's
 * socket when it has that socket. Otherwise, for a requester that sets
 * `takeOver`, it sends `reclaim` with `staleSocketId` and leaves the
 * claim alone. For an older requester, which does not set it, the server
 * releases the claim and then sends `reclaim`.
 */
const checkClaimMessageSchema = z.object({
  type: z.literal("checkClaim"),
  bridgeId: bridgeIdSchema,
  socketId: relayIdSchema,
  requester: z.object({ serverId: relayIdSchema, socketId: relayIdSchema }),
  takeOver: z.boolean().optional(),
});

export const busMessageSchema = z.discriminatedUnion("type", [
  commandMessageSchema,
  replyMessageSchema,
  replaceMessageSchema,
  reclaimMessageSchema,
  checkClaimMessageSchema,
]);

/** A message that one relay process sends straight to another. */
export type BusMessage = z.output<typeof busMessageSchema>;

export type BusMessageType = BusMessage["type"];

export const BUS_MESSAGE_TYPES: ReadonlySet<string> = new Set<BusMessageType>(
  busMessageSchema.options.map((option) => option.shape.type.value),
);

/** True when `A` and `B` are assignable to each other. */
type MutuallyAssignable<A, B> = [A] extends [B]
  ? [B] extends [A]
    ? true
    : false
  : false;

/** Compiles only when `T` is `true`. */
type Expect<T extends true> = T;

// The router and the app service type the same values with the protocol's
// types, so these fail to compile when a schema and its type drift apart.
type _ChangeMatchesLightPatch = Expect<
  MutuallyAssignable<z.output<typeof lightPatchSchema>, LightPatch>
>;
type _AnswerMatchesAck = Expect<
  MutuallyAssignable<
    z.output<typeof commandAnswerSchema>,
    Ack<{ light: Light }>
  >
>;

/** Reason for dropping a received bus message: not JSON, or failing the schema. */
export type DropReason = "not_json" | "invalid";

/** Longest `type` of a dropped message that is reported, in characters. */
const MAX_REPORTED_TYPE_LENGTH = 64;

/** A received bus message that is not JSON or fails the schema. */
export interface DroppedBusMessage {
  success: false;
  reason: DropReason;
  /** The message's `type` when it is a string, cut to 64 characters. */
  type: string | undefined;
  /** Description of the failure, e.g. `invalid change.on.on: ...` or the JSON syntax error. */
  problem: string;
}

export type BusMessageParseResult =
  { success: true; message: BusMessage } | DroppedBusMessage;

/**
 * Parses and validates a raw bus message. An invalid one is returned as a
 * DroppedBusMessage, not thrown.
 */
export function parseBusMessage(raw: string): BusMessageParseResult {
  let json: unknown;
  try {
    json = JSON.parse(raw);
  } catch (error) {
    const problem = error instanceof Error ? error.message : String(error);
    return { success: false, reason: "not_json", type: undefined, problem };
  }
  const result = busMessageSchema.safeParse(json);
  if (result.success) return { success: true, message: result.data };
  return {
    success: false,
    reason: "invalid",
    type: readType(json),
    problem: describeFirstIssue(result.error),
  };
}

function readType(json: unknown): string | undefined {
  if (typeof json !== "object" || json === null) return undefined;
  const { type } = json as { type?: unknown };
  if (typeof type !== "string") return undefined;
  return type.slice(0, MAX_REPORTED_TYPE_LENGTH);
}
