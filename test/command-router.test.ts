import assert from "node:assert/strict";
import { pino } from "pino";
import { createClient, type RedisClientType } from "redis";
import {
  RedisBus,
  type BusMessage,
  type ServerBus,
} from "../server/messaging/server-bus.ts";
import { commandDeadline, limitedClients } from "../server/redis/clients.ts";
import { serverConnectionState } from "../server/redis/connection-state.ts";
import { QUEUE_LIMIT_FACTOR } from "../server/redis/stall-tolerant-limit.ts";
import {
  CommandRouter,
  type CommandAnswer,
  type RoutedCommand,
} from "../server/relay/command-router.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";

const COMMAND_TIMEOUT_MS = 300;
/** Duration of the pause of every write, publishes included, in ms. */
const PAUSE_MS = 2000;

describe("command router", function () {
  this.timeout(15_000);
  let redis: RedisServer;
  let main: RedisClientType;
  let subscriber: RedisClientType;
  let admin: RedisClientType;
  let router: CommandRouter;

  before(async () => {
    redis = await startRedisServer();
    // No command deadline here, so that a publish waits for Redis as long
    // as the pause lasts and only the router's own timeout can end it.
    main = createClient({ url: redis.url });
    subscriber = main.duplicate();
    admin = main.duplicate();
    await Promise.all([main.connect(), subscriber.connect(), admin.connect()]);
    const bus = new RedisBus(
      "router-test",
      { main, subscriber, subscriberState: serverConnectionState(subscriber) },
      "relay",
      pino({ level: "silent" }),
    );
    router = new CommandRouter(
      bus,
      () => Promise.reject(new Error("no local bridge in this test")),
      COMMAND_TIMEOUT_MS,
      pino({ level: "silent" }),
    );
  });

  after(async () => {
    await Promise.allSettled([main.close(), subscriber.close(), admin.close()]);
    await redis.stop();
  });

  it("times out while the publish waits", async () => {
    await admin.sendCommand(["CLIENT", "PAUSE", String(PAUSE_MS), "WRITE"]);
    const startedAt = performance.now();
    const answer = await router.send("other-server", {
      bridgeId: "0017880a1b2c3d4e",
      commandId: "command-1",
      lightId: "a",
      change: { on: { on: true } },
    });
    const elapsedMs = performance.now() - startedAt;
    assert.equal(answer.ok, false);
    assert.equal(answer.ok ? undefined : answer.error.code, "TIMEOUT");
    // The reply may be lost rather than never sent, so the message does
    // not say that the bridge failed to answer.
    assert.match(answer.ok ? "" : answer.error.message, /may have run/);
    assert.ok(
      elapsedMs < PAUSE_MS - 500,
      `answered after ${Math.round(elapsedMs)} ms, with the pause`,
    );
  });

  /** Returns a router whose bus publishes through `publisher`, with PAUSE_MS * 2 as its own timeout. */
  function routerOn(
    serverId: string,
    publisher: RedisClientType,
  ): CommandRouter {
    const bus = new RedisBus(
      serverId,
      {
        main: publisher,
        subscriber,
        subscriberState: serverConnectionState(subscriber),
      },
      "relay",
      pino({ level: "silent" }),
    );
    return new CommandRouter(
      bus,
      () => Promise.reject(new Error("no local bridge in this test")),
      PAUSE_MS * 2,
      pino({ level: "silent" }),
    );
  }

  /**
   * Pauses every write of Redis, sends command `commandId` through
   * `limitedRouter`, checks that it fails with `TIMEOUT`, and returns how
   * long that took in ms.
   */
  async function timeOutDuringPause(
    limitedRouter: CommandRouter,
    commandId: string,
  ): Promise<number> {
    await admin.sendCommand(["CLIENT", "PAUSE", String(PAUSE_MS), "WRITE"]);
    const startedAt = performance.now();
    await assert.rejects(
      limitedRouter.send("other-server", {
        bridgeId: "0017880a1b2c3d4e",
        commandId,
        lightId: "a",
        change: { on: { on: true } },
      }),
      { code: "TIMEOUT", message: /may still reach the bridge/ },
    );
    return performance.now() - startedAt;
  }

  it("answers TIMEOUT when Redis does not confirm a sent publish", async () => {
    // The relay's settings: a publish fails once Redis has not answered
    // within the command limit, also after it was sent.
    const limited: RedisClientType = createClient({
      url: redis.url,
      commandOptions: commandDeadline(COMMAND_TIMEOUT_MS / 3),
    });
    await limited.connect();
    try {
      const elapsedMs = await timeOutDuringPause(
        routerOn("router-test-limited", limited),
        "command-2",
      );
      assert.ok(
        elapsedMs < PAUSE_MS - 500,
        `answered after ${Math.round(elapsedMs)} ms, with the pause`,
      );
    } finally {
      limited.destroy();
    }
  });

  it("answers TIMEOUT when the limit fails a publish", async () => {
    // The relay's bus, whose publishes node-redis's timeout would end
    // only after QUEUE_LIMIT_FACTOR limits.
    const limitMs = COMMAND_TIMEOUT_MS / 3;
    const client: RedisClientType = createClient({
      url: redis.url,
      commandOptions: commandDeadline(limitMs),
    });
    await client.connect();
    try {
      const { requests } = limitedClients(client, limitMs);
      const elapsedMs = await timeOutDuringPause(
        routerOn("router-test-stall-limit", requests),
        "command-3",
      );
      assert.ok(
        elapsedMs < (limitMs * QUEUE_LIMIT_FACTOR) / 2,
        `answered after ${Math.round(elapsedMs)} ms, not by the limit`,
      );
    } finally {
      client.destroy();
    }
  });
});

/** A bus that takes every message and loses its subscription on demand. */
class LosingBus implements ServerBus {
  readonly serverId = "origin";
  readonly countsReceivers = true;
  readonly sent: BusMessage[] = [];
  private lost: (() => void) | undefined;

  async send(_serverId: string, message: BusMessage): Promise<boolean> {
    this.sent.push(message);
    return true;
  }

  async listen(): Promise<void> {}

  onReceivingLost(listener: () => void): void {
    this.lost = listener;
  }

  loseSubscription(): void {
    this.lost?.();
  }

  async close(): Promise<void> {}
}

describe("command router, subscription lost", function () {
  const TIMEOUT_MS = 400;
  const LIGHT = { id: "a", type: "light" as const, on: { on: true } };
  const command = (commandId: string, idempotent = true): RoutedCommand => ({
    bridgeId: "0017880a1b2c3d4e",
    commandId,
    lightId: "a",
    change: { on: { on: true } },
    idempotent,
  });
  let bus: LosingBus;
  let stored: Map<string, CommandAnswer>;
  let router: CommandRouter;

  beforeEach(() => {
    bus = new LosingBus();
    stored = new Map();
    router = new CommandRouter(
      bus,
      () => Promise.reject(new Error("no local bridge in this test")),
      TIMEOUT_MS,
      pino({ level: "silent" }),
      {
        storedAnswer: async (_bridgeId, commandId) =>
          stored.get(commandId) ?? null,
      },
    );
  });

  /**
   * Sends `routed`, and resolves once its message is on the bus, with the
   * answer still to come (wrapped, since a promise would be awaited).
   */
  async function sendAndWait(
    routed: RoutedCommand,
  ): Promise<{ answer: Promise<CommandAnswer> }> {
    const answer = router.send("bridge-server", routed);
    while (bus.sent.length === 0) await new Promise(setImmediate);
    return { answer };
  }

  it("answers a command with a commandId from its remembered answer", async () => {
    const { answer } = await sendAndWait(command("remembered"));
    bus.loseSubscription();
    stored.set("remembered", { ok: true, data: { light: LIGHT } });
    await router.recoverReplies();
    assert.deepEqual(await answer, { ok: true, data: { light: LIGHT } });
  });

  it("keeps waiting for the reply when no answer is remembered yet", async () => {
    const { answer } = await sendAndWait(command("unanswered"));
    bus.loseSubscription();
    await router.recoverReplies();
    const message = bus.sent[0] as { requestId: string };
    await router.handle({
      type: "reply",
      requestId: message.requestId,
      answer: { ok: true, data: { light: LIGHT } },
    });
    assert.deepEqual(await answer, { ok: true, data: { light: LIGHT } });
  });

  it("answers UNAVAILABLE at the timeout while the subscription is down", async () => {
    const { answer } = await sendAndWait(command("never-recovered"));
    bus.loseSubscription();
    const result = await answer;
    assert.equal(result.ok ? undefined : result.error.code, "UNAVAILABLE");
    assert.match(
      result.ok ? "" : result.error.message,
      /repeat it with the same commandId/,
    );
  });

  it("answers a command without a commandId UNAVAILABLE at once", async () => {
    const startedAt = performance.now();
    const { answer } = await sendAndWait(command("made-up", false));
    bus.loseSubscription();
    const result = await answer;
    assert.equal(result.ok ? undefined : result.error.code, "UNAVAILABLE");
    assert.ok(performance.now() - startedAt < TIMEOUT_MS / 2);
  });
});
