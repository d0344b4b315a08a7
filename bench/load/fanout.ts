import type { Socket } from "socket.io-client";
import {
  BENCH_LIGHT,
  ask,
  askData,
  forEachLimited,
  openApp,
  openBridge,
  type ServerKind,
} from "./clients.ts";
import { runOpenLoop, type OpenLoopStats } from "./open-loop.ts";

/** Returns the current time in ms since the epoch, with sub-millisecond precision. */
function epochNow(): number {
  return performance.timeOrigin + performance.now();
}

/**
 * Returns the light name that a change carries: `t` and its scheduled
 * time in ms since the epoch, so each receiver can compute the delivery
 * latency. Processes on one machine share the clock.
 */
function stampName(scheduledAt: number): string {
  return `t${scheduledAt.toFixed(3)}`;
}

export interface DashboardsConnect {
  kind: ServerKind;
  /** Dashboards go to these URLs in turn. */
  urls: string[];
  bridgeId: string;
  count: number;
  concurrency: number;
}

interface ChangedEvent {
  lights: { metadata?: { name: string } }[];
}

/** Apps subscribed to one bridge, which time every change they receive. */
export class Dashboards {
  private readonly sockets: Socket[] = [];
  private latencies: number[] = [];

  async connect(request: DashboardsConnect): Promise<{ connected: number }> {
    const indexes = Array.from({ length: request.count }, (_, index) => index);
    await forEachLimited(indexes, request.concurrency, async (index) => {
      const url = request.urls[index % request.urls.length]!;
      const socket = await openApp(request.kind, url, [request.bridgeId]);
      socket.on("lights:changed", (event: ChangedEvent) => this.receive(event));
      await askData(socket, "bridge:subscribe", { bridgeId: request.bridgeId });
      this.sockets.push(socket);
    });
    return { connected: this.sockets.length };
  }

  /** Returns the latencies of the deliveries since the last call, in ms, and clears them. */
  collect(): { latencies: number[] } {
    const latencies = this.latencies;
    this.latencies = [];
    return { latencies };
  }

  close(): void {
    for (const socket of this.sockets) socket.close();
    this.sockets.length = 0;
    this.latencies = [];
  }

  private receive(event: ChangedEvent): void {
    const name = event.lights[0]?.metadata?.name;
    if (name === undefined || !name.startsWith("t")) return;
    this.latencies.push(epochNow() - Number(name.slice(1)));
  }
}

export interface ChangeSourceConnect {
  kind: ServerKind;
  url: string;
  bridgeId: string;
}

/** One bridge that reports light changes at a fixed rate. */
export class ChangeSource {
  private bridge: Socket | undefined;

  async connect(request: ChangeSourceConnect): Promise<{ connected: number }> {
    this.bridge = await openBridge(
      request.kind,
      request.url,
      request.bridgeId,
      [BENCH_LIGHT],
    );
    return { connected: 1 };
  }

  run(request: {
    rate: number;
    durationMs: number;
    drainMs: number;
  }): Promise<OpenLoopStats> {
    const bridge = this.bridge;
    if (bridge === undefined)
      throw new Error("changes.run called before changes.connect");
    return runOpenLoop(
      request.rate,
      request.durationMs,
      request.drainMs,
      async (_, scheduledAt) => {
        const change = {
          id: BENCH_LIGHT.id,
          metadata: { name: stampName(scheduledAt) },
        };
        const answer = await ask(bridge, "state:changed", {
          lights: [change],
        }).catch(() => null);
        if (answer === null) return "CLIENT_TIMEOUT";
        return answer.ok ? null : answer.error.code;
      },
    );
  }

  close(): void {
    this.bridge?.close();
    this.bridge = undefined;
  }
}
