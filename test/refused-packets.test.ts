import assert from "node:assert/strict";
import {
  connectApp,
  connectBridge,
  openEngine,
  randomBridgeId,
  requestData,
} from "./support/clients.ts";
import { light } from "./support/fixtures.ts";
import { startRelay, type RelayProcess } from "./support/relay-process.ts";

/** Time within which the relay must close a connection that sent binary. */
const CLOSE_BOUND_MS = 1000;

/** Resolves with the ms until `emitter` emits `event`, or rejects after `timeoutMs`. */
function timeUntil(
  emitter: { once(event: string, listener: () => void): unknown },
  event: string,
  timeoutMs: number,
): Promise<number> {
  const startedAt = performance.now();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error(`no ${event} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    emitter.once(event, () => {
      clearTimeout(timer);
      resolve(Math.round(performance.now() - startedAt));
    });
  });
}

describe("binary attachments", function () {
  this.timeout(30_000);
  let relay: RelayProcess;

  before(async () => {
    relay = await startRelay();
  });
  after(async () => relay?.stop());

  it("close a connection without a token", async () => {
    const engine = await openEngine(relay.url);
    try {
      // A binary event for /app that announces 10 attachments, sent before
      // joining the namespace: the stock parser waits for the attachments.
      const closed = timeUntil(engine, "close", CLOSE_BOUND_MS * 5);
      engine.send('510-/app,["bridge:list",{"_placeholder":true,"num":0}]');
      assert.ok((await closed) <= CLOSE_BOUND_MS);
    } finally {
      engine.close();
    }
  });

  it("close an app that sends one", async () => {
    const app = await connectApp(relay.url, [randomBridgeId()]);
    try {
      const disconnected = timeUntil(app, "disconnect", CLOSE_BOUND_MS * 5);
      app.emit("bridge:list", { blob: Buffer.alloc(1024) }, () => undefined);
      assert.ok((await disconnected) <= CLOSE_BOUND_MS);
    } finally {
      app.close();
    }
  });

  it("leave other connections serving", async () => {
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(relay.url, bridgeId);
    const sender = await connectApp(relay.url, [bridgeId]);
    try {
      const disconnected = timeUntil(sender, "disconnect", CLOSE_BOUND_MS * 5);
      sender.emit("bridge:list", Buffer.alloc(16), () => undefined);
      await disconnected;
      const { version } = await requestData<{ version: number }>(
        bridge,
        "state:snapshot",
        { lights: [light("a")] },
      );
      assert.equal(version, 1);
    } finally {
      bridge.close();
      sender.close();
    }
  });
});
