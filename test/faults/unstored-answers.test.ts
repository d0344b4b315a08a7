import assert from "node:assert/strict";
import { createClient, type RedisClientType } from "redis";
import type { Socket } from "socket.io-client";
import type { BridgeCommandAnswer } from "../../client-sdk/src/bridge-client.ts";
import type {
  Ack,
  BridgeState,
  Light,
  LightSetCommand,
} from "../../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  request,
  requestData,
} from "../support/clients.ts";
import { applyLightCommand, untypedLightMap } from "../support/fake-bridge.ts";
import {
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
} from "../support/faults.ts";
import type { RedisServer } from "../support/redis-server.ts";
import type { RelayProcess } from "../support/relay-process.ts";

describe("fault: Redis fails while a bridge applies a command", function () {
  this.timeout(30_000);
  let redis: RedisServer;
  let relay: RelayProcess;
  let admin: RedisClientType;
  const sockets: Socket[] = [];

  beforeEach(async () => {
    ({ redis, relay } = await startRelayOnRedis({ workers: 1 }));
    admin = createClient({ url: redis.url });
    admin.on("error", () => undefined);
    await admin.connect();
  });

  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.close();
    admin.destroy();
    await stopRelayOnRedis({ relay, redis });
  });

  /**
   * Connects a bridge with light "a", on, that runs `meanwhile` between a
   * command's arrival and its answer, and an app, and returns both with
   * the bridge's lights and the resync requests it receives.
   */
  async function bridgeAndApp(meanwhile: () => Promise<void>) {
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(relay.url, bridgeId);
    sockets.push(bridge);
    const lights = untypedLightMap("a");
    // On, so that the command to turn it off changes it and is written.
    lights.get("a")!.on = { on: true };
    bridge.on(
      "light:set",
      (
        command: LightSetCommand,
        ack: (answer: BridgeCommandAnswer) => void,
      ) => {
        void meanwhile().then(() => ack(applyLightCommand(lights, command)));
      },
    );
    // As a bridge does, it answers a resync request with its lights.
    const resyncs: unknown[] = [];
    bridge.on("state:resync", (event: unknown) => {
      resyncs.push(event);
      void request(bridge, "state:snapshot", { lights: [...lights.values()] });
    });
    await requestData(bridge, "state:snapshot", {
      lights: [...lights.values()],
    });
    const app = await connectApp(relay.url, [bridgeId]);
    sockets.push(app);
    return { bridgeId, lights, app, resyncs };
  }

  const turnOff = (app: Socket, bridgeId: string) =>
    request<{ light: Light }>(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: false } },
      commandId: `off-${bridgeId}`,
    });

  /** Asserts an `UNAVAILABLE` that says that the bridge applied the command. */
  function assertAppliedButUnstored(answer: Ack<{ light: Light }>): void {
    assert.equal(answer.ok ? "ok" : answer.error.code, "UNAVAILABLE");
    assert.match(
      answer.ok ? "" : answer.error.message,
      /applied the command, but the relay could not store its light/,
    );
  }

  it("says the bridge applied it after a flush", async () => {
    const { bridgeId, app, resyncs } = await bridgeAndApp(async () => {
      await admin.flushAll();
    });

    // The write was fenced: the flush took the bridge's claim with it.
    assertAppliedButUnstored(await turnOff(app, bridgeId));
    await waitUntil("a resync request", () => resyncs.length > 0, 10_000);
  });

  it("answers ok when a newer connection fenced the write", async () => {
    let bridgeId = "";
    const fresh = await bridgeAndApp(async () => {
      // As a newer connection's claim does.
      await admin.hIncrBy(`relay:{${bridgeId}}:meta`, "epoch", 1);
    });
    bridgeId = fresh.bridgeId;

    const answer = await turnOff(fresh.app, bridgeId);
    assert.equal(answer.ok ? "ok" : answer.error.code, "ok");
    assert.deepEqual(answer.ok ? answer.data.light.on : undefined, {
      on: false,
    });
  });

  it("says the bridge applied it while Redis is down", async () => {
    const { bridgeId, app, lights } = await bridgeAndApp(() => redis.stop());

    assertAppliedButUnstored(await turnOff(app, bridgeId));
    assert.deepEqual(lights.get("a")?.on, { on: false });

    // Back up empty, the relay asks the bridge for its lights again.
    await redis.restart();
    await waitUntil(
      "the bridge's light stored again",
      async () => {
        const view = await request<BridgeState>(app, "bridge:subscribe", {
          bridgeId,
        });
        return view.ok && view.data.lights[0]?.on.on === false;
      },
      15_000,
      200,
    );
  });
  it("reads lights again after Redis lost a write", async () => {
    const { bridgeId, app } = await bridgeAndApp(async () => undefined);
    const lightsKey = `relay:{${bridgeId}}:lights`;
    const onDocument = await admin.hGet(lightsKey, "a");
    assert.ok(typeof onDocument === "string", "the stored light");
    // Without a commandId, so that a repeat reaches the bridge again.
    const switchOff = () =>
      request(app, "light:set", {
        bridgeId,
        lightId: "a",
        change: { on: { on: false } },
      });
    const first = await switchOff();
    assert.equal(first.ok, true);

    // Redis goes back to the light and version before the write, as a
    // replica promoted before it received the write would be.
    await admin.hSet(lightsKey, "a", onDocument);
    await admin.hIncrBy(`relay:{${bridgeId}}:meta`, "version", -1);
    const reconnects = () =>
      relay.logs.filter((line) => line.msg === "redis connection restored")
        .length;
    const before = reconnects();
    await admin.sendCommand(["CLIENT", "KILL", "TYPE", "normal"]);
    await waitUntil(
      "the relay reconnected",
      () => reconnects() > before,
      10_000,
    );

    await waitUntil(
      "the command stored in Redis",
      async () => {
        await switchOff();
        const view = await request<BridgeState>(app, "bridge:subscribe", {
          bridgeId,
        });
        return view.ok && view.data.lights[0]?.on.on === false;
      },
      5000,
      200,
    );
  });
});
