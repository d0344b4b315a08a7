import assert from "node:assert/strict";
import { setInputFirstTimeout } from "../server/relay/input-first-timeout.ts";
import { readAfterStall } from "./support/loopback-stall.ts";

type StartTimeout = (onTimeout: () => void, ms: number) => void;

const TIMEOUT_MS = 20;
/** How long the loop is blocked, well past TIMEOUT_MS. */
const STALL_MS = 150;

/**
 * Races a timeout against data that reaches the kernel in time while the
 * event loop is blocked past the timeout, and returns which one the
 * process saw first.
 */
function raceAfterStall(
  startTimeout: StartTimeout,
): Promise<"answer" | "timeout"> {
  let settleFirst: (value: "answer" | "timeout") => void = () => undefined;
  return readAfterStall<"answer" | "timeout">({
    stallMs: STALL_MS,
    race: (settle) => {
      settleFirst = settle;
    },
    beforeWrite: () => startTimeout(() => settleFirst("timeout"), TIMEOUT_MS),
    onData: () => "answer",
  });
}

describe("setInputFirstTimeout", () => {
  it("lets an answer that came during a stall win over the timeout", async () => {
    // A plain timer shows that the race is real in this setup.
    assert.equal(
      await raceAfterStall((onTimeout, ms) => setTimeout(onTimeout, ms)),
      "timeout",
    );
    assert.equal(await raceAfterStall(setInputFirstTimeout), "answer");
  });

  it("times out when no answer comes", async () => {
    const timedOut = await new Promise<boolean>((resolve) => {
      setInputFirstTimeout(() => resolve(true), 10);
    });
    assert.equal(timedOut, true);
  });

  it("never calls back once cancelled, even after the timer fired", async () => {
    let called = false;
    let cancel: () => void = () => undefined;
    // Due after the timeout's timer, and in the same timers phase once the
    // loop is blocked past both, so it cancels between the timer and the
    // deferred call.
    const cancelled = new Promise<void>((resolve) =>
      setTimeout(() => {
        cancel();
        resolve();
      }, 5),
    );
    cancel = setInputFirstTimeout(() => {
      called = true;
    }, 1);
    const until = performance.now() + 20;
    while (performance.now() < until) {
      // Blocks the loop until both timers are due.
    }
    await cancelled;

    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(called, false);
  });
});
