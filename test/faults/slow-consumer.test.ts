import assert from "node:assert/strict";
import type { Socket } from "socket.io-client";
import { AppClient } from "../../client-sdk/src/app-client.ts";
import type { TransportName } from "../../client-sdk/src/connection.ts";
import type {
  BridgeState,
  Light,
  LightsChangedEvent,
  ServerInfo,
} from "../../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  record,
  request,
  requestData,
} from "../support/clients.ts";
import { NetworkFaultProxy } from "../support/network-fault-proxy.ts";
import {
  MIB,
  isAlive,
  metricValue,
  residentBytes,
  sampleMaxRss,
} from "../support/process-memory.ts";
import { waitUntil } from "../support/faults.ts";
import { startRedisServer, type RedisServer } from "../support/redis-server.ts";
import { startRelay, type RelayProcess } from "../support/relay-process.ts";
import { tcpSocketsBetween } from "../support/tcp-sockets.ts";
import { appToken } from "../support/tokens.ts";

const MAX_BUFFERED_BYTES = 1024 * 1024;
const LIGHTS = 150;
/** Changes the bridge sends; each changes all 150 lights, about 30 KiB per event. */
const CHANGES = 1200;
const CHANGES_IN_FLIGHT = 16;
/**
 * Upper bound on the RSS growth of the slow app's worker during the flood.
 * Measured on a 2-core VM: 4 to 8 MiB with the limit, and 55 to 70 MiB
 * with APP_MAX_BUFFERED_BYTES at 1 GB, where the worker keeps every event.
 */
const RSS_GROWTH_BOUND_BYTES = 20 * MIB;
const DISCONNECTS_SERIES = "relay_slow_app_disconnects_total";
const CLOSED_LOG_PREFIX = "app connection closed: too many bytes";
/** Connections to try before round-robin has placed one on the wanted worker. */
const PLACEMENT_ATTEMPTS = 8;

/** Returns the bridge's lights in one of two variants, which differ in every light. */
function lights(variant: number): Light[] {
  const even = variant % 2 === 0;
  return Array.from({ length: LIGHTS }, (_, index) => ({
    id: `light-${String(index).padStart(3, "0")}`,
    type: "light",
    metadata: {
      name: `Lamp ${index} ${even ? "even" : "odd"}`.padEnd(32, "."),
    },
    on: { on: even },
    dimming: { brightness: even ? 20 : 80 },
    color_temperature: { mirek: even ? 200 : 400 },
    color: { xy: { x: 0.3127, y: even ? 0.329 : 0.331 } },
  }));
}

/** Sends `count` changes, `CHANGES_IN_FLIGHT` at a time, and returns the last version. */
async function flood(bridge: Socket, count: number): Promise<number> {
  let sent = 0;
  let lastVersion = 0;
  const sender = async (): Promise<void> => {
    while (sent < count) {
      sent += 1;
      const ack = await request<{ version: number }>(bridge, "state:changed", {
        lights: lights(sent),
      });
      if (!ack.ok) {
        throw new Error(
          `state:changed failed: ${ack.error.code} ${ack.error.message}`,
        );
      }
      lastVersion = Math.max(lastVersion, ack.data.version);
    }
  };
  await Promise.all(Array.from({ length: CHANGES_IN_FLIGHT }, sender));
  return lastVersion;
}

/** Creates and connects clients until `placed` accepts one; closes the others. */
async function connectUntil<Client extends { close(): void }>(
  open: () => Promise<Client>,
  serverOf: (client: Client) => Promise<ServerInfo>,
  placed: (info: ServerInfo) => boolean,
): Promise<{ client: Client; info: ServerInfo }> {
  for (let attempt = 0; attempt < PLACEMENT_ATTEMPTS; attempt += 1) {
    const client = await open();
    const info = await serverOf(client);
    if (placed(info)) return { client, info };
    client.close();
  }
  throw new Error(
    `no connection reached the wanted worker in ${PLACEMENT_ATTEMPTS} attempts`,
  );
}

describe("fault: slow consumer", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let relay: RelayProcess;

  before(async () => {
    redis = await startRedisServer();
  });

  // A fresh relay per case, so that one case's garbage does not hide the
  // next case's memory growth.
  beforeEach(async () => {
    relay = await startRelay({
      redisUrl: redis.url,
      workers: 2,
      env: {
        APP_MAX_BUFFERED_BYTES: String(MAX_BUFFERED_BYTES),
        REQUESTS_PER_SOCKET_PER_10S: "100000",
      },
    });
  });

  afterEach(async () => {
    await relay?.stop();
  });

  after(async () => {
    await redis?.stop();
  });

  const transports: TransportName[] = ["websocket", "polling"];
  for (const transport of transports) {
    it(`closes a stalled ${transport} app`, async () => {
      const userId = `slow-${transport}`;
      const bridgeId = randomBridgeId();
      const bridge = await connectBridge(relay.url, bridgeId);
      const proxy = new NetworkFaultProxy(relay.port);
      const proxyPort = await proxy.listen();
      const token = await appToken(userId, [bridgeId], "read");
      let slowApp: AppClient | undefined;
      let fastApp: Socket | undefined;
      try {
        const bridgeServer = await requestData<ServerInfo>(
          bridge,
          "relay:info",
          {},
        );
        await requestData(bridge, "state:snapshot", { lights: lights(0) });

        // The slow app sits on the other worker than the bridge, so its
        // worker's memory reflects the events queued for it, not the work
        // of applying the bridge's changes.
        const slow = await connectUntil(
          async () => {
            const client = new AppClient({
              url: `http://127.0.0.1:${proxyPort}`,
              token,
              transports: [transport],
              reconnect: { minDelayMs: 100, maxDelayMs: 500 },
            });
            await client.connect();
            return client;
          },
          (client) => client.serverInfo(),
          (info) => info.serverId !== bridgeServer.serverId,
        );
        slowApp = slow.client;
        const pid = slow.info.pid;
        assert.ok(pid !== undefined, "relay:info has no pid");
        await slowApp.subscribe(bridgeId);

        // The fast app shares the slow app's worker.
        const fast = await connectUntil(
          () =>
            connectApp(relay.url, [bridgeId], "read", {
              transports: ["websocket"],
            }),
          (client) => requestData<ServerInfo>(client, "relay:info", {}),
          (info) => info.serverId === slow.info.serverId,
        );
        fastApp = fast.client;
        await requestData(fastApp, "bridge:subscribe", { bridgeId });
        const fastEvents = record<LightsChangedEvent>(
          fastApp,
          "lights:changed",
        );
        const workerPids = relay.workers().map((worker) => worker.pid);
        const disconnectsBefore = await metricValue(
          relay.url,
          DISCONNECTS_SERIES,
        );

        proxy.pause();
        const relaySidePorts = proxy.upstreamPorts();
        const rssBefore = residentBytes(pid) ?? 0;
        const rss = sampleMaxRss([pid]);
        const lastVersion = await flood(bridge, CHANGES);
        const closed = await relay.waitForLog(
          (line) =>
            line.msg.startsWith(CLOSED_LOG_PREFIX) && line.userId === userId,
        );
        const growth = rss.stop() - rssBefore;
        const bufferedBytes = closed.bufferedBytes as number;
        const eventKiB = JSON.stringify(lights(1)).length / 1024;
        console.log(
          `      fault figure: slow consumer (${transport}), ${CHANGES} events of ${eventKiB.toFixed(0)} KiB: closed at ${(bufferedBytes / MIB).toFixed(2)} MiB waiting, worker RSS +${(growth / MIB).toFixed(0)} MiB`,
        );

        assert.ok(bufferedBytes > MAX_BUFFERED_BYTES, "closed below the limit");
        assert.ok(
          bufferedBytes < MAX_BUFFERED_BYTES + 4 * eventKiB * 1024,
          `closed only at ${bufferedBytes} bytes waiting`,
        );
        assert.equal(closed.transport, transport);
        assert.equal(
          await metricValue(relay.url, DISCONNECTS_SERIES),
          disconnectsBefore + 1,
        );
        assert.ok(
          growth < RSS_GROWTH_BOUND_BYTES,
          `worker RSS grew by ${(growth / MIB).toFixed(1)} MiB`,
        );
        assert.equal(fastEvents.length, CHANGES, "events of the fast app");
        assert.equal(fastEvents.at(-1)?.version, lastVersion);
        assert.deepEqual(
          relay.workers().map((worker) => worker.pid),
          workerPids,
        );
        assert.ok(isAlive(pid), `worker ${pid} died`);

        // A websocket is reset, so the relay's kernel drops the bytes it
        // held for the stalled client. Polling keeps the events in
        // Engine.IO's buffer, which the close discards, so its connection
        // may linger after its FIN with no bytes queued.
        const leftMs = Date.now();
        const left = async () => tcpSocketsBetween(relay.port, relaySidePorts);
        if (transport === "websocket") {
          await waitUntil(
            "the relay's side of the stalled connection gone",
            async () => (await left()).length === 0,
            2000,
          ).catch(async (error: unknown) => {
            console.log(`      sockets left: ${(await left()).join(" | ")}`);
            throw error;
          });
          console.log(
            `      fault figure: slow consumer (websocket): relay's socket gone ${Date.now() - leftMs} ms after the close was logged`,
          );
        } else {
          const sockets = await left();
          console.log(
            `      fault figure: slow consumer (polling): relay's sockets left: ${sockets.join(" | ")}`,
          );
          for (const line of sockets) {
            const sendQueue = Number(line.trim().split(/\s+/)[2]);
            assert.equal(sendQueue, 0, `bytes left for the client: ${line}`);
          }
        }

        // The stalled client learns of the close once its link moves again.
        // The SDK then reconnects, subscribes again and gets the current state.
        const resynced = new Promise<BridgeState>((resolve) =>
          slowApp?.once("resynced", ({ state }) => resolve(state)),
        );
        proxy.resume();
        const state = await resynced;
        assert.equal(state.version, lastVersion);
      } finally {
        slowApp?.close();
        fastApp?.close();
        bridge.close();
        await proxy.close();
      }
    });
  }
});
