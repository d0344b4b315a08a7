import assert from "node:assert/strict";
import { io, type Manager } from "socket.io-client";
import { MAX_TOKEN_LENGTH } from "../server/auth/verify.ts";
import { MAX_CONNECT_PACKET_LENGTH } from "../server/transport/json-only-parser.ts";
import {
  connectApp,
  connectBridge,
  connectError,
  openEngine,
  randomBridgeId,
  requestData,
  settle,
} from "./support/clients.ts";
import { waitUntil } from "./support/faults.ts";
import { light } from "./support/fixtures.ts";
import { startRelay, type RelayProcess } from "./support/relay-process.ts";
import { appToken } from "./support/tokens.ts";
import { VARIANTS, type Deployment } from "./support/variants.ts";

/** Time within which the relay must close a connection that sent binary. */
const CLOSE_BOUND_MS = 1000;

/**
 * Engine.IO's message limit of the relay with the default MAX_PAYLOAD_BYTES
 * of 1 MiB: twice that, plus 64 KiB.
 */
const TRANSPORT_LIMIT_BYTES = 2 * 1024 * 1024 + 64 * 1024;

/** Records the Socket.IO packets that arrive on `engine`, as strings. */
function recordMessages(engine: Manager["engine"]): string[] {
  const received: string[] = [];
  engine.on("packet", (packet) => {
    if (packet.type === "message") received.push(String(packet.data));
  });
  return received;
}

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

  it("rejects an overlong CONNECT", async () => {
    const engine = await openEngine(relay.url);
    try {
      const received = recordMessages(engine);
      const token = "x".repeat(MAX_CONNECT_PACKET_LENGTH);
      engine.send(`0/app,${JSON.stringify({ token })}`);
      await waitUntil(
        "connect_error for /app",
        () => received.some((data) => data.startsWith("4/app,")),
        5000,
      );
      const answer = received.find((data) => data.startsWith("4/app,")) ?? "";
      const error = JSON.parse(answer.slice("4/app,".length)) as {
        message: string;
        data?: { code?: string };
      };
      assert.equal(error.data?.code, "UNAUTHORIZED");
      assert.match(error.message, /^token is too long/);

      // The connection stays open for another handshake.
      const valid = await appToken("user-overlong", [randomBridgeId()]);
      engine.send(`0/app,${JSON.stringify({ token: valid })}`);
      await waitUntil(
        "the app namespace joined",
        () => received.some((data) => data.startsWith("0/app,")),
        5000,
      );
    } finally {
      engine.close();
    }
  });

  it("closes on an overlong namespace", async () => {
    const engine = await openEngine(relay.url);
    try {
      const received = recordMessages(engine);
      const closed = timeUntil(engine, "close", CLOSE_BOUND_MS * 5);
      engine.send(`0/${"n".repeat(MAX_CONNECT_PACKET_LENGTH)}`);
      assert.ok((await closed) <= CLOSE_BOUND_MS);
      assert.deepEqual(received, []);
    } finally {
      engine.close();
    }
  });

  it("rejects a token under the transport limit", async () => {
    const error = await connectError(relay.url, "/app", {
      transports: ["websocket"],
      auth: { token: "x".repeat(TRANSPORT_LIMIT_BYTES - 100) },
    });
    assert.equal(error.data?.code, "UNAUTHORIZED");
  });

  it("closes on a token over the transport limit", async () => {
    const engine = await openEngine(relay.url);
    try {
      const received = recordMessages(engine);
      const closed = timeUntil(engine, "close", CLOSE_BOUND_MS * 5);
      const token = "x".repeat(TRANSPORT_LIMIT_BYTES);
      engine.send(`0/app,${JSON.stringify({ token })}`);
      assert.ok((await closed) <= CLOSE_BOUND_MS);
      assert.deepEqual(received, []);
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

/** Token lengths over the CONNECT packet limit and under the transport's. */
const OVERLONG_TOKEN_LENGTHS = [70_000, 200_000];

for (const variant of VARIANTS) {
  describe(`overlong tokens (${variant.name})`, function () {
    this.timeout(60_000);
    let deployment: Deployment;
    let url: string;

    before(async () => {
      deployment = await variant.start();
      url = deployment.relays[0]!.url;
    });
    after(async () => deployment?.stop());

    for (const namespace of ["/app", "/bridge"] as const) {
      for (const transport of ["websocket", "polling"] as const) {
        it(`rejects on ${namespace} over ${transport}`, async () => {
          for (const length of OVERLONG_TOKEN_LENGTHS) {
            const error = await connectError(url, namespace, {
              transports: [transport],
              auth: { token: "x".repeat(length) },
            });
            assert.equal(
              error.data?.code,
              "UNAUTHORIZED",
              `token of ${length}`,
            );
            assert.match(
              error.message,
              /^token is too long/,
              `token of ${length}`,
            );
          }
        });
      }
    }

    it("stops a reconnecting client", async () => {
      const socket = io(`${url}/app`, {
        auth: { token: "x".repeat(OVERLONG_TOKEN_LENGTHS[0]!) },
        forceNew: true,
        reconnectionDelay: 100,
        reconnectionDelayMax: 100,
      });
      const errors: { data?: { code?: string } }[] = [];
      let attempts = 0;
      socket.on("connect_error", (error) => errors.push(error));
      socket.io.on("reconnect_attempt", () => (attempts += 1));
      try {
        await waitUntil("connect_error", () => errors.length > 0, 5000);
        // Time for several reconnects, had the client scheduled any.
        await settle(1000);
      } finally {
        socket.close();
      }
      assert.equal(errors.length, 1);
      assert.equal(errors[0]?.data?.code, "UNAUTHORIZED");
      assert.equal(attempts, 0);
    });

    it("still admits valid tokens", async () => {
      const bridgeId = randomBridgeId();
      const bridge = await connectBridge(url, bridgeId);
      const app = await connectApp(url, [bridgeId]);
      try {
        const { bridges } = await requestData<{
          bridges: { bridgeId: string; online: boolean }[];
        }>(app, "bridge:list", {});
        assert.deepEqual(
          bridges.map((entry) => [entry.bridgeId, entry.online]),
          [[bridgeId, true]],
        );
      } finally {
        bridge.close();
        app.close();
      }
    });
  });
}
