import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { COMPILED_BARE, COMPILED_RELAY } from "../bench/lib/compiled.ts";
import { startBare, startBenchRelay } from "../bench/lib/servers.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));

/** Scenario scripts in bench/scenarios/, each run once with --smoke. */
const SCENARIOS = [
  "round-trip",
  "command-rate",
  "command-scale",
  "mqtt",
  "fanout",
  "idle-memory",
  "reconnect-storm",
];
/** Scenarios running at once: each starts Redis, relays and load agents. */
const CONCURRENCY = 3;

interface Run {
  code: number | null;
  output: string;
}

function runScenario(name: string, outDir: string): Promise<Run> {
  return new Promise((resolve) => {
    const child = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        join("bench", "scenarios", `${name}.ts`),
        "--smoke",
        "--out",
        outDir,
      ],
      { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
    );
    let output = "";
    child.stdout.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (output += chunk.toString()));
    child.once("exit", (code) => resolve({ code, output }));
  });
}

async function readResult(
  outDir: string,
  name: string,
): Promise<Record<string, unknown>> {
  const files = (await readdir(outDir)).filter((file) =>
    file.startsWith(`${name}-`),
  );
  assert.equal(
    files.length,
    1,
    `expected one ${name} result in ${outDir}, found ${files.join(", ")}`,
  );
  return JSON.parse(await readFile(join(outDir, files[0]!), "utf8")) as Record<
    string,
    unknown
  >;
}

function assertPositive(value: unknown, field: string): void {
  assert.equal(
    typeof value,
    "number",
    `${field} is not a number: ${String(value)}`,
  );
  assert.ok(
    (value as number) > 0,
    `${field} is ${String(value)}, expected more than 0`,
  );
}

type Rows = Record<string, unknown>[];

/** Checks each scenario's own fields; the common fields are checked for all. */
const CHECKS: Record<string, (result: Record<string, unknown>) => void> = {
  "round-trip": (result) => {
    const rows = result.results as Rows;
    assert.equal(rows.length, 4);
    for (const row of rows)
      assertPositive(row.p50Ms, `${String(row.placement)} p50Ms`);
  },
  "command-rate": (result) => {
    const rows = result.results as Rows;
    assert.deepEqual(
      rows.map((row) => row.target),
      [
        "relay-same-worker",
        "relay-other-worker",
        "relay-other-instance",
        "bare-1-process",
        "bare-adapter-other-process",
      ],
    );
    for (const row of rows) {
      assert.equal(typeof row.maxSustainedRate, "number");
      for (const step of row.steps as Rows) {
        assertPositive(step.succeeded, `${String(row.target)} succeeded`);
        assertPositive(step.p50Ms, `${String(row.target)} p50Ms`);
      }
    }
  },
  "command-scale": (result) => {
    const rows = result.results as Rows;
    assert.equal(rows.length, 4);
    for (const row of rows) {
      const name = `${String(row.system)}-${String(row.processes)}`;
      for (const run of ["cost", "equalLoad", "halfRate"]) {
        const fixed = row[run] as Record<string, unknown>;
        const step = fixed.step as Record<string, unknown>;
        assertPositive(
          fixed.redisCommandsPerCommand,
          `${name} ${run} redisCommandsPerCommand`,
        );
        assertPositive(step.succeeded, `${name} ${run} succeeded`);
      }
    }
  },
  mqtt: (result) => {
    const rows = result.results as Rows;
    const targets = rows.map((row) => row.target);
    assert.ok(targets.includes("relay-embedded"));
    assert.ok(targets.includes("relay-same-worker"));
    assert.ok(targets.includes("bare-1-process"));
    const skipped = result.skipped as string[];
    assert.ok(
      targets.includes("mosquitto") ||
        skipped.some((reason) => reason.includes("mosquitto")),
      "neither a mosquitto result nor a reason for skipping it",
    );
    for (const row of rows) {
      for (const step of row.steps as Rows)
        assertPositive(step.p50Ms, `${String(row.target)} p50Ms`);
    }
  },
  fanout: (result) => {
    const rows = result.results as Rows;
    assert.equal(rows.length, 3);
    for (const row of rows) {
      for (const step of row.steps as Rows) {
        assertPositive(step.deliveries, `${String(row.target)} deliveries`);
        assertPositive(step.p50Ms, `${String(row.target)} p50Ms`);
      }
    }
  },
  "idle-memory": (result) => {
    const rows = result.results as Rows;
    assert.equal(rows.length, 2);
    for (const row of rows) {
      assertPositive(
        row.baselineRssBytes,
        `${String(row.target)} baselineRssBytes`,
      );
      for (const step of row.steps as Rows) {
        assertPositive(step.bridges, `${String(row.target)} bridges`);
        assertPositive(
          step.serverRssBytes,
          `${String(row.target)} serverRssBytes`,
        );
      }
      const idle = row.idle as Record<string, unknown>;
      assert.ok(
        Array.isArray(idle.rssBytesPerBridge) &&
          idle.rssBytesPerBridge.length >= 2,
        `${String(row.target)} idle readings: ${JSON.stringify(idle.rssBytesPerBridge)}`,
      );
      assert.equal(typeof idle.meanRssBytesPerBridge, "number");
      const retained = row.retained as Record<string, unknown>;
      assertPositive(
        retained.baselineBytes,
        `${String(row.target)} retained baselineBytes`,
      );
      assertPositive(retained.bytes, `${String(row.target)} retained bytes`);
      assert.equal(typeof retained.bytesPerBridge, "number");
    }
    const summary = result.summary as Record<string, unknown>;
    assert.equal(typeof summary.relayVsBareRetained, "number");
  },
  "reconnect-storm": (result) => {
    const phases = result.results as Rows;
    assert.deepEqual(
      phases.map((phase) => phase.phase),
      ["connect", "reconnect"],
    );
    for (const phase of phases) {
      assertPositive(phase.bridges, `${String(phase.phase)} bridges`);
      assert.equal(
        phase.synced,
        phase.bridges,
        `${String(phase.phase)}: not every bridge synced`,
      );
      assertPositive(phase.allBackMs, `${String(phase.phase)} allBackMs`);
    }
  },
};

describe("benchmark scenarios at smoke size", function () {
  this.timeout(180_000);
  let outDir: string;
  const runs = new Map<string, Run>();

  before(async () => {
    outDir = await mkdtemp(join(tmpdir(), "relay-bench-smoke-"));
    const queue = [...SCENARIOS];
    const worker = async (): Promise<void> => {
      for (let name = queue.shift(); name !== undefined; name = queue.shift()) {
        runs.set(name, await runScenario(name, outDir));
      }
    };
    await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  });

  after(async () => {
    if (outDir !== undefined)
      await rm(outDir, { recursive: true, force: true });
  });

  for (const name of SCENARIOS) {
    it(`${name} exits 0 and writes its result`, async () => {
      const run = runs.get(name)!;
      assert.equal(
        run.code,
        0,
        `${name} exited with ${run.code}:\n${run.output.slice(-4000)}`,
      );
      const result = await readResult(outDir, name);
      assert.equal(result.scenario, name);
      assert.equal(result.smoke, true);
      assertPositive(result.durationMs, "durationMs");
      const machine = result.machine as Record<string, unknown>;
      assertPositive(machine.cores, "machine.cores");
      assert.match(String(machine.node), /^v\d+/);
      assert.ok(
        Array.isArray(result.results) && result.results.length > 0,
        "results is empty",
      );
      CHECKS[name]!(result);
    });
  }
});

describe("benchmark servers", function () {
  this.timeout(60_000);

  /** Returns the command line of process `pid`, as its arguments. */
  async function commandLine(pid: number): Promise<string[]> {
    const raw = await readFile(`/proc/${pid}/cmdline`, "utf8");
    return raw.split("\0").filter((arg) => arg !== "");
  }

  it("run compiled JavaScript", async () => {
    const relay = await startBenchRelay(undefined);
    const bare = await startBare(1);
    try {
      const [relayArgs, bareArgs] = await Promise.all([
        commandLine(relay.relay.pid),
        commandLine(bare.pids()[0]!),
      ]);
      assert.deepEqual(relayArgs.slice(1), [COMPILED_RELAY]);
      assert.deepEqual(bareArgs.slice(1), [COMPILED_BARE]);
    } finally {
      await Promise.all([relay.stop(), bare.stop()]);
    }
  });
});
