import { connect } from "node:net";
import { MqttClient } from "mqtt";
import type { Socket } from "socket.io-client";
import type { LightSetCommand } from "../../client-sdk/src/protocol.ts";
import {
  BENCH_LIGHT,
  ask,
  openApp,
  openBridge,
  randomBridgeId,
  serverIdOf,
  type ServerKind,
} from "./clients.ts";
import { runOpenLoop, type OpenLoopStats } from "./open-loop.ts";

/**
 * Process of a pair's app relative to its bridge's: the same relay
 * process, another one, or any. Only the relay reports its
 * process, so `bare` pairs must use `any` and choose processes by URL.
 */
export type Placement = "same" | "other" | "any";

export interface PairSpec {
  bridgeUrl: string;
  appUrl: string;
  placement: Placement;
}

export interface CommandSetup {
  /** `mqtt` pairs talk to a broker at `mqtt://127.0.0.1:<port>` URLs. */
  kind: ServerKind | "mqtt";
  pairs: PairSpec[];
}

export interface CommandRun {
  rate: number;
  durationMs: number;
  drainMs: number;
}

/** Socket.IO's wait for an acknowledgement, past the servers' own 5 s command timeout. */
const CLIENT_TIMEOUT_MS = 10_000;
const MAX_PLACEMENT_ATTEMPTS = 20;

/** A bridge and an app that sends it commands, over one transport. */
interface CommandPair {
  send(sequence: number): Promise<string | null>;
  close(): void;
}

function answerCommand(command: LightSetCommand) {
  return { ok: true, data: { light: { ...BENCH_LIGHT, ...command.change } } };
}

async function openSocketIoPair(
  kind: ServerKind,
  spec: PairSpec,
): Promise<CommandPair> {
  const bridgeId = randomBridgeId();
  const bridge = await openBridge(kind, spec.bridgeUrl, bridgeId, [
    BENCH_LIGHT,
  ]);
  bridge.on(
    "light:set",
    (command: LightSetCommand, ack: (answer: unknown) => void) =>
      ack(answerCommand(command)),
  );
  const bridgeServer = spec.placement === "any" ? "" : await serverIdOf(bridge);
  let app: Socket | undefined;
  for (let attempt = 0; app === undefined; attempt += 1) {
    if (attempt === MAX_PLACEMENT_ATTEMPTS) {
      bridge.close();
      throw new Error(
        `no app connection landed on the ${spec.placement} process as its bridge after ${attempt} attempts`,
      );
    }
    const candidate = await openApp(kind, spec.appUrl, [bridgeId]);
    if (spec.placement === "any") {
      app = candidate;
      break;
    }
    const same = (await serverIdOf(candidate)) === bridgeServer;
    if (same === (spec.placement === "same")) app = candidate;
    else candidate.close();
  }
  const connectedApp = app;
  return {
    async send(sequence) {
      const answer = await ask(
        connectedApp,
        "light:set",
        {
          bridgeId,
          lightId: BENCH_LIGHT.id,
          change: { dimming: { brightness: sequence % 101 } },
        },
        CLIENT_TIMEOUT_MS,
      ).catch(() => null);
      if (answer === null) return "CLIENT_TIMEOUT";
      return answer.ok ? null : answer.error.code;
    },
    close() {
      connectedApp.close();
      bridge.close();
    },
  };
}

/** Connects an MQTT 3.1.1 client with Nagle's algorithm off on its TCP socket. */
async function openMqttClient(url: string): Promise<MqttClient> {
  const { hostname, port } = new URL(url);
  const client = new MqttClient(
    () => {
      const socket = connect({ host: hostname, port: Number(port) });
      socket.setNoDelay(true);
      return socket;
    },
    {
      clientId: `bench-${randomBridgeId()}`,
      protocolVersion: 4,
      clean: true,
      keepalive: 60,
      reconnectPeriod: 0,
    },
  );
  await new Promise<void>((resolve, reject) => {
    client.once("connect", () => resolve());
    client.once("error", reject);
  });
  return client;
}

/**
 * A request/reply round trip over MQTT at QoS 0: the app publishes a
 * command to `bench/<bridge>/req`, the bridge replies on
 * `bench/<bridge>/res`, and a sequence number matches the two.
 */
async function openMqttPair(spec: PairSpec): Promise<CommandPair> {
  const bridgeId = randomBridgeId();
  const requestTopic = `bench/${bridgeId}/req`;
  const replyTopic = `bench/${bridgeId}/res`;
  const bridge = await openMqttClient(spec.bridgeUrl);
  const app = await openMqttClient(spec.appUrl);
  await bridge.subscribeAsync(requestTopic, { qos: 0 });
  await app.subscribeAsync(replyTopic, { qos: 0 });
  bridge.on("message", (_topic, payload) => {
    const request = JSON.parse(payload.toString()) as LightSetCommand & {
      sequence: number;
    };
    const answer = { sequence: request.sequence, ...answerCommand(request) };
    bridge.publish(replyTopic, JSON.stringify(answer), { qos: 0 });
  });
  const waiting = new Map<number, (code: string | null) => void>();
  app.on("message", (_topic, payload) => {
    const answer = JSON.parse(payload.toString()) as {
      sequence: number;
      ok: boolean;
    };
    const settle = waiting.get(answer.sequence);
    waiting.delete(answer.sequence);
    settle?.(answer.ok ? null : "BRIDGE_ERROR");
  });
  return {
    send(sequence) {
      return new Promise((resolve) => {
        const timer = setTimeout(() => {
          waiting.delete(sequence);
          resolve("CLIENT_TIMEOUT");
        }, CLIENT_TIMEOUT_MS);
        waiting.set(sequence, (code) => {
          clearTimeout(timer);
          resolve(code);
        });
        const command = {
          sequence,
          bridgeId,
          commandId: String(sequence),
          lightId: BENCH_LIGHT.id,
          change: { dimming: { brightness: sequence % 101 } },
        };
        app.publish(requestTopic, JSON.stringify(command), { qos: 0 });
      });
    },
    close() {
      app.end(true);
      bridge.end(true);
    },
  };
}

/** Command pairs of one agent, and the open-loop runs over them. */
export class CommandLoad {
  private pairs: CommandPair[] = [];

  async setup(setup: CommandSetup): Promise<{ pairs: number }> {
    this.close();
    for (const spec of setup.pairs) {
      this.pairs.push(
        setup.kind === "mqtt"
          ? await openMqttPair(spec)
          : await openSocketIoPair(setup.kind, spec),
      );
    }
    return { pairs: this.pairs.length };
  }

  /** Spreads commands over the pairs in turn at `rate` per second. */
  run(run: CommandRun): Promise<OpenLoopStats> {
    const pairs = this.pairs;
    if (pairs.length === 0)
      throw new Error("commands.run called before commands.setup");
    return runOpenLoop(run.rate, run.durationMs, run.drainMs, (sequence) =>
      pairs[sequence % pairs.length]!.send(sequence),
    );
  }

  close(): void {
    for (const pair of this.pairs) pair.close();
    this.pairs = [];
  }
}
