import { execFile, type ChildProcess } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createClient } from "redis";
import { findFreePort, spawnRedis, stopProcess } from "./redis-server.ts";

const run = promisify(execFile);

/** A private Redis Cluster of masters without replicas, bound to loopback, for tests. */
export interface RedisCluster {
  /** Client port of each master. */
  ports: number[];
  /** `redis://127.0.0.1:<port>` of each master, for `REDIS_CLUSTER_NODES`. */
  urls: string[];
  /** Stops every node and removes their folder. */
  stop(): Promise<void>;
}

const CREATE_TIMEOUT_MS = 20_000;
const STATE_TIMEOUT_MS = 10_000;

/**
 * Starts `masters` `redis-server` processes (from PATH) in cluster mode on
 * free loopback ports, without persistence, and joins them into one
 * cluster with `redis-cli --cluster create`. Resolves once every node
 * reports `cluster_state:ok` and counts every node in
 * `cluster_known_nodes`.
 */
export async function startRedisCluster(masters = 3): Promise<RedisCluster> {
  const dir = await mkdtemp(join(tmpdir(), "relay-test-redis-cluster-"));
  const children: ChildProcess[] = [];
  const stop = async (): Promise<void> => {
    await Promise.all(children.map((child) => stopProcess(child)));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    const ports = await distinctFreePorts(masters * 2);
    const clientPorts = ports.slice(0, masters);
    for (const [index, port] of clientPorts.entries()) {
      children.push(await spawnClusterNode(port, ports[masters + index]!, dir));
    }
    await createCluster(clientPorts);
    await Promise.all(
      clientPorts.map((port) => waitForClusterState(port, masters)),
    );
    return {
      ports: clientPorts,
      urls: clientPorts.map((port) => `redis://127.0.0.1:${port}`),
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
): Promise<ChildProcess> {
  return spawnRedis(port, dir, [
    "--cluster-enabled",
    "yes",
    "--cluster-config-file",
    join(dir, `nodes-${port}.conf`),
    "--cluster-port",
    String(busPort),
  ]);
}

/** Assigns the slots evenly over `ports` and joins the nodes, as masters without replicas. */
async function createCluster(ports: number[]): Promise<void> {
  const nodes = ports.map((port) => `127.0.0.1:${port}`);
  try {
    await run("redis-cli", ["--cluster", "create", ...nodes, "--cluster-yes"], {
      timeout: CREATE_TIMEOUT_MS,
    });
  } catch (error) {
    const { stdout, stderr } = error as { stdout?: string; stderr?: string };
    throw new Error(
      `redis-cli --cluster create ${nodes.join(" ")} failed: ${(error as Error).message}\n${stdout ?? ""}${stderr ?? ""}`,
      { cause: error },
    );
  }
}

/** Polls `CLUSTER INFO` on `port` until it reports `cluster_state:ok` and `nodes` known nodes. */
async function waitForClusterState(port: number, nodes: number): Promise<void> {
  const client = createClient({ url: `redis://127.0.0.1:${port}` });
  client.on("error", () => undefined);
  await client.connect();
  try {
    const deadline = Date.now() + STATE_TIMEOUT_MS;
    let info = "";
    while (Date.now() < deadline) {
      info = String(await client.sendCommand(["CLUSTER", "INFO"]));
      if (
        info.includes("cluster_state:ok") &&
        info.includes(`cluster_known_nodes:${nodes}\r\n`)
      ) {
        return;
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    throw new Error(
      `cluster node on port ${port} not ok within ${STATE_TIMEOUT_MS} ms:\n${info}`,
    );
  } finally {
    await client.close();
  }
}
