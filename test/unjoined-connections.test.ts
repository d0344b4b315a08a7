import assert from "node:assert/strict";
import { NAMESPACE_JOIN_TIMEOUT_MS } from "../server/relay/create-relay.ts";
import { openEngine } from "./support/clients.ts";
import { startRelay, type RelayProcess } from "./support/relay-process.ts";

/** Allowance for Socket.IO's timer and the close to travel, in ms. */
const SLACK_MS = 1500;

describe("a connection that joins no namespace", function () {
  this.timeout(NAMESPACE_JOIN_TIMEOUT_MS + 20_000);
  let relay: RelayProcess;

  before(async () => {
    relay = await startRelay();
  });
  after(async () => relay?.stop());

  it("is closed after the join timeout", async () => {
    const engine = await openEngine(relay.url);
    const openedAt = performance.now();
    try {
      await new Promise<void>((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error("the connection stayed open")),
          NAMESPACE_JOIN_TIMEOUT_MS + SLACK_MS,
        );
        engine.once("close", () => {
          clearTimeout(timer);
          resolve();
        });
      });
      const closedMs = performance.now() - openedAt;
      assert.ok(
        closedMs >= NAMESPACE_JOIN_TIMEOUT_MS - 100,
        `closed after ${Math.round(closedMs)} ms`,
      );
    } finally {
      engine.close();
    }
  });
});
