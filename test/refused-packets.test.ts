import assert from "node:assert/strict";
import { MAX_TOKEN_LENGTH } from "../server/auth/verify.ts";
import { MAX_CONNECT_PACKET_LENGTH } from "../server/transport/json-only-parser.ts";
import {
  connectApp,
  connectBridge,
  connectError,
  openEngine,
  randomBridgeId,
  requestData,
} from "./support/clients.ts";
import { waitUntil } from "./support/faults.ts";
import { light } from "./support/fixtures.ts";
import { startRelay, type RelayProcess } from "./support/relay-process.ts";
import { appToken } from "./support/tokens.ts";

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

describe("packets the relay refuses", function () {
  this.timeout(30_000);
  let relay: RelayProcess;

  before(async () => {
    relay = await startRelay();
  });
  after(async () => relay?.stop());

  it("closes on binary before a join", async () => {
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

  it("closes an app that sends binary", async () => {
    const app = await connectApp(relay.url, [randomBridgeId()]);
    try {
      const disconnected = timeUntil(app, "disconnect", CLOSE_BOUND_MS * 5);
      app.emit("bridge:list", { blob: Buffer.alloc(1024) }, () => undefined);
      assert.ok((await disconnected) <= CLOSE_BOUND_MS);
    } finally {
      app.close();
    }
  });

  it("keeps other connections serving", async () => {
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
  it("closes on an unsafe acknowledgement ID", async () => {
    const engine = await openEngine(relay.url);
    try {
      const received: string[] = [];
      engine.on("packet", (packet) => {
        if (packet.type === "message") received.push(String(packet.data));
      });
      const token = await appToken("user-ack", [randomBridgeId()]);
      engine.send(`0/app,${JSON.stringify({ token })}`);
      await waitUntil(
        "the app namespace joined",
        () => received.some((data) => data.startsWith("0/app,")),
        5000,
      );

      const closed = timeUntil(engine, "close", CLOSE_BOUND_MS * 5);
      engine.send('2/app,99999999999999999999999["bridge:list",{}]');
      assert.ok((await closed) <= CLOSE_BOUND_MS);
      const acks = received.filter((data) => data.startsWith("3"));
      assert.deepEqual(acks, []);
    } finally {
      engine.close();
    }
  });

  it("acknowledges the largest safe ID", async () => {
    const app = await connectApp(relay.url, [randomBridgeId()]);
    try {
      const id = Number.MAX_SAFE_INTEGER;
      const acknowledged = new Promise<string>((resolve) => {
        app.io.engine.on("packet", (packet: { data?: unknown }) => {
          const data = String(packet.data ?? "");
          if (data.startsWith("3/app,")) resolve(data);
        });
      });
      app.io.engine.send(`2/app,${id}["bridge:list",{}]`);
      assert.match(await acknowledged, new RegExp(`^3/app,${id}\\[`));
    } finally {
      app.close();
    }
  });

  it("closes on an overlong CONNECT", async () => {
    const engine = await openEngine(relay.url);
    try {
      const closed = timeUntil(engine, "close", CLOSE_BOUND_MS * 5);
      const token = "x".repeat(MAX_CONNECT_PACKET_LENGTH);
      engine.send(`0/app,${JSON.stringify({ token })}`);
      assert.ok((await closed) <= CLOSE_BOUND_MS);
    } finally {
      engine.close();
    }
  });

  it("still checks the longest token", async () => {
    const error = await connectError(relay.url, "/app", {
      auth: { token: "x".repeat(MAX_TOKEN_LENGTH) },
    });
    assert.equal(error.data?.code, "UNAUTHORIZED");
  });
});
