import assert from "node:assert/strict";
import { once } from "node:events";
import {
  hasExited,
  printFigure,
  sleep,
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
} from "../support/faults.ts";
import type { RedisServer } from "../support/redis-server.ts";
import type { RelayProcess } from "../support/relay-process.ts";

/** WORKER_UNRESPONSIVE_MS of the relay: the primary pings every 200 ms. */
const UNRESPONSIVE_MS = 1000;
const FATAL = 60;
const WARN = 40;

describe("fault: primary killed while a worker is stopped", function () {
  this.timeout(60_000);
  let redis: RedisServer | undefined;
  let relay: RelayProcess | undefined;
  let workerPid: number | undefined;

  after(async () => {
    if (workerPid !== undefined && !hasExited(workerPid)) {
      process.kill(workerPid, "SIGCONT");
      process.kill(workerPid, "SIGKILL");
    }
    await stopRelayOnRedis({ relay, redis });
  });

  it("logs the failed pong and exits", async () => {
    ({ redis, relay } = await startRelayOnRedis({
      workers: 1,
      env: { WORKER_UNRESPONSIVE_MS: String(UNRESPONSIVE_MS) },
    }));
    const pid = relay.workers()[0]!.pid;
    workerPid = pid;

    // The primary's pings queue up in the stopped worker's IPC channel,
    // ahead of the channel's end once the primary is killed. The resumed
    // worker reads the pings first, and its pongs fail with EPIPE.
    process.kill(pid, "SIGSTOP");
    await sleep(UNRESPONSIVE_MS);
    const primaryExited = once(relay.child, "exit");
    process.kill(relay.pid, "SIGKILL");
    await primaryExited;
    process.kill(pid, "SIGCONT");
    const exitMs = await waitUntil("worker exit", () => hasExited(pid), 10_000);

    const lines = relay.logs.filter((line) => line.pid === pid);
    const dump = JSON.stringify(lines);
    const fatal = lines.filter((line) => line.level === FATAL);
    assert.deepEqual(fatal, [], "no uncaught exception");
    const failedSends = lines.filter(
      (line) =>
        line.level === WARN &&
        line.msg.startsWith("sending a message to the primary failed"),
    );
    assert.equal(failedSends.length, 1, dump);
    assert.equal(failedSends[0]!.messageType, "relay:pong");
    const error = failedSends[0]!.err as { code?: string };
    assert.equal(error.code, "EPIPE");
    assert.ok(
      lines.some((line) => line.msg.startsWith("primary process is gone")),
      `no primary loss line: ${dump}`,
    );
    printFigure(
      `primary killed: worker exited ${exitMs} ms after SIGCONT, with one warning for its failed pong`,
    );
  });
});
