import assert from "node:assert/strict";
import { createClient, type RedisClientType } from "redis";
import { RedisBus, type BusMessage } from "../server/messaging/server-bus.ts";
import { serverConnectionState } from "../server/redis/connection-state.ts";
import {
  REPLY_RETRY_LIMITS,
  ReplySender,
  retriedReplies,
  type CommandReply,
  type ReplyRetryLimits,
} from "../server/relay/reply-sender.ts";
import { capturingLogger } from "./support/capturing-logger.ts";
import { waitUntil } from "./support/faults.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";

const ORIGIN = "origin-server";
const DROPPED = "could not send a command answer back to the app's server";

/** Returns the count of `relay_command_replies_retried_total` for `outcome`. */
async function retriedCount(outcome: string): Promise<number> {
  const { values } = await retriedReplies.get();
  return values.find((value) => value.labels.outcome === outcome)?.value ?? 0;
}

describe("reply sender", function () {
  this.timeout(15_000);
  let redis: RedisServer;
  let subscriber: RedisClientType;
  /** Publishing clients of the tests, closed after each. */
  const publishers: RedisClientType[] = [];
  const received: BusMessage[] = [];

  before(async () => {
    redis = await startRedisServer();
    subscriber = createClient({ url: redis.url });
    await subscriber.connect();
    await subscriber.sSubscribe(`relay:server:${ORIGIN}`, (raw) => {
      received.push(JSON.parse(raw) as BusMessage);
    });
  });

  afterEach(async () => {
    await Promise.allSettled(
      publishers.splice(0).map((client) => client.isOpen && client.close()),
    );
    received.length = 0;
  });

  after(async () => {
    await subscriber.close();
    await redis.stop();
  });

  /**
   * Returns a sender whose bus publishes through a client that is not
   * connected yet, so every publish fails until the test connects it.
   */
  function offlineSender(limits: Partial<ReplyRetryLimits> = {}) {
    const publisher: RedisClientType = createClient({
      url: redis.url,
      disableOfflineQueue: true,
    });
    publishers.push(publisher);
    const { logger, lines } = capturingLogger();
    const bus = new RedisBus(
      "bridge-server",
      {
        main: publisher,
        subscriber,
        subscriberState: serverConnectionState(subscriber),
      },
      "relay",
      logger,
    );
    const sender = new ReplySender(bus, logger, {
      ...REPLY_RETRY_LIMITS,
      ...limits,
    });
    return { sender, publisher, lines };
  }

  function reply(requestId: string, deadlineInMs: number): CommandReply {
    return {
      origin: ORIGIN,
      requestId,
      bridgeId: "0017880a1b2c3d4e",
      commandId: `command-${requestId}`,
      answer: { ok: true, data: { light: { id: "a" } as never } },
      deadline: Date.now() + deadlineInMs,
    };
  }

  it("publishes again once Redis is back", async () => {
    const { sender, publisher, lines } = offlineSender();
    const sentBefore = await retriedCount("sent");
    const sending = sender.send(reply("back", 5000));
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(sender.waiting, 1, "replies waiting during the outage");
    await publisher.connect();
    await sending;
    await waitUntil("the reply received", () => received.length > 0, 2000);
    assert.deepEqual(
      received.map((message) => message.type === "reply" && message.requestId),
      ["back"],
    );
    assert.equal(sender.waiting, 0, "replies waiting after the publish");
    const resent = lines.find((line) =>
      String(line.msg).startsWith("sent a command answer back"),
    );
    assert.ok(resent !== undefined, "logged the publish after failures");
    assert.ok((resent.attempts as number) > 1, `${String(resent.attempts)}`);
    assert.equal(await retriedCount("sent"), sentBefore + 1);
  });

  it("drops a reply at its deadline", async () => {
    const { sender, lines } = offlineSender();
    const droppedBefore = await retriedCount("dropped");
    const startedAt = Date.now();
    await sender.send(reply("late", 400));
    const elapsedMs = Date.now() - startedAt;
    assert.ok(elapsedMs < 400, `dropped after ${elapsedMs} ms`);
    const drops = lines.filter((line) => line.msg === DROPPED);
    assert.equal(drops.length, 1, "drop log lines");
    assert.match(String(drops[0]!.reason), /stops waiting/);
    assert.equal(received.length, 0);
    assert.equal(await retriedCount("dropped"), droppedBefore + 1);
  });

  it("drops a reply after maxAttempts", async () => {
    const { sender, lines } = offlineSender({
      maxAttempts: 3,
      firstDelayMs: 10,
    });
    await sender.send(reply("attempts", 10_000));
    const drops = lines.filter((line) => line.msg === DROPPED);
    assert.equal(drops.length, 1, "drop log lines");
    assert.equal(drops[0]!.attempts, 3);
  });

  it("drops replies past maxQueued at once", async () => {
    const { sender, publisher, lines } = offlineSender({ maxQueued: 1 });
    const fullBefore = await retriedCount("dropped_queue_full");
    const queued = sender.send(reply("queued", 5000));
    await new Promise((resolve) => setTimeout(resolve, 20));
    const startedAt = Date.now();
    await sender.send(reply("over-1", 5000));
    await sender.send(reply("over-2", 5000));
    const elapsedMs = Date.now() - startedAt;
    assert.ok(elapsedMs < 100, `dropped after ${elapsedMs} ms`);
    const fullLines = lines.filter((line) =>
      String(line.msg).includes("too many answers wait"),
    );
    assert.equal(fullLines.length, 1, "queue-full lines within the window");
    assert.equal(await retriedCount("dropped_queue_full"), fullBefore + 2);
    await publisher.connect();
    await queued;
    await waitUntil("the reply received", () => received.length > 0, 2000);
    assert.deepEqual(
      received.map((message) => message.type === "reply" && message.requestId),
      ["queued"],
    );
  });
});
