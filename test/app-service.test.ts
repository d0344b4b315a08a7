import assert from "node:assert/strict";
import { pino } from "pino";
import { createClient, type RedisClientType } from "redis";
import type { Light } from "../client-sdk/src/protocol.ts";
import { RedisBus } from "../server/messaging/server-bus.ts";
import { serverConnectionState } from "../server/redis/connection-state.ts";
import { AppService } from "../server/relay/app-service.ts";
import { CommandRouter } from "../server/relay/command-router.ts";
import { RedisStore } from "../server/state/redis-store.ts";
import { randomBridgeId } from "./support/clients.ts";
import { sleep } from "./support/faults.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";

const COMMAND_TIMEOUT_MS = 1000;
const KEY_PREFIX = "app-service-test";
const LIGHT: Light = { id: "a", type: "light", on: { on: true } };

describe("app service routing to a server that receives nothing", function () {
  this.timeout(15_000);
  let redis: RedisServer;
  let main: RedisClientType;
  let subscriber: RedisClientType;
  let store: RedisStore;
  let service: AppService;
  const buses: RedisBus[] = [];

  function busOf(serverId: string): RedisBus {
    const bus = new RedisBus(
      serverId,
      { main, subscriber, subscriberState: serverConnectionState(subscriber) },
      KEY_PREFIX,
      pino({ level: "silent" }),
    );
    buses.push(bus);
    return bus;
  }

  /** Starts server `serverId`'s bus, which replies to every command with its light turned off. */
  async function listenAs(serverId: string): Promise<void> {
    const bus = busOf(serverId);
    await bus.listen((message) => {
      if (message.type !== "command") return;
      const light: Light = { ...LIGHT, on: { on: false } };
      void bus.send(message.origin, {
        type: "reply",
        requestId: message.requestId,
        answer: { ok: true, data: { light } },
      });
    });
  }

  /** Stores a bridge with light "a", claimed by `serverId`. */
  async function bridgeOn(serverId: string): Promise<string> {
    const bridgeId = randomBridgeId();
    const { epoch } = await store.claimConnection(
      bridgeId,
      serverId,
      `socket-of-${serverId}`,
      new Date(),
    );
    await store.writeLights(bridgeId, {
      epoch,
      expectedVersion: 0,
      replaceAll: true,
      lights: [LIGHT],
    });
    return bridgeId;
  }

  function turnOff(bridgeId: string): Promise<Light> {
    return service.setLight({
      bridgeId,
      lightId: "a",
      change: { on: { on: false } },
    });
  }

  before(async () => {
    redis = await startRedisServer();
    main = createClient({ url: redis.url });
    subscriber = main.duplicate();
    await Promise.all([main.connect(), subscriber.connect()]);
    store = new RedisStore(main, { keyPrefix: KEY_PREFIX });
    const origin = busOf("origin");
    const router = new CommandRouter(
      origin,
      () => Promise.reject(new Error("no local bridge in this test")),
      COMMAND_TIMEOUT_MS,
      pino({ level: "silent" }),
    );
    await origin.listen((message) => void router.handle(message));
    service = new AppService(store, router);
  });

  after(async () => {
    await Promise.allSettled(buses.map((bus) => bus.close()));
    await Promise.allSettled([main.close(), subscriber.close()]);
    await redis.stop();
  });

  it("resends once the server subscribes", async () => {
    const bridgeId = await bridgeOn("late-owner");
    const answer = turnOff(bridgeId);
    await sleep(300);
    await listenAs("late-owner");
    assert.deepEqual((await answer).on, { on: false });
  });

  it("follows the bridge to its new server", async () => {
    const bridgeId = await bridgeOn("crashed-owner");
    await listenAs("new-owner");
    const answer = turnOff(bridgeId);
    await sleep(300);
    await store.claimConnection(
      bridgeId,
      "new-owner",
      "socket-of-new-owner",
      new Date(),
    );
    assert.deepEqual((await answer).on, { on: false });
  });

  it("answers BRIDGE_OFFLINE after the retries", async () => {
    const bridgeId = await bridgeOn("gone-owner");
    const startedAt = performance.now();
    await assert.rejects(turnOff(bridgeId), {
      code: "BRIDGE_OFFLINE",
      message: /received no command/,
    });
    const elapsedMs = performance.now() - startedAt;
    assert.ok(
      elapsedMs >= 2000 && elapsedMs < 3000,
      `answered after ${Math.round(elapsedMs)} ms`,
    );
  });
});
