import {
  createServer,
  connect,
  type Server,
  type Socket as TcpSocket,
} from "node:net";
import type { Socket } from "socket.io-client";
import { BridgeClient } from "../../client-sdk/src/bridge-client.ts";
import type { Light } from "../../client-sdk/src/protocol.ts";
import { bridgeToken } from "../../test/support/tokens.ts";
import {
  forEachLimited,
  openBridge,
  randomBridgeId,
  type ServerKind,
} from "./clients.ts";

/** Two lights per bridge, so a snapshot is small and a connection's cost dominates. */
const FLEET_LIGHTS: Light[] = [
  { id: "lamp-1", type: "light", on: { on: true } },
  {
    id: "lamp-2",
    type: "light",
    on: { on: false },
    dimming: { brightness: 40 },
  },
];

export interface IdleFleetConnect {
  kind: ServerKind;
  /** Bridges go to these URLs in turn. */
  urls: string[];
  count: number;
  /** Loopback source addresses; each takes an equal share of the bridges. */
  localAddresses: string[];
  concurrency: number;
}

export interface FleetConnectResult {
  connected: number;
  failed: Record<string, number>;
  durationMs: number;
}

function countError(counts: Record<string, number>, error: unknown): void {
  const code =
    /^([A-Z_]+):/.exec((error as Error).message)?.[1] ??
    (error as Error).message;
  counts[code] = (counts[code] ?? 0) + 1;
}

/** Idle bridges that connect, send one snapshot and stay connected. */
export class IdleFleet {
  private readonly sockets: Socket[] = [];
  /** Bridges assigned a URL so far, so that later calls continue the rotation. */
  private assigned = 0;

  /** Adds `count` bridges to the fleet. */
  async connect(request: IdleFleetConnect): Promise<FleetConnectResult> {
    const started = performance.now();
    const failed: Record<string, number> = {};
    const perAddress = Math.ceil(request.count / request.localAddresses.length);
    const indexes = Array.from({ length: request.count }, (_, index) => index);
    await forEachLimited(indexes, request.concurrency, async (index) => {
      const url = request.urls[this.assigned++ % request.urls.length]!;
      const localAddress =
        request.localAddresses[Math.floor(index / perAddress)]!;
      try {
        const socket = await openBridge(
          request.kind,
          url,
          randomBridgeId(),
          FLEET_LIGHTS,
          {
            localAddress,
          },
        );
        this.sockets.push(socket);
      } catch (error) {
        countError(failed, error);
      }
    });
    return {
      connected: this.sockets.length,
      failed,
      durationMs: Math.round(performance.now() - started),
    };
  }

  close(): void {
    for (const socket of this.sockets) socket.close();
    this.sockets.length = 0;
  }
}

/** Forwards connections to the relay, so that `cut()` can drop them all at once like a network failure. */
class CuttableProxy {
  private readonly server: Server;
  private readonly connections = new Set<TcpSocket>();

  constructor(targetPort: number) {
    this.server = createServer((client) => {
      const upstream = connect({ host: "127.0.0.1", port: targetPort });
      for (const socket of [client, upstream]) {
        socket.setNoDelay(true);
        this.connections.add(socket);
        socket.on("error", () => socket.destroy());
        socket.once("close", () => {
          this.connections.delete(socket);
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream);
      upstream.pipe(client);
    });
  }

  async listen(): Promise<number> {
    await new Promise<void>((resolve) =>
      this.server.listen(0, "127.0.0.1", 4096, resolve),
    );
    const address = this.server.address();
    if (typeof address !== "object" || address === null)
      throw new Error("proxy has no TCP address");
    return address.port;
  }

  /** Destroys every open connection and returns how many there were. */
  cut(): number {
    const sockets = [...this.connections];
    for (const socket of sockets) socket.destroy();
    return sockets.length;
  }

  close(): void {
    this.cut();
    this.server.close();
  }
}

export interface StormFleetStart {
  relayPort: number;
  count: number;
  timeoutMs: number;
}

/** Outcome of one phase: the first connect, or the reconnect after a cut. */
export interface StormPhaseResult {
  bridges: number;
  synced: number;
  /** Time from the phase's start until the last bridge synced, in ms. */
  allSyncedMs: number | null;
  /** Time from the phase's start until each bridge synced, in ms, for the bridges that did. */
  syncTimesMs: number[];
  /** Reconnect attempts the SDK scheduled, by the error code that caused them. */
  retries: Record<string, number>;
  /** Snapshots the relay rejected, by error code. */
  snapshotErrors: Record<string, number>;
  /** Start of the phase, in ms since the epoch, to align several agents. */
  startedAt: number;
}

/**
 * Bridges running the SDK's BridgeClient (backoff with full jitter, a
 * snapshot after every reconnect) behind a proxy that can cut them all.
 */
export class StormFleet {
  private proxy: CuttableProxy | undefined;
  private clients: BridgeClient[] = [];
  private phaseStart = 0;
  private syncTimes: (number | undefined)[] = [];
  private retries: Record<string, number> = {};
  private snapshotErrors: Record<string, number> = {};
  private onAllSynced: (() => void) | undefined;
  private pending = 0;

  async start(request: StormFleetStart): Promise<StormPhaseResult> {
    this.proxy = new CuttableProxy(request.relayPort);
    const url = `http://127.0.0.1:${await this.proxy.listen()}`;
    const tokens = await Promise.all(
      Array.from({ length: request.count }, () =>
        bridgeToken(randomBridgeId()),
      ),
    );
    this.beginPhase(request.count);
    tokens.forEach((token, index) => this.startClient(url, token, index));
    return this.finishPhase(request.timeoutMs);
  }

  /** Cuts every connection and measures until every bridge has synced again. */
  cut(request: { timeoutMs: number }): Promise<StormPhaseResult> {
    if (this.proxy === undefined)
      throw new Error("storm.cut called before storm.start");
    this.beginPhase(this.clients.length);
    this.proxy.cut();
    return this.finishPhase(request.timeoutMs);
  }

  close(): void {
    for (const client of this.clients) client.close();
    this.clients = [];
    this.proxy?.close();
  }

  private beginPhase(count: number): void {
    this.phaseStart = Date.now();
    this.syncTimes = new Array<number | undefined>(count).fill(undefined);
    this.pending = count;
    this.retries = {};
    this.snapshotErrors = {};
  }

  private async finishPhase(timeoutMs: number): Promise<StormPhaseResult> {
    if (this.pending > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, timeoutMs);
        this.onAllSynced = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
    this.onAllSynced = undefined;
    const times = this.syncTimes.filter(
      (time): time is number => time !== undefined,
    );
    return {
      bridges: this.syncTimes.length,
      synced: times.length,
      allSyncedMs: this.pending === 0 ? Math.max(0, ...times) : null,
      syncTimesMs: times.map((time) => Math.round(time)),
      retries: this.retries,
      snapshotErrors: this.snapshotErrors,
      startedAt: this.phaseStart,
    };
  }

  private startClient(url: string, token: string, index: number): void {
    const client = new BridgeClient({
      url,
      token,
      getLights: () => FLEET_LIGHTS,
      onCommand: (command) => ({
        ok: false,
        error: { code: "NOT_SUPPORTED", message: `light ${command.lightId}` },
      }),
    });
    this.clients.push(client);
    client.on("synced", () => {
      if (this.syncTimes[index] !== undefined) return;
      this.syncTimes[index] = Date.now() - this.phaseStart;
      this.pending -= 1;
      if (this.pending === 0) this.onAllSynced?.();
    });
    client.on("retry", ({ error }) => {
      this.retries[error.code] = (this.retries[error.code] ?? 0) + 1;
    });
    client.on("error", ({ error }) => {
      this.snapshotErrors[error.code] =
        (this.snapshotErrors[error.code] ?? 0) + 1;
    });
    client.connect().catch((error: unknown) => {
      countError(this.snapshotErrors, error);
    });
  }
}
