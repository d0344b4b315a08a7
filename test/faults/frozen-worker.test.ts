import assert from "node:assert/strict";
import {
  isAlive,
  printFigure,
  readinessByWorker,
  sleep,
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
  workersReadyGauge,
} from "../support/faults.ts";
import type { RedisServer } from "../support/redis-server.ts";
import type { RelayProcess } from "../support/relay-process.ts";

const UNRESPONSIVE_MS = 500;

/** Sends `count` readiness probes, each on a new connection, and returns how many answered within 1 s. */
async function answeredProbes(url: string, count: number): Promise<number> {
  const results = await Promise.all(
    Array.from({ length: count }, async () => {
      try {
        const response = await fetch(`${url}/readyz`, {
          signal: AbortSignal.timeout(1000),
          headers: { connection: "close" },
        });
        return response.status === 200;
      } catch {
        return false;
      }
    }),
  );
  return results.filter(Boolean).length;
}

describe("fault: a worker freezes", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let relay: RelayProcess;

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({
      workers: 2,
      env: { WORKER_UNRESPONSIVE_MS: String(UNRESPONSIVE_MS) },
    }));
  });

  after(async () => {
    for (const { pid } of relay.workers()) {
      try {
        process.kill(pid, "SIGCONT");
      } catch {
        // Already gone.
      }
    }
    await stopRelayOnRedis({ relay, redis });
  });

  it("keeps new connections off it, then admits it again", async () => {
    const [frozen] = relay.workers();
    process.kill(frozen!.pid, "SIGSTOP");
    const stoppedAt = Date.now();
    const hiddenMs = await waitUntil(
      "the frozen worker taken out of the balancer",
      () =>
        relay.logs.some(
          (line) =>
            line.msg === "worker unresponsive, taken out of the balancer",
        ),
      5000,
    );
    assert.equal(await answeredProbes(relay.url, 10), 10);
    process.kill(frozen!.pid, "SIGCONT");
    await relay.waitForLog(
      (line) => line.msg === "worker answers again, admitted to the balancer",
      5000,
    );
    assert.ok(Date.now() - stoppedAt < UNRESPONSIVE_MS * 6);
    assert.equal(await answeredProbes(relay.url, 10), 10);
    // New connections reach the admitted worker again.
    const serverIds = relay.workers().map((worker) => worker.serverId);
    const served = await readinessByWorker(relay.url, serverIds);
    assert.deepEqual(
      serverIds.map((serverId) => served.get(serverId)),
      [200, 200],
    );
    assert.equal(await workersReadyGauge(relay.url), 2);
    printFigure(
      `frozen worker: out of the balancer ${hiddenMs} ms after SIGSTOP (threshold ${UNRESPONSIVE_MS} ms)`,
    );
  });

  it("keeps the last responsive worker", async () => {
    const pids = relay.workers().map((worker) => worker.pid);
    assert.equal(pids.length, 2);
    const logsBefore = relay.logs.length;

    for (const pid of pids) process.kill(pid, "SIGSTOP");
    await relay.waitForLog(
      (line) =>
        line.msg ===
        "worker unresponsive, kept in the balancer because no other worker responds",
      5000,
    );
    // The first worker found silent may still see the other's recent
    // response and leave the balancer. The second never does.
    const hidden = relay.logs
      .slice(logsBefore)
      .filter(
        (line) => line.msg === "worker unresponsive, taken out of the balancer",
      );
    assert.ok(hidden.length < 2, "every worker taken out of the balancer");

    // With every worker slow, a new connection waits for the one left in
    // the balancer instead of getting 503 from an empty balancer.
    const probe = fetch(`${relay.url}/readyz`, {
      signal: AbortSignal.timeout(5000),
      headers: { connection: "close" },
    });
    await sleep(300);
    for (const pid of pids) process.kill(pid, "SIGCONT");
    const response = await probe;
    assert.equal(response.status, 200, await response.text());

    await waitUntil(
      "both workers answering probes",
      async () => (await answeredProbes(relay.url, 10)) === 10,
      5000,
    );
  });

  it("spares the workers after the primary stalls", async () => {
    const workerPids = relay.workers().map((worker) => worker.pid);
    const logsBefore = relay.logs.length;
    // The whole machine stops for longer than the kill threshold, as in a
    // paused VM. The workers stop a moment earlier, so the primary has read
    // their last answers, and it resumes first, so no answer waits for it.
    for (const pid of workerPids) process.kill(pid, "SIGSTOP");
    await sleep(UNRESPONSIVE_MS / 4);
    process.kill(relay.pid, "SIGSTOP");
    await sleep(UNRESPONSIVE_MS * 6 + 1000);
    process.kill(relay.pid, "SIGCONT");
    for (const pid of workerPids) process.kill(pid, "SIGCONT");

    await sleep(UNRESPONSIVE_MS * 2);
    const killed = relay.logs
      .slice(logsBefore)
      .filter((line) => line.msg === "worker unresponsive, killing it");
    assert.deepEqual(killed, []);
    for (const pid of workerPids) assert.ok(isAlive(pid), `worker ${pid}`);
    assert.equal(await answeredProbes(relay.url, 10), 10);
    await relay.waitForLog(
      (line) =>
        line.msg ===
        "primary was stalled, leaving that time out of worker silence",
    );
  });

  it("kills a worker that stays frozen", async () => {
    const before = relay.workers().map((worker) => worker.pid);
    const frozen = before[0]!;
    process.kill(frozen, "SIGSTOP");
    await relay.waitForLog(
      (line) =>
        line.msg === "worker unresponsive, killing it" &&
        line.workerPid === frozen,
      UNRESPONSIVE_MS * 6 + 5000,
    );
    await waitUntil(
      "a replacement worker ready",
      () => relay.workers().length > before.length,
      20_000,
    );
    await sleep(200);
    assert.equal(await answeredProbes(relay.url, 10), 10);
  });

  it("kills a frozen worker while the primary keeps stalling", async () => {
    const live = relay.workers().filter((worker) => isAlive(worker.pid));
    const frozen = live[live.length - 1]!.pid;
    process.kill(frozen, "SIGSTOP");
    // The primary stops for longer than the threshold, again and again.
    const deadline = Date.now() + UNRESPONSIVE_MS * 6 * 4;
    let killed = false;
    while (!killed && Date.now() < deadline) {
      process.kill(relay.pid, "SIGSTOP");
      await sleep(UNRESPONSIVE_MS * 1.4);
      process.kill(relay.pid, "SIGCONT");
      await sleep(UNRESPONSIVE_MS);
      killed = relay.logs.some(
        (line) =>
          line.msg === "worker unresponsive, killing it" &&
          line.workerPid === frozen,
      );
    }
    assert.ok(killed, "the frozen worker was killed");
  });
});
