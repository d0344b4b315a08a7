import assert from "node:assert/strict";
import { pino } from "pino";
import { createClient, type RedisClientType } from "redis";
import type { Light } from "../client-sdk/src/protocol.ts";
import { RelayError } from "../server/errors.ts";
import { LocalBus, RedisBus } from "../server/messaging/server-bus.ts";
import { serverConnectionState } from "../server/redis/connection-state.ts";
import { AppService } from "../server/relay/app-service.ts";
import {
  CommandRouter,
  type CommandAnswer,
  type RoutedCommand,
} from "../server/relay/command-router.ts";
import { commandFingerprint } from "../server/relay/command-fingerprint.ts";
import { MemoryStore } from "../server/state/memory-store.ts";
import { RedisStore } from "../server/state/redis-store.ts";
import type { StateStore, StoredCommandAnswer } from "../server/state/store.ts";
import { randomBridgeId } from "./support/clients.ts";
import { sleep } from "./support/faults.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";

const COMMAND_TIMEOUT_MS = 1000;
const KEY_PREFIX = "app-service-test";
const LIGHT: Light = { id: "a", type: "light", on: { on: true } };

/** Claims `bridgeId` for `serverId` in `store` and stores its light "a". */
async function claimWithLight(
  store: RedisStore,
  bridgeId: string,
  serverId: string,
): Promise<void> {
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
}

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
    await claimWithLight(store, bridgeId, serverId);
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

describe("app service on Redis Cluster, where no count proves anything", function () {
  this.timeout(15_000);
  let redis: RedisServer;
  let main: RedisClientType;
  let store: RedisStore;

  /** How the stand-in router treats a command sent to one server. */
  type Script = (onUncounted: () => void) => Promise<CommandAnswer>;

  /**
   * Returns a service whose router counts no receiver for every command,
   * as a Redis Cluster publish may, and replies as `scripts` say. Also
   * returns the servers each command was sent to.
   */
  function serviceWith(scripts: Record<string, Script>) {
    const sent: string[] = [];
    const router = {
      send: (
        serverId: string,
        _command: RoutedCommand,
        onUncounted?: () => void,
      ) => {
        sent.push(serverId);
        const script = scripts[serverId] ?? scripts.default!;
        return script(onUncounted ?? (() => undefined));
      },
    } as unknown as CommandRouter;
    return { service: new AppService(store, router), sent };
  }

  const ok: CommandAnswer = { ok: true, data: { light: LIGHT } };
  const bridgeError: CommandAnswer = {
    ok: false,
    error: { code: "BRIDGE_ERROR", message: "refused" },
  };
  /** Counts no receiver, then replies with `answer` after `ms`. */
  const uncountedThen =
    (answer: CommandAnswer, ms: number): Script =>
    async (onUncounted) => {
      onUncounted();
      await sleep(ms);
      return answer;
    };

  const claim = (bridgeId: string, serverId: string) =>
    claimWithLight(store, bridgeId, serverId);

  const turnOn = (service: AppService, bridgeId: string) =>
    service.setLight({ bridgeId, lightId: "a", change: { on: { on: true } } });

  before(async () => {
    redis = await startRedisServer();
    main = createClient({ url: redis.url });
    await main.connect();
    store = new RedisStore(main, { keyPrefix: KEY_PREFIX });
  });

  after(async () => {
    await main.close();
    await redis.stop();
  });

  it("answers when the reply comes", async () => {
    const bridgeId = randomBridgeId();
    await claim(bridgeId, "owner");
    const { service, sent } = serviceWith({ owner: uncountedThen(ok, 10) });

    const startedAt = performance.now();
    await turnOn(service, bridgeId);
    const elapsedMs = performance.now() - startedAt;

    assert.ok(elapsedMs < 80, `answered after ${Math.round(elapsedMs)} ms`);
    assert.deepEqual(sent, ["owner"]);
  });

  it("sends once to each server", async () => {
    const bridgeId = randomBridgeId();
    await claim(bridgeId, "first");
    const { service, sent } = serviceWith({
      default: uncountedThen(ok, 1500),
    });
    // Presence flips between two new servers while the command waits.
    let flips = 0;
    const flipping = setInterval(() => {
      flips += 1;
      void claim(bridgeId, flips % 2 === 0 ? "second" : "third");
    }, 50);
    try {
      await turnOn(service, bridgeId);
    } finally {
      clearInterval(flipping);
    }

    assert.equal(new Set(sent).size, sent.length, sent.join());
    assert.ok(sent.length <= 3, sent.join());
  });

  it("prefers a later ok to a resend's error", async () => {
    const bridgeId = randomBridgeId();
    await claim(bridgeId, "old-owner");
    const { service } = serviceWith({
      "old-owner": uncountedThen(ok, 400),
      "new-owner": async () => {
        await sleep(20);
        return bridgeError;
      },
    });
    setTimeout(() => void claim(bridgeId, "new-owner"), 10);

    const light = await turnOn(service, bridgeId);
    assert.deepEqual(light.on, LIGHT.on);
  });
});

/** Stores whose remembered answers the app service reads before it routes a command. */
const REMEMBERING_STORES: {
  name: string;
  start: () => Promise<{
    store: StateStore;
    /** Stores `json` as the remembered answer, as an older relay wrote it. */
    putRaw: (
      bridgeId: string,
      commandId: string,
      json: object,
    ) => Promise<void>;
    stop: () => Promise<void>;
  }>;
}[] = [
  {
    name: "memory",
    start: async () => {
      const store = new MemoryStore();
      return {
        store,
        // The memory store never outlives its process, so no older relay
        // wrote to it; an answer without a fingerprint serves as one.
        putRaw: (bridgeId, commandId, json) =>
          store.putCommandAnswer(
            bridgeId,
            commandId,
            json as StoredCommandAnswer,
            60_000,
          ),
        stop: () => store.close(),
      };
    },
  },
  {
    name: "Redis",
    start: async () => {
      const server = await startRedisServer();
      const client: RedisClientType = createClient({ url: server.url });
      await client.connect();
      const store = new RedisStore(client, { keyPrefix: KEY_PREFIX });
      return {
        store,
        putRaw: async (bridgeId, commandId, json) => {
          await client.set(
            `${KEY_PREFIX}:{${bridgeId}}:cmd:${commandId}`,
            JSON.stringify(json),
            { PX: 60_000 },
          );
        },
        stop: async () => {
          await store.close();
          await client.close();
          await server.stop();
        },
      };
    },
  },
];

for (const variant of REMEMBERING_STORES) {
  describe(`app service reused commandId, ${variant.name} store`, function () {
    this.timeout(15_000);
    let context: Awaited<ReturnType<typeof variant.start>>;
    let service: AppService;
    let executed: RoutedCommand[];
    const firstCommand: RoutedCommand = {
      bridgeId: "",
      commandId: "reused",
      lightId: "ok1",
      change: { on: { on: true }, dimming: { brightness: 40 } },
    };
    const firstLight: Light = { id: "ok1", type: "light", on: { on: true } };

    before(async () => {
      context = await variant.start();
    });
    beforeEach(() => {
      executed = [];
      const router = new CommandRouter(
        new LocalBus("app-service-test"),
        async (command) => {
          executed.push(command);
          return {
            ok: false,
            error: {
              code: "INTERNAL",
              message: "the executor is not expected to run in these tests",
            },
          };
        },
        COMMAND_TIMEOUT_MS,
        pino({ level: "silent" }),
      );
      service = new AppService(context.store, router);
    });
    after(async () => {
      await context?.stop();
    });

    /** Remembers `firstLight` under "reused" for a new bridge, with the first command's fingerprint. */
    async function rememberFirst(): Promise<string> {
      const bridgeId = randomBridgeId();
      await context.store.putCommandAnswer(
        bridgeId,
        "reused",
        {
          ok: true,
          light: firstLight,
          fingerprint: commandFingerprint({ ...firstCommand, bridgeId }),
        },
        60_000,
      );
      return bridgeId;
    }

    it("returns the answer to a repeat", async () => {
      const bridgeId = await rememberFirst();
      const light = await service.setLight({
        bridgeId,
        lightId: "ok1",
        change: { dimming: { brightness: 40 }, on: { on: true } },
        commandId: "reused",
      });
      assert.deepEqual(light, firstLight);
      assert.equal(executed.length, 0);
    });

    const others = [
      { name: "another light", lightId: "typed", change: firstCommand.change },
      { name: "another change", lightId: "ok1", change: { on: { on: true } } },
    ];
    for (const other of others) {
      it(`rejects a reuse for ${other.name}`, async () => {
        const bridgeId = await rememberFirst();
        await assert.rejects(
          service.setLight({
            bridgeId,
            lightId: other.lightId,
            change: other.change,
            commandId: "reused",
          }),
          (error: unknown) => {
            assert.ok(error instanceof RelayError);
            assert.equal(error.code, "INVALID_PAYLOAD");
            assert.match(error.message, /already used for another command/);
            return true;
          },
        );
        assert.equal(executed.length, 0);
      });
    }

    it("accepts an answer without fingerprint", async () => {
      const bridgeId = randomBridgeId();
      await context.putRaw(bridgeId, "reused", { ok: true, light: firstLight });
      const light = await service.setLight({
        bridgeId,
        lightId: "typed",
        change: { on: { on: false } },
        commandId: "reused",
      });
      assert.deepEqual(light, firstLight);
      assert.equal(executed.length, 0);
    });
  });
}
