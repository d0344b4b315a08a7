import { createClient } from "redis";

/** Calls per Redis command name, from `INFO commandstats`. */
export type CommandCounts = Record<string, number>;

function createStatsClient(url: string) {
  return createClient({ url });
}

/** A connection to the benchmark's private Redis for reading its statistics. */
export class RedisStats {
  private constructor(
    private readonly client: ReturnType<typeof createStatsClient>,
  ) {}

  static async connect(url: string): Promise<RedisStats> {
    const client = createStatsClient(url);
    client.on("error", (error: Error) => {
      console.error(`redis statistics connection failed: ${error.message}`);
    });
    await client.connect();
    return new RedisStats(client);
  }

  /** Returns the PID of the redis-server process, from `INFO server`. */
  async pid(): Promise<number> {
    const info = await this.client.info("server");
    const match = /^process_id:(\d+)/m.exec(info);
    if (match === null) throw new Error("INFO server has no process_id");
    return Number(match[1]);
  }

  /** Returns the bytes Redis has allocated for data (`used_memory` of `INFO memory`). */
  async usedMemory(): Promise<number> {
    const info = await this.client.info("memory");
    const match = /^used_memory:(\d+)/m.exec(info);
    if (match === null) throw new Error("INFO memory has no used_memory");
    return Number(match[1]);
  }

  /** Returns the calls of each command so far, without the `INFO` calls this class makes. */
  async commandCounts(): Promise<CommandCounts> {
    const info = await this.client.info("commandstats");
    const counts: CommandCounts = {};
    for (const match of info.matchAll(/^cmdstat_([^:]+):calls=(\d+)/gm)) {
      const name = match[1]!;
      if (name === "info") continue;
      counts[name] = Number(match[2]);
    }
    return counts;
  }

  /** Closes the connection; a second call does nothing. */
  async close(): Promise<void> {
    if (!this.client.isOpen) return;
    await this.client.quit();
  }
}

/** Returns the calls made between two readings, by command, and their total. */
export function countsBetween(
  before: CommandCounts,
  after: CommandCounts,
): { total: number; byCommand: CommandCounts } {
  const byCommand: CommandCounts = {};
  let total = 0;
  for (const [name, calls] of Object.entries(after)) {
    const delta = calls - (before[name] ?? 0);
    if (delta <= 0) continue;
    byCommand[name] = delta;
    total += delta;
  }
  return { total, byCommand };
}
