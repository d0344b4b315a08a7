import { mkdtemp, rm } from "node:fs/promises";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT } from "./results.ts";

const PROBE_SCRIPT = join(ROOT, "bench", "lib", "heap-probe.mjs");
const READ_TIMEOUT_MS = 30_000;

/** A process's memory right after a full garbage collection, in bytes. */
export interface CollectedMemory {
  /** Heap in use: what the process still references. */
  heapUsed: number;
  /** Heap that V8 has reserved, in use or free. */
  heapTotal: number;
  /** Resident set size of the whole process. */
  rss: number;
}

/**
 * Reads the heap in use after a full collection from server processes
 * started with its `env` (see heap-probe.mjs).
 */
export class HeapProbe {
  private constructor(private readonly dir: string) {}

  static async create(): Promise<HeapProbe> {
    return new HeapProbe(await mkdtemp(join(tmpdir(), "relay-bench-heap-")));
  }

  /** Environment that preloads the probe into a server and its workers. */
  get env(): Record<string, string> {
    const inherited = process.env.NODE_OPTIONS ?? "";
    return {
      NODE_OPTIONS: `${inherited} --import ${PROBE_SCRIPT}`.trim(),
      HEAP_PROBE_DIR: this.dir,
    };
  }

  /** Sums of the readings after a full collection in each of `pids`, in bytes. */
  async collectedMemory(pids: number[]): Promise<CollectedMemory> {
    const readings = await Promise.all(pids.map((pid) => this.read(pid)));
    return {
      heapUsed: readings.reduce((sum, reading) => sum + reading.heapUsed, 0),
      heapTotal: readings.reduce((sum, reading) => sum + reading.heapTotal, 0),
      rss: readings.reduce((sum, reading) => sum + reading.rss, 0),
    };
  }

  async close(): Promise<void> {
    await rm(this.dir, { recursive: true, force: true });
  }

  private read(pid: number): Promise<CollectedMemory> {
    return new Promise((resolve, reject) => {
      let answer = "";
      const socket = connect(join(this.dir, `${pid}.sock`));
      socket.setTimeout(READ_TIMEOUT_MS, () =>
        socket.destroy(
          new Error(
            `heap probe of process ${pid} timed out after ${READ_TIMEOUT_MS} ms`,
          ),
        ),
      );
      socket.on("data", (chunk: Buffer) => {
        answer += chunk.toString();
      });
      socket.once("error", reject);
      socket.once("end", () => {
        const { heapUsed, heapTotal, rss } = JSON.parse(
          answer,
        ) as CollectedMemory;
        resolve({ heapUsed, heapTotal, rss });
      });
    });
  }
}
