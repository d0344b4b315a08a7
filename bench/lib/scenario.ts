import { machineInfo, writeResult, type BenchResult } from "./results.ts";

/** Output of a scenario's body, written into its result file. */
export interface ScenarioOutput {
  results: object[];
  summary: Record<string, unknown>;
  skipped?: string[];
}

/** Stops what a scenario started, in reverse order, even when it fails. */
export class Cleanup {
  private readonly tasks: (() => Promise<unknown> | unknown)[] = [];

  /** Registers `task` and returns `value`, so a start can be wrapped in one line. */
  add<T>(value: T, task: (value: T) => Promise<unknown> | unknown): T {
    this.tasks.push(() => task(value));
    return value;
  }

  /** Runs every task registered since the last call, newest first. */
  async run(): Promise<void> {
    while (this.tasks.length > 0) {
      const task = this.tasks.pop()!;
      try {
        await task();
      } catch (error) {
        console.error(`cleanup step failed: ${(error as Error).message}`);
      }
    }
  }
}

export interface ScenarioOptions {
  name: string;
  smoke: boolean;
  outDir: string;
  settings: Record<string, unknown>;
}

/**
 * Runs a scenario's body, stops everything it registered, writes its
 * result as JSON and exits: status 0 on success, 1 when the body threw.
 */
export async function runScenario(
  options: ScenarioOptions,
  body: (cleanup: Cleanup) => Promise<ScenarioOutput>,
): Promise<never> {
  const startedAt = new Date();
  const machine = machineInfo();
  console.log(
    `${options.name}${options.smoke ? " (smoke)" : ""}: ${machine.cores} cores, ${machine.cpuModel}, Node ${machine.node}, load average ${machine.loadAverage1m}`,
  );
  const cleanup = new Cleanup();
  let output: ScenarioOutput | undefined;
  try {
    output = await body(cleanup);
  } catch (error) {
    console.error(
      `${options.name} failed: ${(error as Error).stack ?? String(error)}`,
    );
  } finally {
    await cleanup.run();
  }
  if (output === undefined) process.exit(1);
  for (const reason of output.skipped ?? []) console.log(`skipped: ${reason}`);
  const result: BenchResult = {
    scenario: options.name,
    smoke: options.smoke,
    startedAt: startedAt.toISOString(),
    durationMs: Date.now() - startedAt.getTime(),
    machine,
    settings: options.settings,
    results: output.results,
    summary: output.summary,
    skipped: output.skipped ?? [],
  };
  const file = writeResult(options.outDir, result);
  console.log(`\nwrote ${file}`);
  process.exit(0);
}
