/**
 * Child process that runs a fleet of SDK `BridgeClient`s against a relay,
 * so a load test's clients do not share the test runner's event loop.
 * Every bridge connects through a TCP proxy inside this process, which lets
 * the parent cut all connections at once, as a network failure or a load
 * balancer restart would. The parent starts it with `child_process.fork`
 * and drives it with the messages in `bridge-fleet.ts`.
 */
import { BridgeClient } from "../../client-sdk/src/bridge-client.ts";
import type { Light } from "../../client-sdk/src/protocol.ts";
import { simulatedBridgeId } from "../../client-sdk/simulator/simulated-bridge.ts";
import type { FleetCommand, FleetReport, FleetStats } from "./bridge-fleet.ts";
import { NetworkFaultProxy } from "./network-fault-proxy.ts";
import { bridgeToken } from "./tokens.ts";

/** Two lights per bridge keep the snapshot small, so the handshake dominates the cost. */
const LIGHTS: Light[] = [
  { id: "lamp-1", type: "light", on: { on: true } },
  {
    id: "lamp-2",
    type: "light",
    on: { on: false },
    dimming: { brightness: 40 },
  },
];

const PROGRESS_INTERVAL_MS = 1000;

function send(report: FleetReport): void {
  if (!process.connected) return;
  // A report sent while the parent stops the fleet fails with EPIPE. The
  // callback takes that error, which would otherwise end the process.
  process.send?.(report, undefined, {}, () => undefined);
}

class Fleet {
  private readonly clients: BridgeClient[] = [];
  /** Bridges whose snapshot the relay has not acknowledged since the phase began. */
  private readonly pending = new Set<number>();
  private phase = "connect";
  private readonly stats: FleetStats = {
    retries: {},
    rateLimited: 0,
    earlyRetries: 0,
    minRetryAfterMs: null,
    maxRetryAfterMs: null,
    minExtraDelayMs: null,
    maxExtraDelayMs: null,
    connectionsCut: 0,
  };

  constructor(private readonly proxyUrl: string) {}

  async start(firstIndex: number, count: number): Promise<void> {
    const tokens = await Promise.all(
      Array.from({ length: count }, (_, offset) =>
        bridgeToken(simulatedBridgeId(firstIndex + offset)),
      ),
    );
    this.beginPhase("connect", count);
    tokens.forEach((token, offset) => this.startBridge(offset, token));
  }

  /** Starts the reconnect phase and cuts every connection. */
  cut(cutProxy: () => number): void {
    this.beginPhase("reconnect", this.clients.length);
    this.stats.connectionsCut = cutProxy();
  }

  close(): void {
    for (const client of this.clients) client.close();
  }

  report(): void {
    send({
      type: "progress",
      phase: this.phase,
      pending: this.pending.size,
      stats: this.stats,
    });
  }

  private beginPhase(phase: string, count: number): void {
    this.phase = phase;
    this.pending.clear();
    for (let offset = 0; offset < count; offset += 1) this.pending.add(offset);
  }

  private startBridge(offset: number, token: string): void {
    const client = new BridgeClient({
      url: this.proxyUrl,
      token,
      getLights: () => LIGHTS,
      onCommand: (command) => ({
        ok: false,
        error: { code: "NOT_SUPPORTED", message: command.lightId },
      }),
    });
    this.clients.push(client);
    client.on("synced", () => {
      if (!this.pending.delete(offset)) return;
      if (this.pending.size === 0) {
        send({ type: "synced", phase: this.phase, at: Date.now() });
      }
    });
    client.on("retry", ({ delayMs, error }) => {
      const { retries } = this.stats;
      retries[error.code] = (retries[error.code] ?? 0) + 1;
      if (error.code !== "RATE_LIMITED") return;
      this.stats.rateLimited += 1;
      const { stats } = this;
      const retryAfterMs = error.retryAfterMs ?? 0;
      const extraMs = delayMs - retryAfterMs;
      if (extraMs < 0) stats.earlyRetries += 1;
      stats.minRetryAfterMs = Math.min(
        stats.minRetryAfterMs ?? retryAfterMs,
        retryAfterMs,
      );
      stats.maxRetryAfterMs = Math.max(
        stats.maxRetryAfterMs ?? retryAfterMs,
        retryAfterMs,
      );
      stats.minExtraDelayMs = Math.min(
        stats.minExtraDelayMs ?? extraMs,
        extraMs,
      );
      stats.maxExtraDelayMs = Math.max(
        stats.maxExtraDelayMs ?? extraMs,
        extraMs,
      );
    });
    client.on("error", ({ error }) => {
      send({
        type: "failure",
        message: `bridge ${offset}: snapshot failed: ${error.code} ${error.message}`,
      });
    });
    client.connect().catch((error: unknown) => {
      send({
        type: "failure",
        message: `bridge ${offset} stopped: ${String(error)}`,
      });
    });
  }
}

let proxy: NetworkFaultProxy | undefined;
let fleet: Fleet | undefined;
const progressTimer = setInterval(() => fleet?.report(), PROGRESS_INTERVAL_MS);

process.on("message", (message: FleetCommand) => {
  void handle(message).catch((error: unknown) => {
    send({ type: "failure", message: `fleet failed: ${String(error)}` });
  });
});
// The fleet must not outlive its parent, whatever way the parent ends.
process.on("disconnect", () => {
  clearInterval(progressTimer);
  fleet?.close();
  void proxy?.close();
  process.exit(0);
});

async function handle(message: FleetCommand): Promise<void> {
  switch (message.type) {
    case "start": {
      proxy = new NetworkFaultProxy(message.relayPort);
      const proxyPort = await proxy.listen();
      fleet = new Fleet(`http://127.0.0.1:${proxyPort}`);
      await fleet.start(message.firstIndex, message.count);
      return;
    }
    case "cut": {
      const current = proxy;
      if (fleet === undefined || current === undefined) {
        throw new Error("cut before start");
      }
      fleet.cut(() => current.cut());
      return;
    }
    case "report":
      fleet?.report();
      return;
  }
}
