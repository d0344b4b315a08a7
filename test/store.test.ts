import assert from "node:assert/strict";
import { randomUUID } from "node:crypto";
import { createClient, type RedisClientType } from "redis";
import type { Light } from "../client-sdk/src/protocol.ts";
import { canonicalLight } from "../server/state/lights.ts";
import { MemoryStore } from "../server/state/memory-store.ts";
import { RedisStore } from "../server/state/redis-store.ts";
import type { StateStore, StoredCommandAnswer } from "../server/state/store.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";

const ISO_UTC = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$/;

let bridgeCounter = 0;

/** Returns a bridge ID that no other test in this run uses. */
function newBridgeId(): string {
  bridgeCounter += 1;
  return (0xb000_0000_0000 + bridgeCounter).toString(16).padStart(16, "0");
}

function light(id: string, on: boolean, brightness = 50): Light {
  return {
    id,
    type: "light",
    metadata: { name: `Lamp ${id}` },
    on: { on },
    dimming: { brightness },
  };
}

function at(seconds: number): Date {
  return new Date(Date.UTC(2026, 0, 1, 12, 0, seconds));
}

/** Polls `read` until it returns null or `timeoutMs` passes, and returns the last value. */
async function pollUntilNull<T>(
  read: () => Promise<T | null>,
  timeoutMs: number,
): Promise<T | null> {
  const deadline = Date.now() + timeoutMs;
  let value = await read();
  while (value !== null && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    value = await read();
  }
  return value;
}

/** Redis resources of the Redis variant, set up once for its whole suite. */
interface RedisContext {
  server: RedisServer;
  client: RedisClientType;
  keyPrefix: string;
}

interface StoreVariant {
  name: string;
  before(): Promise<void>;
  after(): Promise<void>;
  createStore(): StateStore;
}

let redis: RedisContext | null = null;

function requireRedis(): RedisContext {
  if (redis === null)
    throw new Error("the Redis suite's before hook did not run");
  return redis;
}

const variants: StoreVariant[] = [
  {
    name: "MemoryStore",
    before: async () => {},
    after: async () => {},
    createStore: () => new MemoryStore(),
  },
  {
    name: "RedisStore",
    before: async () => {
      const server = await startRedisServer();
      const client: RedisClientType = createClient({ url: server.url });
      // Reconnects after restart() emit errors here, and without a listener they crash the process.
      client.on("error", () => {});
      await client.connect();
      redis = { server, client, keyPrefix: `test-${randomUUID()}` };
    },
    after: async () => {
      if (redis === null) return;
      await redis.client.close();
      await redis.server.stop();
      redis = null;
    },
    createStore: () => {
      const { client, keyPrefix } = requireRedis();
      return new RedisStore(client, { keyPrefix });
    },
  },
];

for (const variant of variants) {
  describe(variant.name, function () {
    this.timeout(10_000);
    let store: StateStore;

    before(() => variant.before());
    after(() => variant.after());
    beforeEach(() => {
      store = variant.createStore();
    });
    afterEach(() => store.close());

    describe("never-seen bridge", function () {
      it("getState returns version 0", async function () {
        const bridgeId = newBridgeId();
        const state = await store.getState(bridgeId);
        assert.equal(state.bridgeId, bridgeId);
        assert.equal(state.version, 0);
        assert.deepEqual(state.lights, []);
        assert.equal(state.lastSeen, null);
        assert.equal(state.connection, null);
      });

      it("getPresence returns offline", async function () {
        const bridgeId = newBridgeId();
        const [presence] = await store.getPresence([bridgeId]);
        assert.deepEqual(presence, {
          bridgeId,
          connection: null,
          epoch: 0,
          lastSeen: null,
        });
      });

      it("release returns false", async function () {
        const bridgeId = newBridgeId();
        assert.equal(
          await store.releaseConnection(bridgeId, "socket-1", at(1)),
          false,
        );
        const state = await store.getState(bridgeId);
        assert.equal(state.lastSeen, null);
      });

      it("write without claim is fenced", async function () {
        const bridgeId = newBridgeId();
        for (const epoch of [0, 1]) {
          const result = await store.writeLights(bridgeId, {
            epoch,
            expectedVersion: 0,
            replaceAll: true,
            lights: [light("a", true)],
          });
          assert.deepEqual(result, { status: "fenced" }, `epoch ${epoch}`);
        }
        const state = await store.getState(bridgeId);
        assert.equal(state.version, 0);
      });
    });

    describe("claim and release", function () {
      it("first claim has no previous", async function () {
        const result = await store.claimConnection(
          newBridgeId(),
          "server-a",
          "socket-1",
          at(1),
        );
        assert.equal(result.previous, null);
        assert.equal(result.epoch, 1);
      });

      it("each claim increments epoch", async function () {
        const bridgeId = newBridgeId();
        const first = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.releaseConnection(bridgeId, "socket-1", at(2));
        const second = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-2",
          at(3),
        );
        assert.equal(second.epoch, first.epoch + 1);
        assert.equal(second.previous, null);
      });

      it("claim stores connection and lastSeen", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(5),
        );
        const state = await store.getState(bridgeId);
        assert.deepEqual(state.connection, {
          serverId: "server-a",
          socketId: "socket-1",
          epoch,
        });
        assert.equal(state.lastSeen, at(5).toISOString());
      });

      it("release marks bridge offline", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        assert.equal(
          await store.releaseConnection(bridgeId, "socket-1", at(7)),
          true,
        );
        const [presence] = await store.getPresence([bridgeId]);
        assert.equal(presence?.connection, null);
        assert.equal(presence?.epoch, epoch, "the released claim's epoch");
        assert.equal(presence?.lastSeen, at(7).toISOString());
      });

      it("second release returns false", async function () {
        const bridgeId = newBridgeId();
        await store.claimConnection(bridgeId, "server-a", "socket-1", at(1));
        await store.releaseConnection(bridgeId, "socket-1", at(2));
        assert.equal(
          await store.releaseConnection(bridgeId, "socket-1", at(3)),
          false,
        );
        const [presence] = await store.getPresence([bridgeId]);
        assert.equal(presence?.lastSeen, at(2).toISOString());
      });

      it("releases only the holding socket", async function () {
        const bridgeId = newBridgeId();
        const first = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.claimConnection(bridgeId, "server-b", "socket-2", at(2));
        assert.deepEqual(
          await store.releaseSocket(bridgeId, "socket-1", at(3)),
          { released: false },
        );
        const [held] = await store.getPresence([bridgeId]);
        assert.deepEqual(held?.connection, {
          serverId: "server-b",
          socketId: "socket-2",
          epoch: first.epoch + 1,
        });
        assert.equal(held?.lastSeen, at(2).toISOString());

        assert.deepEqual(
          await store.releaseSocket(bridgeId, "socket-2", at(4)),
          {
            released: true,
            epoch: first.epoch + 1,
            replaced: { serverId: "server-a", socketId: "socket-1" },
          },
        );
        const [released] = await store.getPresence([bridgeId]);
        assert.equal(released?.connection, null);
        assert.equal(released?.epoch, first.epoch + 1);
        assert.equal(released?.lastSeen, at(4).toISOString());
        assert.deepEqual(
          await store.releaseSocket(bridgeId, "socket-2", at(5)),
          { released: false },
        );
        assert.deepEqual(
          await store.releaseSocket(newBridgeId(), "socket-2", at(5)),
          { released: false },
        );
      });

      it("claims only a free bridge", async function () {
        const bridgeId = newBridgeId();
        const first = await store.claimIfFree(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        assert.equal(first, 1);
        assert.equal(
          await store.claimIfFree(bridgeId, "server-b", "socket-2", at(2)),
          null,
        );
        const [held] = await store.getPresence([bridgeId]);
        assert.deepEqual(held?.connection, {
          serverId: "server-a",
          socketId: "socket-1",
          epoch: 1,
        });
        await store.releaseConnection(bridgeId, "socket-1", at(3));
        assert.equal(
          await store.claimIfFree(bridgeId, "server-b", "socket-2", at(4)),
          2,
        );
      });

      it("claims over a stale socket", async function () {
        const bridgeId = newBridgeId();
        await store.claimConnection(bridgeId, "server-a", "socket-1", at(1));
        assert.equal(
          await store.claimIfFree(
            bridgeId,
            "server-a",
            "socket-2",
            at(2),
            "socket-9",
          ),
          null,
        );
        assert.equal(
          await store.claimIfFree(
            bridgeId,
            "server-a",
            "socket-2",
            at(3),
            "socket-1",
          ),
          2,
        );
        const [held] = await store.getPresence([bridgeId]);
        assert.equal(held?.connection?.socketId, "socket-2");
      });

      it("reports no replaced connection after a release", async function () {
        const bridgeId = newBridgeId();
        await store.claimConnection(bridgeId, "server-a", "socket-1", at(1));
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-b",
          "socket-2",
          at(2),
        );
        await store.releaseConnection(bridgeId, "socket-2", at(3));
        // This claim replaced nothing: the bridge was offline.
        await store.claimConnection(bridgeId, "server-c", "socket-3", at(4));
        assert.deepEqual(
          await store.releaseSocket(bridgeId, "socket-3", at(5)),
          { released: true, epoch: epoch + 1, replaced: null },
        );
      });

      it("released session may still write", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.releaseConnection(bridgeId, "socket-1", at(2));
        const result = await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [light("a", true)],
        });
        assert.deepEqual(result, { status: "written", version: 1 });
      });
    });

    describe("takeover", function () {
      it("second claim returns previous connection", async function () {
        const bridgeId = newBridgeId();
        const first = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        const second = await store.claimConnection(
          bridgeId,
          "server-b",
          "socket-2",
          at(2),
        );
        assert.deepEqual(second.previous, {
          serverId: "server-a",
          socketId: "socket-1",
          epoch: first.epoch,
        });
        assert.equal(second.epoch, first.epoch + 1);
      });

      it("stale release keeps bridge online", async function () {
        const bridgeId = newBridgeId();
        await store.claimConnection(bridgeId, "server-a", "socket-1", at(1));
        const second = await store.claimConnection(
          bridgeId,
          "server-b",
          "socket-2",
          at(2),
        );
        assert.equal(
          await store.releaseConnection(bridgeId, "socket-1", at(3)),
          false,
        );
        const state = await store.getState(bridgeId);
        assert.deepEqual(state.connection, {
          serverId: "server-b",
          socketId: "socket-2",
          epoch: second.epoch,
        });
        assert.equal(state.lastSeen, at(2).toISOString());
      });

      it("stale epoch write is fenced", async function () {
        const bridgeId = newBridgeId();
        const first = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.claimConnection(bridgeId, "server-b", "socket-2", at(2));
        const result = await store.writeLights(bridgeId, {
          epoch: first.epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [light("a", true)],
        });
        assert.deepEqual(result, { status: "fenced" });
        const state = await store.getState(bridgeId);
        assert.equal(state.version, 0);
        assert.deepEqual(state.lights, []);
      });
    });

    describe("writeLights", function () {
      it("each write bumps version by one", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        const first = await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [light("a", true)],
        });
        assert.deepEqual(first, { status: "written", version: 1 });
        const second = await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 1,
          replaceAll: false,
          lights: [light("a", false)],
        });
        assert.deepEqual(second, { status: "written", version: 2 });
        const state = await store.getState(bridgeId);
        assert.equal(state.version, 2);
      });

      it("stale expectedVersion conflicts", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [light("a", true)],
        });
        for (const expectedVersion of [0, 2]) {
          const result = await store.writeLights(bridgeId, {
            epoch,
            expectedVersion,
            replaceAll: false,
            lights: [light("a", false)],
          });
          assert.deepEqual(
            result,
            { status: "conflict" },
            `expectedVersion ${expectedVersion}`,
          );
        }
        const state = await store.getState(bridgeId);
        assert.equal(state.version, 1);
        assert.deepEqual(state.lights, [light("a", true)]);
      });

      it("replaceAll removes absent lights", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [light("a", true), light("b", true)],
        });
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 1,
          replaceAll: true,
          lights: [light("b", false)],
        });
        const state = await store.getState(bridgeId);
        assert.deepEqual(state.lights, [light("b", false)]);
      });

      it("partial write keeps other lights", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [light("a", true), light("b", true)],
        });
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 1,
          replaceAll: false,
          lights: [light("a", false, 10)],
        });
        const state = await store.getState(bridgeId);
        assert.deepEqual(state.lights, [
          light("a", false, 10),
          light("b", true),
        ]);
      });

      it("empty replaceAll removes all lights", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [light("a", true)],
        });
        const result = await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 1,
          replaceAll: true,
          lights: [],
        });
        assert.deepEqual(result, { status: "written", version: 2 });
        const state = await store.getState(bridgeId);
        assert.deepEqual(state.lights, []);
      });
    });

    describe("reading lights", function () {
      it("getState sorts lights by id", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [
            light("c", true),
            light("a", true),
            light("B", true),
            light("b", true),
          ],
        });
        const state = await store.getState(bridgeId);
        assert.deepEqual(
          state.lights.map((stored) => stored.id),
          ["B", "a", "b", "c"],
        );
      });

      it("lights read back canonical", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        // Keys in a non-canonical order, without `type`, plus a field the protocol drops.
        const written = {
          color: { xy: { y: 0.3, x: 0.4 } },
          dimming: { brightness: 20 },
          on: { on: true },
          id: "a",
          owner: { rid: "x" },
        } as unknown as Light;
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [written],
        });
        const expected = JSON.stringify(canonicalLight(written));
        const state = await store.getState(bridgeId);
        assert.equal(JSON.stringify(state.lights[0]), expected);
        const { lights } = await store.getLights(bridgeId, ["a"]);
        assert.equal(JSON.stringify(lights[0]), expected);
      });

      it("getLights returns null for unknown", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [light("a", true), light("b", false)],
        });
        const result = await store.getLights(bridgeId, ["b", "missing", "a"]);
        assert.equal(result.version, 1);
        assert.deepEqual(result.lights, [
          light("b", false),
          null,
          light("a", true),
        ]);
      });

      it("getLights of never-seen bridge", async function () {
        const result = await store.getLights(newBridgeId(), ["a"]);
        assert.equal(result.version, 0);
        assert.deepEqual(result.lights, [null]);
      });

      it("getLights with no ids", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [light("a", true)],
        });
        const result = await store.getLights(bridgeId, []);
        assert.equal(result.version, 1);
        assert.deepEqual(result.lights, []);
      });

      it("returned lights are copies", async function () {
        const bridgeId = newBridgeId();
        const { epoch } = await store.claimConnection(
          bridgeId,
          "server-a",
          "socket-1",
          at(1),
        );
        const written = light("a", true);
        await store.writeLights(bridgeId, {
          epoch,
          expectedVersion: 0,
          replaceAll: true,
          lights: [written],
        });
        written.on.on = false;
        const first = await store.getState(bridgeId);
        first.lights[0]!.on.on = false;
        const second = await store.getState(bridgeId);
        assert.deepEqual(second.lights, [light("a", true)]);
      });
    });

    describe("presence", function () {
      it("getPresence keeps request order", async function () {
        const online = newBridgeId();
        const unknown = newBridgeId();
        const offline = newBridgeId();
        const claim = await store.claimConnection(
          online,
          "server-a",
          "socket-1",
          at(1),
        );
        const released = await store.claimConnection(
          offline,
          "server-b",
          "socket-2",
          at(2),
        );
        await store.releaseConnection(offline, "socket-2", at(3));

        const presence = await store.getPresence([offline, online, unknown]);
        assert.deepEqual(presence[0], {
          bridgeId: offline,
          connection: null,
          epoch: released.epoch,
          lastSeen: at(3).toISOString(),
        });
        assert.deepEqual(presence[1], {
          bridgeId: online,
          connection: {
            serverId: "server-a",
            socketId: "socket-1",
            epoch: claim.epoch,
          },
          epoch: claim.epoch,
          lastSeen: at(1).toISOString(),
        });
        assert.deepEqual(presence[2], {
          bridgeId: unknown,
          connection: null,
          epoch: 0,
          lastSeen: null,
        });
        assert.equal(presence.length, 3);
      });

      it("getPresence of no ids", async function () {
        assert.deepEqual(await store.getPresence([]), []);
      });

      it("lastSeen is ISO UTC", async function () {
        const bridgeId = newBridgeId();
        const now = new Date();
        await store.claimConnection(bridgeId, "server-a", "socket-1", now);
        const [presence] = await store.getPresence([bridgeId]);
        assert.match(presence?.lastSeen ?? "", ISO_UTC);
        assert.equal(presence?.lastSeen, now.toISOString());
      });
    });

    describe("command answers", function () {
      const success: StoredCommandAnswer = {
        ok: true,
        light: light("a", true),
      };
      const refusal: StoredCommandAnswer = {
        ok: false,
        details: {
          code: "LIGHT_UNREACHABLE",
          message: "light a is unreachable",
        },
      };

      it("answers are stored and read", async function () {
        const bridgeId = newBridgeId();
        await store.putCommandAnswer(bridgeId, "cmd-1", success, 60_000);
        await store.putCommandAnswer(bridgeId, "cmd-2", refusal, 60_000);
        assert.deepEqual(
          await store.getCommandAnswer(bridgeId, "cmd-1"),
          success,
        );
        assert.deepEqual(
          await store.getCommandAnswer(bridgeId, "cmd-2"),
          refusal,
        );
      });

      it("answers keep their fingerprint", async function () {
        const bridgeId = newBridgeId();
        const withFingerprint: StoredCommandAnswer[] = [
          { ...success, fingerprint: "fingerprint-of-cmd-1" },
          { ...refusal, fingerprint: "fingerprint-of-cmd-2" },
        ];
        for (const [index, answer] of withFingerprint.entries()) {
          await store.putCommandAnswer(
            bridgeId,
            `cmd-${index}`,
            answer,
            60_000,
          );
          assert.deepEqual(
            await store.getCommandAnswer(bridgeId, `cmd-${index}`),
            answer,
          );
        }
      });

      it("unknown commandId returns null", async function () {
        assert.equal(
          await store.getCommandAnswer(newBridgeId(), "cmd-unknown"),
          null,
        );
      });

      it("answers are scoped per bridge", async function () {
        const bridgeId = newBridgeId();
        await store.putCommandAnswer(bridgeId, "cmd-1", success, 60_000);
        assert.equal(
          await store.getCommandAnswer(newBridgeId(), "cmd-1"),
          null,
        );
      });

      it("answers expire after ttl", async function () {
        const bridgeId = newBridgeId();
        await store.putCommandAnswer(bridgeId, "cmd-1", success, 50);
        assert.deepEqual(
          await store.getCommandAnswer(bridgeId, "cmd-1"),
          success,
        );
        const last = await pollUntilNull(
          () => store.getCommandAnswer(bridgeId, "cmd-1"),
          2000,
        );
        assert.equal(last, null);
      });

      it("non-positive ttl is rejected", async function () {
        const bridgeId = newBridgeId();
        for (const ttlMs of [0, -1, Number.NaN]) {
          await assert.rejects(
            store.putCommandAnswer(bridgeId, "cmd-1", success, ttlMs),
            RangeError,
            `ttlMs ${ttlMs}`,
          );
        }
        assert.equal(await store.getCommandAnswer(bridgeId, "cmd-1"), null);
      });
    });

    it("ping resolves", async function () {
      await store.ping();
    });

    if (variant.name === "MemoryStore") {
      describe("memory sweep", function () {
        it("sweep drops expired answers", async function () {
          const memory = new MemoryStore({ sweepIntervalMs: 10 });
          try {
            await memory.putCommandAnswer(
              newBridgeId(),
              "cmd-1",
              { ok: true, light: light("a", true) },
              20,
            );
            assert.equal(memory.commandAnswerCount, 1);
            const deadline = Date.now() + 2000;
            while (memory.commandAnswerCount > 0 && Date.now() < deadline) {
              await new Promise((resolve) => setTimeout(resolve, 10));
            }
            assert.equal(memory.commandAnswerCount, 0);
          } finally {
            await memory.close();
          }
        });

        it("close stops the sweep", async function () {
          const memory = new MemoryStore({ sweepIntervalMs: 10 });
          await memory.close();
          await memory.putCommandAnswer(
            newBridgeId(),
            "cmd-1",
            { ok: true, light: light("a", true) },
            1,
          );
          await new Promise((resolve) => setTimeout(resolve, 50));
          assert.equal(memory.commandAnswerCount, 1);
        });

        it("invalid sweep interval throws", function () {
          assert.throws(
            () => new MemoryStore({ sweepIntervalMs: 0 }),
            RangeError,
          );
        });
      });
    }

    if (variant.name === "RedisStore") {
      describe("redis layout and recovery", function () {
        it("bridge keys share hash tag", async function () {
          const { client, keyPrefix } = requireRedis();
          const bridgeId = newBridgeId();
          const { epoch } = await store.claimConnection(
            bridgeId,
            "server-a",
            "socket-1",
            at(1),
          );
          await store.writeLights(bridgeId, {
            epoch,
            expectedVersion: 0,
            replaceAll: true,
            lights: [light("a", true)],
          });
          await store.putCommandAnswer(
            bridgeId,
            "cmd-1",
            { ok: true, light: light("a", true) },
            60_000,
          );

          const keys = (await client.keys(`${keyPrefix}:*${bridgeId}*`)).sort();
          const base = `${keyPrefix}:{${bridgeId}}`;
          assert.deepEqual(keys, [
            `${base}:cmd:cmd-1`,
            `${base}:lights`,
            `${base}:meta`,
          ]);
          for (const key of keys) {
            // Redis Cluster hashes only the part between the first `{` and the next `}`.
            const tag = key.slice(key.indexOf("{") + 1, key.indexOf("}"));
            assert.equal(tag, bridgeId, key);
          }
        });

        it("meta and lights hash fields", async function () {
          const { client, keyPrefix } = requireRedis();
          const bridgeId = newBridgeId();
          const { epoch } = await store.claimConnection(
            bridgeId,
            "server-a",
            "socket-1",
            at(1),
          );
          await store.writeLights(bridgeId, {
            epoch,
            expectedVersion: 0,
            replaceAll: true,
            lights: [light("a", true)],
          });
          const base = `${keyPrefix}:{${bridgeId}}`;
          const meta = await client.hGetAll(`${base}:meta`);
          assert.deepEqual(
            { ...meta },
            {
              epoch: String(epoch),
              version: "1",
              server: "server-a",
              socket: "socket-1",
              lastSeen: at(1).toISOString(),
            },
          );
          const stored = await client.hGet(`${base}:lights`, "a");
          assert.equal(
            stored,
            JSON.stringify(canonicalLight(light("a", true))),
          );
        });

        it("answer key has PX ttl", async function () {
          const { client, keyPrefix } = requireRedis();
          const bridgeId = newBridgeId();
          await store.putCommandAnswer(
            bridgeId,
            "cmd-1",
            { ok: true, light: light("a", true) },
            60_000,
          );
          const ttl = await client.pTTL(`${keyPrefix}:{${bridgeId}}:cmd:cmd-1`);
          assert.ok(ttl > 59_000, `PTTL ${ttl}`);
          assert.ok(ttl <= 60_000, `PTTL ${ttl}`);
        });

        it("state survives new store instance", async function () {
          const { server, keyPrefix } = requireRedis();
          const bridgeId = newBridgeId();
          const { epoch } = await store.claimConnection(
            bridgeId,
            "server-a",
            "socket-1",
            at(1),
          );
          await store.writeLights(bridgeId, {
            epoch,
            expectedVersion: 0,
            replaceAll: true,
            lights: [light("a", true)],
          });
          const before = await store.getState(bridgeId);

          const otherClient = createClient({ url: server.url });
          otherClient.on("error", () => {});
          await otherClient.connect();
          try {
            const restarted = new RedisStore(otherClient, { keyPrefix });
            const after = await restarted.getState(bridgeId);
            assert.deepEqual(after, before);
            assert.equal(after.version, 1);
          } finally {
            await otherClient.close();
          }
        });

        it("key prefixes do not overlap", async function () {
          const { client } = requireRedis();
          const bridgeId = newBridgeId();
          const { epoch } = await store.claimConnection(
            bridgeId,
            "server-a",
            "socket-1",
            at(1),
          );
          await store.writeLights(bridgeId, {
            epoch,
            expectedVersion: 0,
            replaceAll: true,
            lights: [light("a", true)],
          });
          const other = new RedisStore(client, {
            keyPrefix: `other-${randomUUID()}`,
          });
          const state = await other.getState(bridgeId);
          assert.equal(state.version, 0);
          assert.equal(state.connection, null);
        });

        it("scripts reload after SCRIPT FLUSH", async function () {
          const { client } = requireRedis();
          const bridgeId = newBridgeId();
          await store.getState(bridgeId);
          await client.scriptFlush();
          const { epoch } = await store.claimConnection(
            bridgeId,
            "server-a",
            "socket-1",
            at(1),
          );
          assert.equal(epoch, 1);
        });

        it("restart yields fresh state", async function () {
          const { server } = requireRedis();
          const bridgeId = newBridgeId();
          const { epoch } = await store.claimConnection(
            bridgeId,
            "server-a",
            "socket-1",
            at(1),
          );
          await store.writeLights(bridgeId, {
            epoch,
            expectedVersion: 0,
            replaceAll: true,
            lights: [light("a", true)],
          });
          await store.putCommandAnswer(
            bridgeId,
            "cmd-1",
            { ok: true, light: light("a", true) },
            60_000,
          );

          await server.restart();

          const state = await store.getState(bridgeId);
          assert.equal(state.version, 0);
          assert.deepEqual(state.lights, []);
          assert.equal(state.connection, null);
          assert.equal(state.lastSeen, null);
          assert.equal(await store.getCommandAnswer(bridgeId, "cmd-1"), null);
        });

        it("scripts work after restart", async function () {
          const { server } = requireRedis();
          const bridgeId = newBridgeId();
          // Runs the scripts once, so the server has them cached when the restart empties the cache.
          const first = await store.claimConnection(
            bridgeId,
            "server-a",
            "socket-1",
            at(1),
          );
          await store.writeLights(bridgeId, {
            epoch: first.epoch,
            expectedVersion: 0,
            replaceAll: true,
            lights: [light("a", true)],
          });
          await store.getLights(bridgeId, ["a"]);
          await store.releaseConnection(bridgeId, "socket-1", at(2));

          await server.restart();

          const claim = await store.claimConnection(
            bridgeId,
            "server-a",
            "socket-2",
            at(3),
          );
          assert.deepEqual(claim, { epoch: 1, previous: null });
          const write = await store.writeLights(bridgeId, {
            epoch: claim.epoch,
            expectedVersion: 0,
            replaceAll: true,
            lights: [light("b", true)],
          });
          assert.deepEqual(write, { status: "written", version: 1 });
          const lights = await store.getLights(bridgeId, ["b"]);
          assert.deepEqual(lights, { version: 1, lights: [light("b", true)] });
          assert.equal(
            await store.releaseConnection(bridgeId, "socket-2", at(4)),
            true,
          );
        });

        it("releases by socket after a restart", async function () {
          const { server } = requireRedis();
          const bridgeId = newBridgeId();
          const old = await store.claimConnection(
            bridgeId,
            "server-a",
            "socket-1",
            at(1),
          );

          await server.restart();

          // The empty Redis starts epochs again, so the newer connection
          // gets the epoch that the older one had.
          const newer = await store.claimConnection(
            bridgeId,
            "server-b",
            "socket-2",
            at(2),
          );
          assert.equal(newer.epoch, old.epoch);
          assert.equal(
            await store.releaseConnection(bridgeId, "socket-1", at(3)),
            false,
          );
          const [presence] = await store.getPresence([bridgeId]);
          assert.equal(presence?.connection?.socketId, "socket-2");
        });

        it("Redis errors propagate", async function () {
          const { server, keyPrefix } = requireRedis();
          const closedClient = createClient({ url: server.url });
          closedClient.on("error", () => {});
          await closedClient.connect();
          const closedStore = new RedisStore(closedClient, { keyPrefix });
          closedClient.destroy();
          await assert.rejects(closedStore.getState(newBridgeId()));
          await assert.rejects(closedStore.ping());
        });

        it("brace in bridge ID rejected", async function () {
          await assert.rejects(store.getState("bad}id"), /invalid bridge ID/);
        });
      });
    }
  });
}
