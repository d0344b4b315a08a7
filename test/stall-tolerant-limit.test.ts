import assert from "node:assert/strict";
import { setImmediate as nextCheckPhase } from "node:timers/promises";
import { createClient, TimeoutReadError, type RedisClientType } from "redis";
import { commandDeadline } from "../server/redis/clients.ts";
import {
  limitedCommands,
  QUEUE_LIMIT_FACTOR,
  StallTolerantLimit,
  type LimitClock,
} from "../server/redis/stall-tolerant-limit.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";
import { startTcpProxy, type TcpProxy } from "./support/tcp-proxy.ts";

/** The limit of the tests on a real Redis, in ms. */
const LIMIT_MS = 200;
/** Allowance for the check interval and scheduling, in ms. */
const SLACK_MS = 150;

/** Blocks the event loop for `ms`, as a long GC pause or a burst of work does. */
function stallProcess(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until) {
    // The process is stalled: nothing else runs.
  }
}

/**
 * Stalls the process for `ms` from the check phase of this loop turn.
 * node-redis writes commands from `setImmediate` too, so those issued
 * before this call are written first. Their replies then arrive during
 * the stall and are read after it.
 */
function stallAfterWrites(ms: number): void {
  setImmediate(() => stallProcess(ms));
}

/** Resolves with the ms `work` took to settle and its outcome. */
async function timedOutcome<T>(
  work: Promise<T>,
): Promise<{ ms: number; value?: T; error?: unknown }> {
  const startedAt = performance.now();
  try {
    const value = await work;
    return { ms: performance.now() - startedAt, value };
  } catch (error) {
    return { ms: performance.now() - startedAt, error };
  }
}

/** A clock whose time and checks the test drives. */
class ManualClock implements LimitClock {
  time = 0;
  tick: (() => void) | undefined;
  stops = 0;

  now(): number {
    return this.time;
  }

  every(_intervalMs: number, tick: () => void): () => void {
    this.tick = tick;
    return () => {
      this.stops += 1;
      this.tick = undefined;
    };
  }

  /** Sets the time to `time` and runs a check. */
  checkAt(time: number): void {
    this.time = time;
    assert.ok(this.tick, "no check is scheduled");
    this.tick();
  }
}

/** Returns a function that returns the error `reply` rejected with so far. */
function recordFailure(reply: Promise<unknown>): () => unknown {
  let failure: unknown;
  reply.catch((error: unknown) => {
    failure = error;
  });
  return () => failure;
}

/** Returns a promise and the function that resolves it. */
function pendingReply<T>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((settle) => {
    resolve = settle;
  });
  return { promise, resolve };
}

describe("StallTolerantLimit", function () {
  this.timeout(20_000);
  let redis: RedisServer;
  let proxy: TcpProxy;
  const clients: RedisClientType[] = [];

  /** Connects a client with the relay's settings: node-redis's timeout `timeoutMs`. */
  async function connect(url: string, timeoutMs: number) {
    const client: RedisClientType = createClient({
      url,
      disableOfflineQueue: true,
      commandOptions: commandDeadline(timeoutMs),
    });
    await client.connect();
    clients.push(client);
    return client;
  }

  /** Connects a client and returns it with a view under a limit of LIMIT_MS. */
  async function limitedClient(url: string) {
    const client = await connect(url, LIMIT_MS * QUEUE_LIMIT_FACTOR);
    const limit = new StallTolerantLimit(LIMIT_MS);
    return { client, limit, limited: limitedCommands(client, limit) };
  }

  before(async () => {
    redis = await startRedisServer();
    proxy = await startTcpProxy(redis.port);
  });

  afterEach(() => {
    proxy.passReplies();
    for (const client of clients.splice(0)) client.destroy();
  });

  after(async () => {
    await proxy?.close();
    await redis?.stop();
  });

  it("passes a reply read after a stall", async () => {
    const { limited, limit } = await limitedClient(redis.url);
    // node-redis's own timeout, the relay's setting before this limit.
    const timed = await connect(redis.url, LIMIT_MS);

    const key = "stall-limit:counter";
    const limitedReply = limited.incr(key);
    const timedReply = timed.incr(key);
    stallAfterWrites(1.5 * LIMIT_MS);
    const [limitedOutcome, timedOutcome] = await Promise.allSettled([
      limitedReply,
      timedReply,
    ]);

    // The stall put the reply behind node-redis's timer, which failed it.
    assert.equal(timedOutcome.status, "rejected");
    assert.ok(
      timedOutcome.status === "rejected" &&
        timedOutcome.reason instanceof TimeoutReadError,
      "node-redis's timeout failed its command",
    );
    assert.equal(limitedOutcome.status, "fulfilled");
    assert.equal(await timed.get(key), "2", "Redis ran both commands");
    assert.equal(limit.runningCount, 0);
  });

  it("passes a command sent during a stall", async () => {
    const { limited, limit } = await limitedClient(redis.url);
    const timed = await connect(redis.url, LIMIT_MS);

    // Issued at the start of a stall, as releases are while a burst of
    // disconnects blocks the loop. node-redis writes them after it.
    const key = "stall-limit:during";
    const replies = await new Promise<PromiseSettledResult<number>[]>(
      (resolve) => {
        setImmediate(() => {
          const sent = [limited.incr(key), timed.incr(key)];
          stallProcess(1.5 * LIMIT_MS);
          resolve(Promise.allSettled(sent));
        });
      },
    );
    const [limitedOutcome, timedOutcome] = replies;

    assert.equal(timedOutcome?.status, "rejected");
    assert.equal(limitedOutcome?.status, "fulfilled");
    assert.equal(await timed.get(key), "1", "Redis ran the limited command");
    assert.equal(limit.runningCount, 0);
  });

  it("fails a command to a silent Redis", async () => {
    const { limited, limit } = await limitedClient(proxy.redisUrl);
    proxy.holdReplies();

    const outcome = await timedOutcome(limited.ping());

    assert.ok(outcome.error instanceof TimeoutReadError, String(outcome.error));
    assert.match(
      (outcome.error as Error).message,
      /timed out after \d+ms waiting for a reply/,
    );
    assert.ok(outcome.ms >= LIMIT_MS - 1, `failed after ${outcome.ms} ms`);
    assert.ok(
      outcome.ms <= LIMIT_MS + SLACK_MS,
      `failed after ${outcome.ms} ms`,
    );
    assert.equal(limit.runningCount, 0);
  });

  it("fails a silent Redis one limit after a stall", async () => {
    const stallMs = 1.5 * LIMIT_MS;
    const { limited } = await limitedClient(proxy.redisUrl);
    proxy.holdReplies();

    const reply = limited.ping();
    stallAfterWrites(stallMs);
    const outcome = await timedOutcome(reply);

    assert.ok(outcome.error instanceof TimeoutReadError, String(outcome.error));
    assert.ok(
      outcome.ms >= stallMs + LIMIT_MS - 1,
      `failed after ${outcome.ms} ms`,
    );
    assert.ok(
      outcome.ms <= stallMs + LIMIT_MS + SLACK_MS,
      `failed after ${outcome.ms} ms`,
    );
  });

  it("extends a deadline only once", async () => {
    const clock = new ManualClock();
    const limit = new StallTolerantLimit(100, clock);
    const failureOf = recordFailure(
      limit.run(() => new Promise<never>(() => {})),
    );

    // Checks 300 ms apart: the process stalled before each.
    clock.checkAt(300);
    await nextCheckPhase();
    assert.equal(
      failureOf(),
      undefined,
      "the first stall extended the deadline",
    );
    assert.equal(limit.runningCount, 1);

    clock.checkAt(600);
    await nextCheckPhase();
    assert.ok(failureOf() instanceof TimeoutReadError, String(failureOf()));
    assert.match((failureOf() as Error).message, /after 600ms/);
    assert.equal(limit.runningCount, 0);
  });

  it("extends a deadline to one limit after the stall", async () => {
    const clock = new ManualClock();
    const limit = new StallTolerantLimit(100, clock);
    const failureOf = recordFailure(
      limit.run(() => new Promise<never>(() => {})),
    );

    // A stall of 5 limits, then checks on time until the new deadline.
    clock.checkAt(500);
    for (let time = 525; time < 600; time += 25) {
      clock.checkAt(time);
      await nextCheckPhase();
      assert.equal(failureOf(), undefined, `failed at ${time} ms`);
    }
    clock.checkAt(600);
    await nextCheckPhase();
    assert.ok(failureOf() instanceof TimeoutReadError, String(failureOf()));
  });

  it("passes a reply that arrives after the check", async () => {
    const clock = new ManualClock();
    const limit = new StallTolerantLimit(100, clock);
    const pending = pendingReply<string>();
    const reply = limit.run(() => pending.promise);

    // Checks on time until one finds the deadline passed. The poll phase
    // of the same loop turn then reads the reply.
    for (let time = 25; time <= 100; time += 25) clock.checkAt(time);
    pending.resolve("PONG");

    assert.equal(await reply, "PONG");
    assert.equal(limit.runningCount, 0);
  });

  it("forgets settled commands", async () => {
    const { client, limited, limit } = await limitedClient(redis.url);
    await client.set("stall-limit:text", "not a number");

    const replies = await Promise.allSettled([
      limited.set("stall-limit:a", "1"),
      limited.get("stall-limit:a"),
      limited.incr("stall-limit:text"),
      limited.sendCommand(["PING"]),
      limited.eval("return ARGV[1]", { keys: [], arguments: ["x"] }),
    ]);

    assert.deepEqual(
      replies.map((reply) => reply.status),
      ["fulfilled", "fulfilled", "rejected", "fulfilled", "fulfilled"],
    );
    assert.deepEqual(
      replies.map((reply) =>
        reply.status === "fulfilled" ? reply.value : undefined,
      ),
      ["OK", "1", undefined, "PONG", "x"],
    );
    assert.equal(limit.runningCount, 0);
  });

  it("stops checking once idle", async () => {
    const clock = new ManualClock();
    const limit = new StallTolerantLimit(100, clock);
    await limit.run(() => Promise.resolve("OK"));

    clock.checkAt(25);

    assert.equal(clock.stops, 1);
    assert.equal(clock.tick, undefined);
    // A new command starts the checks again.
    const pending = pendingReply<string>();
    const reply = limit.run(() => pending.promise);
    assert.notEqual(clock.tick, undefined);
    pending.resolve("OK");
    assert.equal(await reply, "OK");
  });

  it("limits a transaction's exec", async () => {
    const { limited, limit } = await limitedClient(proxy.redisUrl);

    const replies = await limited
      .multi()
      .set("stall-limit:multi", "1")
      .get("stall-limit:multi")
      .exec();
    assert.deepEqual(replies, ["OK", "1"]);

    proxy.holdReplies();
    const outcome = await timedOutcome(limited.multi().ping().exec());
    assert.ok(outcome.error instanceof TimeoutReadError, String(outcome.error));
    assert.ok(
      outcome.ms <= LIMIT_MS + SLACK_MS,
      `failed after ${outcome.ms} ms`,
    );
    assert.equal(limit.runningCount, 0);
  });

  it("reads plain properties", async () => {
    const { client, limited } = await limitedClient(redis.url);

    assert.equal(limited.isReady, true);
    assert.equal(limited.isOpen, client.isOpen);
    assert.equal(limited.options, client.options);
    assert.equal((limited as { then?: unknown }).then, undefined);
    // A thenable view would be awaited in place of itself.
    assert.equal(await Promise.resolve(limited), limited);
    assert.equal(
      limited.on("error", () => {}),
      limited,
      "a chained call returns the view",
    );
  });

  it("hides a client's then method", async () => {
    const limit = new StallTolerantLimit(LIMIT_MS);
    const client = {
      then(resolve: (value: unknown) => void): void {
        resolve("not the client");
      },
    };
    const limited = limitedCommands(client, limit);

    assert.equal(limited.then, undefined);
    assert.equal(await Promise.resolve(limited), limited);
  });

  it("forgets a command that throws", () => {
    const limit = new StallTolerantLimit(LIMIT_MS);
    const client = {
      invalid(): Promise<void> {
        throw new TypeError("invalid argument");
      },
    };
    const limited = limitedCommands(client, limit);

    assert.throws(() => limited.invalid(), TypeError);
    assert.equal(limit.runningCount, 0);
  });

  it("rejects an invalid limit", () => {
    assert.throws(() => new StallTolerantLimit(0), RangeError);
    assert.throws(() => new StallTolerantLimit(Number.NaN), RangeError);
  });
});
