import assert from "node:assert/strict";
import type { Socket } from "socket.io-client";
import {
  connectApp,
  connectBridge,
  connectError,
  randomBridgeId,
  request,
  requestData,
  settle,
} from "./support/clients.ts";
import { answerLightSet, lightMap } from "./support/fake-bridge.ts";
import { light } from "./support/fixtures.ts";
import { bearer, send } from "./support/http.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";
import { startRelay, type RelayProcess } from "./support/relay-process.ts";
import { appToken } from "./support/tokens.ts";

interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parses the samples of a Prometheus text exposition. */
function parseSamples(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const match = /^([A-Za-z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (match === null) throw new Error(`unparsable sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const label of (match[2] ?? "").matchAll(
      /(\w+)="((?:[^"\\]|\\.)*)"/g,
    )) {
      labels[label[1]!] = label[2]!;
    }
    samples.push({ name: match[1]!, labels, value: Number(match[3]) });
  }
  return samples;
}

/** Returns the value of the sample `name` whose labels include `labels`, or 0 when absent. */
function valueOf(
  samples: Sample[],
  name: string,
  labels: Record<string, string> = {},
): number {
  const found = samples.find(
    (sample) =>
      sample.name === name &&
      Object.entries(labels).every(
        ([key, value]) => sample.labels[key] === value,
      ),
  );
  return found?.value ?? 0;
}

interface Scrape {
  samples: Sample[];
  text: string;
  servedBy: string | undefined;
}

async function scrape(url: string): Promise<Scrape> {
  const response = await send(`${url}/metrics`);
  assert.equal(response.status, 200, response.text);
  assert.match(
    String(response.headers["content-type"]),
    /^text\/plain; version=0\.0\.4/,
  );
  return {
    samples: parseSamples(response.text),
    text: response.text,
    servedBy: response.servedBy,
  };
}

async function serverOf(socket: Socket): Promise<string> {
  const info = await requestData<{ serverId: string }>(
    socket,
    "relay:info",
    {},
  );
  return info.serverId;
}

describe("metrics: 2 workers on Redis", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let relay: RelayProcess;
  let url: string;
  const sockets: Socket[] = [];
  const track = (socket: Socket): Socket => {
    sockets.push(socket);
    return socket;
  };

  before(async () => {
    redis = await startRedisServer();
    relay = await startRelay({ redisUrl: redis.url, workers: 2 });
    url = relay.url;
  });
  afterEach(async () => {
    for (const socket of sockets.splice(0)) socket.close();
    // Let the workers see the disconnects before the next test counts connections.
    await settle(200);
  });
  after(async () => {
    await relay?.stop();
    await redis?.stop();
  });

  it("sums the connections of both workers", async () => {
    const serverIds = relay.workers().map((worker) => worker.serverId);
    const bridgesPerServer = new Map<string, number>();
    for (let index = 0; index < 8; index += 1) {
      const bridge = track(await connectBridge(url, randomBridgeId()));
      await requestData(bridge, "state:snapshot", { lights: [light("a")] });
      const serverId = await serverOf(bridge);
      bridgesPerServer.set(serverId, (bridgesPerServer.get(serverId) ?? 0) + 1);
    }
    for (const serverId of serverIds) {
      assert.ok(
        (bridgesPerServer.get(serverId) ?? 0) > 0,
        `worker ${serverId} holds a bridge`,
      );
    }
    for (let index = 0; index < 3; index += 1) {
      track(
        await connectApp(url, [randomBridgeId()], "read", {
          transports: ["websocket"],
        }),
      );
    }

    const seenBy = new Set<string>();
    for (let attempt = 0; attempt < 4; attempt += 1) {
      const { samples, servedBy } = await scrape(url);
      seenBy.add(String(servedBy));
      assert.equal(valueOf(samples, "relay_bridges_connected"), 8);
      assert.equal(valueOf(samples, "relay_apps_connected"), 3);
      assert.equal(valueOf(samples, "relay_workers_ready"), 2);
    }
    assert.equal(seenBy.size, 2, "both workers served a scrape");
  });

  it("counts commands by outcome", async () => {
    const bridgeId = randomBridgeId();
    const bridge = track(await connectBridge(url, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    answerLightSet(bridge, lightMap("a"));
    const app = track(await connectApp(url, [bridgeId]));
    const before = (await scrape(url)).samples;

    const ok = await request(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: true } },
    });
    assert.equal(ok.ok, true, JSON.stringify(ok));
    const missing = await request(app, "light:set", {
      bridgeId,
      lightId: "nope",
      change: { on: { on: true } },
    });
    assert.equal(!missing.ok && missing.error.code, "NOT_FOUND");
    const forbidden = await request(app, "light:set", {
      bridgeId: randomBridgeId(),
      lightId: "a",
      change: { on: { on: true } },
    });
    assert.equal(!forbidden.ok && forbidden.error.code, "FORBIDDEN");

    const after = (await scrape(url)).samples;
    const delta = (name: string, labels: Record<string, string>) =>
      valueOf(after, name, labels) - valueOf(before, name, labels);
    assert.equal(delta("relay_commands_total", { outcome: "ok" }), 1);
    assert.equal(delta("relay_commands_total", { outcome: "NOT_FOUND" }), 1);
    assert.equal(
      delta("relay_command_duration_seconds_count", { outcome: "ok" }),
      1,
    );
    assert.equal(
      delta("relay_socket_requests_total", {
        event: "light:set",
        outcome: "FORBIDDEN",
      }),
      1,
      "a command rejected before the service counts as a request only",
    );
    assert.equal(delta("relay_commands_total", { outcome: "FORBIDDEN" }), 0);
    assert.equal(
      delta("relay_state_writes_total", { kind: "change", result: "written" }),
      1,
      "the bridge's answer was written",
    );
  });

  it("counts handshakes, writes and broadcasts", async () => {
    const before = (await scrape(url)).samples;
    const rejected = await connectError(url, "/app", {
      auth: { token: "not.a.jwt" },
    });
    assert.equal(rejected.data?.code, "UNAUTHORIZED");
    const bridgeId = randomBridgeId();
    const app = track(await connectApp(url, [bridgeId]));
    await requestData(app, "bridge:subscribe", { bridgeId });
    const bridge = track(await connectBridge(url, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    await requestData(bridge, "state:changed", {
      lights: [{ id: "a", on: { on: true } }],
    });

    const after = (await scrape(url)).samples;
    const delta = (name: string, labels: Record<string, string>) =>
      valueOf(after, name, labels) - valueOf(before, name, labels);
    assert.equal(
      delta("relay_handshakes_total", {
        namespace: "app",
        outcome: "UNAUTHORIZED",
      }),
      1,
    );
    assert.equal(
      delta("relay_handshakes_total", {
        namespace: "app",
        outcome: "accepted",
      }),
      1,
    );
    assert.equal(
      delta("relay_handshakes_total", {
        namespace: "bridge",
        outcome: "accepted",
      }),
      1,
    );
    assert.equal(
      delta("relay_state_writes_total", {
        kind: "snapshot",
        result: "written",
      }),
      1,
    );
    assert.equal(
      delta("relay_broadcasts_total", { event: "bridge:snapshot" }),
      1,
    );
    assert.equal(
      delta("relay_broadcasts_total", { event: "lights:changed" }),
      1,
    );
    // Bridges of earlier tests may still be going offline, which adds to this count.
    assert.ok(
      delta("relay_broadcasts_total", { event: "bridge:presence" }) >= 1,
      "the bridge's online presence was broadcast",
    );
  });

  it("exposes one metric family per name", async () => {
    const { text, samples } = await scrape(url);
    const types = text
      .split("\n")
      .filter((line) => line.startsWith("# TYPE "))
      .map((line) => line.split(" ")[2]);
    assert.equal(new Set(types).size, types.length, "no duplicate # TYPE");
    for (const name of [
      "nodejs_eventloop_lag_seconds",
      "process_cpu_seconds_total",
      "relay_primary_nodejs_eventloop_lag_seconds",
      "relay_worker_restarts_total",
    ]) {
      assert.ok(
        samples.some((sample) => sample.name === name),
        `${name} is exposed`,
      );
    }
  });

  it("counts Redis errors and reconnects", async () => {
    const before = (await scrape(url)).samples;
    await redis.stop();
    await settle(500);
    await redis.restart();
    const deadline = Date.now() + 15_000;
    while ((await send(`${url}/readyz`)).status !== 200) {
      assert.ok(Date.now() < deadline, "readiness came back within 15 s");
      await settle(200);
    }
    const after = (await scrape(url)).samples;
    for (const name of [
      "relay_redis_errors_total",
      "relay_redis_reconnects_total",
    ]) {
      const grown =
        valueOf(after, name, { role: "main" }) -
        valueOf(before, name, { role: "main" });
      assert.ok(grown >= 2, `${name} grew by ${grown}, one or more per worker`);
    }
  });

  // Runs last: it kills a worker.
  it("counts worker restarts", async () => {
    const before = (await scrape(url)).samples;
    assert.equal(valueOf(before, "relay_worker_restarts_total"), 0);
    const victim = relay.workers()[0]!;
    const readyBefore = relay.workers().length;
    process.kill(victim.pid, "SIGKILL");
    await relay.waitForLog(
      (line) =>
        line.msg === "worker ready" && relay.workers().length > readyBefore,
      15_000,
    );
    // The primary admits the new worker when its ready message arrives,
    // which may be just after the worker's log line.
    const deadline = Date.now() + 5000;
    let after = (await scrape(url)).samples;
    while (valueOf(after, "relay_workers_ready") < 2) {
      assert.ok(
        Date.now() < deadline,
        "the new worker was admitted within 5 s",
      );
      await settle(100);
      after = (await scrape(url)).samples;
    }
    assert.equal(valueOf(after, "relay_worker_restarts_total"), 1);
    assert.equal(valueOf(after, "relay_workers_ready"), 2);
  });
});

describe("metrics: embedded relay", function () {
  this.timeout(30_000);
  let relay: RelayProcess;

  before(async () => {
    relay = await startRelay();
  });
  after(async () => relay?.stop());

  it("serves its own registry", async () => {
    const bridge = await connectBridge(relay.url, randomBridgeId());
    try {
      await requestData(bridge, "state:snapshot", { lights: [light("a")] });
      const { samples } = await scrape(relay.url);
      assert.equal(valueOf(samples, "relay_bridges_connected"), 1);
      assert.ok(
        !samples.some(
          (sample) => sample.name === "relay_worker_restarts_total",
        ),
        "no primary metrics without a cluster",
      );
      assert.ok(
        samples.some(
          (sample) => sample.name === "nodejs_eventloop_lag_seconds",
        ),
      );
    } finally {
      bridge.close();
    }
  });

  it("labels HTTP requests by route", async () => {
    const bridgeId = randomBridgeId();
    const token = await appToken("metrics-user", [bridgeId]);
    assert.equal((await send(`${relay.url}/`)).status, 200);
    const state = await send(`${relay.url}/api/v1/bridges/${bridgeId}`, {
      headers: bearer(token),
    });
    assert.equal(state.status, 200, state.text);
    assert.equal((await send(`${relay.url}/no-such-page`)).status, 404);

    const { samples, text } = await scrape(relay.url);
    const requests = (route: string, status: string): number =>
      valueOf(samples, "relay_http_requests_total", {
        method: "GET",
        route,
        status,
      });
    assert.equal(requests("dashboard", "200"), 1);
    assert.equal(requests("/api/v1/bridges/:bridgeId", "200"), 1);
    assert.equal(requests("unmatched", "404"), 1);
    assert.ok(!text.includes(bridgeId), "no bridge ID in a label");
  });
});
