import assert from "node:assert/strict";
import { connect as connectTcp } from "node:net";
import { createClient } from "redis";
import type { Socket } from "socket.io-client";
import type {
  BridgePresence,
  BridgeState,
  Light,
  LightSetCommand,
  LightsChangedEvent,
} from "../client-sdk/src/protocol.ts";
import {
  connect,
  connectApp,
  connectError,
  connectBridge,
  connectElsewhere,
  nextEvent,
  randomBridgeId,
  record,
  request,
  requestData,
  settle,
} from "./support/clients.ts";
import { light } from "./support/fixtures.ts";
import { RawWebSocket } from "./support/raw-websocket.ts";
import { appToken, bridgeToken } from "./support/tokens.ts";
import { deploy, type Deployment } from "./support/variants.ts";

/** Answers `light:set` by echoing the change applied to a stored light. */
function echoCommands(bridge: Socket): LightSetCommand[] {
  const received: LightSetCommand[] = [];
  bridge.on(
    "light:set",
    (command: LightSetCommand, ack: (answer: unknown) => void) => {
      received.push(command);
      ack({
        ok: true,
        data: { light: { ...light(command.lightId), ...command.change } },
      });
    },
  );
  return received;
}

async function serverOf(socket: Socket): Promise<string> {
  const { serverId } = await requestData<{ serverId: string }>(
    socket,
    "relay:info",
    {},
  );
  return serverId;
}

/** Sends `count` changes from the bridge and returns the versions the app received. */
async function changesInOrder(
  bridge: Socket,
  watcher: Socket,
  count: number,
): Promise<number[]> {
  const versions: number[] = [];
  const done = new Promise<void>((resolve) => {
    watcher.on("lights:changed", (event: LightsChangedEvent) => {
      versions.push(event.version);
      if (versions.length === count) resolve();
    });
  });
  const acks = [];
  for (let index = 0; index < count; index += 1) {
    acks.push(
      request(bridge, "state:changed", {
        lights: [{ id: "a", dimming: { brightness: index + 1 } }],
      }),
    );
  }
  await Promise.all(acks);
  await Promise.race([done, settle(5000)]);
  return versions;
}

/** Counts the HTTP responses in `text` by their status lines. */
function statusLines(text: string): number {
  return text.match(/^HTTP\/1\.1 \d{3} /gm)?.length ?? 0;
}

/**
 * Writes `requests` to a new connection at once and resolves with all the
 * server sent once it closed the connection.
 */
function pipelined(port: number, requests: string): Promise<string> {
  return new Promise((resolve, reject) => {
    let received = "";
    const socket = connectTcp(port, "127.0.0.1", () => socket.write(requests));
    const deadline = setTimeout(() => {
      socket.destroy();
      reject(new Error(`the connection stayed open: ${received}`));
    }, 10_000);
    socket.on("data", (chunk: Buffer) => {
      received += chunk.toString();
    });
    socket.on("error", reject);
    socket.on("close", () => {
      clearTimeout(deadline);
      resolve(received);
    });
  });
}

describe("cluster: 2 workers on Redis", function () {
  this.timeout(60_000);
  let deployment: Deployment;
  let url: string;
  const sockets: Socket[] = [];
  const track = (socket: Socket): Socket => {
    sockets.push(socket);
    return socket;
  };

  before(async () => {
    deployment = await deploy(1, 2);
    url = deployment.relays[0]!.url;
  });
  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.close();
  });
  after(async () => deployment?.stop());

  it("runs two distinct workers", () => {
    const workers = deployment.relays[0]!.workers();
    assert.equal(workers.length, 2);
    assert.notEqual(workers[0]!.serverId, workers[1]!.serverId);
    assert.notEqual(workers[0]!.pid, workers[1]!.pid);
  });

  it("round-trips a command across workers", async () => {
    const bridgeId = randomBridgeId();
    const bridge = track(await connectBridge(url, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    const received = echoCommands(bridge);
    const bridgeServer = await serverOf(bridge);
    const { socket: app, serverId: appServer } = await connectElsewhere(
      () => connectApp(url, [bridgeId]),
      bridgeServer,
    );
    track(app);
    assert.notEqual(
      appServer,
      bridgeServer,
      "bridge and app are on different workers",
    );
    const ack = await request<{ light: Light }>(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: true } },
    });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.deepEqual(ack.ok && ack.data.light.on, { on: true });
    assert.equal(received.length, 1);
  });

  it("remembers answers only for caller IDs", async () => {
    const bridgeId = randomBridgeId();
    const bridge = track(await connectBridge(url, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    echoCommands(bridge);
    const app = track(await connectApp(url, [bridgeId]));
    const change = { on: { on: true } };
    await requestData(app, "light:set", { bridgeId, lightId: "a", change });
    await requestData(app, "light:set", {
      bridgeId,
      lightId: "a",
      change,
      commandId: "caller-id",
    });
    const client = createClient({ url: deployment.redis!.url });
    await client.connect();
    try {
      const keys = await client.keys(`*{${bridgeId}}:cmd:*`);
      assert.deepEqual(
        keys.map((key) => key.split(":cmd:")[1]),
        ["caller-id"],
      );
    } finally {
      await client.close();
    }
  });

  it("delivers changes across workers in order", async () => {
    const bridgeId = randomBridgeId();
    const bridge = track(await connectBridge(url, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    const { socket: app } = await connectElsewhere(
      () => connectApp(url, [bridgeId]),
      await serverOf(bridge),
    );
    track(app);
    const state = await requestData<BridgeState>(app, "bridge:subscribe", {
      bridgeId,
    });
    const versions = await changesInOrder(bridge, app, 30);
    const expected = Array.from(
      { length: 30 },
      (_, index) => state.version + index + 1,
    );
    assert.deepEqual(versions, expected);
  });

  it("answers BRIDGE_OFFLINE across workers at once", async () => {
    const bridgeId = randomBridgeId();
    const bridge = track(await connectBridge(url, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    const { socket: app } = await connectElsewhere(
      () => connectApp(url, [bridgeId]),
      await serverOf(bridge),
    );
    track(app);
    bridge.close();
    await settle(200);
    const started = Date.now();
    const ack = await request(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: true } },
    });
    assert.equal(!ack.ok && ack.error.code, "BRIDGE_OFFLINE");
    assert.ok(
      Date.now() - started < 500,
      `answered in ${Date.now() - started} ms`,
    );
  });

  it("answers BRIDGE_OFFLINE when the owner died", async () => {
    const bridgeId = randomBridgeId();
    const bridge = track(await connectBridge(url, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    const owner = await serverOf(bridge);
    const { socket: app } = await connectElsewhere(
      () => connectApp(url, [bridgeId]),
      owner,
    );
    track(app);
    const worker = deployment.relays[0]!.workers().find(
      (entry) => entry.serverId === owner,
    );
    process.kill(worker!.pid, "SIGKILL");
    await new Promise<void>((resolve) =>
      bridge.once("disconnect", () => resolve()),
    );
    // The dead worker could not release its claim, so the store still names it.
    const list = await requestData<{ bridges: BridgePresence[] }>(
      app,
      "bridge:list",
      {},
    );
    assert.equal(list.bridges[0]?.online, true);
    const started = Date.now();
    const ack = await request(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: true } },
    });
    assert.equal(!ack.ok && ack.error.code, "BRIDGE_OFFLINE");
    // Sent again for 2 s in case the bridge reconnects to another worker.
    const answeredMs = Date.now() - started;
    assert.ok(
      answeredMs >= 2000 && answeredMs < 2500,
      `answered in ${answeredMs} ms`,
    );
    await deployment.relays[0]!.waitForLog(
      (line) =>
        line.msg === "worker ready" &&
        deployment.relays[0]!.workers().length === 3,
    );
  });

  it("serves polling-only apps through sticky", async () => {
    const bridgeId = randomBridgeId();
    const bridge = track(await connectBridge(url, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    echoCommands(bridge);
    const servers = new Set<string>();
    for (let index = 0; index < 30; index += 1) {
      const app = await connectApp(url, [bridgeId], "read control", {
        transports: ["polling"],
      });
      assert.equal(app.io.engine.transport.name, "polling");
      servers.add(await serverOf(app));
      const state = await requestData<BridgeState>(app, "bridge:subscribe", {
        bridgeId,
      });
      assert.equal(state.lights.length, 1);
      const changed = nextEvent(app, "lights:changed");
      await requestData(app, "light:set", {
        bridgeId,
        lightId: "a",
        change: { dimming: { brightness: index } },
      });
      await changed;
      app.close();
    }
    assert.equal(servers.size, 2, "polling sessions landed on both workers");
  });

  it("upgrades default apps to websocket", async () => {
    const app = track(await connectApp(url, [randomBridgeId()]));
    await new Promise<void>((resolve) => {
      if (app.io.engine.transport.name === "websocket") resolve();
      else app.io.engine.once("upgrade", () => resolve());
    });
    const list = await request(app, "bridge:list", {});
    assert.equal(list.ok, true);
  });

  it("connects websocket bridges without loss", async () => {
    // Sequential connections, each sending its first packet at once: the
    // pattern that lost packets when the primary kept reading handed-off sockets.
    const failures: string[] = [];
    for (let index = 0; index < 300; index += 1) {
      try {
        (await connectBridge(url, randomBridgeId())).close();
      } catch (error) {
        failures.push((error as Error).message);
      }
    }
    assert.deepEqual(failures, []);
  });

  it("answers a CONNECT sent before the open packet", async () => {
    // A websocket session's ID used to wait for the primary's binding, and
    // Engine.IO listens to the websocket only once the ID exists.
    const { port } = deployment.relays[0]!;
    const token = await appToken("eager", [randomBridgeId()]);
    let answered = 0;
    for (let index = 0; index < 40; index += 1) {
      const app = await RawWebSocket.upgrade(port);
      app.send(`40/app,${JSON.stringify({ token })}`);
      try {
        await app.next((text) => text.startsWith("40/app,"), 2000);
        answered += 1;
      } catch {
        // counted as unanswered
      } finally {
        app.socket.destroy();
      }
    }
    assert.equal(answered, 40);
  });

  it("answers one request per connection", async () => {
    const bridgeId = randomBridgeId();
    const token = await appToken("pipelining", [bridgeId]);
    const body = JSON.stringify({ on: { on: true } });
    const put =
      `PUT /api/v1/bridges/${bridgeId}/lights/a HTTP/1.1\r\n` +
      `Host: x\r\nAuthorization: Bearer ${token}\r\n` +
      "Content-Type: application/json\r\n" +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
    const get = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    const port = deployment.relays[0]!.port;
    const pids = deployment.relays[0]!.workers().map((worker) => worker.pid);

    // Sticky routes a connection by the session in its first request, so
    // it sets Connection: close on each response and later requests are
    // dropped, whether the primary forwards the body or hands the socket over.
    for (const requests of [put + put, get + get + get]) {
      const received = await pipelined(port, requests);
      assert.equal(statusLines(received), 1, received);
      assert.match(received, /^connection: close\r$/im);
    }
    assert.equal((await fetch(`${url}/readyz`)).status, 200);
    assert.deepEqual(
      deployment.relays[0]!.workers().map((worker) => worker.pid),
      pids,
    );
  });

  it("connects polling apps in sequence", async () => {
    let failures = 0;
    for (let index = 0; index < 200; index += 1) {
      try {
        const token = await appToken(`poll-${index}`, [], "read");
        const app = await connect(url, "/app", {
          auth: { token },
          transports: ["polling"],
        });
        await requestData(app, "bridge:list", {});
        app.close();
      } catch {
        failures += 1;
      }
    }
    assert.equal(failures, 0);
  });
});

describe("cluster: two relay instances on one Redis", function () {
  this.timeout(90_000);
  let deployment: Deployment;
  const sockets: Socket[] = [];
  const track = (socket: Socket): Socket => {
    sockets.push(socket);
    return socket;
  };

  before(async () => {
    deployment = await deploy(2, 2);
  });
  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.close();
  });
  after(async () => deployment?.stop());

  const urls = () =>
    deployment.relays.map((relay) => relay.url) as [string, string];

  it("runs on separate ports", () => {
    const [one, two] = urls();
    assert.notEqual(one, two);
  });

  it("round-trips a command across instances", async () => {
    const [one, two] = urls();
    const bridgeId = randomBridgeId();
    const bridge = track(await connectBridge(one, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    const received = echoCommands(bridge);
    const app = track(await connectApp(two, [bridgeId]));
    const instanceOneServers = deployment.relays[0]!.workers().map(
      (worker) => worker.serverId,
    );
    assert.ok(
      !instanceOneServers.includes(await serverOf(app)),
      "app is on the other instance",
    );
    const ack = await request<{ light: Light }>(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { color: { xy: { x: 0.3, y: 0.3 } } },
      commandId: "across-1",
    });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.deepEqual(ack.ok && ack.data.light.color, {
      xy: { x: 0.3, y: 0.3 },
    });
    const repeat = await request(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { color: { xy: { x: 0.3, y: 0.3 } } },
      commandId: "across-1",
    });
    assert.deepEqual(repeat, ack, "the other instance remembers the answer");
    assert.equal(received.length, 1);
  });

  it("delivers changes across instances in order", async () => {
    const [one, two] = urls();
    const bridgeId = randomBridgeId();
    const bridge = track(await connectBridge(one, bridgeId));
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    const app = track(await connectApp(two, [bridgeId]));
    const state = await requestData<BridgeState>(app, "bridge:subscribe", {
      bridgeId,
    });
    const versions = await changesInOrder(bridge, app, 30);
    assert.deepEqual(
      versions,
      Array.from({ length: 30 }, (_, index) => state.version + index + 1),
    );
  });

  it("takes over a bridge from the other instance", async () => {
    const [one, two] = urls();
    const bridgeId = randomBridgeId();
    const older = track(await connectBridge(one, bridgeId));
    await requestData(older, "state:snapshot", { lights: [light("a")] });
    const app = track(await connectApp(two, [bridgeId]));
    await requestData(app, "bridge:subscribe", { bridgeId });
    const presence = record<BridgePresence>(app, "bridge:presence");
    const replaced = nextEvent<{ reason: string }>(older, "session:replaced");
    const gone = new Promise<string>((resolve) =>
      older.once("disconnect", resolve),
    );
    const newer = track(await connectBridge(two, bridgeId));
    await replaced;
    assert.equal(await gone, "io server disconnect");
    const received = echoCommands(newer);
    const ack = await request(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: true } },
    });
    assert.equal(ack.ok, true, JSON.stringify(ack));
    assert.equal(
      received.length,
      1,
      "the command reached the newer connection",
    );
    await settle();
    assert.deepEqual(presence, [], "takeover sent no presence event");
    const list = await requestData<{ bridges: BridgePresence[] }>(
      app,
      "bridge:list",
      {},
    );
    assert.equal(list.bridges[0]?.online, true);
  });

  it("reports bridges offline when an instance stops", async () => {
    const [one] = urls();
    const leaving = await deploy(1, 1, deployment.redis!);
    const bridgeIds = Array.from({ length: 20 }, () => randomBridgeId());
    const bridges = await Promise.all(
      bridgeIds.map((bridgeId) =>
        connectBridge(leaving.relays[0]!.url, bridgeId),
      ),
    );
    const app = track(
      await connectApp(one, bridgeIds, "read", { transports: ["websocket"] }),
    );
    for (const bridgeId of bridgeIds)
      await requestData(app, "bridge:subscribe", { bridgeId });
    const offline = new Set<string>();
    const allOffline = new Promise<void>((resolve) => {
      app.on("bridge:presence", (event: BridgePresence) => {
        if (!event.online) offline.add(event.bridgeId);
        if (offline.size === bridgeIds.length) resolve();
      });
    });
    assert.equal(await leaving.relays[0]!.stop("SIGTERM"), 0);
    await Promise.race([allOffline, settle(5000)]);
    for (const bridge of bridges) bridge.close();
    assert.equal(
      offline.size,
      bridgeIds.length,
      "every bridge of the stopped instance was reported offline",
    );
  });

  it("keeps state across a relay restart", async () => {
    const bridgeId = randomBridgeId();
    const [one] = urls();
    const bridge = track(await connectBridge(one, bridgeId));
    await requestData(bridge, "state:snapshot", {
      lights: [light("a", true, 30)],
    });
    bridge.close();
    await settle(200);
    const client = createClient({ url: deployment.redis!.url });
    await client.connect();
    const keys = await client.keys(`relay:{${bridgeId}}:*`);
    await client.close();
    assert.deepEqual(keys.sort(), [
      `relay:{${bridgeId}}:lights`,
      `relay:{${bridgeId}}:meta`,
    ]);
    const restarted = await deploy(1, 1, deployment.redis!);
    try {
      const app = track(await connectApp(restarted.relays[0]!.url, [bridgeId]));
      const state = await requestData<BridgeState>(app, "bridge:subscribe", {
        bridgeId,
      });
      assert.equal(state.version, 1);
      assert.equal(state.online, false);
      assert.deepEqual(state.lights[0]?.dimming, { brightness: 30 });
    } finally {
      await restarted.stop();
    }
  });
});

describe("cluster: Redis outage", function () {
  this.timeout(60_000);
  let deployment: Deployment;

  before(async () => {
    deployment = await deploy(1, 2);
  });
  after(async () => deployment?.stop());

  const readiness = async (): Promise<number> => {
    const response = await fetch(`${deployment.relays[0]!.url}/readyz`);
    return response.status;
  };

  it("answers UNAVAILABLE at once and recovers", async () => {
    const url = deployment.relays[0]!.url;
    const bridgeId = randomBridgeId();
    const app = await connectApp(url, [bridgeId], "read control", {
      transports: ["websocket"],
    });
    try {
      assert.equal(await readiness(), 200);
      await deployment.redis!.stop();
      const started = Date.now();
      const ack = await request(app, "bridge:subscribe", { bridgeId });
      assert.equal(!ack.ok && ack.error.code, "UNAVAILABLE");
      assert.ok(
        Date.now() - started < 1000,
        `answered in ${Date.now() - started} ms`,
      );
      assert.equal(await readiness(), 503);

      await deployment.redis!.restart();
      const deadline = Date.now() + 15_000;
      while ((await readiness()) !== 200) {
        assert.ok(Date.now() < deadline, "readiness came back within 15 s");
        await settle(200);
      }
      const after = await request<BridgeState>(app, "bridge:subscribe", {
        bridgeId,
      });
      assert.equal(after.ok, true, JSON.stringify(after));
      assert.equal(
        deployment.relays[0]!.child.exitCode,
        null,
        "the relay kept running",
      );
    } finally {
      app.close();
    }
  });

  it("rejects bridge handshakes while Redis is down", async () => {
    const url = deployment.relays[0]!.url;
    await deployment.redis!.stop();
    try {
      const token = await bridgeToken(randomBridgeId());
      const error = await connectError(url, "/bridge", { auth: { token } });
      assert.equal(error.data?.code, "UNAVAILABLE");
    } finally {
      await deployment.redis!.restart();
    }
    const deadline = Date.now() + 15_000;
    while ((await readiness()) !== 200) {
      assert.ok(Date.now() < deadline, "readiness came back within 15 s");
      await settle(200);
    }
  });

  it("asks bridges to resync after Redis lost data", async () => {
    const url = deployment.relays[0]!.url;
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(url, bridgeId);
    const app = await connectApp(url, [bridgeId], "read control", {
      transports: ["websocket"],
    });
    try {
      await requestData(bridge, "state:snapshot", {
        lights: [light("a", true)],
      });
      await requestData(app, "bridge:subscribe", { bridgeId });
      const resync = nextEvent<{ reason: string }>(
        bridge,
        "state:resync",
        () => true,
        20_000,
      );
      // The app hears of the bridge through the broadcasts, or, when its
      // worker's subscriber came back after they were published, through
      // bridge:resync, after which it subscribes again.
      const presence = record<BridgePresence>(app, "bridge:presence");
      const snapshots = record<{ version: number }>(app, "bridge:snapshot");
      const appResyncs = record<{ bridgeId: string }>(app, "bridge:resync");
      await deployment.redis!.restart();
      assert.match((await resync).reason, /lost its copy/);
      const ack = await requestData<{ version: number }>(
        bridge,
        "state:snapshot",
        { lights: [light("a", true)] },
      );
      assert.equal(
        ack.version,
        1,
        "the empty Redis started the bridge again at version 0",
      );
      const deadline = Date.now() + 10_000;
      const heard = (): boolean =>
        appResyncs.length > 0 ||
        (presence.some((event) => event.online) &&
          snapshots.some((event) => event.version === 1));
      while (!heard() && Date.now() < deadline) await settle(50);
      if (appResyncs.length > 0) {
        assert.equal(appResyncs[0]?.bridgeId, bridgeId);
        const state = await requestData<BridgeState>(app, "bridge:subscribe", {
          bridgeId,
        });
        assert.equal(state.online, true);
        assert.equal(state.version, 1, "subscribing again gets fresh state");
      } else {
        assert.ok(heard(), "subscribed apps got presence and the snapshot");
      }
      const command = await request(app, "light:set", {
        bridgeId,
        lightId: "a",
        change: { on: { on: false } },
      });
      assert.notEqual(!command.ok && command.error.code, "BRIDGE_OFFLINE");
    } finally {
      bridge.close();
      app.close();
    }
  });
});
