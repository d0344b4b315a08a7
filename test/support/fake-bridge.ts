import type { Socket } from "socket.io-client";
import {
  BridgeClient,
  type BridgeCommandAnswer,
  type Light,
  type LightChange,
  type LightSetCommand,
  type SyncedEvent,
  type VersionData,
} from "../../client-sdk/src/index.ts";
import { light } from "./fixtures.ts";
import { bridgeToken } from "./tokens.ts";

/** Reconnect delays for test clients: 100 ms doubling up to 1 s, with the SDK's full jitter. */
export const FAST_RECONNECT = { minDelayMs: 100, maxDelayMs: 1000 };

/** Light fields that a change replaces whole, as the wire contract defines them. */
const CHANGE_FIELDS = [
  "metadata",
  "on",
  "dimming",
  "color_temperature",
  "color",
] as const;

/** Returns lights `ids` in the shape the relay stores them: the small fixture light with `type`. */
export function lightMap(...ids: string[]): Map<string, Light> {
  return new Map(
    ids.map((id) => [id, { ...light(id), type: "light" } as Light]),
  );
}

/**
 * Returns lights `ids` as the fixture builds them, without `type`, which a
 * bridge may leave out. A test that acknowledges commands from this map
 * can check that the relay adds `type` to the lights it returns.
 */
export function untypedLightMap(...ids: string[]): Map<string, Light> {
  // Light declares `type` required, so the cast hides its absence from tsc.
  return new Map(ids.map((id) => [id, light(id) as unknown as Light]));
}

/**
 * Applies `command` to `lights` as bridge firmware does: each field the
 * change carries replaces the stored one. Returns the answer to send, a
 * refusal with code `UNKNOWN_LIGHT` for a light the bridge lacks.
 */
export function applyLightCommand(
  lights: Map<string, Light>,
  command: LightSetCommand,
): BridgeCommandAnswer {
  const current = lights.get(command.lightId);
  if (current === undefined) {
    return {
      ok: false,
      error: {
        code: "UNKNOWN_LIGHT",
        message: `no light ${command.lightId}`,
      },
    };
  }
  const next: Light = { ...current };
  for (const field of CHANGE_FIELDS) {
    const value = command.change[field];
    if (value !== undefined) Object.assign(next, { [field]: value });
  }
  lights.set(command.lightId, next);
  return { ok: true, data: { light: next } };
}

/**
 * Answers `light:set` on a raw Socket.IO bridge socket from `lights`, and
 * returns the commands received. `beforeAnswer` runs between a command's
 * arrival and its answer.
 */
export function answerLightSet(
  socket: Socket,
  lights: Map<string, Light>,
  beforeAnswer: (command: LightSetCommand) => void = () => undefined,
): LightSetCommand[] {
  const received: LightSetCommand[] = [];
  socket.on(
    "light:set",
    (command: LightSetCommand, ack: (answer: BridgeCommandAnswer) => void) => {
      received.push(command);
      beforeAnswer(command);
      ack(applyLightCommand(lights, command));
    },
  );
  return received;
}

/** A `light:set` the fake bridge received, with its arrival time (`Date.now()`). */
export interface ReceivedCommand {
  command: LightSetCommand;
  at: number;
}

/** A snapshot the relay acknowledged, with the time of the acknowledgement (`Date.now()`). */
export interface TimedSync extends SyncedEvent {
  at: number;
}

/**
 * A bridge on the SDK's BridgeClient whose lights live in a map. It answers
 * `light:set` from that map, and its snapshots after a reconnect or a
 * `state:resync` send the map as it is, commands applied included.
 */
export interface FakeBridge {
  readonly bridgeId: string;
  readonly client: BridgeClient;
  readonly lights: Map<string, Light>;
  readonly commands: ReceivedCommand[];
  readonly syncs: TimedSync[];
  /**
   * Makes the bridge apply every later command on arrival but hold its
   * answer, as slow firmware does, until `answerCommands()`.
   */
  withholdAnswers(): void;
  /**
   * Sends the held answers of commands that arrived on the current
   * connection, and answers later commands at once. Answers to commands
   * of an earlier connection are never sent: that connection is gone.
   */
  answerCommands(): void;
  /** Changes a light on the bridge, as a wall switch does, and reports the change. */
  switchLight(change: LightChange): Promise<VersionData>;
  /** Lights sorted by ID, for comparison with what the relay stores. */
  sortedLights(): Light[];
  close(): void;
}

export interface FakeBridgeOptions {
  url: string;
  bridgeId: string;
  /** Light IDs the bridge starts with. */
  lightIds?: string[];
}

/**
 * Starts a fake bridge and resolves once the relay has acknowledged its
 * first snapshot. Reconnects use `FAST_RECONNECT`.
 */
export async function startFakeBridge(
  options: FakeBridgeOptions,
): Promise<FakeBridge> {
  const lights = lightMap(...(options.lightIds ?? ["a", "b", "c"]));
  const commands: ReceivedCommand[] = [];
  const syncs: TimedSync[] = [];
  let withholding = false;
  /** Counts connections, so that held answers know which one they belong to. */
  let connection = 0;
  const heldAnswers: { connection: number; send: () => void }[] = [];
  const client = new BridgeClient({
    url: options.url,
    token: await bridgeToken(options.bridgeId),
    reconnect: FAST_RECONNECT,
    getLights: () => [...lights.values()],
    onCommand: (command) => {
      commands.push({ command, at: Date.now() });
      const answer = applyLightCommand(lights, command);
      if (!withholding) return answer;
      // The SDK acknowledges when this promise settles, so until then the
      // relay waits.
      return new Promise<BridgeCommandAnswer>((resolve) => {
        heldAnswers.push({ connection, send: () => resolve(answer) });
      });
    },
  });

  client.on("state", ({ state }) => {
    if (state === "connected") connection += 1;
  });
  client.on("synced", (event) => syncs.push({ ...event, at: Date.now() }));

  const firstSync = new Promise<void>((resolve) =>
    client.once("synced", () => resolve()),
  );
  await client.connect();
  await firstSync;

  return {
    bridgeId: options.bridgeId,
    client,
    lights,
    commands,
    syncs,
    withholdAnswers: () => {
      withholding = true;
    },
    answerCommands: () => {
      withholding = false;
      for (const answer of heldAnswers.splice(0)) {
        if (answer.connection === connection) answer.send();
      }
    },
    switchLight: (change) => {
      applyLightCommand(lights, {
        commandId: "wall-switch",
        lightId: change.id,
        change,
      });
      return client.reportChanges([change]);
    },
    sortedLights: () => sortLights([...lights.values()]),
    close: () => client.close(),
  };
}

/** Returns `lights` sorted by ID, since the contract gives their order no meaning. */
export function sortLights(lights: Iterable<Light>): Light[] {
  return [...lights].sort(compareIds);
}

function compareIds(a: Light, b: Light): number {
  if (a.id < b.id) return -1;
  if (a.id > b.id) return 1;
  return 0;
}
