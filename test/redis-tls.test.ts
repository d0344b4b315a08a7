import assert from "node:assert/strict";
import type { ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Socket } from "socket.io-client";
import type { Light } from "../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  connectElsewhere,
  randomBridgeId,
  requestData,
} from "./support/clients.ts";
import { answerLightSet, untypedLightMap } from "./support/fake-bridge.ts";
import { readinessByWorker } from "./support/faults.ts";
import {
  startRedisCluster,
  type RedisCluster,
} from "./support/redis-cluster.ts";
import {
  connectionPorts,
  findFreePort,
  spawnRedis,
  stopProcess,
} from "./support/redis-server.ts";
import { startRelay, type RelayProcess } from "./support/relay-process.ts";
import { redisTlsArgs, writeTestCertificate } from "./support/tls.ts";

/** Checks that every worker is ready and that a command crosses workers. */
async function assertRelayServes(relay: RelayProcess): Promise<void> {
  const serverIds = relay.workers().map((worker) => worker.serverId);
  const statuses = await readinessByWorker(relay.url, serverIds);
  for (const serverId of serverIds) {
    assert.equal(statuses.get(serverId), 200, `worker ${serverId}`);
  }
  const sockets: Socket[] = [];
  try {
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(relay.url, bridgeId);
    sockets.push(bridge);
    const lights = untypedLightMap("a");
    answerLightSet(bridge, lights);
    await requestData(bridge, "state:snapshot", {
      lights: [...lights.values()],
    });
    const { serverId } = await requestData<{ serverId: string }>(
      bridge,
      "relay:info",
      {},
    );
    const { socket: app } = await connectElsewhere(
      () => connectApp(relay.url, [bridgeId]),
      serverId,
    );
    sockets.push(app);
    const { light } = await requestData<{ light: Light }>(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: true } },
    });
    assert.deepEqual(light.on, { on: true });
  } finally {
    for (const socket of sockets) socket.close();
  }
}

describe("Redis over TLS: one server", function () {
  this.timeout(60_000);
  let dir: string;
  let redis: ChildProcess | undefined;
  let relay: RelayProcess | undefined;
  let plainPort: number;
  let tlsPort: number;

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), "relay-test-redis-tls-"));
    const certificate = await writeTestCertificate(dir);
    plainPort = await findFreePort();
    do tlsPort = await findFreePort();
    while (tlsPort === plainPort);
    redis = await spawnRedis(
      plainPort,
      dir,
      redisTlsArgs(certificate, tlsPort),
    );
    relay = await startRelay({
      redisUrl: `rediss://127.0.0.1:${tlsPort}`,
      workers: 2,
      env: { NODE_EXTRA_CA_CERTS: certificate.certFile },
    });
  });

  after(async () => {
    await relay?.stop();
    if (redis !== undefined) await stopProcess(redis);
    await rm(dir, { recursive: true, force: true });
  });

  it("serves commands over rediss://", async () => {
    await assertRelayServes(relay!);
    const ports = await connectionPorts(plainPort);
    assert.ok(ports.length > 0);
    assert.deepEqual(
      ports.filter((port) => port !== tlsPort),
      [],
      "every relay connection uses the TLS port",
    );
  });
});

describe("Redis Cluster over TLS", function () {
  this.timeout(60_000);
  let cluster: RedisCluster | undefined;
  let relay: RelayProcess | undefined;

  before(async () => {
    cluster = await startRedisCluster({ masters: 3, tls: true });
    relay = await startRelay({
      redisClusterNodes: cluster.tls!.urls,
      workers: 2,
      env: { NODE_EXTRA_CA_CERTS: cluster.tls!.certFile },
    });
  });

  after(async () => {
    await relay?.stop();
    await cluster?.stop();
  });

  it("serves commands over rediss:// seeds", async () => {
    await assertRelayServes(relay!);
    const tlsPorts = cluster!.tls!.urls.map((url) => Number(new URL(url).port));
    for (const [index, plainPort] of cluster!.ports.entries()) {
      const ports = await connectionPorts(plainPort);
      assert.ok(ports.length > 0, `master ${plainPort} has clients`);
      assert.deepEqual(
        ports.filter((port) => port !== tlsPorts[index]),
        [],
        `every connection to master ${plainPort} uses its TLS port`,
      );
    }
  });
});
