import assert from "node:assert/strict";
import { once } from "node:events";
import net from "node:net";
import { StallMonitor } from "../server/relay/stall-monitor.ts";
import { sleep } from "./support/faults.ts";

const LATE_AFTER_MS = 200;

/**
 * Writes to a loopback socket, optionally blocks the loop for `stallMs`
 * right after, and returns `monitor.inputMayBeLate` as seen when the data
 * is read.
 */
async function lateWhenRead(
  monitor: StallMonitor,
  stallMs: number,
): Promise<boolean> {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  const client = net.connect(port, "127.0.0.1");
  const [peer] = (await once(server, "connection")) as [net.Socket];
  try {
    const seen = new Promise<boolean>((resolve) => {
      peer.once("data", () => resolve(monitor.inputMayBeLate));
    });
    setImmediate(() => {
      client.write("command");
      const until = performance.now() + stallMs;
      while (performance.now() < until) {
        // The process is stalled: nothing runs.
      }
    });
    return await seen;
  } finally {
    client.destroy();
    peer.destroy();
    server.close();
  }
}

describe("StallMonitor", () => {
  let monitor: StallMonitor;

  beforeEach(async () => {
    monitor = new StallMonitor(LATE_AFTER_MS);
    monitor.start();
    await sleep(150);
  });

  afterEach(() => monitor.stop());

  it("marks input read after a long stall", async () => {
    assert.equal(await lateWhenRead(monitor, LATE_AFTER_MS * 2), true);
    await sleep(20);
    assert.equal(monitor.inputMayBeLate, false, "only for that loop turn");
  });

  it("leaves input after a short stall unmarked", async () => {
    assert.equal(await lateWhenRead(monitor, LATE_AFTER_MS / 4), false);
  });
});
