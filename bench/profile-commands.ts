/**
 * Profiles the relay's workers under command load. It starts Redis and a
 * relay of 2 workers under `node --cpu-prof`, and sends light commands at
 * a fixed rate, with the bridge and the app on the same worker or, with
 * --placement other, on different workers. Then it stops the relay, which
 * writes the profiles, and prints the functions with the most self time
 * in the busiest worker's profile.
 *
 *   npm run bench:profile -- [--rate 1000] [--duration-ms 10000] [--placement same]
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtemp, readFile, readdir } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { TEST_SECRET } from "../test/support/relay-process.ts";
import { startRedisServer } from "../test/support/redis-server.ts";
import { integerOption, parseBenchArgs } from "./lib/cli.ts";
import { measureCommandStep, pairSpecs } from "./lib/command-steps.ts";
import { COMPILED_RELAY, ensureCompiled } from "./lib/compiled.ts";
import { ROOT, printTable } from "./lib/results.ts";
import { BENCH_RELAY_ENV } from "./lib/servers.ts";
import { round } from "./lib/stats.ts";
import { LoadAgent } from "./load/rpc.ts";

const USAGE = `CPU profile of the relay's workers under command load.

  npm run bench:profile -- [--rate 1000] [--duration-ms 10000] [--placement same|other] [--top 25]

  --rate N          commands per second (default 1000)
  --duration-ms MS  length of the profiled run in ms (default 10000)
  --placement P     same: bridge and app on one worker; other: on different workers (default same)
  --top N           functions to print (default 25)`;

const values = parseBenchArgs(USAGE, {
  rate: { type: "string" },
  "duration-ms": { type: "string" },
  placement: { type: "string" },
  top: { type: "string" },
});
const rate = integerOption(
  values.rate ?? (values.smoke ? "50" : "1000"),
  "rate",
  1,
);
const durationMs = integerOption(
  values["duration-ms"] ?? (values.smoke ? "500" : "10000"),
  "duration-ms",
  100,
);
const top = integerOption(values.top ?? "25", "top", 1);
const placement = values.placement ?? "same";
if (placement !== "same" && placement !== "other") {
  console.error(`--placement must be same or other, got ${placement}`);
  process.exit(2);
}

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  hitCount?: number;
}

interface CpuProfile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

/**
 * Returns self time per function (name, file and line) in ms, largest
 * first, from the samples taken `skipMs` or more after the profile began.
 * Idle samples are left out.
 */
function selfTimes(
  profile: CpuProfile,
  skipMs: number,
): { name: string; selfMs: number }[] {
  const byNode = new Map<number, ProfileNode>(
    profile.nodes.map((node) => [node.id, node]),
  );
  const totals = new Map<string, number>();
  let elapsedUs = 0;
  profile.samples.forEach((nodeId, index) => {
    const deltaUs = profile.timeDeltas[index] ?? 0;
    elapsedUs += deltaUs;
    const frame = byNode.get(nodeId)!.callFrame;
    if (elapsedUs < skipMs * 1000 || frame.functionName === "(idle)") return;
    const file = frame.url
      .replace(/^file:\/\//, "")
      .replace(ROOT, "")
      .replace(/^.*\/node_modules\//, "");
    const name = `${frame.functionName || "(anonymous)"} ${file}:${frame.lineNumber + 1}`;
    totals.set(name, (totals.get(name) ?? 0) + deltaUs / 1000);
  });
  return [...totals.entries()]
    .map(([name, selfMs]) => ({ name, selfMs }))
    .sort((a, b) => b.selfMs - a.selfMs);
}

interface ProfiledRelay {
  child: ChildProcess;
  url: string;
  pids: number[];
}

/**
 * Starts a clustered relay under `node --cpu-prof`. Node does not accept
 * --cpu-prof in NODE_OPTIONS, so the flag goes on the primary's command
 * line, and cluster gives the workers the primary's flags.
 */
async function startProfiledRelay(
  redisUrl: string,
  profileDir: string,
): Promise<ProfiledRelay> {
  const child = spawn(
    process.execPath,
    ["--cpu-prof", `--cpu-prof-dir=${profileDir}`, COMPILED_RELAY],
    {
      cwd: ROOT,
      env: {
        ...process.env,
        ...BENCH_RELAY_ENV,
        NODE_ENV: "test",
        PORT: "0",
        HOST: "127.0.0.1",
        LOG_FORMAT: "json",
        AUTH_SECRET: TEST_SECRET,
        WORKERS: "2",
        REDIS_URL: redisUrl,
      },
      stdio: ["ignore", "pipe", "inherit"],
    },
  );
  const pids = [child.pid!];
  let port = 0;
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error("relay did not start within 60 s")),
      60_000,
    );
    child.once("exit", (code) =>
      reject(new Error(`relay exited with code ${code} during start`)),
    );
    createInterface({ input: child.stdout! }).on("line", (text) => {
      let line: { msg?: string; port?: number; pid?: number };
      try {
        line = JSON.parse(text) as typeof line;
      } catch {
        return;
      }
      if (line.msg === "worker ready" && line.pid !== undefined)
        pids.push(line.pid);
      if (
        line.msg?.startsWith("relay listening") &&
        typeof line.port === "number"
      )
        port = line.port;
      if (port !== 0 && pids.length === 3) {
        clearTimeout(timer);
        resolve();
      }
    });
  });
  return { child, url: `http://127.0.0.1:${port}`, pids };
}

const profileDir = await mkdtemp(join(tmpdir(), "relay-cpu-profile-"));
const redis = await startRedisServer();
// Compiled before the clock starts, so that the compile time does not
// count as start-up, which the printed profile leaves out.
ensureCompiled();
const spawnedAt = performance.now();
const relay = await startProfiledRelay(redis.url, profileDir);
/** Time from the relay's start to the start of the profiled load, in ms. */
let loadStartMs: number | undefined;
const agent = new LoadAgent("commands");
try {
  const target = {
    name: `relay-${placement}-worker`,
    description: "relay under the profiler",
    setup: {
      kind: "relay" as const,
      pairs: pairSpecs(20, [relay.url], [relay.url], placement),
    },
    serverPids: () => relay.pids,
  };
  await agent.call("commands.setup", target.setup);
  // Start-up and connection set-up are left out of the printed profile.
  loadStartMs = performance.now() - spawnedAt;
  const step = await measureCommandStep(agent, target, rate, durationMs, 100);
  console.log(
    `${rate}/s for ${durationMs} ms: ${step.succeeded} commands, p50 ${step.p50Ms} ms, p99 ${step.p99Ms} ms, server cpu ${step.serverCpuMsPerCommand} ms per command`,
  );
} finally {
  await agent.stop();
  // A graceful stop lets each worker exit normally, which writes its profile.
  const exited = once(relay.child, "exit");
  relay.child.kill("SIGTERM");
  await exited;
  await redis.stop();
}

const files = (await readdir(profileDir)).filter((file) =>
  file.endsWith(".cpuprofile"),
);
let busiest:
  | {
      file: string;
      entries: { name: string; selfMs: number }[];
      busyMs: number;
    }
  | undefined;
for (const file of files) {
  const profile = JSON.parse(
    await readFile(join(profileDir, file), "utf8"),
  ) as CpuProfile;
  const entries = selfTimes(profile, loadStartMs ?? 0);
  const busyMs = entries.reduce((sum, entry) => sum + entry.selfMs, 0);
  if (busiest === undefined || busyMs > busiest.busyMs)
    busiest = { file, entries, busyMs };
}
if (busiest === undefined) {
  console.error(`no .cpuprofile file was written to ${profileDir}`);
  process.exit(1);
}
const { entries, busyMs } = busiest;
console.log(
  `\nprofiles in ${profileDir}; busiest: ${busiest.file}, ${round(busyMs)} ms busy after the first ${round(loadStartMs ?? 0)} ms`,
);
printTable(
  `Top ${top} functions by self time under load`,
  entries.slice(0, top).map((entry) => ({
    "self ms": round(entry.selfMs),
    "% of busy": round((100 * entry.selfMs) / busyMs, 1),
    function: entry.name,
  })),
);
