import { execFile, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createClient, type RedisClientType } from "redis";
import { randomBridgeId } from "./clients.ts";
import { findFreePort, spawnRedis, stopProcess } from "./redis-server.ts";
import { redisTlsArgs, writeTestCertificate } from "./tls.ts";

const run = promisify(execFile);

/** A private Redis Cluster bound to loopback, for tests. */
export interface RedisCluster {
  /** Client port of each master, as created. */
  ports: number[];
  /** `redis://127.0.0.1:<port>` of each master, for `REDIS_CLUSTER_NODES`. */
  urls: string[];
  /** Client port of each replica, as created. */
  replicaPorts: number[];
  /**
   * With the `tls` option: `rediss://127.0.0.1:<port>` of each master's TLS
   * listener, the certificate that a client must trust, and the TLS port
   * of each node (replicas too) by its client port. The plain ports stay
   * open for the test's own commands.
   */
  tls?: { urls: string[]; certFile: string; portOf: Map<number, number> };
  /** Kills the node on `port` with SIGKILL and resolves once it has exited. */
  kill(port: number): Promise<void>;
  /** Stops every node and removes their folder. */
  stop(): Promise<void>;
}

export interface RedisClusterOptions {
  masters?: number;
  /** Replicas of each master (default 0). */
  replicas?: number;
  /**
   * `cluster-node-timeout` in ms: how long a master may be unreachable
   * before its replica takes over (Redis's default is 15000).
   */
  nodeTimeoutMs?: number;
  /**
   * Also listen with TLS on a port of their own, and run the cluster bus
   * and replication over TLS. Redis 7 tells a TLS client the TLS ports of
   * the other nodes, and a plain client their plain ports.
   */
  tls?: boolean;
}

const CREATE_TIMEOUT_MS = 20_000;
const STATE_TIMEOUT_MS = 10_000;

/**
 * Starts `redis-server` processes (from PATH) in cluster mode on free
 * loopback ports, without persistence, and joins them into one cluster of
 * `masters` masters, each with `replicas` replicas, with `redis-cli
 * --cluster create`. Resolves once every node reports `cluster_state:ok`
 * and counts every node in `cluster_known_nodes`.
 */
export async function startRedisCluster(
  options: RedisClusterOptions = {},
): Promise<RedisCluster> {
  const { masters = 3, replicas = 0, nodeTimeoutMs, tls = false } = options;
  const nodes = masters * (1 + replicas);
  const dir = await mkdtemp(join(tmpdir(), "relay-test-redis-cluster-"));
  const children = new Map<number, ChildProcess>();
  const stop = async (): Promise<void> => {
    await Promise.all(
      [...children.values()].map((child) => stopProcess(child)),
    );
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const ports = await distinctFreePorts(nodes * 3);
    const clientPorts = ports.slice(0, nodes);
    const tlsPorts = ports.slice(nodes * 2);
    const certificate = tls ? await writeTestCertificate(dir) : undefined;
    const extraArgs =
      nodeTimeoutMs === undefined
        ? []
        : ["--cluster-node-timeout", String(nodeTimeoutMs)];
    for (const [index, port] of clientPorts.entries()) {
      const tlsArgs =
        certificate === undefined
          ? []
          : [
              ...redisTlsArgs(certificate, tlsPorts[index]!),
              "--tls-cluster",
              "yes",
              "--tls-replication",
              "yes",
            ];
      children.set(
        port,
        await spawnClusterNode(port, ports[nodes + index]!, dir, [
          ...extraArgs,
          ...tlsArgs,
        ]),
      );
    }
    await createCluster(clientPorts, replicas);
    await Promise.all(
      clientPorts.map((port) => waitForClusterState(port, nodes)),
    );
    // redis-cli makes the first `masters` nodes masters.
    const masterPorts = clientPorts.slice(0, masters);
    // A replica that never synced with its master does not take over.
    await Promise.all(
      clientPorts.slice(masters).map((port) => waitForReplicaLink(port)),
    );
    return {
      ports: masterPorts,
      urls: masterPorts.map((port) => `redis://127.0.0.1:${port}`),
      replicaPorts: clientPorts.slice(masters),
      ...(certificate === undefined
        ? {}
        : {
            tls: {
              urls: tlsPorts
                .slice(0, masters)
                .map((port) => `rediss://127.0.0.1:${port}`),
              certFile: certificate.certFile,
              portOf: new Map(
                clientPorts.map((port, index) => [port, tlsPorts[index]!]),
              ),
            },
          }),
      kill: async (port) => {
        const child = children.get(port);
        if (child === undefined) throw new Error(`no cluster node on ${port}`);
        const exited = once(child, "exit");
        child.kill("SIGKILL");
        await exited;
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

/** Returns `count` ports the OS reported free, no two alike. */
async function distinctFreePorts(count: number): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await findFreePort());
  return [...ports];
}

/**
 * Starts one cluster node. Its cluster bus port is set explicitly, because
 * the default (client port + 10000) lies above 65535 for much of the OS's
 * range of free ports.
 */
function spawnClusterNode(
  port: number,
  busPort: number,
  dir: string,
  extraArgs: string[],
): Promise<ChildProcess> {
  return spawnRedis(port, dir, [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    join(dir, `nodes-${port}.conf`),
    "--cluster-port",
    String(busPort),
    ...extraArgs,
  ]);
}

/** Joins the nodes on `ports`, with `replicas` replicas per master, and assigns the slots evenly over the masters. */
async function createCluster(ports: number[], replicas: number): Promise<void> {
  const nodes = ports.map((port) => `127.0.0.1:${port}`);
  try {
    await run(
      "redis-cli",
      [
        "--cluster",
        "create",
        ...nodes,
        "--cluster-replicas",
        String(replicas),
        "--cluster-yes",
      ],
      { timeout: CREATE_TIMEOUT_MS },
    );
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(
      `redis-cli --cluster create ${nodes.join(" ")} failed: ${(error as Error).message}\n${stdout ?? ""}${stderr ?? ""}`,
      { cause: error },
    );
  }
}

/** Polls `CLUSTER INFO` on `port` until it reports `cluster_state:ok` and `nodes` known nodes. */
function waitForClusterState(port: number, nodes: number): Promise<void> {
  return pollNode(
    port,
    ["CLUSTER", "INFO"],
    (info) =>
      info.includes("cluster_state:ok") &&
      info.includes(`cluster_known_nodes:${nodes}\r\n`),
    "cluster node not ok",
  );
}

/** Polls `INFO replication` on the replica on `port` until its link to the master is up. */
function waitForReplicaLink(port: number): Promise<void> {
  return pollNode(
    port,
    ["INFO", "replication"],
    (info) => info.includes("master_link_status:up"),
    "replica not linked to its master",
  );
}

/**
 * Sends `command` to the node on `port` every 50 ms until `done` accepts
 * its reply. Throws `failure` with the last reply after STATE_TIMEOUT_MS.
 */
async function pollNode(
  port: number,
  command: string[],
  done: (reply: string) => boolean,
  failure: string,
): Promise<void> {
  const client = createClient({ url: `redis://127.0.0.1:${port}` });
  client.on("error", () => undefined);
  await client.connect();
  try {
    const deadline = Date.now() + STATE_TIMEOUT_MS;
    let reply = "";
    while (Date.now() < deadline) {
      reply = String(await client.sendCommand(command));
      if (done(reply)) return;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(
      `${failure} on port ${port} within ${STATE_TIMEOUT_MS} ms:\n${reply}`,
    );
  } finally {
    await client.close();
  }
}

/** Returns the client port of the master that serves `slot` in `probe`'s slot table, or undefined when none does. */
export async function masterPortOf(
  probe: RedisClientType,
  slot: number,
): Promise<number | undefined> {
  const ranges = await probe.clusterSlots();
  return ranges.find(({ from, to }) => from <= slot && slot <= to)?.master.port;
}

/**
 * Promotes the replica of the master that serves `slot` with a manual
 * `CLUSTER FAILOVER`, as an operator does before maintenance, and returns
 * its client port once it reports itself master. The old master becomes
 * its replica.
 */
export async function failOverSlot(
  cluster: RedisCluster,
  probe: RedisClientType,
  slot: number,
): Promise<number> {
  const master = await masterPortOf(probe, slot);
  for (const port of cluster.replicaPorts) {
    const replica: RedisClientType = createClient({
      url: `redis://127.0.0.1:${port}`,
    });
    await replica.connect();
    try {
      // ROLE of a replica: ["slave", masterHost, masterPort, ...].
      const role = (await replica.sendCommand(["ROLE"])) as unknown[];
      if (Number(role[2]) !== master) continue;
      await replica.sendCommand(["CLUSTER", "FAILOVER"]);
      await waitForRole(replica, "master");
      return port;
    } finally {
      await replica.close();
    }
  }
  throw new Error(
    `no replica of master ${String(master)} serving slot ${slot}`,
  );
}

async function waitForRole(client: RedisClientType, role: string) {
  const deadline = Date.now() + STATE_TIMEOUT_MS;
  while (Date.now() < deadline) {
    const reply = (await client.sendCommand(["ROLE"])) as unknown[];
    if (reply[0] === role) return;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`node did not become ${role} within ${STATE_TIMEOUT_MS} ms`);
}

/** Returns the hash slot of the keys of `bridgeId` under the relay's default key prefix. */
export function bridgeSlot(
  probe: RedisClientType,
  bridgeId: string,
): Promise<number> {
  return probe.clusterKeySlot(`relay:{${bridgeId}}:meta`);
}

/** Returns `count` random bridge IDs whose keys land on the master at `port`. */
export async function bridgeIdsOn(
  probe: RedisClientType,
  port: number,
  count: number,
): Promise<string[]> {
  const found: string[] = [];
  while (found.length < count) {
    const bridgeId = randomBridgeId();
    const slot = await bridgeSlot(probe, bridgeId);
    if ((await masterPortOf(probe, slot)) === port) found.push(bridgeId);
  }
  return found;
}

/**
 * Moves `slot` and its keys from the master at `from` to the master at
 * `to`, in the steps of `redis-cli --cluster reshard`. The slot is marked
 * importing and migrating, its keys are migrated, and then every master
 * in `masters` (a client of each, by port) is told the new owner.
 *
 * It starts once the masters agree on every node's config epoch. The
 * target raises its epoch above the highest epoch it has seen. A target
 * that had not yet seen the previous move's epoch took a lower one, so a
 * ping of the source handed the slot back to the source on one master
 * for good (seen in a CI run).
 */
export async function moveSlot(
  masters: Map<number, RedisClientType>,
  slot: number,
  from: number,
  to: number,
): Promise<void> {
  const source = masters.get(from);
  const target = masters.get(to);
  if (source === undefined || target === undefined) {
    throw new Error(`no client of master ${from} or ${to}`);
  }
  await waitForSettledSlots(masters);
  const sourceId = String(await source.sendCommand(["CLUSTER", "MYID"]));
  const targetId = String(await target.sendCommand(["CLUSTER", "MYID"]));
  const slotArg = String(slot);

  await target.sendCommand([
    "CLUSTER",
    "SETSLOT",
    slotArg,
    "IMPORTING",
    sourceId,
  ]);
  await source.sendCommand([
    "CLUSTER",
    "SETSLOT",
    slotArg,
    "MIGRATING",
    targetId,
  ]);

  for (;;) {
    const keys = (await source.sendCommand([
      "CLUSTER",
      "GETKEYSINSLOT",
      slotArg,
      "100",
    ])) as string[];
    if (keys.length === 0) break;
    await source.sendCommand([
      "MIGRATE",
      "127.0.0.1",
      String(to),
      "",
      "0",
      "5000",
      "KEYS",
      ...keys,
    ]);
  }

  await target.sendCommand(["CLUSTER", "SETSLOT", slotArg, "NODE", targetId]);
  await source.sendCommand(["CLUSTER", "SETSLOT", slotArg, "NODE", targetId]);
  for (const [port, client] of masters) {
    if (port === from || port === to) continue;
    await client.sendCommand(["CLUSTER", "SETSLOT", slotArg, "NODE", targetId]);
  }
}

/** One node as a master's `CLUSTER NODES` describes it. */
interface NodeView {
  configEpoch: string;
  /** Slot ranges it serves, with migrations in brackets left out. */
  slots: string;
  /** Whether a slot of this node is marked importing or migrating. */
  migrating: boolean;
}

/** Returns whether `slot` lies in one of the `CLUSTER NODES` ranges in `slots`. */
function inRanges(slots: string, slot: number): boolean {
  return slots.split(" ").some((range) => {
    const [from, to = from] = range.split("-").map(Number);
    return from !== undefined && to !== undefined && from <= slot && slot <= to;
  });
}

/**
 * Returns the client port of the master that serves `slot` by its own
 * account, which is the one that `CLUSTER SETSLOT ... MIGRATING` accepts.
 * The slot table of another master can lag behind a move for a moment.
 * Polls until exactly one master claims the slot.
 */
export async function slotOwner(
  masters: Map<number, RedisClientType>,
  slot: number,
): Promise<number> {
  const deadline = Date.now() + STATE_TIMEOUT_MS;
  let claims: number[] = [];
  while (Date.now() < deadline) {
    claims = [];
    for (const [port, client] of masters) {
      const myself = String(await client.clusterNodes())
        .split("\n")
        .find((line) => line.split(" ")[2]?.split(",").includes("myself"));
      const slots = parseClusterNodes(myself ?? "")
        .values()
        .next().value;
      if (slots !== undefined && inRanges(slots.slots, slot)) claims.push(port);
    }
    if (claims.length === 1) return claims[0]!;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(
    `slot ${slot} claimed by ${claims.length} masters (${claims.join(", ")}), expected 1, for ${STATE_TIMEOUT_MS} ms`,
  );
}

/** Parses a `CLUSTER NODES` reply into node views by node ID. */
function parseClusterNodes(reply: string): Map<string, NodeView> {
  const views = new Map<string, NodeView>();
  for (const line of reply.split("\n")) {
    const fields = line.trim().split(" ");
    if (fields.length < 8) continue;
    const ranges = fields.slice(8);
    views.set(fields[0]!, {
      configEpoch: fields[6]!,
      slots: ranges.filter((range) => !range.startsWith("[")).join(" "),
      migrating: ranges.some((range) => range.startsWith("[")),
    });
  }
  return views;
}

/**
 * Resolves once every master in `masters` has the same slot table and the
 * same config epoch of every node, with no slot importing or migrating.
 *
 * A move's target bumps its config epoch and broadcasts it. Until a master
 * has that epoch, a ping that the source sent before the move can still
 * claim the slot there and hand it back to the source.
 */
export async function waitForSettledSlots(
  masters: Map<number, RedisClientType>,
): Promise<void> {
  const deadline = Date.now() + STATE_TIMEOUT_MS;
  let last = "";
  while (Date.now() < deadline) {
    const views = await Promise.all(
      [...masters.values()].map(async (client) =>
        parseClusterNodes(String(await client.clusterNodes())),
      ),
    );
    const texts = views.map((view) =>
      JSON.stringify([...view.entries()].sort()),
    );
    last = texts.join("\n");
    const migrating = views.some((view) =>
      [...view.values()].some((node) => node.migrating),
    );
    if (!migrating && texts.every((text) => text === texts[0])) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(
    `masters did not agree on slots within ${STATE_TIMEOUT_MS} ms:\n${last}`,
  );
}
