import assert from "node:assert/strict";
import { createClient, type RedisClientType } from "redis";
import type { Socket } from "socket.io-client";
import type { BridgeState } from "../../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  requestData,
} from "../support/clients.ts";
import { answerLightSet, untypedLightMap } from "../support/fake-bridge.ts";
import {
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
} from "../support/faults.ts";
import type { RedisServer } from "../support/redis-server.ts";
import type { RelayProcess } from "../support/relay-process.ts";

describe("fault: Redis loses an acknowledged write", function () {
  this.timeout(30_000);
  let redis: RedisServer;
  let relay: RelayProcess;
  let admin: RedisClientType;
  const sockets: Socket[] = [];

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({ workers: 1 }));
    admin = createClient({ url: redis.url });
    await admin.connect();
  });

  after(async () => {
    for (const socket of sockets.splice(0)) socket.close();
    admin?.destroy();
    await stopRelayOnRedis({ relay, redis });
  });

  it("reads lights again after a reconnect", async () => {
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(relay.url, bridgeId);
    sockets.push(bridge);
    const lights = untypedLightMap("a");
    answerLightSet(bridge, lights);
    await requestData(bridge, "state:snapshot", {
      lights: [...lights.values()],
    });
    const app = await connectApp(relay.url, [bridgeId]);
    sockets.push(app);
    const setOn = (on: boolean) =>
      requestData(app, "light:set", {
        bridgeId,
        lightId: "a",
        change: { on: { on } },
      });
    const lightsKey = `relay:{${bridgeId}}:lights`;
    const metaKey = `relay:{${bridgeId}}:meta`;
    const offDocument = await admin.hGet(lightsKey, "a");
    assert.ok(typeof offDocument === "string", "the stored light");
    await setOn(true);

    // Redis goes back to the light and version before the write, as a
    // replica promoted before it received the write would be.
    await admin.hSet(lightsKey, "a", offDocument);
    await admin.hIncrBy(metaKey, "version", -1);
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
        await setOn(true);
        const state = await requestData<BridgeState>(app, "bridge:subscribe", {
          bridgeId,
        });
        return state.lights[0]?.on.on === true;
      },
      5000,
      200,
    );
  });
});
