import assert from "node:assert/strict";
import type {
  BridgePresence,
  BridgeSnapshotEvent,
  Light,
  LightChange,
  LightFields,
  LightsChangedEvent,
} from "../client-sdk/src/protocol.ts";
import { RelayError } from "../server/errors.ts";
import type { AppBroadcaster } from "../server/relay/broadcaster.ts";
import {
  StateWriter,
  type WriterSession,
} from "../server/relay/state-writer.ts";
import { MemoryStore } from "../server/state/memory-store.ts";
import type {
  BridgeStateRecord,
  LightWrite,
  WriteResult,
} from "../server/state/store.ts";

const BRIDGE_ID = "001788fffe4f3a2b";
const OTHER_BRIDGE_ID = "001788fffe4f3a2c";

type SentEvent =
  | { event: "lights:changed"; payload: LightsChangedEvent }
  | { event: "bridge:snapshot"; payload: BridgeSnapshotEvent }
  | { event: "bridge:presence"; payload: BridgePresence };

/** An AppBroadcaster that records a copy of every event, in sending order. */
class RecordingBroadcaster implements AppBroadcaster {
  readonly sent: SentEvent[] = [];

  lightsChanged(payload: LightsChangedEvent): void {
    this.sent.push({
      event: "lights:changed",
      payload: structuredClone(payload),
    });
  }

  snapshot(payload: BridgeSnapshotEvent): void {
    this.sent.push({
      event: "bridge:snapshot",
      payload: structuredClone(payload),
    });
  }

  presence(payload: BridgePresence): void {
    this.sent.push({
      event: "bridge:presence",
      payload: structuredClone(payload),
    });
  }
}

/**
 * A MemoryStore in which another writer writes right after each of the next
 * `pendingWrites` reads. The StateWriter's own write then conflicts, as it
 * would if another relay process had written in between.
 */
class RacedMemoryStore extends MemoryStore {
  pendingWrites = 0;
  /** Calls of getLights, the read a change makes before its write. */
  lightReads = 0;
  otherWrite: { bridgeId: string; epoch: number; lights: Light[] } | undefined;

  override async getState(bridgeId: string): Promise<BridgeStateRecord> {
    const state = await super.getState(bridgeId);
    await this.writeAsOtherWriter(state.version);
    return state;
  }

  override async getLights(
    bridgeId: string,
    lightIds: string[],
  ): Promise<{ version: number; lights: (Light | null)[] }> {
    this.lightReads += 1;
    const result = await super.getLights(bridgeId, lightIds);
    await this.writeAsOtherWriter(result.version);
    return result;
  }

  /** Writes whose reply is lost after the write: they apply, then throw. */
  lostReplies = 0;

  override async writeLights(
    bridgeId: string,
    write: LightWrite,
  ): Promise<WriteResult> {
    const result = await super.writeLights(bridgeId, write);
    if (this.lostReplies === 0) return result;
    this.lostReplies -= 1;
    throw new Error("the write's reply timed out");
  }

  private async writeAsOtherWriter(readVersion: number): Promise<void> {
    if (this.pendingWrites === 0 || this.otherWrite === undefined) return;
    this.pendingWrites -= 1;
    const { bridgeId, epoch, lights } = this.otherWrite;
    const result = await super.writeLights(bridgeId, {
      epoch,
      expectedVersion: readVersion,
      replaceAll: false,
      lights,
    });
    assert.equal(result.status, "written");
  }
}

function lamp(id: string, fields: Partial<LightFields> = {}): Light {
  return {
    id,
    type: "light",
    metadata: { name: `Lamp ${id}` },
    on: { on: false },
    dimming: { brightness: 50 },
    ...fields,
  };
}

/** Awaits `promise`, which must reject, and returns its RelayError. */
async function rejection(promise: Promise<unknown>): Promise<RelayError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof RelayError, `expected RelayError: ${error}`);
    return error;
  }
  assert.fail("expected the write to be rejected");
}

describe("StateWriter", () => {
  let store: RacedMemoryStore;
  let broadcaster: RecordingBroadcaster;
  let writer: StateWriter;
  let session: WriterSession;

  async function claim(bridgeId: string): Promise<WriterSession> {
    const { epoch } = await store.claimConnection(
      bridgeId,
      "server-1",
      `socket-${bridgeId}`,
      new Date(),
    );
    return { bridgeId, epoch };
  }

  beforeEach(async () => {
    store = new RacedMemoryStore();
    broadcaster = new RecordingBroadcaster();
    writer = new StateWriter(store, broadcaster);
    session = await claim(BRIDGE_ID);
  });

  afterEach(async () => {
    await store.close();
  });

  describe("applySnapshot", () => {
    it("stores first snapshot as version 1", async () => {
      const version = await writer.applySnapshot(session, [
        lamp("b"),
        lamp("a"),
      ]);
      assert.equal(version, 1);
      const state = await store.getState(BRIDGE_ID);
      assert.equal(state.version, 1);
      assert.deepEqual(state.lights, [lamp("a"), lamp("b")]);
    });

    it("broadcasts snapshot with whole state", async () => {
      await writer.applySnapshot(session, [lamp("b"), lamp("a")]);
      assert.deepEqual(broadcaster.sent, [
        {
          event: "bridge:snapshot",
          payload: {
            bridgeId: BRIDGE_ID,
            version: 1,
            lights: [lamp("a"), lamp("b")],
          },
        },
      ]);
    });

    it("keeps version 0 for empty snapshot", async () => {
      const version = await writer.applySnapshot(session, []);
      assert.equal(version, 0);
      const state = await store.getState(BRIDGE_ID);
      assert.equal(state.version, 0);
      assert.deepEqual(broadcaster.sent, []);
    });

    it("keeps version for unchanged snapshot", async () => {
      await writer.applySnapshot(session, [lamp("a"), lamp("b")]);
      const reordered: Light = {
        dimming: { brightness: 50 },
        on: { on: false },
        metadata: { name: "Lamp a" },
        type: "light",
        id: "a",
      };
      const version = await writer.applySnapshot(session, [
        lamp("b"),
        reordered,
      ]);
      assert.equal(version, 1);
      const state = await store.getState(BRIDGE_ID);
      assert.equal(state.version, 1);
      assert.equal(broadcaster.sent.length, 1);
    });

    it("removes lights absent from snapshot", async () => {
      await writer.applySnapshot(session, [lamp("a"), lamp("b"), lamp("c")]);
      const version = await writer.applySnapshot(session, [
        lamp("c"),
        lamp("a"),
      ]);
      assert.equal(version, 2);
      const state = await store.getState(BRIDGE_ID);
      assert.deepEqual(state.lights, [lamp("a"), lamp("c")]);
      assert.deepEqual(broadcaster.sent.at(-1), {
        event: "bridge:snapshot",
        payload: {
          bridgeId: BRIDGE_ID,
          version: 2,
          lights: [lamp("a"), lamp("c")],
        },
      });
    });

    it("stores changed light of snapshot", async () => {
      await writer.applySnapshot(session, [lamp("a")]);
      const changed = lamp("a", { color_temperature: { mirek: null } });
      const version = await writer.applySnapshot(session, [changed]);
      assert.equal(version, 2);
      const state = await store.getState(BRIDGE_ID);
      assert.deepEqual(state.lights, [changed]);
    });

    it("empties bridge with empty snapshot", async () => {
      await writer.applySnapshot(session, [lamp("a")]);
      const version = await writer.applySnapshot(session, []);
      assert.equal(version, 2);
      const state = await store.getState(BRIDGE_ID);
      assert.deepEqual(state.lights, []);
      assert.deepEqual(broadcaster.sent.at(-1), {
        event: "bridge:snapshot",
        payload: { bridgeId: BRIDGE_ID, version: 2, lights: [] },
      });
    });

    it("versions each bridge separately", async () => {
      const otherSession = await claim(OTHER_BRIDGE_ID);
      await writer.applySnapshot(session, [lamp("a")]);
      await writer.applySnapshot(session, [lamp("b")]);
      const otherVersion = await writer.applySnapshot(otherSession, [
        lamp("a"),
      ]);
      assert.equal(otherVersion, 1);
      const state = await store.getState(BRIDGE_ID);
      assert.equal(state.version, 2);
    });

    it("rejects snapshot from replaced connection", async () => {
      await writer.applySnapshot(session, [lamp("a")]);
      await claim(BRIDGE_ID);
      const error = await rejection(writer.applySnapshot(session, [lamp("b")]));
      assert.equal(error.code, "UNAVAILABLE");
      const state = await store.getState(BRIDGE_ID);
      assert.equal(state.version, 1);
      assert.deepEqual(state.lights, [lamp("a")]);
      assert.equal(broadcaster.sent.length, 1);
    });

    it("rejects unchanged snapshot from replaced connection", async () => {
      await writer.applySnapshot(session, [lamp("a")]);
      await claim(BRIDGE_ID);
      const error = await rejection(writer.applySnapshot(session, [lamp("a")]));
      assert.equal(error.code, "UNAVAILABLE");
      assert.match(error.message, /newer connection/);
      assert.equal((await store.getState(BRIDGE_ID)).version, 1);
    });

    it("retries snapshot after write conflict", async () => {
      await writer.applySnapshot(session, [lamp("a")]);
      store.otherWrite = {
        bridgeId: BRIDGE_ID,
        epoch: session.epoch,
        lights: [lamp("z")],
      };
      store.pendingWrites = 1;
      const version = await writer.applySnapshot(session, [lamp("b")]);
      assert.equal(version, 3);
      const state = await store.getState(BRIDGE_ID);
      assert.deepEqual(state.lights, [lamp("b")]);
      assert.deepEqual(broadcaster.sent.at(-1), {
        event: "bridge:snapshot",
        payload: { bridgeId: BRIDGE_ID, version: 3, lights: [lamp("b")] },
      });
    });
  });

  describe("applyChanges", () => {
    beforeEach(async () => {
      await writer.applySnapshot(session, [lamp("a"), lamp("b"), lamp("c")]);
      broadcaster.sent.length = 0;
    });

    it("bumps version once per change", async () => {
      const result = await writer.applyChanges(session, [
        { id: "a", on: { on: true } },
        { id: "b", dimming: { brightness: 10 } },
      ]);
      assert.equal(result.version, 2);
      const state = await store.getState(BRIDGE_ID);
      assert.equal(state.version, 2);
      assert.deepEqual(state.lights, [
        lamp("a", { on: { on: true } }),
        lamp("b", { dimming: { brightness: 10 } }),
        lamp("c"),
      ]);
    });

    it("returns whole documents after write", async () => {
      const result = await writer.applyChanges(session, [
        { id: "b", dimming: { brightness: 10 } },
        { id: "a", on: { on: true } },
      ]);
      assert.deepEqual(result.lights, [
        lamp("b", { dimming: { brightness: 10 } }),
        lamp("a", { on: { on: true } }),
      ]);
    });

    it("broadcasts whole changed documents", async () => {
      await writer.applyChanges(session, [
        { id: "a", on: { on: true } },
        { id: "b", color: { xy: { x: 0.3, y: 0.4 } } },
      ]);
      assert.deepEqual(broadcaster.sent, [
        {
          event: "lights:changed",
          payload: {
            bridgeId: BRIDGE_ID,
            version: 2,
            lights: [
              lamp("a", { on: { on: true } }),
              lamp("b", { color: { xy: { x: 0.3, y: 0.4 } } }),
            ],
          },
        },
      ]);
    });

    it("replaces carried fields whole", async () => {
      await writer.applyChanges(session, [
        { id: "a", color: { xy: { x: 0.1, y: 0.2 } } },
      ]);
      const result = await writer.applyChanges(session, [
        {
          id: "a",
          metadata: { name: "Desk" },
          color: { xy: { x: 0.6, y: 0.3 } },
        },
      ]);
      assert.deepEqual(result.lights, [
        lamp("a", {
          metadata: { name: "Desk" },
          color: { xy: { x: 0.6, y: 0.3 } },
        }),
      ]);
    });

    it("keeps version for no-op change", async () => {
      const result = await writer.applyChanges(session, [
        { id: "a", on: { on: false }, dimming: { brightness: 50 } },
        { id: "b", metadata: { name: "Lamp b" } },
      ]);
      assert.equal(result.version, 1);
      assert.deepEqual(result.lights, [lamp("a"), lamp("b")]);
      const state = await store.getState(BRIDGE_ID);
      assert.equal(state.version, 1);
      assert.deepEqual(broadcaster.sent, []);
    });

    it("broadcasts only lights that changed", async () => {
      const result = await writer.applyChanges(session, [
        { id: "a", on: { on: false } },
        { id: "b", on: { on: true } },
      ]);
      assert.equal(result.version, 2);
      assert.deepEqual(result.lights, [
        lamp("a"),
        lamp("b", { on: { on: true } }),
      ]);
      assert.deepEqual(broadcaster.sent, [
        {
          event: "lights:changed",
          payload: {
            bridgeId: BRIDGE_ID,
            version: 2,
            lights: [lamp("b", { on: { on: true } })],
          },
        },
      ]);
    });

    it("rejects unknown light as NOT_FOUND", async () => {
      const error = await rejection(
        writer.applyChanges(session, [
          { id: "a", on: { on: true } },
          { id: "ghost", on: { on: true } },
        ]),
      );
      assert.equal(error.code, "NOT_FOUND");
      assert.match(error.message, /"ghost"/);
    });

    it("applies nothing with unknown light", async () => {
      await rejection(
        writer.applyChanges(session, [
          { id: "a", on: { on: true } },
          { id: "ghost", on: { on: true } },
        ]),
      );
      const state = await store.getState(BRIDGE_ID);
      assert.equal(state.version, 1);
      assert.deepEqual(state.lights, [lamp("a"), lamp("b"), lamp("c")]);
      assert.deepEqual(broadcaster.sent, []);
    });

    it("rejects change before any snapshot", async () => {
      const otherSession = await claim(OTHER_BRIDGE_ID);
      const error = await rejection(
        writer.applyChanges(otherSession, [{ id: "a", on: { on: true } }]),
      );
      assert.equal(error.code, "NOT_FOUND");
      const state = await store.getState(OTHER_BRIDGE_ID);
      assert.equal(state.version, 0);
    });

    it("rejects change from replaced connection", async () => {
      await claim(BRIDGE_ID);
      const error = await rejection(
        writer.applyChanges(session, [{ id: "a", on: { on: true } }]),
      );
      assert.equal(error.code, "UNAVAILABLE");
      const state = await store.getState(BRIDGE_ID);
      assert.equal(state.version, 1);
      assert.deepEqual(state.lights[0], lamp("a"));
      assert.deepEqual(broadcaster.sent, []);
    });

    it("orders concurrent changes by call", async () => {
      const brightnesses = [1, 2, 3, 4, 5];
      const results = await Promise.all(
        brightnesses.map((brightness) =>
          writer.applyChanges(session, [{ id: "a", dimming: { brightness } }]),
        ),
      );
      assert.deepEqual(
        results.map((result) => result.version),
        [2, 3, 4, 5, 6],
      );
      assert.deepEqual(
        broadcaster.sent.map((sent) => sent.payload),
        brightnesses.map((brightness, index) => ({
          bridgeId: BRIDGE_ID,
          version: index + 2,
          lights: [lamp("a", { dimming: { brightness } })],
        })),
      );
      const state = await store.getState(BRIDGE_ID);
      assert.deepEqual(
        state.lights[0],
        lamp("a", { dimming: { brightness: 5 } }),
      );
    });

    it("retries change after write conflict", async () => {
      store.otherWrite = {
        bridgeId: BRIDGE_ID,
        epoch: session.epoch,
        lights: [lamp("a", { dimming: { brightness: 80 } })],
      };
      store.pendingWrites = 1;
      const result = await writer.applyChanges(session, [
        { id: "a", on: { on: true } },
      ]);
      const expected = lamp("a", {
        on: { on: true },
        dimming: { brightness: 80 },
      });
      assert.equal(result.version, 3);
      assert.deepEqual(result.lights, [expected]);
      const state = await store.getState(BRIDGE_ID);
      assert.deepEqual(state.lights[0], expected);
      assert.deepEqual(broadcaster.sent, [
        {
          event: "lights:changed",
          payload: { bridgeId: BRIDGE_ID, version: 3, lights: [expected] },
        },
      ]);
    });

    it("gives up after repeated conflicts", async () => {
      store.otherWrite = {
        bridgeId: BRIDGE_ID,
        epoch: session.epoch,
        lights: [lamp("b", { dimming: { brightness: 80 } })],
      };
      store.pendingWrites = 100;
      const error = await rejection(
        writer.applyChanges(session, [{ id: "a", on: { on: true } }]),
      );
      store.pendingWrites = 0;
      assert.equal(error.code, "UNAVAILABLE");
      const state = await store.getState(BRIDGE_ID);
      assert.equal(state.version, 4);
      assert.deepEqual(state.lights[0], lamp("a"));
      assert.deepEqual(broadcaster.sent, []);
    });
  });

  describe("cached lights", () => {
    beforeEach(async () => {
      await writer.applySnapshot(session, [lamp("a"), lamp("b")]);
    });

    it("skips the read of cached lights", async () => {
      await writer.applyChanges(session, [{ id: "a", on: { on: true } }]);
      assert.equal(store.lightReads, 1);

      const result = await writer.applyChanges(session, [
        { id: "a", dimming: { brightness: 10 } },
      ]);
      assert.equal(store.lightReads, 1);
      const expected = lamp("a", {
        on: { on: true },
        dimming: { brightness: 10 },
      });
      assert.deepEqual(result, { version: 3, lights: [expected] });
      const state = await store.getState(BRIDGE_ID);
      assert.deepEqual(state.lights[0], expected);
    });

    it("reads lights the cache lacks", async () => {
      await writer.applyChanges(session, [{ id: "a", on: { on: true } }]);
      await writer.applyChanges(session, [{ id: "b", on: { on: true } }]);
      assert.equal(store.lightReads, 2);

      await writer.applyChanges(session, [
        { id: "a", on: { on: false } },
        { id: "b", on: { on: false } },
      ]);
      assert.equal(store.lightReads, 2);
    });

    it("reads again when a stale copy conflicts", async () => {
      await writer.applyChanges(session, [{ id: "a", on: { on: true } }]);
      const other = await store.writeLights(BRIDGE_ID, {
        epoch: session.epoch,
        expectedVersion: 2,
        replaceAll: false,
        lights: [lamp("a", { on: { on: true }, dimming: { brightness: 90 } })],
      });
      assert.deepEqual(other, { status: "written", version: 3 });

      const result = await writer.applyChanges(session, [
        { id: "a", metadata: { name: "Desk" } },
      ]);
      const expected = lamp("a", {
        metadata: { name: "Desk" },
        on: { on: true },
        dimming: { brightness: 90 },
      });
      assert.deepEqual(result, { version: 4, lights: [expected] });
      assert.equal(store.lightReads, 2);
    });

    it("reads again after a lost write reply", async () => {
      await writer.applyChanges(session, [{ id: "a", on: { on: true } }]);
      // Redis ran the write, but its reply did not arrive in time.
      store.lostReplies = 1;
      await assert.rejects(
        writer.applyChanges(session, [{ id: "a", on: { on: false } }]),
      );
      assert.equal(writer.knowsLight(session, "a"), false);

      await writer.applyChanges(session, [{ id: "a", on: { on: true } }]);
      const state = await store.getState(BRIDGE_ID);
      assert.deepEqual(state.lights[0]?.on, { on: true });
      assert.equal(state.version, 4);
    });

    it("knows lights under the session's epoch only", async () => {
      assert.equal(writer.knowsLight(session, "a"), false);
      await writer.applyChanges(session, [{ id: "a", on: { on: true } }]);
      assert.equal(writer.knowsLight(session, "a"), true);
      assert.equal(writer.knowsLight(session, "b"), false);
      const newer = { bridgeId: BRIDGE_ID, epoch: session.epoch + 1 };
      assert.equal(writer.knowsLight(newer, "a"), false);
    });

    it("forgets cached lights on a snapshot", async () => {
      await writer.applyChanges(session, [{ id: "a", on: { on: true } }]);
      await writer.applySnapshot(session, [lamp("a"), lamp("c")]);
      assert.equal(writer.knowsLight(session, "a"), false);

      await writer.applyChanges(session, [{ id: "a", on: { on: true } }]);
      assert.equal(store.lightReads, 2);
    });
  });

  describe("light ids named like Object members", () => {
    const ids = ["__proto__", "constructor", "hasOwnProperty", "toString"];

    it("stores and changes such lights", async () => {
      const version = await writer.applySnapshot(
        session,
        ids.map((id) => lamp(id)),
      );
      assert.equal(version, 1);
      const changes: LightChange[] = ids.map((id) => ({
        id,
        on: { on: true },
      }));
      const result = await writer.applyChanges(session, changes);
      assert.equal(result.version, 2);
      const state = await store.getState(BRIDGE_ID);
      assert.deepEqual(
        state.lights,
        [...ids].sort().map((id) => lamp(id, { on: { on: true } })),
      );
    });

    it("rejects unknown valueOf light", async () => {
      await writer.applySnapshot(
        session,
        ids.map((id) => lamp(id)),
      );
      const error = await rejection(
        writer.applyChanges(session, [{ id: "valueOf", on: { on: true } }]),
      );
      assert.equal(error.code, "NOT_FOUND");
    });
  });
});
