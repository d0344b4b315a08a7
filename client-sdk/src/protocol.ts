/**
 * Wire contract shared by the relay server and the client SDK: event names,
 * payload shapes and acknowledgement shapes for the `/bridge` and `/app`
 * namespaces. Both sides import this module so that a misspelt event or a
 * wrong payload fails to compile.
 */

/** Socket.IO namespace used by bridge firmware. */
export const BRIDGE_NAMESPACE = "/bridge";
/** Socket.IO namespace used by phone apps, dashboards and backend services. */
export const APP_NAMESPACE = "/app";

/** Maximum number of lights a bridge may report (the Hue Bridge Pro's limit). */
export const MAX_LIGHTS_PER_BRIDGE = 150;
/** Maximum length of a `commandId`. */
export const MAX_COMMAND_ID_LENGTH = 64;
/** Maximum token length the relay accepts, in characters (UTF-16 code units). */
export const MAX_TOKEN_LENGTH = 64 * 1024;

/** Error codes carried by a failed acknowledgement or HTTP error body. */
export const ERROR_CODES = [
  "INVALID_PAYLOAD",
  "UNAUTHORIZED",
  "FORBIDDEN",
  "NOT_FOUND",
  "BRIDGE_OFFLINE",
  "TIMEOUT",
  "BRIDGE_ERROR",
  "RATE_LIMITED",
  "PAYLOAD_TOO_LARGE",
  "UNAVAILABLE",
  "INTERNAL",
] as const;
export type ErrorCode = (typeof ERROR_CODES)[number];

/** Error codes of a rejected handshake (`connect_error` `data.code`). */
export type HandshakeErrorCode =
  "UNAUTHORIZED" | "FORBIDDEN" | "RATE_LIMITED" | "UNAVAILABLE";

/** `data` of a `connect_error` raised by the relay. */
export interface HandshakeErrorData {
  code: HandshakeErrorCode;
  /** Milliseconds to wait before the next attempt, with `RATE_LIMITED`. */
  retryAfterMs?: number;
}

/** Error object of a failed acknowledgement. */
export interface ErrorBody {
  code: ErrorCode;
  message: string;
  /** Present with `RATE_LIMITED`. */
  retryAfterMs?: number;
  /** Present with `BRIDGE_ERROR`: the bridge's own code and message. */
  details?: { code: string; message: string };
}

export type AckSuccess<T> = { ok: true; data: T };
export type AckFailure = { ok: false; error: ErrorBody };
/** The one acknowledgement shape of every request event. */
export type Ack<T> = AckSuccess<T> | AckFailure;
export type AckCallback<T> = (response: Ack<T>) => void;

/** A light in the shape of a Hue CLIP v2 `light` resource, trimmed. */
export interface Light {
  id: string;
  type: "light";
  metadata?: { name: string };
  on: { on: boolean };
  dimming?: { brightness: number };
  color_temperature?: { mirek: number | null };
  color?: { xy: { x: number; y: number } };
}

/** The fields of a light that a change may carry, each replaced whole. */
export type LightFields = Pick<
  Light,
  "metadata" | "on" | "dimming" | "color_temperature" | "color"
>;

/** A change to one light: its `id` plus at least one field. */
export type LightChange = { id: string } & Partial<LightFields>;

/** A change without `id`, as sent in `light:set`. */
export type LightPatch = Partial<LightFields>;

export interface BridgePresence {
  bridgeId: string;
  online: boolean;
  /** ISO 8601 UTC time of the last connection or disconnection. */
  lastSeen: string | null;
  /**
   * Count of the bridge's connections: each one that takes the bridge over
   * increments it, and 0 means never connected. It orders presence from
   * several servers: a lower epoch is older, and at the same epoch offline
   * follows online. The count restarts when Redis loses its data.
   */
  epoch: number;
}

export interface BridgeState extends BridgePresence {
  version: number;
  lights: Light[];
}

/** Identity of the relay process serving a socket, for diagnostics. */
export interface ServerInfo {
  serverId: string;
  pid?: number;
}

// ---- /bridge namespace ----

export interface SnapshotPayload {
  lights: Light[];
}
export interface ChangedPayload {
  lights: LightChange[];
}
export interface VersionData {
  version: number;
}
export interface LightSetCommand {
  commandId: string;
  lightId: string;
  change: LightPatch;
}
/**
 * What a bridge's handler returns for a `light:set` command. A refusal
 * carries the bridge's own error code, which need not be a relay code.
 */
export type LightSetAnswer =
  | AckSuccess<{ light: Light }>
  | { ok: false; error: { code: string; message: string } };
export interface ReasonPayload {
  reason: string;
}

export interface BridgeToRelayEvents {
  "state:snapshot": (
    payload: SnapshotPayload,
    ack: AckCallback<VersionData>,
  ) => void;
  "state:changed": (
    payload: ChangedPayload,
    ack: AckCallback<VersionData>,
  ) => void;
  "relay:info": (payload: object, ack: AckCallback<ServerInfo>) => void;
}

export interface RelayToBridgeEvents {
  "light:set": (
    command: LightSetCommand,
    ack: (answer: LightSetAnswer) => void,
  ) => void;
  "session:replaced": (payload: ReasonPayload) => void;
  "state:resync": (payload: ReasonPayload) => void;
}

// ---- /app namespace ----

export interface BridgeIdPayload {
  bridgeId: string;
}
export interface AppLightSetPayload {
  bridgeId: string;
  lightId: string;
  change: LightPatch;
  commandId?: string;
}
export interface LightsChangedEvent {
  bridgeId: string;
  version: number;
  lights: Light[];
}
export interface BridgeSnapshotEvent {
  bridgeId: string;
  version: number;
  lights: Light[];
}

export interface AppToRelayEvents {
  "bridge:list": (
    payload: object,
    ack: AckCallback<{ bridges: BridgePresence[] }>,
  ) => void;
  "bridge:subscribe": (
    payload: BridgeIdPayload,
    ack: AckCallback<BridgeState>,
  ) => void;
  "bridge:unsubscribe": (
    payload: BridgeIdPayload,
    ack: AckCallback<Record<string, never>>,
  ) => void;
  "light:set": (
    payload: AppLightSetPayload,
    ack: AckCallback<{ light: Light }>,
  ) => void;
  "relay:info": (payload: object, ack: AckCallback<ServerInfo>) => void;
}

/** Relay to app: events of this bridge may have been missed; subscribe again. */
export interface BridgeResyncEvent {
  bridgeId: string;
  reason: string;
}

export interface RelayToAppEvents {
  "lights:changed": (event: LightsChangedEvent) => void;
  "bridge:snapshot": (event: BridgeSnapshotEvent) => void;
  "bridge:presence": (event: BridgePresence) => void;
  "bridge:resync": (event: BridgeResyncEvent) => void;
}

/** Pattern of a bridge ID in its canonical (lowercase) form. */
export const BRIDGE_ID_PATTERN = /^[0-9a-f]{16}$/;

/** Returns the canonical lowercase bridge ID, or null when `value` is not one. */
export function normalizeBridgeId(value: unknown): string | null {
  if (typeof value !== "string") return null;
  const lower = value.toLowerCase();
  return BRIDGE_ID_PATTERN.test(lower) ? lower : null;
}
