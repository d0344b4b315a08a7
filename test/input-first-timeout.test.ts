import assert from "node:assert/strict";
import { once } from "node:events";
import net from "node:net";
import { setInputFirstTimeout } from "../server/relay/input-first-timeout.ts";

type StartTimeout = (onTimeout: () => void, ms: number) => void;

const TIMEOUT_MS = 20;
/** How long the loop is blocked, well past TIMEOUT_MS. */
const STALL_MS = 150;

/**
 * Races a timeout against an answer that reaches the kernel in time while
 * the event loop is blocked past the timeout, and returns which one the
 * process saw first.
 */
async function raceAfterStall(
  startTimeout: StartTimeout,
): Promise<"answer" | "timeout"> {
  const server = net.createServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as net.AddressInfo;
  const client = net.connect(port, "127.0.0.1");
  const [peer] = (await once(server, "connection")) as [net.Socket];
  try {
    return await new Promise((resolve) => {
      let first: "answer" | "timeout" | undefined;
      const see = (event: "answer" | "timeout"): void => {
        first ??= event;
        resolve(first);
      };
      peer.once("data", () => see("answer"));
      // Blocking from the check phase puts the timers phase, not the poll
      // phase, first when the loop goes on.
      setImmediate(() => {
        startTimeout(() => see("timeout"), TIMEOUT_MS);
        client.write("answer");
        const until = performance.now() + STALL_MS;
        while (performance.now() < until) {
          // The process is stopped: nothing runs.
        }
      });
    });
  } finally {
    client.destroy();
    peer.destroy();
    server.close();
  }
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
    const cancel = setInputFirstTimeout(() => {
      called = true;
    }, 5);
    // Cancels between the timer and the deferred call.
    await new Promise<void>((resolve) =>
      setTimeout(() => {
        cancel();
        resolve();
      }, 5),
    );
    await new Promise((resolve) => setTimeout(resolve, 30));
    assert.equal(called, false);
  });
});
