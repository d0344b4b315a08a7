import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { existsSync, statSync, utimesSync } from "node:fs";
import {
  cp,
  mkdir,
  mkdtemp,
  readFile,
  readdir,
  rm,
  unlink,
  writeFile,
} from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import {
  COMPILED_BARE,
  COMPILED_RELAY,
  FINGERPRINT_FILE,
  LOCK_DIR,
  compileIfChanged,
  ensureCompiled,
  type BuildProject,
} from "../bench/lib/compiled.ts";
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
      assert.equal(typeof retained.reservedBytesPerBridge, "number");
      assert.equal(typeof retained.collectedRssBytesPerBridge, "number");
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
    // Compiles once here, so that the scenarios below find dist/ up to date.
    ensureCompiled();
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

describe("compiling for the benchmarks", function () {
  this.timeout(60_000);
  /** A time long before any test run, for files whose mtime must look old. */
  const OLD_TIME = new Date("2001-01-01T00:00:00Z");
  let project: BuildProject;

  /** Writes a two-file project with its own tsconfig files into a temporary folder. */
  async function createProject(): Promise<BuildProject> {
    const root = await mkdtemp(join(tmpdir(), "relay-bench-compile-"));
    const compilerOptions = {
      target: "ES2022",
      module: "NodeNext",
      strict: true,
      skipLibCheck: true,
      types: [],
    };
    await writeJson(join(root, "tsconfig.json"), {
      compilerOptions,
      include: ["src"],
    });
    await writeJson(join(root, "tsconfig.build.json"), {
      extends: "./tsconfig.json",
      compilerOptions: { rootDir: ".", outDir: "dist" },
      include: ["src"],
    });
    await writeJson(join(root, "package.json"), {
      name: "compile-test",
      type: "module",
    });
    await writeJson(join(root, "package-lock.json"), {
      name: "compile-test",
      lockfileVersion: 3,
    });
    await mkdir(join(root, "src"));
    await writeFile(join(root, "src", "a.ts"), 'export const a = "first";\n');
    await writeFile(join(root, "src", "b.ts"), "export const b = 2;\n");
    return { root, sourceDirs: ["src"] };
  }

  async function writeJson(path: string, value: unknown): Promise<void> {
    await writeFile(path, JSON.stringify(value, null, 2) + "\n");
  }

  /** Sets the modification time of `path` in the project to `time`. */
  function setModified(path: string, time: Date): void {
    utimesSync(join(project.root, path), time, time);
  }

  function outputPath(name: string): string {
    return join(project.root, "dist", "src", name);
  }

  // The fingerprint covers paths relative to the project root, so a copy
  // of a built project is up to date. Copying saves a tsc run per test.
  let builtTemplate: BuildProject;

  before(async () => {
    builtTemplate = await createProject();
    assert.equal(compileIfChanged(builtTemplate), true, "first build skipped");
  });

  after(async () => {
    if (builtTemplate !== undefined)
      await rm(builtTemplate.root, { recursive: true, force: true });
  });

  beforeEach(async () => {
    const root = await mkdtemp(join(tmpdir(), "relay-bench-compile-"));
    await cp(builtTemplate.root, root, {
      recursive: true,
      preserveTimestamps: true,
    });
    project = { ...builtTemplate, root };
    assert.ok(existsSync(outputPath("a.js")), "copied project has no a.js");
    assert.equal(
      compileIfChanged(project),
      false,
      "copied project was not up to date",
    );
  });

  afterEach(async () => {
    await rm(project.root, { recursive: true, force: true });
  });

  it("rebuilds after edit keeping old mtime", async () => {
    await writeFile(
      join(project.root, "src", "a.ts"),
      'export const a = "second";\n',
    );
    setModified("src/a.ts", OLD_TIME);

    assert.equal(compileIfChanged(project), true);
    assert.match(await readFile(outputPath("a.js"), "utf8"), /second/);
  });

  for (const file of [
    "package-lock.json",
    "package.json",
    "tsconfig.json",
    "tsconfig.build.json",
  ]) {
    it(`rebuilds after ${file} change`, async () => {
      const path = join(project.root, file);
      const config = JSON.parse(await readFile(path, "utf8")) as Record<
        string,
        unknown
      >;
      await writeJson(path, { ...config, description: "changed" });
      setModified(file, OLD_TIME);

      assert.equal(compileIfChanged(project), true);
    });
  }

  it("rebuilds after output edit", async () => {
    await writeFile(outputPath("a.js"), "broken\n");
    setModified("dist/src/a.js", new Date());

    assert.equal(compileIfChanged(project), true);
    assert.match(await readFile(outputPath("a.js"), "utf8"), /first/);
  });

  it("removes output of deleted source", async () => {
    assert.ok(existsSync(outputPath("b.js")), "first build wrote no b.js");
    await unlink(join(project.root, "src", "b.ts"));

    assert.equal(compileIfChanged(project), true);
    assert.equal(
      existsSync(outputPath("b.js")),
      false,
      "b.js is still in dist/",
    );
    assert.ok(
      existsSync(outputPath("a.js")),
      "a.js is missing after the rebuild",
    );
  });

  it("skips tsc when only mtimes change", () => {
    const fingerprintFile = join(project.root, "dist", FINGERPRINT_FILE);
    const builtAt = statSync(outputPath("a.js")).mtimeMs;
    const fingerprintAt = statSync(fingerprintFile, {
      throwIfNoEntry: false,
    })?.mtimeMs;
    const later = new Date(Date.now() + 60_000);
    for (const file of ["src/a.ts", "src/b.ts", "tsconfig.build.json"]) {
      setModified(file, later);
    }

    assert.equal(compileIfChanged(project), false);
    assert.equal(
      statSync(outputPath("a.js")).mtimeMs,
      builtAt,
      "a.js rewritten",
    );
    assert.equal(
      statSync(fingerprintFile).mtimeMs,
      fingerprintAt,
      "fingerprint rewritten",
    );
  });

  it("takes over stale lock", async () => {
    await writeFile(join(project.root, "src", "b.ts"), "export const b = 3;\n");
    const lock = join(project.root, "dist", LOCK_DIR);
    await mkdir(lock);
    const staleTime = new Date(Date.now() - 200_000);
    utimesSync(lock, staleTime, staleTime);

    const startedAt = Date.now();
    assert.equal(compileIfChanged(project), true);
    assert.ok(
      Date.now() - startedAt < 30_000,
      `took ${Date.now() - startedAt} ms, expected no wait for a stale lock`,
    );
    assert.equal(existsSync(lock), false, "lock directory left behind");
    assert.match(await readFile(outputPath("b.js"), "utf8"), /3/);
  });

  it("waits for live lock", async () => {
    await writeFile(join(project.root, "src", "b.ts"), "export const b = 4;\n");
    const lock = join(project.root, "dist", LOCK_DIR);
    const releasedFile = join(project.root, "released-at");
    const holdMs = 5000;
    await mkdir(lock);
    // A separate process releases the lock, because the synchronous wait
    // below blocks this process's event loop. It holds the lock for longer
    // than a tsc run of this small project usually takes, so that a build
    // that ignored the lock would write b.js before the release.
    const holder = spawn(
      process.execPath,
      [
        "-e",
        `setTimeout(() => {
          const fs = require("node:fs");
          fs.writeFileSync(${JSON.stringify(releasedFile)}, String(Date.now()));
          fs.rmSync(${JSON.stringify(lock)}, { recursive: true });
        }, ${holdMs});`,
      ],
      { stdio: "inherit" },
    );
    try {
      assert.equal(compileIfChanged(project), true);
    } finally {
      holder.kill();
    }

    assert.ok(existsSync(releasedFile), "the build did not wait for the lock");
    const releasedAt = Number(await readFile(releasedFile, "utf8"));
    const builtAt = statSync(outputPath("b.js")).mtimeMs;
    assert.ok(
      builtAt >= releasedAt,
      `b.js written at ${builtAt}, before the lock was released at ${releasedAt}`,
    );
    assert.match(await readFile(outputPath("b.js"), "utf8"), /4/);
  });

  it("runs tsc once for concurrent calls", async () => {
    await rm(join(project.root, "dist"), { recursive: true, force: true });
    const moduleUrl = pathToFileURL(
      join(ROOT, "bench", "lib", "compiled.ts"),
    ).href;
    const script =
      `import { compileIfChanged } from ${JSON.stringify(moduleUrl)};\n` +
      `const built = compileIfChanged(${JSON.stringify(project)});\n` +
      `console.log(built ? "built" : "up to date");\n`;
    const run = (): Promise<Run> =>
      new Promise((resolve) => {
        const child = spawn(
          process.execPath,
          ["--import", "tsx", "--input-type=module", "-e", script],
          { cwd: ROOT, stdio: ["ignore", "pipe", "pipe"] },
        );
        let output = "";
        child.stdout.on("data", (chunk: Buffer) => (output += chunk));
        child.stderr.on("data", (chunk: Buffer) => (output += chunk));
        child.once("exit", (code) => resolve({ code, output }));
      });

    const runs = await Promise.all([run(), run()]);

    for (const { code, output } of runs) {
      assert.equal(code, 0, `compiling process failed:\n${output}`);
    }
    const builds = runs.filter(({ output }) => /^built$/m.test(output));
    assert.equal(
      builds.length,
      1,
      `expected one build, got ${builds.length}:\n${runs.map((r) => r.output).join("\n---\n")}`,
    );
    assert.ok(existsSync(outputPath("a.js")), "a.js is missing");
  });
});
