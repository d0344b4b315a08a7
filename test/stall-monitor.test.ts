import assert from "node:assert/strict";
import { StallMonitor } from "../server/relay/stall-monitor.ts";
import { sleep } from "./support/faults.ts";
import {
  readAfterStall,
  readBehindStalledCallback,
} from "./support/loopback-stall.ts";

const LATE_AFTER_MS = 200;

/** Returns `monitor.inputMayBeLate` as seen by data read after a stall of `stallMs`. */
function lateWhenRead(
  monitor: StallMonitor,
  stallMs: number,
): Promise<boolean> {
  return readAfterStall({ stallMs, onData: () => monitor.inputMayBeLate });
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

  it("marks input read behind a slow callback", async () => {
    const late = await readBehindStalledCallback({
      stallMs: LATE_AFTER_MS * 2,
      onSecond: () => monitor.inputMayBeLate,
    });
    assert.equal(late, true);
  });

  it("leaves input behind a quick callback unmarked", async () => {
    const late = await readBehindStalledCallback({
      stallMs: LATE_AFTER_MS / 4,
      onSecond: () => monitor.inputMayBeLate,
    });
    assert.equal(late, false);
  });

  it("marks nothing once stopped", async () => {
    monitor.stop();
    await sleep(LATE_AFTER_MS + 150);
    assert.equal(monitor.inputMayBeLate, false);
  });
});
