/**
 * Runs simulated bridges on the SDK's BridgeClient: each answers
 * `light:set` by applying the change and, now and then, switches a light
 * itself and reports it, as a wall switch would. Shared by the simulator
 * and the dashboard demo, which differ only in what they log.
 */
import { BridgeClient } from "../src/bridge-client.ts";
import { isFinalState } from "../src/connection.ts";
import { RelayClientError } from "../src/errors.ts";
import {
  SimulatedBridge,
  simulatedBridgeId,
  type LightDocument,
} from "./simulated-bridge.ts";

/** Receives one line about a bridge; `error` marks failures. */
export type FleetLog = (
  bridgeId: string,
  message: string,
  level: "info" | "error",
) => void;

export interface RunningBridge {
  client: BridgeClient;
  stopWallSwitch: () => void;
}

export interface StartBridgeOptions {
  url: string;
  token: string;
  lights: LightDocument[];
  /** Mean time between the bridge's own switches, in ms; 0 turns them off. */
  changeIntervalMs: number;
  random: () => number;
  log: FleetLog;
}

export function describeError(error: unknown): string {
  if (error instanceof RelayClientError) {
    return `${error.code}: ${error.message}`;
  }
  return error instanceof Error ? error.message : String(error);
}

/** Connects simulated bridge number `index` and starts its wall switch. */
export function startBridge(
  index: number,
  options: StartBridgeOptions,
): RunningBridge {
  const bridgeId = simulatedBridgeId(index);
  const bridge = new SimulatedBridge(bridgeId, options.lights);
  const { log } = options;
  const client = new BridgeClient({
    url: options.url,
    token: options.token,
    getLights: () => bridge.documents(),
    onCommand: (command) => {
      const answer = bridge.applyCommand(command);
      const outcome = answer.ok
        ? "ok"
        : `${answer.error.code}: ${answer.error.message}`;
      log(
        bridgeId,
        `light:set ${command.commandId} for ${command.lightId}: ${JSON.stringify(command.change)}, answered ${outcome}`,
        "info",
      );
      return answer;
    },
  });
  client.on("error", ({ operation, error }) => {
    log(bridgeId, `${operation} failed: ${describeError(error)}`, "error");
  });
  const stopWallSwitch = startWallSwitch(bridge, client, options);
  // connect() rejects only when the client stops for good; its state event reports why.
  client.connect().catch(() => undefined);
  return { client, stopWallSwitch };
}

/** Toggles a random light now and then and reports it; returns a function that stops it. */
function startWallSwitch(
  bridge: SimulatedBridge,
  client: BridgeClient,
  options: StartBridgeOptions,
): () => void {
  const { changeIntervalMs, random } = options;
  if (changeIntervalMs === 0) return () => undefined;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const schedule = () => {
    const delayMs = changeIntervalMs * (0.5 + random());
    timer = setTimeout(() => {
      void switchLight(bridge, client, options).finally(schedule);
    }, delayMs);
  };
  schedule();
  return () => clearTimeout(timer);
}

async function switchLight(
  bridge: SimulatedBridge,
  client: BridgeClient,
  { random, log }: StartBridgeOptions,
): Promise<void> {
  if (isFinalState(client.state)) return;
  const change = bridge.toggleRandomLight(random);
  const onOff = change.on?.on ? "on" : "off";
  try {
    const { version } = await client.reportChanges([change]);
    log(
      bridge.bridgeId,
      `switched ${change.id} ${onOff}, reported at version ${version}`,
      "info",
    );
  } catch (error) {
    log(
      bridge.bridgeId,
      `switched ${change.id} ${onOff}, report failed (${describeError(error)}); the next snapshot carries it`,
      "error",
    );
  }
}
