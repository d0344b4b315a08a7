import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import { pino } from "pino";
import { createClient, type RedisClientType } from "redis";
import type { Namespace, Socket } from "socket.io";
import type { BridgePresence } from "../client-sdk/src/protocol.ts";
import { RedisBus } from "../server/messaging/server-bus.ts";
import { commandDeadline } from "../server/redis/clients.ts";
import { serverConnectionState } from "../server/redis/connection-state.ts";
import type { AppBroadcaster } from "../server/relay/broadcaster.ts";
import {
  BridgeSessions,
  type ConnectionIndex,
} from "../server/relay/bridge-sessions.ts";
import { RedisStore } from "../server/state/redis-store.ts";
import type { StateStore } from "../server/state/store.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";
import { randomBridgeId } from "./support/clients.ts";
import { waitUntil } from "./support/faults.ts";

/** The Redis command limit of the store's client here, in ms. */
const COMMAND_TIMEOUT_MS = 300;

/** Pauses every write of every client of `admin`'s Redis, scripts included, for `ms`. */
async function pauseWrites(admin: RedisClientType, ms: number): Promise<void> {
  await admin.sendCommand(["CLIENT", "PAUSE", String(ms), "WRITE"]);
}

/**
 * Runs the claim script once, as a running relay has. The release of a
 * failed claim runs rarely, so Redis need not know that script.
 */
async function loadClaimScript(store: RedisStore): Promise<void> {
  await store.claimConnection(
    randomBridgeId(),
    "server-a",
    "warm-up",
    new Date(),
  );
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Returns a connection index in memory that lists `bridgeIds`. */
function indexOf(bridgeIds: string[]): ConnectionIndex {
  const tracked = new Set(bridgeIds);
  return {
    track: async (ids) => {
      for (const id of ids) tracked.add(id);
    },
    untrack: async (id) => {
      tracked.delete(id);
    },
    scan: async () => ({ cursor: "0", bridgeIds: [...tracked] }),
  };
}

/** Collects the presence events that the sessions broadcast. */
class RecordingBroadcaster implements AppBroadcaster {
  readonly presences: BridgePresence[] = [];
  lightsChanged(): void {}
  snapshot(): void {}
  presence(event: BridgePresence): void {
    this.presences.push(event);
  }
}

/**
 * Returns a stand-in socket that records the events emitted to it. A claim
 * reads its `id` and listens for its transport's close, and replacing a
 * socket, which needs the namespace, happens in no test here.
 */
function socketWithId(id: string, emitted: string[] = []): Socket {
  const emit = (event: string): boolean => {
    emitted.push(event);
    return true;
  };
  const disconnect = (): void => {
    emitted.push("disconnect");
  };
  return {
    id,
    emit,
    disconnect,
    conn: new EventEmitter(),
  } as unknown as Socket;
}

describe("bridge sessions on a Redis that fails a claim", function () {
  this.timeout(20_000);
  let redis: RedisServer;
  let main: RedisClientType;
  let subscriber: RedisClientType;
  let admin: RedisClientType;
  let store: RedisStore;
  let broadcaster: RecordingBroadcaster;
  let sessions: BridgeSessions;

  before(async () => {
    redis = await startRedisServer();
    // The relay's settings for its command connection.
    main = createClient({
      url: redis.url,
      disableOfflineQueue: true,
      commandOptions: commandDeadline(COMMAND_TIMEOUT_MS),
      socket: { reconnectStrategy: () => 100 },
    });
    main.on("error", () => undefined);
    subscriber = main.duplicate({ commandOptions: {} });
    subscriber.on("error", () => undefined);
    admin = createClient({ url: redis.url });
    admin.on("error", () => undefined);
    await Promise.all([main.connect(), subscriber.connect(), admin.connect()]);
    store = new RedisStore(main, { keyPrefix: "sessions-test" });
    await loadClaimScript(store);
  });

  /**
   * Returns the sessions of server `serverId`, on the test's Redis or
   * `sessionStore`, with the connection index and restored claim grace of
   * `options`.
   */
  function sessionsOf(
    serverId: string,
    sessionStore: StateStore = store,
    sockets: Socket[] = [],
    options: { index?: ConnectionIndex; graceMs?: number } = {},
  ) {
    const logger = pino({ level: "silent" });
    const bus = new RedisBus(
      serverId,
      { main, subscriber, subscriberState: serverConnectionState(subscriber) },
      "sessions-test",
      logger,
    );
    const recorder = new RecordingBroadcaster();
    const serverSessions = new BridgeSessions(
      sessionStore,
      bus,
      recorder,
      {
        sockets: new Map(sockets.map((socket) => [socket.id, socket])),
      } as unknown as Namespace,
      logger,
      options.index,
      options.graceMs,
    );
    return { bus, broadcaster: recorder, sessions: serverSessions };
  }

  /** Returns the test's store with the methods in `overrides` replaced. */
  function storeWith(overrides: Partial<StateStore>): StateStore {
    return new Proxy(store, {
      get(target, property, receiver) {
        if (Object.hasOwn(overrides, property)) {
          return overrides[property as keyof StateStore];
        }
        const value = Reflect.get(target, property, receiver) as unknown;
        return typeof value === "function" ? value.bind(target) : value;
      },
    });
  }

  /** Waits until `socketId` holds the bridge in the store again. */
  async function waitForHolder(bridgeId: string, socketId: string) {
    await waitUntil(
      `socket ${socketId} holding the bridge`,
      async () => {
        const [presence] = await store.getPresence([bridgeId]);
        return presence?.connection?.socketId === socketId;
      },
      3000,
    );
  }

  beforeEach(() => {
    ({ sessions, broadcaster } = sessionsOf("server-a"));
  });

  after(async () => {
    await Promise.allSettled([main.close(), subscriber.close(), admin.close()]);
    await redis.stop();
  });

  it("releases a claim run late", async () => {
    const bridgeId = randomBridgeId();
    // The claim times out before the pause ends, and the release sent
    // after it gets its answer within its own limit.
    await pauseWrites(admin, COMMAND_TIMEOUT_MS + 100);
    await assert.rejects(
      sessions.claim(bridgeId, socketWithId("refused-socket")),
      /timed out/i,
    );
    await sessions.settleReleases();
    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection, null, "the refused socket holds none");
    assert.notEqual(presence?.lastSeen, null, "the claim did run");
    assert.deepEqual(
      broadcaster.presences.map(({ bridgeId: id, online }) => ({ id, online })),
      [{ id: bridgeId, online: false }],
    );
    assert.equal(sessions.idle, true);
  });

  it("owes a release that timed out", async () => {
    const bridgeId = randomBridgeId();
    // As on a Redis that has run claims but never this rare release.
    await admin.sendCommand(["SCRIPT", "FLUSH"]);
    await loadClaimScript(store);
    const pauseMs = 4 * COMMAND_TIMEOUT_MS;
    const pausedAt = performance.now();
    await pauseWrites(admin, pauseMs);
    await assert.rejects(
      sessions.claim(bridgeId, socketWithId("refused-socket")),
    );
    await sessions.settleReleases();
    assert.equal(sessions.idle, false, "a release is owed");
    // Read just after the pause, before the owed release is sent again:
    // Redis ran the first one after the claim, on the same connection,
    // although Redis had not seen that script before.
    await sleep(pausedAt + pauseMs + 100 - performance.now());
    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection, null);
    // The owed release is sent again within a second, with no reconnect.
    await waitUntil("nothing owed", () => sessions.idle, 3000);
  });

  it("retries the release after a restart", async () => {
    const bridgeId = randomBridgeId();
    await redis.stop();
    try {
      await assert.rejects(
        sessions.claim(bridgeId, socketWithId("refused-socket")),
      );
      await sessions.settleReleases();
      assert.equal(sessions.idle, false, "a release is owed");
    } finally {
      await redis.restart();
    }
    await loadClaimScript(
      new RedisStore(admin, { keyPrefix: "sessions-test" }),
    );
    const deadline = Date.now() + 5000;
    while (!main.isReady && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    await sessions.revalidate();
    assert.equal(sessions.idle, true, "nothing is owed after the retry");
    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection, null);
  });

  it("has the replaced server claim again", async () => {
    const bridgeId = randomBridgeId();
    const emitted: string[] = [];
    const holder = await sessions.claim(
      bridgeId,
      socketWithId("open-socket", emitted),
    );
    const firstEpoch = holder.epoch;
    const { bus } = sessionsOf("server-a");
    // As the relay does: the replaced server claims again when asked.
    await bus.listen((message) => {
      if (message.type === "reclaim") {
        void sessions.reclaim(message.bridgeId, message.socketId);
      }
    });
    const newcomer = sessionsOf("server-b").sessions;
    try {
      await pauseWrites(admin, COMMAND_TIMEOUT_MS + 100);
      await assert.rejects(
        newcomer.claim(bridgeId, socketWithId("refused-socket")),
        /timed out/i,
      );
      await newcomer.settleReleases();

      await waitForHolder(bridgeId, "open-socket");
    } finally {
      await bus.close();
    }
    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection?.serverId, "server-a");
    assert.equal(
      presence?.connection?.epoch,
      firstEpoch + 2,
      "a new epoch, past the undone claim's",
    );
    assert.equal(
      holder.epoch,
      presence?.connection?.epoch,
      "the session's own",
    );
    assert.deepEqual(emitted, ["state:resync"]);
    assert.deepEqual(
      broadcaster.presences.map(({ online }) => online),
      [true, true],
    );
  });

  it("leaves a newer connection's claim alone", async () => {
    const bridgeId = randomBridgeId();
    // A newer connection claims the bridge right after the presence read.
    const racing = storeWith({
      getPresence: async (bridgeIds) => {
        const records = await store.getPresence(bridgeIds);
        await store.claimConnection(
          bridgeId,
          "server-b",
          "newer-socket",
          new Date(),
        );
        return records;
      },
    });
    const old = sessionsOf("server-a", racing).sessions;
    await old.claim(bridgeId, socketWithId("old-socket"));
    await store.releaseConnection(bridgeId, "old-socket", new Date());

    await old.reclaim(bridgeId, "old-socket");

    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection?.socketId, "newer-socket");
  });

  it("asks again when claiming again fails", async () => {
    const bridgeId = randomBridgeId();
    let failReads = 0;
    // The first presence read of the claim made again fails, as on a
    // Redis that times out.
    const flaky = storeWith({
      getPresence: (bridgeIds) => {
        if (failReads === 0) return store.getPresence(bridgeIds);
        failReads -= 1;
        return Promise.reject(new Error("presence read timed out"));
      },
    });
    const holder = sessionsOf("server-a", flaky).sessions;
    await holder.claim(bridgeId, socketWithId("open-socket", []));

    failReads = 1;
    await pauseWrites(admin, COMMAND_TIMEOUT_MS + 100);
    await assert.rejects(
      holder.claim(bridgeId, socketWithId("refused-socket")),
      /timed out/i,
    );
    await holder.settleReleases();

    await waitForHolder(bridgeId, "open-socket");
    assert.equal(failReads, 0, "the failing read happened");
  });

  it("stays busy while a release is retried", async () => {
    const bridgeId = randomBridgeId();
    let attempts = 0;
    let finishRetry = (): void => undefined;
    // The first release fails, and its retry waits for the test.
    const slow = storeWith({
      releaseConnection: async (...args) => {
        attempts += 1;
        if (attempts === 1) throw new Error("release timed out");
        await new Promise<void>((resolve) => (finishRetry = resolve));
        return store.releaseConnection(...args);
      },
    });
    const holder = sessionsOf("server-a", slow).sessions;
    const session = await holder.claim(bridgeId, socketWithId("gone-socket"));
    await assert.rejects(holder.release(session), /timed out/);

    await waitUntil("the retry sent", () => attempts === 2, 3000);
    assert.equal(holder.idle, false, "busy while the retry runs");
    finishRetry();
    await waitUntil("nothing owed", () => holder.idle, 3000);
    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection, null);
  });

  it("stays busy while a first release runs", async () => {
    const bridgeId = randomBridgeId();
    let finishRelease = (): void => undefined;
    const slow = storeWith({
      releaseConnection: async (...args) => {
        await new Promise<void>((resolve) => (finishRelease = resolve));
        return store.releaseConnection(...args);
      },
    });
    const holder = sessionsOf("server-a", slow).sessions;
    const session = await holder.claim(bridgeId, socketWithId("gone-socket"));
    const released = holder.release(session);

    await sleep(50);
    assert.equal(holder.idle, false, "busy while the release runs");
    finishRelease();
    await released;
    await waitUntil("idle once released", () => holder.idle, 1000);
  });

  it("keeps its own claim when two checks race", async () => {
    const bridgeId = randomBridgeId();
    const emitted: string[] = [];
    const socket = socketWithId("open-socket", emitted);
    const holder = sessionsOf("server-a", store, [socket]).sessions;
    await holder.claim(bridgeId, socket);
    await store.releaseConnection(bridgeId, "open-socket", new Date());

    // Both read no connection before either claims.
    await Promise.all([
      holder.reclaim(bridgeId, "open-socket"),
      holder.reclaim(bridgeId, "open-socket"),
    ]);

    assert.ok(!emitted.includes("session:replaced"), emitted.join());
    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection?.socketId, "open-socket");
    assert.equal(presence?.connection?.epoch, holder.get(bridgeId)?.epoch);
  });

  /**
   * Makes each server's sessions handle the bus messages sent to it, as
   * the relay does, and returns a function that stops listening. With
   * `dropTakeOver`, claim checks arrive without `takeOver`, as from a
   * relay older than that field.
   */
  async function connectServers(
    servers: ReturnType<typeof sessionsOf>[],
    options: { dropTakeOver?: boolean } = {},
  ): Promise<() => Promise<void>> {
    for (const { bus, sessions: serverSessions } of servers) {
      await bus.listen((message) => {
        if (message.type === "replace") {
          serverSessions.disconnectReplaced(message.bridgeId, message.socketId);
        } else if (message.type === "reclaim") {
          void serverSessions.reclaim(
            message.bridgeId,
            message.socketId,
            message.staleSocketId,
          );
        } else if (message.type === "checkClaim") {
          const takeOver =
            options.dropTakeOver !== true && message.takeOver === true;
          void serverSessions
            .checkClaim(
              message.bridgeId,
              message.socketId,
              message.requester,
              takeOver,
            )
            .catch(() => undefined);
        }
      });
    }
    return async () => {
      await Promise.all(servers.map(({ bus }) => bus.close()));
    };
  }

  /**
   * Claims a new bridge for socket "live-socket" of server-b, then claims
   * it for "gone-socket" of server-a, as Redis restored from an older copy
   * does. Returns the bridge, the events sent to the live socket and
   * server-b's sessions.
   */
  async function liveBridgeWithStaleClaim(): Promise<{
    bridgeId: string;
    emitted: string[];
    live: ReturnType<typeof sessionsOf>;
  }> {
    const bridgeId = randomBridgeId();
    const emitted: string[] = [];
    const socket = socketWithId("live-socket", emitted);
    const live = sessionsOf("server-b", store, [socket]);
    await live.sessions.claim(bridgeId, socket);
    await store.claimConnection(
      bridgeId,
      "server-a",
      "gone-socket",
      new Date(),
    );
    return { bridgeId, emitted, live };
  }

  it("checks a restored claim again after a failure", async () => {
    const { bridgeId, emitted, live } = await liveBridgeWithStaleClaim();
    let failedReleases = 0;
    // server-a's first release fails, as when its own Redis connection is
    // not back yet.
    const flaky = storeWith({
      releaseSocket: (...args) => {
        if (failedReleases > 0) return store.releaseSocket(...args);
        failedReleases += 1;
        return Promise.reject(new Error("the client is offline"));
      },
    });
    const named = sessionsOf("server-a", flaky);
    // A check with `takeOver` releases nothing on server-a.
    const disconnect = await connectServers([live, named], {
      dropTakeOver: true,
    });
    try {
      await live.sessions.revalidate();

      await waitForHolder(bridgeId, "live-socket");
    } finally {
      await disconnect();
    }
    assert.equal(failedReleases, 1, "the failing release happened");
    assert.deepEqual(emitted, ["state:resync"]);
  });

  it("runs a deferred check on revalidation", async () => {
    const { bridgeId, emitted, live } = await liveBridgeWithStaleClaim();
    // server-a's main Redis connection is not back yet when the check
    // arrives over its subscriber.
    let redisBack = false;
    let failedReleases = 0;
    const offline = storeWith({
      releaseSocket: (...args) => {
        if (redisBack) return store.releaseSocket(...args);
        failedReleases += 1;
        return Promise.reject(new Error("the client is offline"));
      },
    });
    const named = sessionsOf("server-a", offline);
    // A check with `takeOver` needs no Redis on server-a.
    const disconnect = await connectServers([live, named], {
      dropTakeOver: true,
    });
    let resolvedMs: number;
    try {
      await live.sessions.revalidate();
      // Without this, server-b would check again in a second, and that
      // check, not the deferred one, could resolve the claim.
      live.sessions.stopRetries();
      await waitUntil("the check failed", () => failedReleases === 1, 3000);

      redisBack = true;
      const reconnectedAt = performance.now();
      await named.sessions.revalidate();
      await waitForHolder(bridgeId, "live-socket");
      resolvedMs = performance.now() - reconnectedAt;
    } finally {
      await disconnect();
    }
    assert.deepEqual(emitted, ["state:resync"]);
    assert.ok(resolvedMs < 500, `claim resolved after ${resolvedMs} ms`);
  });

  it("takes over a claim that its server confirmed gone", async () => {
    const { bridgeId, emitted, live } = await liveBridgeWithStaleClaim();
    const [restored] = await store.getPresence([bridgeId]);
    // server-a's Redis connection is not back, so any release would fail.
    let namedStoreCalls = 0;
    const offline = storeWith({
      releaseSocket: () => {
        namedStoreCalls += 1;
        return Promise.reject(new Error("the client is offline"));
      },
      getPresence: () => {
        namedStoreCalls += 1;
        return Promise.reject(new Error("the client is offline"));
      },
    });
    const named = sessionsOf("server-a", offline);
    const disconnect = await connectServers([live, named]);
    try {
      await live.sessions.revalidate();

      await waitForHolder(bridgeId, "live-socket");
    } finally {
      live.sessions.stopRetries();
      await disconnect();
    }
    assert.equal(namedStoreCalls, 0, "server-a's store calls");
    assert.deepEqual(named.broadcaster.presences, []);
    assert.deepEqual(
      live.broadcaster.presences.map((presence) => presence.online),
      [true, true],
      "server-b's presence events: its first claim, then the takeover",
    );
    assert.deepEqual(emitted, ["state:resync"]);
    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection?.epoch, restored!.epoch + 1);
    assert.equal(
      presence?.connection?.epoch,
      live.sessions.get(bridgeId)?.epoch,
    );
  });

  it("releases a gone claim after the grace", async () => {
    const bridgeId = randomBridgeId();
    const graceMs = 500;
    // As Redis restored from an older copy: the claim names a socket of
    // server-a that closed since, and server-a's index lists the bridge.
    await store.claimConnection(
      bridgeId,
      "server-a",
      "gone-socket",
      new Date(),
    );
    const index = indexOf([bridgeId]);
    const named = sessionsOf("server-a", store, [], { index, graceMs });

    const revalidatedAt = performance.now();
    await named.sessions.revalidate();
    const [held] = await store.getPresence([bridgeId]);
    assert.equal(held?.connection?.socketId, "gone-socket");
    assert.equal(named.sessions.idle, false, "idle while the claim is held");

    await waitUntil(
      "the gone claim released",
      async () => {
        const [presence] = await store.getPresence([bridgeId]);
        return presence?.connection === null;
      },
      3000,
    );
    const releasedMs = performance.now() - revalidatedAt;
    assert.ok(releasedMs >= graceMs, `released after ${releasedMs} ms`);
    await waitUntil("idle once released", () => named.sessions.idle, 1000);
    assert.deepEqual(
      named.broadcaster.presences.map((presence) => presence.online),
      [false],
    );
    const page = await index.scan("0", 10);
    assert.deepEqual(page.bridgeIds, [], "bridges left in the index");
  });

  it("keeps the first grace on revalidation", async () => {
    const bridgeId = randomBridgeId();
    const graceMs = 1000;
    await store.claimConnection(
      bridgeId,
      "server-a",
      "gone-socket",
      new Date(),
    );
    const named = sessionsOf("server-a", store, [], {
      index: indexOf([bridgeId]),
      graceMs,
    });

    const revalidatedAt = performance.now();
    await named.sessions.revalidate();
    await sleep(700);
    // As after another Redis reconnect within the grace.
    await named.sessions.revalidate();
    await waitUntil(
      "the offline presence event",
      () => named.broadcaster.presences.length > 0,
      3000,
    );
    const releasedMs = performance.now() - revalidatedAt;

    assert.ok(releasedMs >= graceMs, `released after ${releasedMs} ms`);
    // A grace started again by the second revalidation ends at 1700 ms.
    assert.ok(releasedMs < graceMs + 500, `released after ${releasedMs} ms`);
    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection, null);
  });

  it("keeps a gone claim taken over", async () => {
    const graceMs = 500;
    // The stale claim names a socket of server-a from before the bridge
    // moved to server-b.
    const { bridgeId, emitted, live } = await liveBridgeWithStaleClaim();
    const named = sessionsOf("server-a", store, [], {
      index: indexOf([bridgeId]),
      graceMs,
    });
    const disconnect = await connectServers([live, named]);

    try {
      // server-a reconnects first, then server-b within the grace.
      await named.sessions.revalidate();
      await live.sessions.revalidate();
      await waitForHolder(bridgeId, "live-socket");
      await sleep(graceMs + 200);
    } finally {
      live.sessions.stopRetries();
      await disconnect();
    }

    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection?.socketId, "live-socket");
    assert.deepEqual(named.broadcaster.presences, []);
    assert.deepEqual(
      live.broadcaster.presences.map((event) => event.online),
      [true, true],
      "server-b's presence events: its first claim, then the takeover",
    );
    assert.deepEqual(emitted, ["state:resync"]);
    assert.equal(named.sessions.idle, true, "server-a idle after the grace");
  });

  it("replaces a socket when the named server has its own", async () => {
    const bridgeId = randomBridgeId();
    const emitted: string[] = [];
    const socket = socketWithId("other-socket", emitted);
    const replaced = sessionsOf("server-b", store, [socket]);
    await replaced.sessions.claim(bridgeId, socket);
    const heldSocket = socketWithId("held-socket");
    const holder = sessionsOf("server-a", store, [heldSocket]);
    // The claim names server-a's open socket, so server-b's is the older.
    await store.claimConnection(
      bridgeId,
      "server-a",
      "held-socket",
      new Date(),
    );
    const disconnect = await connectServers([replaced, holder]);
    try {
      await replaced.sessions.revalidate();

      await waitUntil(
        "server-b's socket replaced",
        () => emitted.includes("disconnect"),
        3000,
      );
    } finally {
      await disconnect();
    }
    assert.deepEqual(emitted, ["session:replaced", "disconnect"]);
    const [presence] = await store.getPresence([bridgeId]);
    assert.equal(presence?.connection?.socketId, "held-socket");
  });
});
