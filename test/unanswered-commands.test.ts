import assert from "node:assert/strict";
import type { Socket } from "socket.io-client";
import type { BridgeCommandAnswer } from "../client-sdk/src/bridge-client.ts";
import type { Light, LightSetCommand } from "../client-sdk/src/protocol.ts";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  request,
  requestData,
  settle,
} from "./support/clients.ts";
import { applyLightCommand, untypedLightMap } from "./support/fake-bridge.ts";
import {
  startRelayOnRedis,
  stopRelayOnRedis,
  waitUntil,
} from "./support/faults.ts";
import type { RedisServer } from "./support/redis-server.ts";
import type { RelayProcess } from "./support/relay-process.ts";

const LIMIT = 20;

describe("unanswered commands per bridge", function () {
  this.timeout(30_000);
  let redis: RedisServer;
  let relay: RelayProcess;
  const sockets: Socket[] = [];

  before(async () => {
    ({ redis, relay } = await startRelayOnRedis({
      workers: 1,
      env: {
        UNANSWERED_COMMANDS_PER_BRIDGE: String(LIMIT),
        COMMAND_TIMEOUT_MS: "3000",
      },
    }));
  });

  after(async () => {
    for (const socket of sockets.splice(0)) socket.close();
    await stopRelayOnRedis({ relay, redis });
  });

  /**
   * Connects a bridge with light "a" that keeps every command's
   * acknowledgement without calling it, and an app; returns both with the
   * kept commands.
   */
  async function silentBridgeAndApp() {
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(relay.url, bridgeId);
    sockets.push(bridge);
    const lights = untypedLightMap("a");
    const unacknowledged: {
      command: LightSetCommand;
      ack: (answer: unknown) => void;
    }[] = [];
    bridge.on(
      "light:set",
      (command: LightSetCommand, ack: (answer: unknown) => void) => {
        unacknowledged.push({ command, ack });
      },
    );
    await requestData(bridge, "state:snapshot", {
      lights: [...lights.values()],
    });
    const app = await connectApp(relay.url, [bridgeId]);
    sockets.push(app);
    /** Acknowledges every kept command late, as a slow bridge does. */
    const acknowledgeAll = (): void => {
      for (const { command, ack } of unacknowledged.splice(0)) {
        ack(applyLightCommand(lights, command) satisfies BridgeCommandAnswer);
      }
    };
    return { bridgeId, bridge, app, unacknowledged, acknowledgeAll };
  }

  const turnOn = (app: Socket, bridgeId: string) =>
    request<{ light: Light }>(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: true } },
    });

  /** Sends LIMIT commands and waits until the bridge has received them all. */
  async function fillToLimit(
    app: Socket,
    bridgeId: string,
    unacknowledged: unknown[],
  ) {
    const waiting = Array.from({ length: LIMIT }, () => turnOn(app, bridgeId));
    await waitUntil(
      "every command",
      () => unacknowledged.length === LIMIT,
      5000,
    );
    return waiting;
  }

  const codeOf = (answer: Awaited<ReturnType<typeof turnOn>>) =>
    answer.ok ? "ok" : answer.error.code;

  it("rejects commands past the limit", async () => {
    const { bridgeId, app, unacknowledged, acknowledgeAll } =
      await silentBridgeAndApp();
    // The relay may admit concurrent requests in another order, so the
    // extra command goes once all of them have reached the bridge.
    const waiting = await fillToLimit(app, bridgeId, unacknowledged);
    const started = performance.now();
    const rejected = await turnOn(app, bridgeId);
    assert.equal(codeOf(rejected), "RATE_LIMITED");
    assert.equal(!rejected.ok && rejected.error.retryAfterMs, 1000);
    assert.ok(performance.now() - started < 500, "rejected at once");
    assert.match(
      !rejected.ok ? rejected.error.message : "",
      /not answered 20 commands on this connection/,
    );
    await settle(200);
    assert.equal(
      unacknowledged.length,
      LIMIT,
      "the rejected command was not sent",
    );

    // Past their timeout, Socket.IO keeps the callbacks for 30 s more, so
    // the bridge stays at its limit until the first of them expires.
    const timedOut = await Promise.all(waiting);
    assert.deepEqual(new Set(timedOut.map(codeOf)), new Set(["TIMEOUT"]));
    const stillFull = await turnOn(app, bridgeId);
    assert.equal(codeOf(stillFull), "RATE_LIMITED");
    const retryAfterMs = stillFull.ok ? 0 : (stillFull.error.retryAfterMs ?? 0);
    assert.ok(
      retryAfterMs > 25_000 && retryAfterMs <= 30_000,
      `retry after ${retryAfterMs} ms`,
    );

    // Late acknowledgements release the callbacks.
    acknowledgeAll();
    const next = turnOn(app, bridgeId);
    await waitUntil(
      "the next command",
      () => unacknowledged.length === 1,
      5000,
    );
    acknowledgeAll();
    assert.equal(codeOf(await next), "ok");
  });

  it("fails all on disconnect", async () => {
    const { bridgeId, bridge, app, unacknowledged } =
      await silentBridgeAndApp();
    const waiting = await fillToLimit(app, bridgeId, unacknowledged);
    const started = performance.now();
    bridge.close();
    const answers = await Promise.all(waiting);
    assert.deepEqual(new Set(answers.map(codeOf)), new Set(["BRIDGE_OFFLINE"]));
    assert.ok(performance.now() - started < 1000, "failed before the timeout");
    // One listener served them all; a listener per command passes Node's
    // limit of 10 and prints a warning.
    const warnings = relay.output.filter((line) =>
      line.includes("MaxListenersExceededWarning"),
    );
    assert.deepEqual(warnings, []);
  });
});
