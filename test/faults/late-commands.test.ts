import assert from "node:assert/strict";
import type { Socket } from "socket.io-client";
import {
  connectApp,
  connectBridge,
  connectElsewhere,
  randomBridgeId,
  request,
  requestData,
} from "../support/clients.ts";
import { answerLightSet, untypedLightMap } from "../support/fake-bridge.ts";
import {
  printFigure,
  sleep,
  startRelayOnRedis,
  stopRelayOnRedis,
} from "../support/faults.ts";
import type { RedisServer } from "../support/redis-server.ts";
import type { RelayProcess } from "../support/relay-process.ts";

/** The test relay's COMMAND_TIMEOUT_MS. */
const COMMAND_TIMEOUT_MS = 1500;
/** How long the app waits in all: the command timeout and the routing margin. */
const ORIGIN_WAIT_MS = COMMAND_TIMEOUT_MS + 1000;
/** Long enough for the origin to give up, short of the worker watchdog's kill. */
const STOP_MS = ORIGIN_WAIT_MS + 1000;

describe("fault: a worker stops while a command is under way", function () {
  this.timeout(30_000);
  let redis: RedisServer;
  let relay: RelayProcess;
  const sockets: Socket[] = [];
  let stoppedPid: number | undefined;

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({
      workers: 2,
      env: { COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS) },
    }));
  });

  after(async () => {
    if (stoppedPid !== undefined) process.kill(stoppedPid, "SIGCONT");
    for (const socket of sockets.splice(0)) socket.close();
    await stopRelayOnRedis({ relay, redis });
  });

  /**
   * Connects a fake bridge with light "a" and an app on the other worker,
   * and returns them with what the bridge receives and the PIDs of the
   * bridge's worker (the owner) and the app's (the origin). `beforeAnswer`
   * runs when a command reaches the bridge, before it answers.
   */
  async function bridgeAndAppApart(beforeAnswer?: () => void) {
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(relay.url, bridgeId);
    sockets.push(bridge);
    const lights = untypedLightMap("a");
    const received = answerLightSet(bridge, lights, beforeAnswer);
    await requestData(bridge, "state:snapshot", {
      lights: [...lights.values()],
    });
    const { serverId: owner } = await requestData<{ serverId: string }>(
      bridge,
      "relay:info",
      {},
    );
    const { socket: app } = await connectElsewhere(
      () => connectApp(relay.url, [bridgeId]),
      owner,
    );
    sockets.push(app);
    const workers = relay.workers();
    const ownerPid = workers.find((worker) => worker.serverId === owner)!.pid;
    const originPid = workers.find((worker) => worker.serverId !== owner)!.pid;
    return { bridgeId, lights, received, app, ownerPid, originPid };
  }

  /** Stops `pid` and sends it `SIGCONT` after STOP_MS. */
  function stopFor(pid: number): Promise<void> {
    process.kill(pid, "SIGSTOP");
    stoppedPid = pid;
    return sleep(STOP_MS).then(() => {
      process.kill(pid, "SIGCONT");
      stoppedPid = undefined;
    });
  }

  it("never delivers the late command", async () => {
    const { bridgeId, lights, received, app, ownerPid } =
      await bridgeAndAppApart();

    process.kill(ownerPid, "SIGSTOP");
    stoppedPid = ownerPid;
    const sentAt = performance.now();
    const ack = await request(
      app,
      "light:set",
      { bridgeId, lightId: "a", change: { on: { on: false } } },
      STOP_MS * 2,
    );
    const answeredMs = Math.round(performance.now() - sentAt);
    assert.equal(ack.ok ? "ok" : ack.error.code, "TIMEOUT");
    await sleep(Math.max(0, STOP_MS - answeredMs));
    process.kill(ownerPid, "SIGCONT");
    stoppedPid = undefined;

    // The late command waits first on the bus, so it would arrive first.
    const retry = await request(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: true } },
    });
    assert.equal(retry.ok, true, "a new command works");
    assert.deepEqual(
      received.map((command) => command.change),
      [{ on: { on: true } }],
      "only the new command reached the bridge",
    );
    const dropped = await relay.waitForLog(
      (line) =>
        line.msg === "dropped a command that arrived after its deadline",
    );
    printFigure(
      `worker stopped ${STOP_MS} ms with a command in its queue: app answered TIMEOUT after ${answeredMs} ms, the command was dropped ${String(dropped.lateMs)} ms after its deadline, the bridge received only the next command`,
    );
    assert.equal(lights.get("a")?.on?.on, true);
  });

  it("runs an in-time repeat of a late command", async () => {
    const { bridgeId, received, app, ownerPid } = await bridgeAndAppApart();
    const command = {
      bridgeId,
      lightId: "a",
      change: { on: { on: false } },
      commandId: `repeat-${bridgeId}`,
    };

    process.kill(ownerPid, "SIGSTOP");
    stoppedPid = ownerPid;
    const first = await request(app, "light:set", command, STOP_MS * 2);
    assert.equal(first.ok ? "ok" : first.error.code, "TIMEOUT");
    // The repeat waits on the bus behind the late first copy, with time
    // left before its own deadline when the worker resumes.
    const repeat = request(app, "light:set", command, STOP_MS * 2);
    await sleep(300);
    process.kill(ownerPid, "SIGCONT");
    stoppedPid = undefined;

    const answer = await repeat;
    assert.equal(answer.ok ? "ok" : answer.error.code, "ok");
    assert.equal(received.length, 1, "the bridge got the command once");
  });

  it("stores an answer read on resume", async () => {
    let stopped: Promise<void> | undefined;
    let ownerPid = 0;
    const { bridgeId, app, ...apart } = await bridgeAndAppApart(() => {
      stopped = stopFor(ownerPid);
    });
    ownerPid = apart.ownerPid;
    const command = {
      bridgeId,
      lightId: "a",
      change: { on: { on: false } },
      commandId: `stopped-owner-${bridgeId}`,
    };

    const sentAt = performance.now();
    const first = await request(app, "light:set", command, STOP_MS * 2);
    const answeredMs = Math.round(performance.now() - sentAt);
    assert.equal(first.ok ? "ok" : first.error.code, "TIMEOUT");
    await stopped;

    // The owner read the answer on resume instead of timing out first: it
    // stored the light and remembers the answer for a repeat.
    const repeat = await request(app, "light:set", command);
    assert.equal(repeat.ok ? "ok" : repeat.error.code, "ok");
    assert.equal(apart.received.length, 1, "the bridge got the command once");
    const view = await requestData<{ lights: { id: string; on: unknown }[] }>(
      app,
      "bridge:subscribe",
      { bridgeId },
    );
    assert.deepEqual(view.lights.find((light) => light.id === "a")?.on, {
      on: false,
    });
    printFigure(
      `owner stopped ${STOP_MS} ms as the bridge answered: app answered TIMEOUT after ${answeredMs} ms, the answer was stored on resume and its repeat answered ok`,
    );
  });

  it("answers with a reply read on resume", async () => {
    let stopped: Promise<void> | undefined;
    let originPid = 0;
    const { bridgeId, app, ...apart } = await bridgeAndAppApart(() => {
      stopped = stopFor(originPid);
    });
    originPid = apart.originPid;

    const sentAt = performance.now();
    const answer = await request(
      app,
      "light:set",
      { bridgeId, lightId: "a", change: { on: { on: false } } },
      STOP_MS * 2,
    );
    const answeredMs = Math.round(performance.now() - sentAt);
    await stopped;
    assert.equal(answer.ok ? "ok" : answer.error.code, "ok");
    assert.ok(
      answeredMs >= STOP_MS,
      `answered after ${answeredMs} ms, past the ${ORIGIN_WAIT_MS} ms wait`,
    );
    printFigure(
      `origin stopped ${STOP_MS} ms with the reply on its way: app answered ok after ${answeredMs} ms (wait ${ORIGIN_WAIT_MS} ms)`,
    );
  });

  it("refuses a command read after a stall", async () => {
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(relay.url, bridgeId);
    sockets.push(bridge);
    const lights = untypedLightMap("a");
    const received = answerLightSet(bridge, lights);
    await requestData(bridge, "state:snapshot", {
      lights: [...lights.values()],
    });
    const { serverId: owner } = await requestData<{ serverId: string }>(
      bridge,
      "relay:info",
      {},
    );
    const app = await connectOn(owner, () => connectApp(relay.url, [bridgeId]));
    sockets.push(app);
    const ownerPid = relay
      .workers()
      .find((worker) => worker.serverId === owner)!.pid;

    // The command waits in the stopped worker's socket, past the timeout.
    const stopped = stopFor(ownerPid);
    const answer = request(
      app,
      "light:set",
      { bridgeId, lightId: "a", change: { on: { on: false } } },
      STOP_MS * 2,
    );
    await stopped;
    const late = await answer;

    assert.equal(late.ok ? "ok" : late.error.code, "UNAVAILABLE");
    assert.equal(
      received.length,
      0,
      "the late command never reached the bridge",
    );
    // The worker's Redis connection may still be coming back from the
    // stop, during which a command answers UNAVAILABLE, which is safe to
    // send again. Commands must work again within 3 s.
    const codes: string[] = [];
    const startedAt = Date.now();
    while (codes.at(-1) !== "ok" && Date.now() - startedAt < 3000) {
      const next = await request(app, "light:set", {
        bridgeId,
        lightId: "a",
        change: { on: { on: false } },
      });
      codes.push(next.ok ? "ok" : next.error.code);
      if (!next.ok) await sleep(100);
    }
    assert.equal(codes.at(-1), "ok", codes.join());
    assert.deepEqual(
      codes.filter((code) => code !== "ok" && code !== "UNAVAILABLE"),
      [],
    );
    assert.ok(received.length >= 1, "a command after the stall reached it");
  });
});

/** Connects with `connect` until the socket lands on the worker `serverId`. */
async function connectOn(
  serverId: string,
  connect: () => Promise<Socket>,
): Promise<Socket> {
  for (let attempt = 0; attempt < 20; attempt += 1) {
    const socket = await connect();
    const info = await requestData<{ serverId: string }>(
      socket,
      "relay:info",
      {},
    );
    if (info.serverId === serverId) return socket;
    socket.close();
  }
  throw new Error(`no connection landed on worker ${serverId}`);
}
