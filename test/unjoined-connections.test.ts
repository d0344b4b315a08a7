import assert from "node:assert/strict";
import { NAMESPACE_JOIN_TIMEOUT_MS } from "../server/relay/create-relay.ts";
import { openEngine, randomBridgeId } from "./support/clients.ts";
import { startRelay, type RelayProcess } from "./support/relay-process.ts";
import { appToken } from "./support/tokens.ts";

/** Allowance for Socket.IO's timer and the close to travel, in ms. */
const SLACK_MS = 1500;

describe("a connection outside any namespace", function () {
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
  it("is closed when it leaves its namespace", async () => {
    const engine = await openEngine(relay.url);
    try {
      const token = await appToken("leaving-user", [randomBridgeId()]);
      const joined = new Promise<void>((resolve) => {
        const onPacket = (packet: { type: string; data?: unknown }): void => {
          if (
            packet.type === "message" &&
            String(packet.data).startsWith("0/app,")
          ) {
            engine.off("packet", onPacket);
            resolve();
          }
        };
        engine.on("packet", onPacket);
      });
      engine.send(`0/app,${JSON.stringify({ token })}`);
      await joined;
      const closed = new Promise<number>((resolve, reject) => {
        const startedAt = performance.now();
        const timer = setTimeout(
          () => reject(new Error("the connection stayed open")),
          SLACK_MS,
        );
        engine.once("close", () => {
          clearTimeout(timer);
          resolve(performance.now() - startedAt);
        });
      });
      engine.send("1/app,");
      assert.ok((await closed) < SLACK_MS);
    } finally {
      engine.close();
    }
  });
});
