import assert from "node:assert/strict";
import { createClient } from "redis";
import {
  AppClient,
  BridgeClient,
  type BridgeCommandAnswer,
  type ConnectionState,
  type Light,
  type LightSetCommand,
  type ResyncedEvent,
  type SyncedEvent,
} from "../client-sdk/src/index.ts";
import { randomBridgeId } from "./support/clients.ts";
import { light } from "./support/fixtures.ts";
import { appToken, bridgeToken } from "./support/tokens.ts";
import { deploy, type Deployment } from "./support/variants.ts";

const FAST_RECONNECT = { minDelayMs: 100, maxDelayMs: 1000 };

/** Any of the SDK's typed emitters; `waitFor` takes the payload type as a type argument instead. */
interface Listenable {
  on(event: never, listener: never): unknown;
  off(event: never, listener: never): unknown;
}

/** Resolves when `emitter` emits `event` with a payload that matches, or rejects after `timeoutMs`. */
function waitFor<T>(
  emitter: Listenable,
  event: string,
  match: (payload: T) => boolean = () => true,
  timeoutMs = 15_000,
): Promise<T> {
  const target = emitter as unknown as {
    on: (event: string, listener: (payload: T) => void) => unknown;
    off: (event: string, listener: (payload: T) => void) => unknown;
  };
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      target.off(event, listener);
      reject(new Error(`no ${event} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (payload: T): void => {
      if (!match(payload)) return;
      clearTimeout(timer);
      target.off(event, listener);
      resolve(payload);
    };
    target.on(event, listener);
  });
}

/** Applies a command to the lights in a map and returns firmware's answer. */
function applyCommand(
  lights: Map<string, Light>,
  { lightId, change }: LightSetCommand,
): BridgeCommandAnswer {
  const current = lights.get(lightId);
  if (current === undefined)
    return {
      ok: false,
      error: { code: "UNKNOWN_LIGHT", message: lightId },
    };
  const next = { ...current, ...change };
  lights.set(lightId, next);
  return { ok: true, data: { light: next } };
}

/** A bridge on the SDK whose lights live in a map, answering commands as firmware would. */
function simulatedBridge(
  url: string,
  token: string,
  lights: Map<string, Light>,
): BridgeClient {
  return new BridgeClient({
    url,
    token,
    reconnect: FAST_RECONNECT,
    getLights: () => [...lights.values()],
    onCommand: (command) => applyCommand(lights, command),
  });
}

function lightMap(...ids: string[]): Map<string, Light> {
  return new Map(
    ids.map((id) => [id, { ...light(id), type: "light" } as Light]),
  );
}

describe("sdk against a clustered relay", function () {
  this.timeout(60_000);
  let deployment: Deployment;
  let url: string;
  const clients: { close: () => void }[] = [];
  const track = <T extends { close: () => void }>(client: T): T => {
    clients.push(client);
    return client;
  };

  beforeEach(async () => {
    deployment = await deploy(1, 2);
    url = deployment.relays[0]!.url;
  });
  afterEach(async () => {
    for (const client of clients.splice(0)) client.close();
    await deployment?.stop();
  });

  const killWorker = (serverId: string): number => {
    const worker = deployment.relays[0]!.workers().find(
      (entry) => entry.serverId === serverId,
    );
    assert.ok(worker, `worker ${serverId} is known`);
    process.kill(worker.pid, "SIGKILL");
    return worker.pid;
  };

  it("bridge returns after its worker dies", async () => {
    const bridgeId = randomBridgeId();
    const lights = lightMap("a", "b");
    const bridge = track(
      simulatedBridge(url, await bridgeToken(bridgeId), lights),
    );
    const firstSync = waitFor<SyncedEvent>(bridge, "synced");
    await bridge.connect();
    assert.equal((await firstSync).version, 1);
    const { serverId } = await bridge.serverInfo();

    const states: ConnectionState[] = [];
    bridge.on("state", ({ state }) => states.push(state));
    lights.set("a", { ...lights.get("a")!, on: { on: true } });
    const resent = waitFor<SyncedEvent>(bridge, "synced");
    killWorker(serverId);
    const sync = await resent;
    assert.equal(sync.trigger, "connect");
    assert.equal(
      sync.version,
      2,
      "the snapshot sent after reconnecting carried the new state",
    );
    assert.deepEqual(states.slice(0, 2), ["reconnecting", "connected"]);
    const replacement = await deployment.relays[0]!.waitForLog(
      (line) =>
        line.msg === "worker ready" &&
        !deployment.relays[0]!.workers()
          .slice(0, 2)
          .some((w) => w.serverId === line.serverId),
    );
    assert.ok(replacement.pid, "the primary started a replacement worker");
  });

  it("app resubscribes after its worker dies", async () => {
    const bridgeId = randomBridgeId();
    const lights = lightMap("a");
    const bridge = track(
      simulatedBridge(url, await bridgeToken(bridgeId), lights),
    );
    await bridge.connect();
    await waitFor<SyncedEvent>(bridge, "synced");
    const bridgeServer = (await bridge.serverInfo()).serverId;

    let app: AppClient | undefined;
    for (let attempt = 0; attempt < 8 && app === undefined; attempt += 1) {
      const candidate = new AppClient({
        url,
        token: await appToken("u1", [bridgeId]),
        reconnect: FAST_RECONNECT,
      });
      await candidate.connect();
      if ((await candidate.serverInfo()).serverId !== bridgeServer)
        app = candidate;
      else candidate.close();
    }
    assert.ok(app, "an app connection landed on the other worker");
    track(app);
    const initial = await app.subscribe(bridgeId);
    assert.equal(initial.version, 1);

    const resynced = waitFor<ResyncedEvent>(app, "resynced");
    killWorker((await app.serverInfo()).serverId);
    await waitFor(
      app,
      "state",
      ({ state }: { state: ConnectionState }) => state === "reconnecting",
    );
    await bridge.reportChanges([{ id: "a", on: { on: true } }]);
    const { state } = await resynced;
    assert.equal(
      state.version,
      2,
      "the resubscribe shows the change made while away",
    );
    assert.deepEqual(state.lights[0]?.on, { on: true });
  });

  it("app resyncs after a version gap", async () => {
    const bridgeId = randomBridgeId();
    const lights = lightMap("a");
    const bridge = track(
      simulatedBridge(url, await bridgeToken(bridgeId), lights),
    );
    await bridge.connect();
    await waitFor<SyncedEvent>(bridge, "synced");
    const app = track(
      new AppClient({ url, token: await appToken("u1", [bridgeId]) }),
    );
    await app.connect();
    const changes: number[] = [];
    app.on("lights:changed", (event) => changes.push(event.version));
    assert.equal((await app.subscribe(bridgeId)).version, 1);

    // A lost broadcast, injected by bumping the stored version behind the relay's back.
    const redis = createClient({ url: deployment.redis!.url });
    await redis.connect();
    await redis.hIncrBy(`relay:{${bridgeId}}:meta`, "version", 1);
    await redis.close();

    const resynced = waitFor<ResyncedEvent>(app, "resynced");
    const { version } = await bridge.reportChanges([
      { id: "a", on: { on: true } },
    ]);
    assert.equal(version, 3);
    const { state } = await resynced;
    assert.equal(state.version, 3);
    assert.deepEqual(state.lights[0]?.on, { on: true });
    assert.deepEqual(changes, [], "the event after the gap was not passed on");
  });

  it("bridge stops when replaced", async () => {
    const bridgeId = randomBridgeId();
    const token = await bridgeToken(bridgeId);
    const older = track(simulatedBridge(url, token, lightMap("a")));
    await older.connect();
    const replaced = waitFor<{ reason: string }>(older, "replaced");
    const newer = track(simulatedBridge(url, token, lightMap("a")));
    await newer.connect();
    assert.match((await replaced).reason, /newer connection/);
    assert.equal(older.state, "replaced");
    assert.equal(newer.state, "connected");
  });

  it("commands round-trip through the SDK", async () => {
    const bridgeId = randomBridgeId();
    const lights = lightMap("a");
    const bridge = track(
      simulatedBridge(url, await bridgeToken(bridgeId), lights),
    );
    await bridge.connect();
    await waitFor<SyncedEvent>(bridge, "synced");
    const app = track(
      new AppClient({ url, token: await appToken("u1", [bridgeId]) }),
    );
    await app.connect();
    const started = process.hrtime.bigint();
    const result = await app.setLight(bridgeId, "a", {
      dimming: { brightness: 12 },
    });
    const elapsedMs = Number(process.hrtime.bigint() - started) / 1e6;
    assert.deepEqual(result.dimming, { brightness: 12 });
    assert.ok(elapsedMs < 1000, `round trip took ${elapsedMs} ms`);
    await assert.rejects(app.setLight(bridgeId, "zz", { on: { on: true } }), {
      code: "NOT_FOUND",
    });
  });

  it("bridge queues reports past those in flight", async () => {
    const bridgeId = randomBridgeId();
    const bridge = track(
      simulatedBridge(url, await bridgeToken(bridgeId), lightMap("a")),
    );
    const synced = waitFor<SyncedEvent>(bridge, "synced");
    await bridge.connect();
    await synced;
    // Each report changes the light, so each one raises the version.
    const reports = await Promise.allSettled(
      Array.from({ length: 100 }, (_, index) =>
        bridge.reportChanges([
          { id: "a", dimming: { brightness: 100 - (index % 2) } },
        ]),
      ),
    );
    const outcomes = reports.map((report) =>
      report.status === "fulfilled"
        ? report.value.version
        : String((report.reason as { code?: string }).code),
    );
    assert.deepEqual(
      outcomes,
      Array.from({ length: 100 }, (_, index) => index + 2),
    );
  });

  it("runs a retried command once", async () => {
    const bridgeId = randomBridgeId();
    const lights = lightMap("a", "b");
    const calls: string[] = [];
    let release!: () => void;
    const released = new Promise<void>((resolve) => {
      release = resolve;
    });
    const bridge = track(
      new BridgeClient({
        url,
        token: await bridgeToken(bridgeId),
        reconnect: FAST_RECONNECT,
        getLights: () => [...lights.values()],
        onCommand: async (command) => {
          calls.push(command.commandId);
          // "retried" outlasts the relay's timeout and ends once "release" arrives.
          if (command.commandId === "release") release();
          else await released;
          return applyCommand(lights, command);
        },
      }),
    );
    await bridge.connect();
    await waitFor<SyncedEvent>(bridge, "synced");
    const app = track(
      new AppClient({ url, token: await appToken("u1", [bridgeId]) }),
    );
    await app.connect();

    // The relay does not remember a TIMEOUT, so it sends the retry to the
    // bridge again. The retry reaches the bridge before or after the first
    // run ends, and in both cases must get its answer without a second run.
    const change = { dimming: { brightness: 12 } };
    const options = { commandId: "retried" };
    await assert.rejects(app.setLight(bridgeId, "a", change, options), {
      code: "TIMEOUT",
    });
    const retry = app.setLight(bridgeId, "a", change, options);
    await app.setLight(
      bridgeId,
      "b",
      { on: { on: true } },
      { commandId: "release" },
    );
    const result = await retry;
    assert.deepEqual(result.dimming, { brightness: 12 });
    assert.deepEqual(
      calls.filter((commandId) => commandId === "retried"),
      ["retried"],
      "the bridge ran the retried command once",
    );
  });

  it("app stops on a rejected token", async () => {
    const app = track(
      new AppClient({ url, token: "not-a-token", reconnect: FAST_RECONNECT }),
    );
    await assert.rejects(app.connect(), { code: "UNAUTHORIZED" });
    assert.equal(app.state, "unauthorized");
  });
});
