import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { randomBytes, randomUUID } from "node:crypto";
import {
  copyFileSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import type { Socket } from "socket.io-client";
import {
  AppClient,
  BridgeClient,
  DEFAULT_BACKOFF,
  RelayClientError,
  type Light,
  type ServerInfo,
  type StateChangeEvent,
} from "../../client-sdk/src/index.ts";
import type { BridgeState } from "../../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  request,
  requestData,
} from "../support/clients.ts";
import { light } from "../support/fixtures.ts";
import { RawWebSocket } from "../support/raw-websocket.ts";
import { isAlive, sleep, waitUntil } from "../support/faults.ts";
import { startRedisServer, type RedisServer } from "../support/redis-server.ts";
import {
  startRelay,
  TEST_SECRET,
  type LogLine,
  type RelayProcess,
} from "../support/relay-process.ts";
import { appToken, bridgeToken } from "../support/tokens.ts";

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL("../..", import.meta.url));

const BRIDGES = 20;
const LIGHTS_PER_BRIDGE = 2;
const APPS = 4;
const LOOPS_PER_APP = 2;
/** Pause between two commands of one loop, which keeps each app socket under the request rate limit. */
const LOOP_PAUSE_MS = 100;
/**
 * Time a bridge takes to apply a command, as a real bridge's radio round
 * trip does. It keeps sockets busy often enough that a drain which closed
 * them with commands in flight would fail the test.
 */
const BRIDGE_ANSWER_DELAY_MS = 200;
/** COMMAND_TIMEOUT_MS given to the relay. */
const COMMAND_TIMEOUT_MS = 1500;
/** The app's wait for a command answer: the relay's timeout, its 1 s routing margin, and 1 s of slack. */
const APP_TIMEOUT_MS = COMMAND_TIMEOUT_MS + 2000;
const SHUTDOWN_TIMEOUT_MS = 6000;
const DRAIN_WINDOW_MS = 2000;
/** Slack over the window for the last socket to close, in ms. */
const DRAIN_SLACK_MS = 1000;
/** Errors of the contract that a command may get while its bridge or app moves. */
const MOVE_ERRORS = new Set(["BRIDGE_OFFLINE", "UNAVAILABLE", "TIMEOUT"]);

function median(values: number[]): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)]!;
}

/** A connection's end, seen by the client, with the server that held it. */
interface ClientClose {
  serverId: string | undefined;
  at: number;
  /** The SDK's message for the disconnect, with Socket.IO's reason. */
  reason: string | undefined;
}

/** The part of an SDK client that `ConnectionLog` uses. */
interface FollowedClient {
  on(event: "state", listener: (event: StateChangeEvent) => void): unknown;
  serverInfo(): Promise<ServerInfo>;
}

/** Follows one SDK client's connections: the server of each, and when it closed. */
class ConnectionLog {
  serverId: string | undefined;
  readonly closes: ClientClose[] = [];

  follow(client: FollowedClient): void {
    client.on("state", ({ state, previous, error }) => {
      if (state === "connected") {
        client.serverInfo().then(
          (info) => (this.serverId = info.serverId),
          () => undefined,
        );
      } else if (previous === "connected") {
        this.closes.push({
          serverId: this.serverId,
          at: Date.now(),
          reason: error?.message,
        });
        this.serverId = undefined;
      }
    });
  }
}

/** A bridge on the SDK that applies commands to its own lights and records them. */
interface FleetBridge {
  bridgeId: string;
  client: BridgeClient;
  lights: Map<string, Light>;
  /** Brightness each command set, by command ID. */
  applied: Map<string, number>;
  log: ConnectionLog;
  /** Times the bridge was offline: from a close to its next accepted snapshot. */
  outages: { start: number; end: number | undefined }[];
}

interface CommandRecord {
  bridgeId: string;
  lightId: string;
  commandId: string;
  brightness: number;
  code: string;
  /** True when the SDK rejected the command because the app was not connected. */
  sentWhileDisconnected: boolean;
  elapsedMs: number;
  answered: Light | undefined;
}

async function startBridge(url: string): Promise<FleetBridge> {
  const bridgeId = randomBridgeId();
  const lights = new Map<string, Light>();
  for (let index = 0; index < LIGHTS_PER_BRIDGE; index += 1) {
    const id = `lamp-${index}`;
    lights.set(id, {
      id,
      type: "light",
      on: { on: true },
      dimming: { brightness: 50 },
    });
  }

  const applied = new Map<string, number>();
  const client = new BridgeClient({
    url,
    token: await bridgeToken(bridgeId),
    getLights: () => [...lights.values()],
    onCommand: async ({ commandId, lightId, change }) => {
      await sleep(BRIDGE_ANSWER_DELAY_MS);
      const current = lights.get(lightId);
      if (current === undefined) {
        return {
          ok: false,
          error: { code: "UNKNOWN_LIGHT", message: lightId },
        };
      }
      const next = { ...current, ...change } as Light;
      lights.set(lightId, next);
      applied.set(commandId, next.dimming?.brightness ?? -1);
      return { ok: true, data: { light: next } };
    },
  });

  const bridge: FleetBridge = {
    bridgeId,
    client,
    lights,
    applied,
    log: new ConnectionLog(),
    outages: [],
  };
  bridge.log.follow(client);

  client.on("state", ({ state, previous }) => {
    if (previous === "connected" && state !== "connected")
      bridge.outages.push({ start: Date.now(), end: undefined });
  });
  client.on("synced", () => {
    const outage = bridge.outages[bridge.outages.length - 1];
    if (outage !== undefined && outage.end === undefined)
      outage.end = Date.now();
  });

  const synced = new Promise<void>((resolve) =>
    client.once("synced", () => resolve()),
  );
  await client.connect();
  await synced;
  return bridge;
}

/**
 * Bridges, apps and command loops on a relay, with everything the
 * assertions need: what each command got, which server held each
 * connection and when it closed, and when each bridge was back.
 */
class Fleet {
  readonly bridges: FleetBridge[] = [];
  readonly apps: { client: AppClient; log: ConnectionLog }[] = [];
  readonly commands: CommandRecord[] = [];
  private running = false;
  private loops: Promise<void>[] = [];

  static async start(url: string): Promise<Fleet> {
    const fleet = new Fleet();
    for (let index = 0; index < BRIDGES; index += 1)
      fleet.bridges.push(await startBridge(url));
    for (let index = 0; index < APPS; index += 1) {
      const bridgeIds = fleet
        .bridgesOfApp(index)
        .map((bridge) => bridge.bridgeId);
      const client = new AppClient({
        url,
        token: await appToken(`deploy-${index}`, bridgeIds, "read control"),
        requestTimeoutMs: APP_TIMEOUT_MS,
      });
      const log = new ConnectionLog();
      log.follow(client);
      await client.connect();
      fleet.apps.push({ client, log });
    }
    return fleet;
  }

  bridgesOfApp(app: number): FleetBridge[] {
    return this.bridges.filter((_bridge, index) => index % APPS === app);
  }

  startCommands(): void {
    this.running = true;
    this.apps.forEach(({ client }, index) => {
      for (let loop = 0; loop < LOOPS_PER_APP; loop += 1)
        this.loops.push(this.commandLoop(client, this.bridgesOfApp(index)));
    });
  }

  async stopCommands(): Promise<void> {
    this.running = false;
    await Promise.all(this.loops);
  }

  /** True when every bridge is connected and its last outage has ended. */
  allOnline(): boolean {
    return this.bridges.every(
      (bridge) =>
        bridge.client.state === "connected" &&
        bridge.outages.every((outage) => outage.end !== undefined),
    );
  }

  /** Client-side closes of every connection, bridges and apps. */
  closes(): ClientClose[] {
    return [
      ...this.bridges.flatMap((bridge) => bridge.log.closes),
      ...this.apps.flatMap((app) => app.log.closes),
    ];
  }

  close(): void {
    for (const bridge of this.bridges) bridge.client.close();
    for (const app of this.apps) app.client.close();
  }

  private async commandLoop(
    client: AppClient,
    bridges: FleetBridge[],
  ): Promise<void> {
    let sequence = Math.floor(Math.random() * 1000);
    while (this.running) {
      sequence += 1;
      const bridge = bridges[sequence % bridges.length]!;
      const lightId = `lamp-${sequence % LIGHTS_PER_BRIDGE}`;
      const brightness = sequence % 101;
      const commandId = randomUUID();
      const started = Date.now();
      const sentWhileDisconnected = client.state !== "connected";
      let code = "ok";
      let answered: Light | undefined;
      try {
        answered = await client.setLight(
          bridge.bridgeId,
          lightId,
          { dimming: { brightness } },
          { commandId },
        );
      } catch (error) {
        code =
          error instanceof RelayClientError
            ? error.code
            : `THROWN: ${(error as Error).message}`;
      }
      this.commands.push({
        bridgeId: bridge.bridgeId,
        lightId,
        commandId,
        brightness,
        code,
        sentWhileDisconnected,
        elapsedMs: Date.now() - started,
        answered,
      });
      await sleep(LOOP_PAUSE_MS);
    }
  }
}

/**
 * Counts the commands per outcome, such as `{ ok: 410, BRIDGE_OFFLINE: 3 }`.
 * An `UNAVAILABLE` that the SDK raised because the app was reconnecting is
 * counted apart from one the relay sent.
 */
function countOutcomes(commands: CommandRecord[]): Record<string, number> {
  const counts: Record<string, number> = {};
  for (const command of commands) {
    const label = command.sentWhileDisconnected
      ? `${command.code} (app reconnecting, not sent)`
      : command.code;
    counts[label] = (counts[label] ?? 0) + 1;
  }
  return counts;
}

/** Returns the relay's "connections drained" lines of `serverIds`, and checks that none cut work in flight. */
function drainedLines(lines: LogLine[], serverIds: string[]): LogLine[] {
  const drained = lines.filter(
    (line) =>
      line.msg === "connections drained" &&
      serverIds.includes(String(line.serverId)),
  );
  assert.equal(drained.length, serverIds.length, "a drain summary per worker");
  for (const line of drained)
    assert.equal(line.forced, 0, `forced closes: ${JSON.stringify(line)}`);
  return drained;
}

function describeDrains(drained: LogLine[]): string {
  return drained
    .map(
      (line) =>
        `${Number(line.sockets)} sockets in ${Number(line.batches)} batches, ` +
        `${Number(line.waited)} waited for work in flight`,
    )
    .join(" and ");
}

/**
 * Checks that no command was lost: each got `ok` or an error a moving
 * bridge or app explains, within its timeout, and each `ok` was applied
 * by its bridge with the brightness asked for.
 */
function assertNoCommandLost(fleet: Fleet): void {
  const byId = new Map(
    fleet.bridges.map((bridge) => [bridge.bridgeId, bridge]),
  );
  assert.ok(fleet.commands.length > 0, "no command was sent");
  for (const command of fleet.commands) {
    assert.ok(
      command.code === "ok" || MOVE_ERRORS.has(command.code),
      `command ${command.commandId} got ${command.code}`,
    );
    assert.ok(
      command.elapsedMs <= APP_TIMEOUT_MS + 500,
      `command ${command.commandId} took ${command.elapsedMs} ms`,
    );
    const bridge = byId.get(command.bridgeId)!;
    if (command.code !== "ok") {
      // A connection closes only once its work in flight is answered, so
      // no bridge applies a command whose app then gets an error.
      assert.equal(
        bridge.applied.has(command.commandId),
        false,
        `command ${command.commandId} was applied by its bridge but answered ${command.code}`,
      );
      continue;
    }
    assert.equal(
      bridge.applied.get(command.commandId),
      command.brightness,
      `acknowledged command ${command.commandId} was not applied by bridge ${command.bridgeId}`,
    );
    assert.equal(command.answered?.dimming?.brightness, command.brightness);
  }
}

/** Checks that the relay's stored lights of every bridge equal the bridge's own. */
async function assertStateConverged(url: string, fleet: Fleet): Promise<void> {
  const viewer = new AppClient({
    url,
    token: await appToken(
      "deploy-viewer",
      fleet.bridges.map((bridge) => bridge.bridgeId),
      "read",
    ),
  });
  try {
    await viewer.connect();
    for (const bridge of fleet.bridges) {
      const state = await viewer.subscribe(bridge.bridgeId);
      assert.equal(state.online, true, `bridge ${bridge.bridgeId} offline`);
      const stored = new Map(state.lights.map((light) => [light.id, light]));
      for (const [lightId, light] of bridge.lights) {
        assert.equal(
          stored.get(lightId)?.dimming?.brightness,
          light.dimming?.brightness,
          `light ${lightId} of bridge ${bridge.bridgeId}`,
        );
      }
    }
  } finally {
    viewer.close();
  }
}

/**
 * Returns, per server, the time from the first connection it closed to the
 * last, as the clients saw it.
 */
function drainSpreads(
  fleet: Fleet,
  serverIds: string[],
  after: number,
): Map<string, number> {
  const spreads = new Map<string, number>();
  for (const serverId of serverIds) {
    const times = fleet
      .closes()
      .filter((close) => close.serverId === serverId && close.at >= after)
      .map((close) => close.at);
    assert.ok(
      times.length >= 2,
      `server ${serverId} closed ${times.length} connections`,
    );
    spreads.set(serverId, Math.max(...times) - Math.min(...times));
  }
  return spreads;
}

function assertSpreadOverWindow(spreads: Map<string, number>): void {
  for (const [serverId, spread] of spreads) {
    assert.ok(
      spread >= DRAIN_WINDOW_MS / 2,
      `server ${serverId} closed its connections within ${spread} ms, under half the ${DRAIN_WINDOW_MS} ms window`,
    );
    assert.ok(
      spread <= DRAIN_WINDOW_MS + DRAIN_SLACK_MS,
      `server ${serverId} took ${spread} ms to close its connections`,
    );
  }
}

/** Returns the longest time a bridge was offline, in ms; every outage must have ended. */
function longestOutage(fleet: Fleet): { max: number; median: number } {
  const durations = fleet.bridges.flatMap((bridge) =>
    bridge.outages.map((outage) => {
      assert.notEqual(outage.end, undefined, `bridge ${bridge.bridgeId}`);
      return outage.end! - outage.start;
    }),
  );
  return { max: Math.max(0, ...durations), median: median(durations) };
}

function describeOutcomes(commands: CommandRecord[]): string {
  return Object.entries(countOutcomes(commands))
    .map(([code, count]) => `${count} ${code}`)
    .join(", ");
}

/**
 * Returns the most workers that ran at once during a rolling restart, from
 * the primary's log: `initial` before it, one more per replacement started
 * and one fewer per old worker that exited.
 */
function peakWorkers(logs: LogLine[], initial: number): number {
  let running = initial;
  let peak = initial;
  for (const line of logs) {
    if (line.msg === "rolling restart: replacement worker started")
      running += 1;
    if (line.msg === "rolling restart: old worker exited") running -= 1;
    peak = Math.max(peak, running);
  }
  return peak;
}

describe("deploys", function () {
  this.timeout(180_000);
  let redis: RedisServer;

  before(async () => {
    redis = await startRedisServer();
  });
  after(async () => redis?.stop());

  for (const surge of [undefined, 1]) {
    const batches =
      surge === undefined
        ? "all replacements at once"
        : `RESTART_SURGE=${surge}`;
    it(`loses no command in a rolling restart, ${batches}`, async () => {
      const relay = await startRelay({
        redisUrl: redis.url,
        workers: 2,
        env: {
          REDIS_KEY_PREFIX: `deploy${randomBytes(4).toString("hex")}`,
          COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS),
          SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS),
          DRAIN_WINDOW_MS: String(DRAIN_WINDOW_MS),
          ...(surge === undefined ? {} : { RESTART_SURGE: String(surge) }),
        },
      });
      const fleet = await Fleet.start(relay.url);
      try {
        const oldWorkers = relay.workers();
        fleet.startCommands();
        await sleep(1000);

        const restartAt = Date.now();
        process.kill(relay.pid, "SIGUSR2");
        const finished = await relay.waitForLog(
          (line) => line.msg === "rolling restart finished",
          40_000,
        );
        await waitUntil("bridges back online", () => fleet.allOnline(), 40_000);
        const allBackAt = Date.now();
        await sleep(1000);
        await fleet.stopCommands();

        assertNoCommandLost(fleet);
        await assertStateConverged(relay.url, fleet);

        const outage = longestOutage(fleet);
        assert.ok(
          outage.max <= DEFAULT_BACKOFF.maxDelayMs,
          `a bridge was offline for ${outage.max} ms`,
        );

        const spreads = drainSpreads(
          fleet,
          oldWorkers.map((worker) => worker.serverId),
          restartAt,
        );
        assertSpreadOverWindow(spreads);
        // A closed transport, unlike a Socket.IO disconnect from the server,
        // makes every Socket.IO client reconnect, not only the SDK.
        for (const close of fleet.closes())
          assert.equal(close.reason, "disconnected: transport close");
        // The old workers leave the balancer together, so no client moves
        // from one old worker to another that closes it again.
        const logs = [
          ...fleet.bridges.map((bridge) => bridge.log),
          ...fleet.apps.map((app) => app.log),
        ];
        for (const [index, log] of logs.entries()) {
          const closes = log.closes.filter((close) => close.at >= restartAt);
          assert.equal(
            closes.length,
            1,
            `client ${index} closed ${closes.length} times`,
          );
        }

        const exits = relay.logs.filter(
          (line) => line.msg === "rolling restart: old worker exited",
        );
        assert.equal(exits.length, 2);
        for (const exit of exits) {
          assert.equal(exit.code, 0, JSON.stringify(exit));
          assert.ok(Number(exit.drainMs) < SHUTDOWN_TIMEOUT_MS);
        }
        const drained = drainedLines(
          relay.logs,
          oldWorkers.map((worker) => worker.serverId),
        );
        for (const worker of oldWorkers)
          assert.equal(isAlive(worker.pid), false, `worker ${worker.pid} runs`);
        const current = relay.workers().slice(oldWorkers.length);
        assert.equal(current.length, 2);
        for (const worker of current)
          assert.equal(isAlive(worker.pid), true, `worker ${worker.pid} died`);
        assert.equal(isAlive(relay.pid), true, "the primary still runs");
        const peak = peakWorkers(relay.logs, oldWorkers.length);
        assert.equal(peak, oldWorkers.length + (surge ?? oldWorkers.length));
        assert.equal(
          relay.logs.filter((line) => line.msg === "worker died, restarting")
            .length,
          0,
        );

        console.log(
          `fault figure: rolling restart (SIGUSR2, ${batches}), 2 workers, ${BRIDGES} bridges, ` +
            `${APPS * LOOPS_PER_APP} command loops: restart took ${Number(finished.durationMs)} ms, ` +
            `all bridges back ${allBackAt - restartAt} ms after the signal; ` +
            `at most ${peak} workers at once; ` +
            `longest bridge outage ${outage.max} ms (median ${outage.median} ms); ` +
            `drain spread ${[...spreads.values()].join(" and ")} ms over a ${DRAIN_WINDOW_MS} ms window ` +
            `(${describeDrains(drained)}); ` +
            `old workers exited ${exits.map((exit) => Number(exit.drainMs)).join(" and ")} ms after the drain began ` +
            `(deadline ${SHUTDOWN_TIMEOUT_MS} ms); ` +
            `${fleet.commands.length} commands: ${describeOutcomes(fleet.commands)}, none lost`,
        );
      } finally {
        fleet.close();
        await relay.stop();
      }
    });
  }

  it("routes no new connection to a draining worker", async () => {
    const relay = await startRelay({
      redisUrl: redis.url,
      workers: 2,
      env: {
        REDIS_KEY_PREFIX: `deploy${randomBytes(4).toString("hex")}`,
        SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS),
        DRAIN_WINDOW_MS: "3000",
      },
    });
    const sockets: Socket[] = [];
    try {
      const [draining, staying] = relay.workers();
      assert.ok(draining, "a worker to drain");
      assert.ok(staying, "a worker that stays");
      // Bridges on the draining worker go first in its drain, so the
      // polling app below stays connected for most of the window.
      let bridgesThere = 0;
      while (bridgesThere < 6) {
        const bridge = await connectBridge(relay.url, randomBridgeId());
        sockets.push(bridge);
        const info = await requestData<ServerInfo>(bridge, "relay:info", {});
        if (info.serverId === draining.serverId) bridgesThere += 1;
      }
      let polling: Socket | undefined;
      while (polling === undefined) {
        const app = await connectApp(relay.url, [], "read", {
          transports: ["polling"],
        });
        sockets.push(app);
        const info = await requestData<ServerInfo>(app, "relay:info", {});
        if (info.serverId === draining.serverId) polling = app;
      }

      process.kill(draining.pid, "SIGTERM");
      await relay.waitForLog(
        (line) =>
          line.msg === "shutting down" && line.serverId === draining.serverId,
      );
      // The primary hides the worker once its message arrives.
      await sleep(100);

      // The polling session's requests still reach its worker by session ID.
      const info = await requestData<ServerInfo>(polling, "relay:info", {});
      assert.equal(info.serverId, draining.serverId);

      for (let index = 0; index < 6; index += 1) {
        const app = await connectApp(relay.url, [], "read");
        sockets.push(app);
        const { serverId } = await requestData<ServerInfo>(
          app,
          "relay:info",
          {},
        );
        assert.equal(serverId, staying.serverId, `connection ${index}`);
      }

      const stopped = await relay.waitForLog(
        (line) => line.msg === "stopped" && line.serverId === draining.serverId,
      );
      assert.equal(stopped.exitCode, 0);
      // The primary did not ask for this exit, so it keeps the worker count.
      await relay.waitForLog((line) => line.msg === "worker died, restarting");
      await relay.waitForLog(
        (line) => line.msg === "worker ready" && relay.workers().length === 3,
      );
      assert.equal(isAlive(staying.pid), true);
    } finally {
      for (const socket of sockets) socket.close();
      await relay.stop();
    }
  });

  describe("under PM2", function () {
    const appName = "bridge-relay";
    let buildDirectory = "";
    let pm2Home = "";
    let pm2Env: NodeJS.ProcessEnv = {};
    let url = "";

    const pm2 = (...args: string[]) =>
      run(join(ROOT, "node_modules", ".bin", "pm2"), args, {
        cwd: buildDirectory,
        env: pm2Env,
        timeout: 60_000,
      });

    const logLines = (): LogLine[] => {
      const file = join(buildDirectory, "logs", `${appName}.out.log`);
      if (!existsSync(file)) return [];
      return readFileSync(file, "utf8")
        .split("\n")
        .filter((line) => line.startsWith("{"))
        .map((line) => JSON.parse(line) as LogLine);
    };

    const logTail = (): string => {
      const parts = ["out", "error"].map((kind) => {
        const file = join(buildDirectory, "logs", `${appName}.${kind}.log`);
        const text = existsSync(file) ? readFileSync(file, "utf8") : "(none)";
        return `--- ${kind} log ---\n${text.slice(-4000)}`;
      });
      return parts.join("\n");
    };

    const primaryPid = async (): Promise<number> => {
      const { stdout } = await pm2("jlist");
      const [entry] = JSON.parse(stdout) as { pid: number }[];
      assert.ok(entry, "PM2 lists no process");
      return entry.pid;
    };

    before(async function () {
      this.timeout(240_000);
      // A private build of the current sources, so that the test neither
      // runs a stale dist/ nor rebuilds the one other test runs read.
      buildDirectory = mkdtempSync("/tmp/relay-deploy-");
      await run(
        join(ROOT, "node_modules", ".bin", "tsc"),
        [
          "-p",
          join(ROOT, "tsconfig.build.json"),
          "--outDir",
          join(buildDirectory, "dist"),
        ],
        { cwd: ROOT, timeout: 180_000 },
      );
      copyFileSync(
        join(ROOT, "ecosystem.config.js"),
        join(buildDirectory, "ecosystem.config.js"),
      );
      copyFileSync(
        join(ROOT, "package.json"),
        join(buildDirectory, "package.json"),
      );
      symlinkSync(
        join(ROOT, "node_modules"),
        join(buildDirectory, "node_modules"),
      );
      const port = await freePort();
      url = `http://127.0.0.1:${port}`;
      // A short PM2_HOME keeps PM2's socket paths under the 108-byte limit.
      pm2Home = mkdtempSync("/tmp/pm2-");
      pm2Env = {
        ...process.env,
        PM2_HOME: pm2Home,
        RELAY_LOG_DIR: join(buildDirectory, "logs"),
        AUTH_SECRET: TEST_SECRET,
        REDIS_URL: redis.url,
        REDIS_KEY_PREFIX: `deploypm2${randomBytes(4).toString("hex")}`,
        PORT: String(port),
        HOST: "127.0.0.1",
        WORKERS: "2",
        COMMAND_TIMEOUT_MS: String(COMMAND_TIMEOUT_MS),
        SHUTDOWN_TIMEOUT_MS: String(SHUTDOWN_TIMEOUT_MS),
        DRAIN_WINDOW_MS: String(DRAIN_WINDOW_MS),
        LOG_LEVEL: "info",
      };
      // `pm2 start` returns once the primary sent "ready" (wait_ready).
      await pm2("start", "ecosystem.config.js");
      await waitUntil(
        "workers ready",
        () =>
          logLines().filter((line) => line.msg === "worker ready").length >= 2,
        30_000,
      );
    });

    after(async function () {
      this.timeout(120_000);
      if (pm2Home !== "") {
        await pm2("delete", "all").catch(() => undefined);
        await pm2("kill").catch(() => undefined);
        rmSync(pm2Home, { recursive: true, force: true });
      }
      if (buildDirectory !== "")
        rmSync(buildDirectory, { recursive: true, force: true });
    });

    afterEach(function () {
      if (this.currentTest?.state === "failed") console.error(logTail());
    });

    it("loses no command in pm2 reload", async () => {
      const fleet = await Fleet.start(url);
      try {
        const oldPrimary = await primaryPid();
        const oldWorkers = logLines()
          .filter((line) => line.msg === "worker ready")
          .map((line) => String(line.serverId));
        fleet.startCommands();
        await sleep(1000);

        const reloadAt = Date.now();
        await pm2("reload", "ecosystem.config.js");
        const reloadedAt = Date.now();
        await waitUntil("bridges back online", () => fleet.allOnline(), 60_000);
        const allBackAt = Date.now();
        await sleep(1000);
        await fleet.stopCommands();

        assertNoCommandLost(fleet);
        await assertStateConverged(url, fleet);

        const outage = longestOutage(fleet);
        assert.ok(
          allBackAt - reloadedAt <= DEFAULT_BACKOFF.maxDelayMs,
          `bridges back ${allBackAt - reloadedAt} ms after the new relay was ready`,
        );

        const spreads = drainSpreads(fleet, oldWorkers, reloadAt);
        assertSpreadOverWindow(spreads);

        const lines = logLines();
        const drained = drainedLines(lines, oldWorkers);
        const stopped = lines.filter(
          (line) =>
            line.msg === "stopped" &&
            oldWorkers.includes(String(line.serverId)),
        );
        assert.equal(stopped.length, 2, "both old workers logged their stop");
        for (const line of stopped) {
          assert.equal(line.exitCode, 0);
          assert.ok(Number(line.durationMs) < SHUTDOWN_TIMEOUT_MS);
        }
        const primaryStopped = lines.find(
          (line) => line.msg === "primary stopped" && line.pid === oldPrimary,
        );
        assert.ok(primaryStopped, "the old primary logged its stop");
        assert.equal(primaryStopped.exitCode, 0);
        assert.equal(isAlive(oldPrimary), false);
        assert.notEqual(await primaryPid(), oldPrimary);

        console.log(
          `fault figure: pm2 reload (fork mode, full restart), 2 workers, ${BRIDGES} bridges, ` +
            `${APPS * LOOPS_PER_APP} command loops: pm2 reload returned after ${reloadedAt - reloadAt} ms, ` +
            `all bridges back ${allBackAt - reloadAt} ms after the reload began ` +
            `(${allBackAt - reloadedAt} ms after it returned); ` +
            `longest bridge outage ${outage.max} ms (median ${outage.median} ms); ` +
            `drain spread ${[...spreads.values()].join(" and ")} ms over a ${DRAIN_WINDOW_MS} ms window ` +
            `(${describeDrains(drained)}); ` +
            `old workers stopped in ${stopped.map((line) => Number(line.durationMs)).join(" and ")} ms ` +
            `(deadline ${SHUTDOWN_TIMEOUT_MS} ms); ` +
            `${fleet.commands.length} commands: ${describeOutcomes(fleet.commands)}, none lost`,
        );
      } finally {
        fleet.close();
      }
    });
  });
});

describe("worker count after a rolling restart", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let directory = "";

  before(async () => {
    redis = await startRedisServer();
    directory = mkdtempSync(join(tmpdir(), "relay-test-restart-"));
  });
  after(async () => {
    await redis?.stop();
    rmSync(directory, { recursive: true, force: true });
  });

  const start = (env: Record<string, string> = {}) =>
    startRelay({
      redisUrl: redis.url,
      workers: 2,
      env: {
        REDIS_KEY_PREFIX: `restart${randomBytes(4).toString("hex")}`,
        ...env,
      },
    });

  /** Returns the workers that reported ready and still run. */
  const liveWorkers = (relay: RelayProcess) =>
    relay.workers().filter((worker) => isAlive(worker.pid));

  it("replaces a worker killed during a restart once", async () => {
    const relay = await start();
    try {
      const [first, second] = relay.workers();
      process.kill(relay.pid, "SIGUSR2");
      process.kill(first!.pid, "SIGKILL");
      await relay.waitForLog(
        (line) => line.msg === "rolling restart finished",
        30_000,
      );
      // A crash restart would fork its worker within a second.
      await sleep(1500);

      const running = liveWorkers(relay);
      assert.equal(running.length, 2, JSON.stringify(running));
      assert.equal(isAlive(second!.pid), false, "the other old worker runs");
      assert.ok(
        relay.logs.some(
          (line) =>
            line.msg ===
            "worker died during a rolling restart, its replacement takes over",
        ),
      );
      const restarts = relay.logs.filter(
        (line) => line.msg === "worker died, restarting",
      );
      assert.equal(restarts.length, 0);
    } finally {
      await relay.stop();
    }
  });

  it("keeps old workers when replacements fail", async () => {
    const secretFile = join(directory, "auth-secret");
    writeFileSync(secretFile, `${TEST_SECRET}\n`, { mode: 0o600 });
    const relay = await start({
      AUTH_SECRET: "",
      AUTH_SECRET_FILE: secretFile,
    });
    try {
      const old = relay.workers();
      // A worker reads the secret file as it starts, and a folder in its
      // place makes every replacement fail.
      rmSync(secretFile);
      mkdirSync(secretFile);
      process.kill(relay.pid, "SIGUSR2");
      const stopped = await relay.waitForLog((line) =>
        line.msg.startsWith("rolling restart stopped"),
      );
      assert.equal(stopped.keptReplacements, 0);
      assert.equal(stopped.forked, 0);
      assert.equal(stopped.remaining, 2);
      await sleep(500);

      const running = liveWorkers(relay);
      assert.deepEqual(
        running.map((worker) => worker.pid),
        old.map((worker) => worker.pid),
      );
      const bridge = await connectBridge(relay.url, randomBridgeId());
      try {
        const info = await requestData<ServerInfo>(bridge, "relay:info", {});
        assert.ok(old.some((worker) => worker.serverId === info.serverId));
      } finally {
        bridge.close();
      }
    } finally {
      await relay.stop();
    }
  });

  it("readmits old workers after a failed batch", async () => {
    const secretFile = join(directory, "auth-secret-batches");
    writeFileSync(secretFile, `${TEST_SECRET}\n`, { mode: 0o600 });
    const relay = await start({
      AUTH_SECRET: "",
      AUTH_SECRET_FILE: secretFile,
      RESTART_SURGE: "1",
      DRAIN_WINDOW_MS: "1000",
    });
    try {
      const old = relay.workers();
      process.kill(relay.pid, "SIGUSR2");
      await relay.waitForLog(
        (line) =>
          line.msg ===
          "rolling restart: replacements ready, draining the old workers",
      );
      // The first replacement has read the secret already. The second is
      // forked once the first old worker exits, finds a folder and fails.
      rmSync(secretFile);
      mkdirSync(secretFile);
      const stopped = await relay.waitForLog((line) =>
        line.msg.startsWith("rolling restart stopped"),
      );
      assert.equal(stopped.remaining, 1);
      const left = old.filter((worker) => isAlive(worker.pid));
      assert.equal(left.length, 1, JSON.stringify(left));
      const [second] = left;

      // Round-robin hands every other connection to the old worker, which
      // the restart took out of the balancer with the first batch.
      const servers = new Set<string>();
      for (let index = 0; index < 4; index += 1) {
        const bridge = await connectBridge(relay.url, randomBridgeId());
        try {
          const info = await requestData<ServerInfo>(bridge, "relay:info", {});
          servers.add(info.serverId);
        } finally {
          bridge.close();
        }
      }
      assert.ok(
        servers.has(second!.serverId),
        `no new connection reached the old worker: ${[...servers].join(", ")}`,
      );
      assert.equal(servers.size, 2);
    } finally {
      await relay.stop();
    }
  });

  it("drains the replacement left over", async () => {
    const relay = await start();
    try {
      const old = relay.workers().map((worker) => worker.pid);
      process.kill(relay.pid, "SIGUSR2");
      await waitUntil(
        "both replacements forked",
        () =>
          relay.logs.filter(
            (line) =>
              line.msg === "rolling restart: replacement worker started",
          ).length === 2,
        10_000,
        5,
      );
      // The kill comes milliseconds after the fork, before the replacement
      // can report ready, so the restart stops.
      const children = readFileSync(
        `/proc/${relay.pid}/task/${relay.pid}/children`,
        "utf8",
      );
      const fresh = children.trim().split(/\s+/).map(Number);
      const victim = fresh.find((pid) => !old.includes(pid));
      assert.ok(victim !== undefined, `no replacement among ${children}`);
      process.kill(victim, "SIGKILL");

      const stopped = await relay.waitForLog((line) =>
        line.msg.startsWith("rolling restart stopped"),
      );
      assert.equal(stopped.keptReplacements, 0);
      assert.equal(stopped.remaining, 2);
      await relay.waitForLog(
        (line) => line.msg === "rolling restart: surplus replacement exited",
      );
      await sleep(500);

      assert.deepEqual(
        liveWorkers(relay).map((worker) => worker.pid),
        old,
      );
      const oldExits = relay.logs.filter(
        (line) => line.msg === "rolling restart: old worker exited",
      );
      assert.equal(oldExits.length, 0);
    } finally {
      await relay.stop();
    }
  });

  it("stops at once while replacements start", async () => {
    const relay = await start({ SHUTDOWN_TIMEOUT_MS: "4000" });
    process.kill(relay.pid, "SIGUSR2");
    await relay.waitForLog(
      (line) => line.msg === "rolling restart: replacement worker started",
    );
    const stoppedAt = Date.now();
    const code = await relay.stop();
    const stopMs = Date.now() - stoppedAt;

    console.log(
      `fault figure: SIGTERM while replacements start: exit code ${code} after ${stopMs} ms (deadline 4000 ms)`,
    );
    assert.equal(code, 0);
    assert.ok(stopMs < 4000, `the relay took ${stopMs} ms to stop`);
    for (const worker of relay.workers())
      assert.equal(isAlive(worker.pid), false, `worker ${worker.pid} runs`);
  });
});

/** Returns a loopback port that the OS reported free a moment ago. */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port =
        typeof address === "object" && address !== null ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

describe("a bridge's write rejected by the drain", function () {
  this.timeout(40_000);
  let redis: RedisServer;
  let draining: RelayProcess;
  let reader: RelayProcess;

  before(async () => {
    redis = await startRedisServer();
    [draining, reader] = await Promise.all([
      startRelay({
        redisUrl: redis.url,
        workers: 1,
        env: { DRAIN_WINDOW_MS: "0", COMMAND_TIMEOUT_MS: "3000" },
      }),
      startRelay({ redisUrl: redis.url, workers: 1 }),
    ]);
  });

  after(async () => {
    await Promise.all([draining.stop(), reader.stop()]);
    await redis.stop();
  });

  it("is not stored when the bridge disconnects with it", async () => {
    const bridgeId = randomBridgeId();
    const bridge = await RawWebSocket.open(draining.port);
    const token = await bridgeToken(bridgeId);
    bridge.send(`40/bridge,${JSON.stringify({ token })}`);
    await bridge.next((frame) => frame.startsWith("40/bridge,"));
    const snapshot = { lights: [light("a", true, 10)] };
    bridge.send(`42/bridge,0${JSON.stringify(["state:snapshot", snapshot])}`);
    await bridge.next((frame) => frame.startsWith("43/bridge,0"));
    // The bridge never acknowledges the command, so its socket stays busy
    // in the drain.
    const app = await connectApp(reader.url, [bridgeId]);
    void request(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: false } },
    });
    await bridge.next((frame) => frame.includes('"light:set"'));
    const stopped = draining.stop("SIGTERM");
    for (let id = 1; ; id += 1) {
      bridge.send(`42/bridge,${id}["relay:info",{}]`);
      const ack = await bridge.next((frame) =>
        frame.startsWith(`43/bridge,${id}`),
      );
      if (ack.includes('"UNAVAILABLE"')) break;
      await sleep(25);
    }

    const change = { lights: [{ id: "a", dimming: { brightness: 77 } }] };
    bridge.sendTogether(
      `42/bridge,100${JSON.stringify(["state:changed", change])}`,
      "41/bridge,",
    );
    await stopped;

    const state = await requestData<BridgeState>(app, "bridge:subscribe", {
      bridgeId,
    });
    assert.deepEqual(state.lights[0]?.dimming, { brightness: 10 });
  });
});
