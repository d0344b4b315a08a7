import assert from "node:assert/strict";
import cluster, { type Worker } from "node:cluster";
import { once } from "node:events";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import {
  sendToPrimary,
  sendToWorker,
  watchWorkerErrors,
} from "../server/cluster/worker-ipc.ts";
import { capturingLogger } from "./support/capturing-logger.ts";

const IDLE_WORKER = fileURLToPath(
  new URL("./support/idle-worker.mjs", import.meta.url),
);
const SENDING_WORKER = fileURLToPath(
  new URL("./support/sending-worker.ts", import.meta.url),
);

/**
 * Blocks the event loop until process `pid` is a zombie, so that this
 * process has not yet read the end of the worker's IPC channel. The main
 * thread of a killed process can turn zombie while its other threads
 * still hold its files, so this also waits for those threads. Reads
 * /proc, so Linux only.
 */
function blockUntilZombie(pid: number): void {
  const pause = new Int32Array(new SharedArrayBuffer(4));
  const deadline = Date.now() + 2000;
  while (Date.now() < deadline) {
    const status = readFileSync(`/proc/${pid}/status`, "utf8");
    const zombie = /^State:\s+Z/m.test(status);
    const threads = Number(/^Threads:\s+(\d+)/m.exec(status)?.[1]);
    if (zombie && threads === 1) return;
    Atomics.wait(pause, 0, 0, 5);
  }
  throw new Error(`process ${pid} did not exit within 2000 ms of SIGKILL`);
}

/** Forks an idle cluster worker, watched by `watchWorkerErrors`, and waits until it runs. */
async function forkIdleWorker(
  logger: ReturnType<typeof capturingLogger>["logger"],
): Promise<Worker> {
  cluster.setupPrimary({
    exec: IDLE_WORKER,
    execArgv: [],
    serialization: "advanced",
    silent: true,
  });
  const worker = cluster.fork();
  watchWorkerErrors(worker, logger);
  await once(worker, "online");
  return worker;
}

/**
 * Resolves when `worker` exits. Unlike `events.once`, this adds no 'error'
 * listener, which would turn the error under test into a rejection.
 */
function exitOf(worker: Worker): Promise<void> {
  return new Promise((resolve) => worker.once("exit", () => resolve()));
}

/**
 * Kills `worker` with SIGKILL and returns once it has exited, before this
 * process reads the end of its IPC channel.
 */
function killUnnoticed(worker: Worker): void {
  worker.process.kill("SIGKILL");
  blockUntilZombie(worker.process.pid!);
  assert.ok(worker.isConnected(), "the IPC channel still looks open");
}

describe("worker IPC errors", function () {
  this.timeout(10_000);

  it("logs a send without callback to a killed worker", async () => {
    const { logger, lines } = capturingLogger();
    const worker = await forkIdleWorker(logger);
    const exited = exitOf(worker);
    killUnnoticed(worker);
    // As @socket.io/sticky 2.0.1 sends `sticky:abort`: no callback, so the
    // error is an 'error' event on the worker.
    worker.send({ type: "sticky:abort", connectionId: "test" });
    await exited;

    const warnings = lines.filter((line) => line.level === 40);
    assert.equal(warnings.length, 1, JSON.stringify(lines));
    const [warning] = warnings;
    assert.equal(warning!.workerId, worker.id);
    assert.equal(warning!.workerPid, worker.process.pid);
    assert.equal((warning!.err as { code?: string }).code, "EPIPE");
  });

  it("logs a failed sendToWorker and calls onFailure", async () => {
    const { logger, lines } = capturingLogger();
    const worker = await forkIdleWorker(logger);
    const exited = exitOf(worker);
    killUnnoticed(worker);
    const failures: Error[] = [];
    sendToWorker(worker, "relay:ping", logger, (error) => failures.push(error));
    await exited;

    assert.equal(failures.length, 1, "onFailure calls");
    assert.equal((failures[0] as NodeJS.ErrnoException).code, "EPIPE");
    const warnings = lines.filter((line) => line.level === 40);
    assert.equal(warnings.length, 1, JSON.stringify(lines));
    assert.equal(warnings[0]!.messageType, "relay:ping");
    assert.equal(warnings[0]!.workerId, worker.id);
  });

  it("logs repeated failures once, and their count at exit", async () => {
    const { logger, lines } = capturingLogger();
    const worker = await forkIdleWorker(logger);
    const exited = exitOf(worker);
    killUnnoticed(worker);
    sendToWorker(worker, "relay:ping", logger);
    sendToWorker(worker, { type: "relay:bound", sid: "test" }, logger);
    worker.send("relay:shutdown");
    await exited;

    const warnings = lines.filter((line) => line.level === 40);
    assert.equal(warnings.length, 2, JSON.stringify(lines));
    assert.equal(warnings[0]!.messageType, "relay:ping");
    assert.equal(warnings[1]!.failures, 3);
  });

  it("skips a worker whose channel is closed", async () => {
    const { logger, lines } = capturingLogger();
    const worker = await forkIdleWorker(logger);
    const exited = exitOf(worker);
    worker.process.kill("SIGKILL");
    await exited;
    assert.equal(worker.isConnected(), false);
    const failures: Error[] = [];
    sendToWorker(worker, "relay:ping", logger, (error) => failures.push(error));
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(failures, []);
    assert.deepEqual(lines, []);
  });
});

describe("IPC errors in a worker", function () {
  this.timeout(20_000);

  it("logs sends after the primary disconnects", async () => {
    cluster.setupPrimary({
      exec: SENDING_WORKER,
      execArgv: ["--import", "tsx"],
      serialization: "advanced",
      silent: true,
    });
    const worker = cluster.fork();
    const lines: Record<string, unknown>[] = [];
    const stderr: string[] = [];
    createInterface({ input: worker.process.stdout! }).on("line", (text) =>
      lines.push(JSON.parse(text) as Record<string, unknown>),
    );
    createInterface({ input: worker.process.stderr! }).on("line", (text) =>
      stderr.push(text),
    );
    const exited = new Promise<number | null>((resolve) =>
      worker.once("exit", (code: number | null) => resolve(code)),
    );
    await new Promise<void>((resolve) =>
      worker.on("message", (message: unknown) => {
        if (message === "test:listening") resolve();
      }),
    );
    worker.disconnect();
    const code = await exited;

    const dump = JSON.stringify({ lines, stderr });
    assert.equal(code, 0, dump);
    const warnings = lines.filter((line) => line.level === 40);
    assert.equal(warnings.length, 1, dump);
    const error = warnings[0]!.err as { code?: string };
    assert.equal(error.code, "ERR_IPC_CHANNEL_CLOSED");
    const sent = lines.find((line) => line.msg === "sent after disconnect");
    assert.equal(sent?.connected, false, dump);
    assert.equal(sent?.sent, false, dump);
    assert.ok(
      lines.some((line) => line.msg === "still running"),
      `the worker did not run on: ${dump}`,
    );
  });

  it("skips a process without a channel", () => {
    const { logger, lines } = capturingLogger();
    const sent = sendToPrimary("relay:ping", logger);
    assert.equal(sent, process.send !== undefined && process.connected);
    assert.deepEqual(lines, []);
  });
});
