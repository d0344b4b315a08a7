import assert from "node:assert/strict";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { jwtVerify } from "jose";
import { Server, type Socket as ServerSocket } from "socket.io";
import {
  AppClient,
  type AppClientEvents,
} from "../client-sdk/src/app-client.ts";
import { backoffDelay } from "../client-sdk/src/backoff.ts";
import {
  BridgeClient,
  type BridgeClientEvents,
  type BridgeCommandAnswer,
} from "../client-sdk/src/bridge-client.ts";
import {
  RelayClientError,
  readHandshakeError,
} from "../client-sdk/src/errors.ts";
import {
  MAX_TOKEN_LENGTH,
  type BridgePresence,
  type BridgeState,
  type Light,
  type LightSetCommand,
  type LightsChangedEvent,
} from "../client-sdk/src/protocol.ts";
import { RecentAnswers } from "../client-sdk/src/recent-answers.ts";
import { TypedEmitter } from "../client-sdk/src/typed-emitter.ts";
import {
  VersionTracker,
  type VersionedEvent,
} from "../client-sdk/src/version-tracker.ts";
import {
  SimulatedBridge,
  createRandom,
  loadFixtureLights,
  simulatedBridgeId,
  trimLight,
} from "../client-sdk/simulator/simulated-bridge.ts";
import { signAppToken, signBridgeToken } from "../server/auth/token-signing.ts";

const BRIDGE_ID = "001788fffe4f3a2b";
const FAST_RECONNECT = { minDelayMs: 10, maxDelayMs: 40 };

function light(id: string, on: boolean): Light {
  return { id, type: "light", on: { on } };
}

function changed(version: number, ...lights: Light[]): VersionedEvent {
  const event: LightsChangedEvent = { bridgeId: BRIDGE_ID, version, lights };
  return { name: "lights:changed", event };
}

function snapshot(version: number, ...lights: Light[]): VersionedEvent {
  return {
    name: "bridge:snapshot",
    event: { bridgeId: BRIDGE_ID, version, lights },
  };
}

function bridgeState(version: number, ...lights: Light[]): BridgeState {
  return {
    bridgeId: BRIDGE_ID,
    online: true,
    lastSeen: null,
    epoch: 1,
    version,
    lights,
  };
}

describe("backoffDelay", () => {
  const bounds = { minDelayMs: 100, maxDelayMs: 1000 };

  it("returns min at attempt 0", () => {
    assert.equal(
      backoffDelay(0, bounds, () => 0.99),
      100,
    );
  });

  it("doubles the ceiling per attempt", () => {
    const top = () => 1;
    assert.equal(backoffDelay(1, bounds, top), 200);
    assert.equal(backoffDelay(2, bounds, top), 400);
    assert.equal(backoffDelay(3, bounds, top), 800);
  });

  it("caps the ceiling at max", () => {
    assert.equal(
      backoffDelay(4, bounds, () => 1),
      1000,
    );
    assert.equal(
      backoffDelay(5000, bounds, () => 1),
      1000,
    );
  });

  it("spreads delays over the range", () => {
    assert.equal(
      backoffDelay(3, bounds, () => 0),
      100,
    );
    assert.equal(
      backoffDelay(3, bounds, () => 0.5),
      450,
    );
  });

  it("stays within bounds with Math.random", () => {
    for (let attempt = 0; attempt < 20; attempt += 1) {
      const delay = backoffDelay(attempt, bounds);
      assert.ok(delay >= 100, `attempt ${attempt}: ${delay} below min`);
      assert.ok(delay <= 1000, `attempt ${attempt}: ${delay} above max`);
    }
  });

  it("rejects invalid bounds", () => {
    assert.throws(
      () => backoffDelay(1, { minDelayMs: 0, maxDelayMs: 10 }),
      RangeError,
    );
    assert.throws(
      () => backoffDelay(1, { minDelayMs: 20, maxDelayMs: 10 }),
      RangeError,
    );
    assert.throws(() => backoffDelay(-1, bounds), RangeError);
  });
});

describe("VersionTracker", () => {
  function synced(version: number): VersionTracker {
    const tracker = new VersionTracker();
    const round = tracker.begin(BRIDGE_ID);
    tracker.settle(round, bridgeState(version));
    return tracker;
  }

  it("delivers the next version", () => {
    const tracker = synced(5);
    assert.equal(tracker.receive(changed(6)), "deliver");
    assert.equal(tracker.versionOf(BRIDGE_ID), 6);
  });

  it("resyncs on a skipped version", () => {
    const tracker = synced(5);
    assert.equal(tracker.receive(changed(7)), "resync");
    assert.equal(tracker.versionOf(BRIDGE_ID), undefined);
  });

  it("resyncs on a lower version", () => {
    assert.equal(synced(5).receive(changed(2)), "resync");
  });

  it("resyncs on a repeated version", () => {
    assert.equal(synced(5).receive(changed(5)), "resync");
  });

  it("adopts any snapshot version", () => {
    const tracker = synced(5);
    assert.equal(tracker.receive(snapshot(2)), "deliver");
    assert.equal(tracker.versionOf(BRIDGE_ID), 2);
    assert.equal(tracker.receive(changed(3)), "deliver");
  });

  it("ignores untracked bridges", () => {
    assert.equal(new VersionTracker().receive(changed(1)), "ignore");
  });

  it("ignores forgotten bridges", () => {
    const tracker = synced(5);
    tracker.forget(BRIDGE_ID);
    assert.equal(tracker.receive(changed(6)), "ignore");
    assert.equal(tracker.has(BRIDGE_ID), false);
  });

  it("buffers while subscribing", () => {
    const tracker = new VersionTracker();
    tracker.begin(BRIDGE_ID);
    assert.equal(tracker.receive(changed(9)), "buffer");
  });

  it("drops buffered events at or below the ack", () => {
    const tracker = new VersionTracker();
    const round = tracker.begin(BRIDGE_ID);
    tracker.receive(changed(4, light("a", false)));
    tracker.receive(changed(5, light("a", false)));
    const outcome = tracker.settle(round, bridgeState(5, light("a", true)));
    assert.equal(outcome.status, "synced");
    assert.deepEqual(outcome.status === "synced" ? outcome.state.lights : [], [
      light("a", true),
    ]);
  });

  it("folds newer buffered events into the state", () => {
    const tracker = new VersionTracker();
    const round = tracker.begin(BRIDGE_ID);
    tracker.receive(changed(6, light("a", false)));
    tracker.receive(changed(7, light("c", true)));
    const ack = bridgeState(5, light("a", true), light("b", true));
    const outcome = tracker.settle(round, ack);
    assert.equal(outcome.status, "synced");
    const state = outcome.status === "synced" ? outcome.state : ack;
    assert.equal(state.version, 7);
    assert.deepEqual(state.lights, [
      light("a", false),
      light("b", true),
      light("c", true),
    ]);
    assert.equal(tracker.versionOf(BRIDGE_ID), 7);
    assert.equal(ack.lights[0]?.on.on, true, "ack state must not be mutated");
  });

  it("folds a buffered snapshot", () => {
    const tracker = new VersionTracker();
    const round = tracker.begin(BRIDGE_ID);
    tracker.receive(snapshot(9, light("z", true)));
    const outcome = tracker.settle(round, bridgeState(5, light("a", true)));
    assert.equal(outcome.status, "synced");
    const state = outcome.status === "synced" ? outcome.state : undefined;
    assert.equal(state?.version, 9);
    assert.deepEqual(state?.lights, [light("z", true)]);
  });

  it("reports a gap in buffered events", () => {
    const tracker = new VersionTracker();
    const round = tracker.begin(BRIDGE_ID);
    tracker.receive(changed(7));
    assert.deepEqual(tracker.settle(round, bridgeState(5)), { status: "gap" });
    assert.equal(tracker.receive(changed(8)), "buffer");
  });

  it("settles forgotten bridges as untracked", () => {
    const tracker = new VersionTracker();
    const round = tracker.begin(BRIDGE_ID);
    tracker.forget(BRIDGE_ID);
    const outcome = tracker.settle(round, bridgeState(5));
    assert.equal(outcome.status, "untracked");
    assert.equal(tracker.has(BRIDGE_ID), false);
  });

  it("begin drops earlier buffered events", () => {
    const tracker = new VersionTracker();
    tracker.begin(BRIDGE_ID);
    tracker.receive(changed(7));
    const round = tracker.begin(BRIDGE_ID);
    assert.equal(tracker.settle(round, bridgeState(5)).status, "synced");
  });

  it("settles a superseded round as untracked", () => {
    const tracker = new VersionTracker();
    const first = tracker.begin(BRIDGE_ID);
    const second = tracker.begin(BRIDGE_ID);
    assert.equal(tracker.settle(first, bridgeState(3)).status, "untracked");
    assert.equal(tracker.versionOf(BRIDGE_ID), undefined);
    assert.equal(tracker.settle(second, bridgeState(4)).status, "synced");
    assert.equal(tracker.versionOf(BRIDGE_ID), 4);
  });
});

describe("RecentAnswers", () => {
  const TTL_MS = 60_000;

  /** Creates a promise that the test resolves or rejects by hand. */
  function deferred<T>() {
    let resolve!: (value: T) => void;
    let reject!: (error: unknown) => void;
    const promise = new Promise<T>((onResolve, onReject) => {
      resolve = onResolve;
      reject = onReject;
    });
    return { promise, resolve, reject };
  }

  /** Creates a cache whose clock the test moves with `clock.ms`. */
  function answersAt(options: { maxEntries?: number } = {}) {
    const clock = { ms: 1_000_000 };
    const answers = new RecentAnswers<string>({
      ttlMs: TTL_MS,
      now: () => clock.ms,
      ...options,
    });
    return { answers, clock };
  }

  it("runs a new key once", async () => {
    const { answers } = answersAt();
    let calls = 0;
    const answer = await answers.run("c1", () => {
      calls += 1;
      return "done";
    });
    assert.equal(answer, "done");
    assert.equal(calls, 1);
    assert.equal(answers.size, 1);
  });

  it("shares a pending answer with a repeat", async () => {
    const { answers } = answersAt();
    const first = deferred<string>();
    let calls = 0;
    const operation = () => {
      calls += 1;
      return first.promise;
    };
    const original = answers.run("c1", operation);
    const repeat = answers.run("c1", operation);
    assert.equal(calls, 1, "the repeat did not run the operation");
    first.resolve("done");
    assert.equal(await original, "done");
    assert.equal(await repeat, "done");
  });

  it("keeps a settled answer for ttlMs", async () => {
    const { answers, clock } = answersAt();
    let calls = 0;
    const operation = () => {
      calls += 1;
      return `answer ${calls}`;
    };
    assert.equal(await answers.run("c1", operation), "answer 1");
    clock.ms += TTL_MS - 1;
    assert.equal(await answers.run("c1", operation), "answer 1");
    assert.equal(calls, 1, "a repeat within ttlMs did not run again");
    clock.ms += 1;
    assert.equal(await answers.run("c1", operation), "answer 2");
    assert.equal(calls, 2, "a repeat after ttlMs ran again");
  });

  it("starts ttlMs when the answer settles", async () => {
    const { answers, clock } = answersAt();
    const first = deferred<string>();
    let calls = 0;
    const operation = () => {
      calls += 1;
      return first.promise;
    };
    const original = answers.run("c1", operation);
    clock.ms += 2 * TTL_MS;
    assert.equal(
      answers.run("c1", operation),
      original,
      "pending never expires",
    );
    first.resolve("done");
    await original;
    clock.ms += TTL_MS - 1;
    assert.equal(await answers.run("c1", operation), "done");
    assert.equal(calls, 1);
  });

  it("drops expired answers on the next run", async () => {
    const { answers, clock } = answersAt();
    await answers.run("c1", () => "one");
    await answers.run("c2", () => "two");
    clock.ms += TTL_MS;
    await answers.run("c3", () => "three");
    assert.equal(answers.size, 1);
  });

  it("drops the oldest key beyond maxEntries", async () => {
    const { answers } = answersAt({ maxEntries: 2 });
    const calls: string[] = [];
    const operation = (key: string) => () => {
      calls.push(key);
      return key;
    };
    for (const key of ["c1", "c2", "c3"])
      await answers.run(key, operation(key));
    assert.equal(answers.size, 2);
    await answers.run("c2", operation("c2"));
    await answers.run("c3", operation("c3"));
    assert.deepEqual(calls, ["c1", "c2", "c3"], "c2 and c3 were kept");
    await answers.run("c1", operation("c1"));
    assert.deepEqual(calls, ["c1", "c2", "c3", "c1"], "c1 was dropped");
    assert.equal(answers.size, 2);
  });

  it("shares a thrown error with repeats", async () => {
    const { answers } = answersAt();
    const failure = new Error("bulb unreachable");
    let calls = 0;
    const operation = (): string => {
      calls += 1;
      throw failure;
    };
    const original = answers.run("c1", operation);
    const pendingRepeat = answers.run("c1", operation);
    await assert.rejects(original, (error) => error === failure);
    await assert.rejects(pendingRepeat, (error) => error === failure);
    await assert.rejects(
      answers.run("c1", operation),
      (error) => error === failure,
    );
    assert.equal(calls, 1);
  });

  it("shares a rejected answer with repeats", async () => {
    const { answers } = answersAt();
    const first = deferred<string>();
    let calls = 0;
    const operation = () => {
      calls += 1;
      return first.promise;
    };
    const original = answers.run("c1", operation);
    const pendingRepeat = answers.run("c1", operation);
    first.reject(new Error("bulb unreachable"));
    await assert.rejects(original, /bulb unreachable/);
    await assert.rejects(pendingRepeat, /bulb unreachable/);
    await assert.rejects(answers.run("c1", operation), /bulb unreachable/);
    assert.equal(calls, 1);
  });

  it("forgets every key on clear", async () => {
    const { answers } = answersAt();
    let calls = 0;
    const operation = () => {
      calls += 1;
      return "done";
    };
    await answers.run("c1", operation);
    answers.clear();
    assert.equal(answers.size, 0);
    await answers.run("c1", operation);
    assert.equal(calls, 2);
  });

  it("rejects invalid options", () => {
    for (const ttlMs of [-1, Number.NaN, Infinity]) {
      assert.throws(() => new RecentAnswers({ ttlMs }), RangeError);
    }
    for (const maxEntries of [0, 1.5, Number.NaN]) {
      assert.throws(() => new RecentAnswers({ maxEntries }), RangeError);
    }
  });
});

describe("RelayClientError", () => {
  it("keeps the fields of an error body", () => {
    const error = RelayClientError.fromBody({
      code: "BRIDGE_ERROR",
      message: "bridge refused",
      retryAfterMs: 250,
      details: { code: "HANDLER_FAILED", message: "boom" },
    });
    assert.equal(error.code, "BRIDGE_ERROR");
    assert.equal(error.message, "bridge refused");
    assert.equal(error.retryAfterMs, 250);
    assert.deepEqual(error.details, {
      code: "HANDLER_FAILED",
      message: "boom",
    });
    assert.ok(error instanceof Error);
  });

  it("maps unknown codes to INTERNAL", () => {
    const error = RelayClientError.fromBody({ code: "NEW_CODE", message: "x" });
    assert.equal(error.code, "INTERNAL");
    assert.equal(error.details?.code, "NEW_CODE");
  });

  it("reads handshake error data", () => {
    const error = Object.assign(new Error("slow down"), {
      data: { code: "RATE_LIMITED", retryAfterMs: 500 },
    });
    assert.deepEqual(readHandshakeError(error), {
      code: "RATE_LIMITED",
      retryAfterMs: 500,
    });
  });

  it("ignores non-handshake codes", () => {
    const error = Object.assign(new Error("x"), {
      data: { code: "NOT_FOUND" },
    });
    assert.equal(readHandshakeError(error), undefined);
    assert.equal(readHandshakeError(new Error("websocket error")), undefined);
  });
});

describe("TypedEmitter", () => {
  class Counter extends TypedEmitter<{ tick: (count: number) => void }> {
    tick(count: number): void {
      this.emit("tick", count);
    }
  }

  it("calls once listeners once", () => {
    const counter = new Counter();
    const seen: number[] = [];
    counter.once("tick", (count) => seen.push(count));
    counter.tick(1);
    counter.tick(2);
    assert.deepEqual(seen, [1]);
  });

  it("removes listeners with off", () => {
    const counter = new Counter();
    const seen: number[] = [];
    const listener = (count: number) => seen.push(count);
    counter.on("tick", listener);
    counter.off("tick", listener);
    counter.tick(1);
    assert.deepEqual(seen, []);
  });
});

describe("simulated bridge", () => {
  const fixture = loadFixtureLights();

  it("loads the fixture lights", () => {
    assert.equal(fixture.length, 8);
    assert.ok(fixture.every((document) => document.type === "light"));
  });

  it("formats bridge IDs", () => {
    assert.equal(simulatedBridgeId(0), "001788fffe000000");
    assert.equal(simulatedBridgeId(255), "001788fffe0000ff");
    assert.throws(() => simulatedBridgeId(0x1000000), RangeError);
  });

  it("trims lights to contract fields", () => {
    const trimmed = trimLight(fixture[0]!);
    assert.deepEqual(Object.keys(trimmed).sort(), [
      "color",
      "color_temperature",
      "dimming",
      "id",
      "metadata",
      "on",
      "type",
    ]);
    assert.deepEqual(trimmed.metadata, { name: "Light 1" });
    assert.deepEqual(trimmed.dimming, { brightness: 81.03 });
  });

  it("replaces changed fields whole", () => {
    const bridge = new SimulatedBridge(BRIDGE_ID, fixture);
    const target = fixture[0]!.id;
    const answer = bridge.applyCommand({
      commandId: "c1",
      lightId: target,
      change: { dimming: { brightness: 10 }, on: { on: true } },
    });
    assert.equal(answer.ok, true);
    const stored = bridge
      .documents()
      .find((document) => document.id === target);
    assert.deepEqual(stored?.dimming, { brightness: 10 });
    assert.deepEqual(stored?.on, { on: true });
    assert.ok(stored?.gradient !== undefined, "unchanged fields must stay");
  });

  it("answers with the trimmed light", () => {
    const bridge = new SimulatedBridge(BRIDGE_ID, fixture);
    const answer = bridge.applyCommand({
      commandId: "c1",
      lightId: fixture[1]!.id,
      change: { on: { on: true } },
    });
    assert.ok(answer.ok);
    assert.equal(answer.ok && "gradient" in answer.data.light, false);
    assert.deepEqual(answer.ok && answer.data.light.on, { on: true });
  });

  it("answers NOT_FOUND for unknown lights", () => {
    const bridge = new SimulatedBridge(BRIDGE_ID, fixture);
    const answer = bridge.applyCommand({
      commandId: "c1",
      lightId: "missing",
      change: { on: { on: true } },
    });
    assert.equal(answer.ok, false);
    assert.equal(!answer.ok && answer.error.code, "NOT_FOUND");
  });

  it("does not share state with the fixture", () => {
    const bridge = new SimulatedBridge(BRIDGE_ID, fixture);
    const before = fixture[0]!.on.on;
    bridge.applyCommand({
      commandId: "c1",
      lightId: fixture[0]!.id,
      change: { on: { on: !before } },
    });
    assert.equal(fixture[0]!.on.on, before);
  });

  it("toggles a light like a wall switch", () => {
    const bridge = new SimulatedBridge(BRIDGE_ID, fixture);
    const change = bridge.toggleRandomLight(() => 0);
    const original = fixture.find((document) => document.id === change.id);
    assert.equal(change.on?.on, !original?.on.on);
    const stored = bridge
      .documents()
      .find((document) => document.id === change.id);
    assert.equal(stored?.on.on, change.on?.on);
  });

  it("repeats random choices per seed", () => {
    const first = createRandom(42);
    const second = createRandom(42);
    const values = [first(), first(), first()];
    assert.deepEqual([second(), second(), second()], values);
    assert.ok(values.every((value) => value >= 0 && value < 1));
    assert.notEqual(createRandom(43)(), values[0]);
  });
});

describe("token signing", () => {
  const secret = "s".repeat(32);
  const key = new TextEncoder().encode(secret);

  it("signs bridge claims", async () => {
    const token = await signBridgeToken(secret, "001788FFFE4F3A2B");
    const { payload, protectedHeader } = await jwtVerify(token, key);
    assert.equal(protectedHeader.alg, "HS256");
    assert.equal(payload.sub, BRIDGE_ID);
    assert.equal(payload.role, "bridge");
    assert.equal(payload.exp, undefined);
  });

  it("signs app claims", async () => {
    const token = await signAppToken(secret, "alice", {
      bridges: [BRIDGE_ID.toUpperCase(), BRIDGE_ID],
      scope: "control  read",
      expiresIn: "1h",
    });
    const { payload } = await jwtVerify(token, key);
    assert.equal(payload.sub, "alice");
    assert.equal(payload.role, "app");
    assert.deepEqual(payload.bridges, [BRIDGE_ID]);
    assert.equal(payload.scope, "control read");
    assert.equal(payload.exp, (payload.iat ?? 0) + 3600);
  });

  it("sets issuer and audience", async () => {
    const token = await signBridgeToken(secret, BRIDGE_ID, {
      issuer: "relay-test",
      audience: "relay",
    });
    const verified = jwtVerify(token, key, {
      issuer: "relay-test",
      audience: "relay",
    });
    await assert.doesNotReject(verified);
  });

  it("rejects invalid input", async () => {
    await assert.rejects(
      signBridgeToken(secret, "0017"),
      /invalid bridge ID "0017"/,
    );
    await assert.rejects(
      signAppToken(secret, "a", { bridges: [], scope: "write" }),
      /invalid scope "write"/,
    );
    await assert.rejects(
      signBridgeToken(secret, BRIDGE_ID, { expiresIn: "soon" }),
      /invalid expiry "soon"/,
    );
  });
});

type ClientEvents = BridgeClientEvents & AppClientEvents;
type Payload<Event extends keyof ClientEvents> = Parameters<
  ClientEvents[Event]
>[0];

/** Resolves with the payload of the next `event` that passes `match`. */
function nextEvent<Event extends keyof ClientEvents>(
  client: BridgeClient | AppClient,
  event: Event,
  match: (payload: Payload<Event>) => boolean = () => true,
  timeoutMs = 2000,
): Promise<Payload<Event>> {
  // Both clients share the event names used here; the cast picks one map.
  const emitter = client as unknown as TypedEmitter<ClientEvents>;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      emitter.off(event, listener);
      reject(new Error(`timed out waiting for ${event}`));
    }, timeoutMs);
    const listener = ((payload: Payload<Event>) => {
      if (!match(payload)) return;
      clearTimeout(timer);
      emitter.off(event, listener);
      resolve(payload);
    }) as ClientEvents[Event];
    emitter.on(event, listener);
  });
}

describe("clients against a stub Socket.IO server", () => {
  let io: Server;
  let url: string;
  const clients: { close: () => void }[] = [];

  beforeEach(async () => {
    const http = createServer();
    io = new Server(http);
    await new Promise<void>((resolve) => http.listen(0, "127.0.0.1", resolve));
    url = `http://127.0.0.1:${(http.address() as AddressInfo).port}`;
  });

  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await new Promise<void>((resolve) => io.close(() => resolve()));
  });

  function bridgeClient(
    overrides: Partial<ConstructorParameters<typeof BridgeClient>[0]> = {},
  ) {
    const client = new BridgeClient({
      url,
      token: "t",
      getLights: () => [light("a", true)],
      onCommand: (command) => ({
        ok: true,
        data: { light: { ...light(command.lightId, true) } },
      }),
      reconnect: FAST_RECONNECT,
      ...overrides,
    });
    clients.push(client);
    return client;
  }

  function appClient(requestTimeoutMs = 2000) {
    const client = new AppClient({
      url,
      token: "t",
      reconnect: FAST_RECONNECT,
      requestTimeoutMs,
    });
    clients.push(client);
    return client;
  }

  it("refuses a token over the relay's limit without connecting", async () => {
    let handshakes = 0;
    io.of("/app").use((_socket, next) => {
      handshakes += 1;
      next();
    });
    const client = new AppClient({
      url,
      token: "t".repeat(MAX_TOKEN_LENGTH + 1),
      reconnect: FAST_RECONNECT,
    });
    clients.push(client);
    await assert.rejects(client.connect(), { code: "UNAUTHORIZED" });
    assert.equal(client.state, "unauthorized");
    await new Promise((resolve) => setTimeout(resolve, 300));
    assert.equal(handshakes, 0);
  });

  function rejectHandshakes(
    namespace: string,
    code: string,
    retryAfterMs?: number,
  ) {
    let rejected = 0;
    io.of(namespace).use((_socket, next) => {
      if (rejected > 0 && code === "RATE_LIMITED") return next();
      rejected += 1;
      next(
        Object.assign(new Error("handshake rejected"), {
          data: { code, retryAfterMs },
        }),
      );
    });
  }

  it("bridge sends a snapshot on connect", async () => {
    const received: unknown[] = [];
    io.of("/bridge").on("connection", (socket) => {
      socket.on("state:snapshot", (payload, ack) => {
        received.push(payload);
        ack({ ok: true, data: { version: 1 } });
      });
    });
    const client = bridgeClient();
    const synced = nextEvent(client, "synced");
    await client.connect();
    assert.equal(client.state, "connected");
    assert.deepEqual(await synced, { version: 1, trigger: "connect" });
    assert.deepEqual(received, [{ lights: [light("a", true)] }]);
  });

  it("bridge resends a snapshot on resync", async () => {
    io.of("/bridge").on("connection", (socket) => {
      let version = 0;
      socket.on("state:snapshot", (_payload, ack) => {
        version += 1;
        ack({ ok: true, data: { version } });
        if (version === 1) socket.emit("state:resync", { reason: "test" });
      });
    });
    const client = bridgeClient();
    const resynced = nextEvent(
      client,
      "synced",
      (event) => event.trigger === "resync",
    );
    await client.connect();
    assert.deepEqual(await resynced, { version: 2, trigger: "resync" });
  });

  it("bridge drops answers of an ended connection", async () => {
    let connections = 0;
    const secondAnswer = new Promise<unknown>((resolve) => {
      io.of("/bridge").on("connection", (socket) => {
        connections += 1;
        const commandId = `c${connections}`;
        // Ack IDs count per namespace, per server process. The second
        // connection stands for one to another worker, whose count also
        // starts at 0, so both commands get ack ID 0.
        (io.of("/bridge") as unknown as { _ids: number })._ids = 0;
        socket
          .timeout(2000)
          .emit(
            "light:set",
            { commandId, lightId: commandId, change: { on: { on: true } } },
            (_error: unknown, answer: unknown) => {
              if (commandId === "c2") resolve(answer);
            },
          );
        // The first connection ends while its command is still running.
        if (connections === 1) setTimeout(() => socket.disconnect(true), 20);
      });
    });
    bridgeClient({
      onCommand: async (command) => {
        const delayMs = command.commandId === "c1" ? 300 : 600;
        await new Promise((resolve) => setTimeout(resolve, delayMs));
        return { ok: true, data: { light: light(command.lightId, true) } };
      },
    }).connect();
    const answer = (await secondAnswer) as { data?: { light?: Light } };
    assert.equal(answer.data?.light?.id, "c2");
  });

  it("bridge answers a throwing handler with HANDLER_FAILED", async () => {
    const answered = new Promise<unknown>((resolve) => {
      io.of("/bridge").on("connection", (socket) => {
        const command = {
          commandId: "c1",
          lightId: "a",
          change: { on: { on: false } },
        };
        socket
          .timeout(1000)
          .emit("light:set", command, (_error: unknown, answer: unknown) =>
            resolve(answer),
          );
      });
    });
    bridgeClient({
      onCommand: () => {
        throw new Error("bulb unreachable");
      },
    }).connect();
    assert.deepEqual(await answered, {
      ok: false,
      error: { code: "HANDLER_FAILED", message: "bulb unreachable" },
    });
  });

  /** Sends `light:set` for `lightId` and resolves with the bridge's answer. */
  function sendCommand(
    socket: ServerSocket,
    commandId: string,
    lightId: string,
  ): Promise<unknown> {
    const command = { commandId, lightId, change: { on: { on: true } } };
    return new Promise((resolve, reject) => {
      socket
        .timeout(2000)
        .emit("light:set", command, (error: Error | null, answer: unknown) =>
          error === null ? resolve(answer) : reject(error),
        );
    });
  }

  /**
   * Sends `c1` twice, then `c2`, then `c1` again once the first three are
   * answered. The handler of `c1` waits until `c2` arrives, so the first
   * repeat meets a pending `c1` and the last one a settled `c1`. Socket.IO
   * delivers the packets in order, and BridgeClient takes a command up
   * before the next packet is read. Returns the handler calls and the
   * three answers to `c1`.
   */
  async function repeatCommand(
    finish: (command: LightSetCommand) => BridgeCommandAnswer,
  ): Promise<{ calls: string[]; answers: unknown[] }> {
    const connected = new Promise<ServerSocket>((resolve) =>
      io.of("/bridge").on("connection", resolve),
    );
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const calls: string[] = [];
    await bridgeClient({
      onCommand: async (command) => {
        calls.push(command.commandId);
        if (command.commandId === "c2") release();
        else await released;
        return finish(command);
      },
    }).connect();
    const socket = await connected;
    const [original, pendingRepeat] = await Promise.all([
      sendCommand(socket, "c1", "a"),
      sendCommand(socket, "c1", "a"),
      sendCommand(socket, "c2", "b"),
    ]);
    const settledRepeat = await sendCommand(socket, "c1", "a");
    return { calls, answers: [original, pendingRepeat, settledRepeat] };
  }

  it("bridge runs a repeated commandId once", async () => {
    const { calls, answers } = await repeatCommand((command) => ({
      ok: true,
      data: { light: light(command.lightId, true) },
    }));
    assert.deepEqual(calls, ["c1", "c2"]);
    const expected = { ok: true, data: { light: light("a", true) } };
    assert.deepEqual(answers[0], expected);
    assert.deepEqual(answers[1], expected, "the pending repeat");
    assert.deepEqual(answers[2], expected, "the settled repeat");
  });

  it("bridge repeats a handler failure", async () => {
    const { calls, answers } = await repeatCommand(() => {
      throw new Error("bulb unreachable");
    });
    assert.deepEqual(calls, ["c1", "c2"]);
    const expected = {
      ok: false,
      error: { code: "HANDLER_FAILED", message: "bulb unreachable" },
    };
    assert.deepEqual(answers[0], expected);
    assert.deepEqual(answers[1], expected, "the pending repeat");
    assert.deepEqual(answers[2], expected, "the settled repeat");
  });

  it("bridge reportChanges rejects with the relay code", async () => {
    io.of("/bridge").on("connection", (socket) => {
      socket.on("state:snapshot", (_payload, ack) =>
        ack({ ok: true, data: { version: 1 } }),
      );
      socket.on("state:changed", (_payload, ack) =>
        ack({ ok: false, error: { code: "NOT_FOUND", message: "no light x" } }),
      );
    });
    const client = bridgeClient();
    await client.connect();
    const report = client.reportChanges([{ id: "x", on: { on: true } }]);
    await assert.rejects(report, (error: RelayClientError) => {
      assert.ok(error instanceof RelayClientError);
      assert.equal(error.code, "NOT_FOUND");
      return true;
    });
  });

  it("bridge stops for good when replaced", async () => {
    let connections = 0;
    const disconnected = new Promise<void>((resolve) => {
      io.of("/bridge").on("connection", (socket) => {
        connections += 1;
        socket.on("disconnect", () => resolve());
        socket.emit("session:replaced", { reason: "newer connection" });
        socket.disconnect(true);
      });
    });
    const client = bridgeClient();
    let retries = 0;
    client.on("retry", () => (retries += 1));
    const replaced = nextEvent(client, "replaced");
    client.connect().catch(() => undefined);
    assert.deepEqual(await replaced, { reason: "newer connection" });
    await disconnected;
    assert.equal(client.state, "replaced");
    assert.equal(retries, 0);
    assert.equal(connections, 1);
  });

  it("bridge reconnects after a server disconnect", async () => {
    let connections = 0;
    io.of("/bridge").on("connection", (socket) => {
      connections += 1;
      socket.on("state:snapshot", (_payload, ack) => {
        ack({ ok: true, data: { version: connections } });
        if (connections === 1) socket.disconnect(true);
      });
    });
    const client = bridgeClient();
    const second = nextEvent(client, "synced", (event) => event.version === 2);
    const retried = nextEvent(client, "retry");
    await client.connect();
    const retry = await retried;
    assert.equal(retry.attempt, 1);
    assert.equal(retry.error.code, "UNAVAILABLE");
    await second;
    assert.equal(client.state, "connected");
  });

  it("unauthorized handshake is final", async () => {
    rejectHandshakes("/bridge", "UNAUTHORIZED");
    const client = bridgeClient();
    await assert.rejects(client.connect(), (error: RelayClientError) => {
      assert.equal(error.code, "UNAUTHORIZED");
      return true;
    });
    assert.equal(client.state, "unauthorized");
  });

  it("forbidden handshake is final", async () => {
    rejectHandshakes("/app", "FORBIDDEN");
    const client = appClient();
    await assert.rejects(client.connect(), { code: "FORBIDDEN" });
    assert.equal(client.state, "unauthorized");
  });

  it("rate-limited handshake waits retryAfterMs", async () => {
    rejectHandshakes("/bridge", "RATE_LIMITED", 150);
    const client = bridgeClient();
    const retried = nextEvent(client, "retry");
    await client.connect();
    const retry = await retried;
    assert.ok(
      retry.delayMs >= 150,
      `delay ${retry.delayMs} below retryAfterMs`,
    );
    assert.equal(retry.error.code, "RATE_LIMITED");
  });

  it("emits state changes in order", async () => {
    io.of("/bridge");
    const client = bridgeClient();
    const states: string[] = [];
    client.on("state", ({ state }) => states.push(state));
    await client.connect();
    client.close();
    assert.deepEqual(states, ["connecting", "connected", "closed"]);
  });

  it("app request fails while disconnected", async () => {
    const client = appClient();
    await assert.rejects(client.listBridges(), { code: "UNAVAILABLE" });
    await assert.rejects(client.subscribe(BRIDGE_ID), { code: "UNAVAILABLE" });
  });

  it("app rejects an invalid bridge ID", async () => {
    await assert.rejects(appClient().subscribe("nope"), {
      code: "INVALID_PAYLOAD",
    });
  });

  it("app request times out", async () => {
    io.of("/app").on("connection", (socket) => {
      socket.on("relay:info", () => undefined);
    });
    const client = appClient(50);
    await client.connect();
    await assert.rejects(client.serverInfo(), { code: "TIMEOUT" });
  });

  it("app request cut by a disconnect", async () => {
    io.of("/app").on("connection", (socket) => {
      socket.on("relay:info", () => socket.disconnect(true));
    });
    const client = appClient();
    await client.connect();
    await assert.rejects(client.serverInfo(), { code: "UNAVAILABLE" });
  });

  it("app passes on the relay error code", async () => {
    io.of("/app").on("connection", (socket) => {
      socket.on("light:set", (_payload, ack) =>
        ack({
          ok: false,
          error: { code: "BRIDGE_OFFLINE", message: "offline" },
        }),
      );
    });
    const client = appClient();
    await client.connect();
    const set = client.setLight(BRIDGE_ID, "a", { on: { on: true } });
    await assert.rejects(set, { code: "BRIDGE_OFFLINE", message: "offline" });
  });

  it("app folds events that race the subscribe ack", async () => {
    io.of("/app").on("connection", (socket) => {
      socket.on("bridge:subscribe", ({ bridgeId }, ack) => {
        socket.emit("lights:changed", {
          bridgeId,
          version: 5,
          lights: [light("a", false)],
        });
        socket.emit("lights:changed", {
          bridgeId,
          version: 6,
          lights: [light("a", false)],
        });
        ack({ ok: true, data: bridgeState(5, light("a", true)) });
      });
    });
    const client = appClient();
    let passedOn = 0;
    client.on("lights:changed", () => (passedOn += 1));
    await client.connect();
    const state = await client.subscribe(BRIDGE_ID.toUpperCase());
    assert.equal(state.version, 6);
    assert.deepEqual(state.lights, [light("a", false)]);
    assert.equal(passedOn, 0);
  });

  it("app resubscribes on a version gap", async () => {
    let subscribes = 0;
    const connected = new Promise<ServerSocket>((resolve) => {
      io.of("/app").on("connection", (socket) => {
        socket.on("bridge:subscribe", (_payload, ack) => {
          subscribes += 1;
          ack({ ok: true, data: bridgeState(subscribes === 1 ? 5 : 9) });
        });
        resolve(socket);
      });
    });
    const client = appClient();
    const versions: number[] = [];
    client.on("lights:changed", ({ version }) => versions.push(version));
    const resynced = nextEvent(client, "resynced");
    await client.connect();
    await client.subscribe(BRIDGE_ID);
    const server = await connected;
    server.emit("lights:changed", {
      bridgeId: BRIDGE_ID,
      version: 6,
      lights: [],
    });
    server.emit("lights:changed", {
      bridgeId: BRIDGE_ID,
      version: 8,
      lights: [],
    });
    const event = await resynced;
    assert.equal(event.bridgeId, BRIDGE_ID);
    assert.equal(event.state.version, 9);
    assert.deepEqual(versions, [6]);
    assert.equal(subscribes, 2);
  });

  it("app subscribes again on a gap during subscribe", async () => {
    let subscribes = 0;
    io.of("/app").on("connection", (socket) => {
      socket.on("bridge:subscribe", ({ bridgeId }, ack) => {
        subscribes += 1;
        if (subscribes === 1) {
          socket.emit("lights:changed", { bridgeId, version: 7, lights: [] });
        }
        ack({ ok: true, data: bridgeState(subscribes === 1 ? 5 : 9) });
      });
    });
    const client = appClient();
    await client.connect();
    const state = await client.subscribe(BRIDGE_ID);
    assert.equal(state.version, 9);
    assert.equal(subscribes, 2);
  });

  it("app resubscribes after a reconnect", async () => {
    let connections = 0;
    io.of("/app").on("connection", (socket) => {
      connections += 1;
      const connection = connections;
      socket.on("bridge:subscribe", (_payload, ack) => {
        ack({ ok: true, data: bridgeState(connection) });
        if (connection === 1) socket.disconnect(true);
      });
    });
    const client = appClient();
    const resynced = nextEvent(client, "resynced");
    await client.connect();
    await client.subscribe(BRIDGE_ID);
    const event = await resynced;
    assert.equal(event.state.version, 2);
    assert.equal(connections, 2);
  });

  it("app resubscribes on bridge:resync", async () => {
    let subscribes = 0;
    io.of("/app").on("connection", (socket) => {
      socket.on("bridge:subscribe", (_payload, ack) => {
        subscribes += 1;
        ack({ ok: true, data: bridgeState(subscribes) });
        if (subscribes > 1) return;
        // Once the subscription has settled, as after a relay reconnect.
        setTimeout(() => {
          const other = "0".repeat(16);
          socket.emit("bridge:resync", { bridgeId: other, reason: "test" });
          socket.emit("bridge:resync", { bridgeId: BRIDGE_ID, reason: "test" });
        }, 50);
      });
    });
    const client = appClient();
    const resynced = nextEvent(client, "resynced");
    await client.connect();
    await client.subscribe(BRIDGE_ID);
    const event = await resynced;
    assert.equal(event.state.version, 2);
    assert.equal(subscribes, 2);
  });

  it("app subscribes anew after unsubscribe", async () => {
    let subscribes = 0;
    const connected = new Promise<ServerSocket>((resolve) => {
      io.of("/app").on("connection", (socket) => {
        let heldAck: ((response: unknown) => void) | undefined;
        socket.on("bridge:subscribe", (_payload, ack) => {
          subscribes += 1;
          // Holds the first answer until the unsubscribe has arrived.
          if (subscribes === 1) heldAck = ack;
          else ack({ ok: true, data: bridgeState(2) });
        });
        socket.on("bridge:unsubscribe", (_payload, ack) => {
          ack({ ok: true, data: {} });
          heldAck?.({ ok: true, data: bridgeState(1) });
        });
        resolve(socket);
      });
    });
    const client = appClient();
    await client.connect();
    const first = client.subscribe(BRIDGE_ID);
    const unsubscribed = client.unsubscribe(BRIDGE_ID);
    const second = client.subscribe(BRIDGE_ID);
    await Promise.all([first, unsubscribed]);
    assert.equal((await second).version, 2);
    assert.equal(subscribes, 2);
    const delivered = nextEvent(client, "lights:changed");
    (await connected).emit("lights:changed", {
      bridgeId: BRIDGE_ID,
      version: 3,
      lights: [],
    });
    assert.equal((await delivered).version, 3);
  });

  it("app drops events after unsubscribe", async () => {
    io.of("/app").on("connection", (socket) => {
      socket.on("bridge:subscribe", (_payload, ack) =>
        ack({ ok: true, data: bridgeState(1) }),
      );
      socket.on("bridge:unsubscribe", (_payload, ack) => {
        ack({ ok: true, data: {} });
        socket.emit("lights:changed", {
          bridgeId: BRIDGE_ID,
          version: 2,
          lights: [],
        });
        socket.emit("bridge:presence", {
          bridgeId: BRIDGE_ID,
          online: false,
          lastSeen: null,
          epoch: 1,
        });
      });
      socket.on("relay:info", (_payload, ack) =>
        ack({ ok: true, data: { serverId: "stub" } }),
      );
    });
    const client = appClient();
    let passedOn = 0;
    client.on("lights:changed", () => (passedOn += 1));
    client.on("bridge:presence", () => (passedOn += 1));
    await client.connect();
    await client.subscribe(BRIDGE_ID);
    await client.unsubscribe(BRIDGE_ID);
    // The events were sent before this answer, so they have arrived.
    await client.serverInfo();
    assert.equal(passedOn, 0);
  });

  /**
   * Subscribes through a stub relay whose state is at `epoch`, sends
   * `events` as presence, and returns the `online` of each event the
   * client emitted.
   */
  async function presenceDelivered(
    epoch: number,
    events: { online: boolean; epoch?: number }[],
  ): Promise<boolean[]> {
    io.of("/app").on("connection", (socket) => {
      socket.on("bridge:subscribe", (_payload, ack) =>
        ack({ ok: true, data: { ...bridgeState(1), epoch } }),
      );
      socket.on("relay:info", (_payload, ack) => {
        for (const event of events) {
          socket.emit("bridge:presence", {
            bridgeId: BRIDGE_ID,
            lastSeen: null,
            ...event,
          } as BridgePresence);
        }
        ack({ ok: true, data: { serverId: "stub" } });
      });
    });
    const client = appClient();
    const emitted: boolean[] = [];
    client.on("bridge:presence", (event) => emitted.push(event.online));
    await client.connect();
    await client.subscribe(BRIDGE_ID);
    // The events were sent before this answer, so they have arrived.
    await client.serverInfo();
    client.close();
    return emitted;
  }

  it("app drops offline of older epoch", async () => {
    const emitted = await presenceDelivered(3, [{ online: false, epoch: 2 }]);
    assert.deepEqual(emitted, []);
  });

  it("app drops online after same-epoch offline", async () => {
    const emitted = await presenceDelivered(3, [
      { online: false, epoch: 3 },
      { online: true, epoch: 3 },
    ]);
    assert.deepEqual(emitted, [false]);
  });

  it("app delivers presence in epoch order", async () => {
    const emitted = await presenceDelivered(3, [
      { online: false, epoch: 3 },
      { online: true, epoch: 4 },
      { online: false, epoch: 4 },
    ]);
    assert.deepEqual(emitted, [false, true, false]);
  });

  it("app delivers online at a lower epoch", async () => {
    // As after Redis lost its data and counts epochs from 1 again.
    const emitted = await presenceDelivered(7, [
      { online: false, epoch: 7 },
      { online: true, epoch: 1 },
      { online: false, epoch: 1 },
    ]);
    assert.deepEqual(emitted, [false, true, false]);
  });

  it("app delivers presence without epoch", async () => {
    const emitted = await presenceDelivered(3, [
      { online: false },
      { online: false },
    ]);
    assert.deepEqual(emitted, [false, false]);
  });
});
