/**
 * Bridge simulator: runs N BridgeClients against a relay, each with the
 * lights of a real Hue bridge's CLIP v2 resource dump. Every bridge answers
 * `light:set` by applying the change, and now and then switches a light
 * itself, as a wall switch would, and reports it.
 *
 *   npm run simulate -- --url http://127.0.0.1:8080 --bridges 3
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { ConfigError, loadConfig } from "../../server/config.ts";
import { resolveSecret, secretFileWarning } from "../../server/auth/secret.ts";
import {
  signBridgeToken,
  type TokenIssuerOptions,
} from "../../server/auth/token-signing.ts";
import type { BridgeClient } from "../src/bridge-client.ts";
import { isFinalState } from "../src/connection.ts";
import { describeError, startBridge, type RunningBridge } from "./fleet.ts";
import {
  MAX_SIMULATED_BRIDGES,
  createRandom,
  loadFixtureLights,
  simulatedBridgeId,
} from "./simulated-bridge.ts";
import { parseInteger, UsageError } from "./command-line.ts";

const USAGE = `Usage: npm run simulate -- [options]

Runs simulated Hue bridges against a relay, with tokens signed by the
relay's HS256 secret (AUTH_SECRET, or the development secret file).

Options:
  --url <url>                relay origin (default: http://127.0.0.1:8080)
  --bridges <n>              number of bridges, 1 to ${MAX_SIMULATED_BRIDGES} (default: 1)
  --change-interval-ms <ms>  mean time between a bridge's own light switches;
                             each wait is random within +-50 % (default: 15000,
                             0 turns them off)
  --seed <n>                 seed of the random choices, 0 to 4294967295
                             (default: random, printed at start)
  -h, --help                 print this help`;

/** Most app-token bridge IDs printed in the start hint. */
const MAX_HINT_BRIDGES = 10;

interface SimulatorOptions {
  url: string;
  bridges: number;
  changeIntervalMs: number;
  seed: number;
}

function parseOptions(argv: string[]): SimulatorOptions | "help" {
  const { values } = parseArgs({
    args: argv,
    options: {
      url: { type: "string", default: "http://127.0.0.1:8080" },
      bridges: { type: "string", default: "1" },
      "change-interval-ms": { type: "string", default: "15000" },
      seed: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  const randomSeed = Math.floor(Math.random() * 0x100000000);
  return {
    url: parseUrl(values.url),
    bridges: parseInteger(
      "--bridges",
      values.bridges,
      1,
      MAX_SIMULATED_BRIDGES,
    ),
    changeIntervalMs: parseInteger(
      "--change-interval-ms",
      values["change-interval-ms"],
      0,
      24 * 60 * 60 * 1000,
    ),
    seed:
      values.seed === undefined
        ? randomSeed
        : parseInteger("--seed", values.seed, 0, 0xffffffff),
  };
}

function parseUrl(value: string): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new UsageError(`invalid --url ${JSON.stringify(value)}: not a URL`);
  }
  if (url.protocol !== "http:" && url.protocol !== "https:") {
    throw new UsageError(
      `invalid --url ${JSON.stringify(value)}: expected http:// or https://`,
    );
  }
  return url.origin;
}

function log(bridgeId: string, message: string): void {
  console.log(`${new Date().toISOString()} ${bridgeId} ${message}`);
}

/** Loads the relay's signing secret and claims, or throws a ConfigError. */
function loadSigning(): { secret: string; issuer: TokenIssuerOptions } {
  const config = loadConfig();
  const resolved = resolveSecret(config);
  const { secret } = resolved;
  const warning = secretFileWarning(resolved);
  if (warning !== undefined) console.error(warning);
  if (secret === undefined) {
    throw new ConfigError(
      "no HS256 secret available: the relay is configured with AUTH_PUBLIC_KEY and no AUTH_SECRET, " +
        "so the simulator cannot sign bridge tokens; set AUTH_SECRET for both",
    );
  }
  const { issuer, audience } = config.auth;
  return { secret, issuer: { issuer, audience } };
}

function printStartHint(options: SimulatorOptions, bridgeIds: string[]): void {
  const hintedIds = bridgeIds.slice(0, MAX_HINT_BRIDGES);
  const more =
    bridgeIds.length > hintedIds.length
      ? ` (first ${hintedIds.length} of ${bridgeIds.length})`
      : "";
  const interval =
    options.changeIntervalMs === 0
      ? "off"
      : `about every ${options.changeIntervalMs} ms`;
  console.log(
    `simulating ${bridgeIds.length} bridge(s) against ${options.url}, ` +
      `seed ${options.seed}, wall-switch changes ${interval}`,
  );
  console.log(`app token for these bridges${more}:`);
  console.log(
    `  npm run token -- app demo-user --bridges ${hintedIds.join(",")} --scope "read control"`,
  );
}

/** Logs a client's connection events; retries only at attempts 1, 2, 4, 8 and so on. */
function logClientEvents(client: BridgeClient, bridgeId: string): void {
  client.on("state", ({ state, error }) => {
    if (state === "connected") log(bridgeId, "connected");
    if (state === "unauthorized") {
      log(
        bridgeId,
        `handshake rejected, stopped (${describeError(error)}); ` +
          "check that the relay uses the same AUTH_SECRET or secret file",
      );
    }
  });
  client.on("retry", ({ attempt, delayMs, error }) => {
    if ((attempt & (attempt - 1)) !== 0) return;
    const seconds = (delayMs / 1000).toFixed(1);
    log(
      bridgeId,
      `retry ${attempt} in ${seconds} s after ${describeError(error)}`,
    );
  });
  client.on("replaced", ({ reason }) => {
    log(bridgeId, `replaced by a newer connection, stopped: ${reason}`);
  });
  client.on("synced", ({ version, trigger }) => {
    const cause =
      trigger === "resync" ? " after the relay requested a resync" : "";
    log(bridgeId, `snapshot accepted at version ${version}${cause}`);
  });
  client.on("error", ({ operation, error }) => {
    log(bridgeId, `${operation} failed: ${describeError(error)}`);
  });
}

async function run(argv: string[]): Promise<number> {
  let options: SimulatorOptions | "help";
  try {
    options = parseOptions(argv);
  } catch (error) {
    console.error(`${(error as Error).message}\nRun with --help for usage.`);
    return 2;
  }
  if (options === "help") {
    console.log(USAGE);
    return 0;
  }
  const { secret, issuer } = loadSigning();
  const lights = loadFixtureLights();
  const bridgeIds = Array.from({ length: options.bridges }, (_, index) =>
    simulatedBridgeId(index),
  );
  printStartHint(options, bridgeIds);
  const running: RunningBridge[] = [];
  for (const [index, bridgeId] of bridgeIds.entries()) {
    const token = await signBridgeToken(secret, bridgeId, issuer);
    running.push(
      startBridge(index, {
        url: options.url,
        token,
        lights,
        changeIntervalMs: options.changeIntervalMs,
        random: createRandom(options.seed + index),
        log,
      }),
    );
    logClientEvents(running[running.length - 1]!.client, bridgeId);
  }
  return waitForEnd(running);
}

/**
 * Resolves with 0 after SIGINT or SIGTERM, once every client is closed, or
 * with 1 when every bridge has stopped by itself (rejected or replaced).
 */
function waitForEnd(running: RunningBridge[]): Promise<number> {
  return new Promise((resolve) => {
    let stopping = false;
    const stopAll = (code: number) => {
      if (stopping) return;
      stopping = true;
      process.off("SIGINT", onSignal);
      process.off("SIGTERM", onSignal);
      for (const { client, stopWallSwitch } of running) {
        stopWallSwitch();
        client.close();
      }
      resolve(code);
    };
    const onSignal = (signal: NodeJS.Signals) => {
      console.log(`${signal} received, closing ${running.length} bridge(s)`);
      stopAll(0);
    };
    process.on("SIGINT", onSignal);
    process.on("SIGTERM", onSignal);
    for (const { client } of running) {
      client.on("state", () => {
        if (stopping) return;
        if (running.every((bridge) => isFinalState(bridge.client.state))) {
          console.error("every bridge has stopped; exiting");
          stopAll(1);
        }
      });
    }
  });
}

try {
  process.exitCode = await run(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  console.error(error.message);
  process.exitCode = 1;
}
