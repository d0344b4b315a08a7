/**
 * Runs every benchmark scenario in turn, each in a process of its own,
 * then draws the plots from their results (not after --smoke).
 *
 *   npm run bench -- [--smoke] [--out DIR] [--only name,name]
 */
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { parseBenchArgs } from "./lib/cli.ts";
import { ROOT } from "./lib/results.ts";

/** Scenario names, in the order they run; each is bench/scenarios/<name>.ts. */
const SCENARIOS = [
  "round-trip",
  "command-rate",
  "command-scale",
  "mqtt",
  "fanout",
  "idle-memory",
  "reconnect-storm",
] as const;

const USAGE = `Runs every benchmark scenario and draws the plots.

  npm run bench -- [--smoke] [--out DIR] [--only round-trip,fanout]

  --only LIST    run only these scenarios: ${SCENARIOS.join(", ")}`;

const values = parseBenchArgs(USAGE, { only: { type: "string" } });
const selected =
  values.only === undefined ? [...SCENARIOS] : values.only.split(",");
const unknown = selected.filter(
  (name) => !(SCENARIOS as readonly string[]).includes(name),
);
if (unknown.length > 0) {
  console.error(
    `unknown scenario ${unknown.join(", ")}: choose from ${SCENARIOS.join(", ")}`,
  );
  process.exit(2);
}

function runScript(script: string, args: string[]): number {
  const child = spawnSync(
    process.execPath,
    ["--import", "tsx", script, ...args],
    {
      cwd: ROOT,
      stdio: "inherit",
    },
  );
  return child.status ?? 1;
}

const forwarded = ["--out", values.out, ...(values.smoke ? ["--smoke"] : [])];
const failed: string[] = [];
for (const name of selected) {
  console.log(`\n=== ${name} ===`);
  if (
    runScript(join(ROOT, "bench", "scenarios", `${name}.ts`), forwarded) !== 0
  )
    failed.push(name);
}
if (
  !values.smoke &&
  runScript(join(ROOT, "bench", "plot", "main.ts"), [
    "--results",
    values.out,
  ]) !== 0
) {
  failed.push("plot");
}
if (failed.length > 0) {
  console.error(`\nfailed: ${failed.join(", ")}`);
  process.exit(1);
}
