/**
 * Runs the dashboard demo in one process. It builds the dashboard, starts
 * an embedded relay (state in memory, no Redis) and connects simulated Hue
 * bridges with the lights of a real CLIP v2 dump. Then it prints the
 * dashboard link with an app token in the URL fragment. Ctrl-C stops
 * everything.
 *
 *   npm run demo -- [--bridges 3] [--change-interval-ms 20000]
 *
 * PORT (default 8080), HOST (default 127.0.0.1) and LOG_LEVEL (default
 * warn) apply as they do to the relay. REDIS_URL is ignored.
 */
import { randomBytes } from "node:crypto";
import type { AddressInfo } from "node:net";
import process from "node:process";
import { parseArgs } from "node:util";
import { resolveSecret } from "../../server/auth/secret.ts";
import {
  signAppToken,
  signBridgeToken,
} from "../../server/auth/token-signing.ts";
import {
  ConfigError,
  loadConfig,
  type RelayConfig,
} from "../../server/config.ts";
import { createLogger } from "../../server/logger.ts";
import { LocalBus } from "../../server/messaging/server-bus.ts";
import { createRelay, type Relay } from "../../server/relay/create-relay.ts";
import { MemoryStore } from "../../server/state/memory-store.ts";
import { startBridge, type RunningBridge } from "../simulator/fleet.ts";
import {
  createRandom,
  loadFixtureLights,
  simulatedBridgeId,
} from "../simulator/simulated-bridge.ts";
import { buildDashboard } from "./build.ts";
import { parseInteger } from "../simulator/command-line.ts";

const USAGE = `Usage: npm run demo -- [options]

Starts an embedded relay with simulated bridges and prints a dashboard link.

Options:
  --bridges <n>              number of simulated bridges, 1 to 20 (default: 3)
  --change-interval-ms <ms>  mean time between a bridge's own light switches,
                             as a wall switch would make them (default: 20000,
                             0 turns them off)
  -h, --help                 print this help

Environment: PORT (default 8080), HOST (default 127.0.0.1), LOG_LEVEL
(default warn).`;

const MAX_DEMO_BRIDGES = 20;
/** Lifetime of the printed app token. */
const APP_TOKEN_LIFETIME = "12h";

interface DemoOptions {
  bridges: number;
  changeIntervalMs: number;
}

function parseOptions(argv: string[]): DemoOptions | "help" {
  const { values } = parseArgs({
    args: argv,
    options: {
      bridges: { type: "string", default: "3" },
      "change-interval-ms": { type: "string", default: "20000" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  return {
    bridges: parseInteger("--bridges", values.bridges, 1, MAX_DEMO_BRIDGES),
    changeIntervalMs: parseInteger(
      "--change-interval-ms",
      values["change-interval-ms"],
      0,
      24 * 60 * 60 * 1000,
    ),
  };
}

/** Loads the relay configuration with the demo's defaults: loopback, quiet logs, no Redis. */
function loadDemoConfig(): RelayConfig {
  return loadConfig({
    ...process.env,
    HOST: process.env.HOST || "127.0.0.1",
    LOG_LEVEL: process.env.LOG_LEVEL || "warn",
    REDIS_URL: "",
  });
}

function print(line: string): void {
  process.stdout.write(`${line}\n`);
}

interface DemoRelay {
  relay: Relay;
  store: MemoryStore;
}

async function startRelay(
  config: RelayConfig,
  secret: string,
): Promise<DemoRelay> {
  const serverId = randomBytes(6).toString("hex");
  const logger = createLogger(config, { role: "demo", serverId });
  const store = new MemoryStore();
  const relay = await createRelay({
    config,
    logger,
    store,
    bus: new LocalBus(serverId),
    secret,
  });
  await new Promise<void>((resolve, reject) => {
    relay.httpServer.once("error", reject);
    relay.httpServer.listen(config.port, config.host, () => {
      relay.httpServer.off("error", reject);
      resolve();
    });
  });
  return { relay, store };
}

async function run(argv: string[]): Promise<number> {
  let options: DemoOptions | "help";
  try {
    options = parseOptions(argv);
  } catch (error) {
    console.error(`${(error as Error).message}\nRun with --help for usage.`);
    return 2;
  }
  if (options === "help") {
    print(USAGE);
    return 0;
  }
  const config = loadDemoConfig();
  const { secret } = resolveSecret(config);
  if (secret === undefined) {
    throw new ConfigError(
      "no HS256 secret available: AUTH_PUBLIC_KEY is set without AUTH_SECRET, so the demo cannot sign tokens; unset it or set AUTH_SECRET",
    );
  }

  await buildDashboard();
  let started: DemoRelay;
  try {
    started = await startRelay(config, secret);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "EADDRINUSE") throw error;
    console.error(
      `port ${config.port} on ${config.host} is in use; run with PORT=<another port>`,
    );
    return 1;
  }
  const { port } = started.relay.httpServer.address() as AddressInfo;
  const host = config.host === "0.0.0.0" ? "127.0.0.1" : config.host;
  const url = `http://${host}:${port}`;

  const bridgeIds: string[] = [];
  const bridges: RunningBridge[] = [];
  const lights = loadFixtureLights();
  for (let index = 0; index < options.bridges; index += 1) {
    bridgeIds.push(simulatedBridgeId(index));
    bridges.push(
      startBridge(index, {
        url,
        token: await signBridgeToken(secret, bridgeIds[index]!),
        lights,
        changeIntervalMs: options.changeIntervalMs,
        random: createRandom(index + 1),
        // The demo prints only failures, so its link stays visible.
        log: (bridgeId, message, level) => {
          if (level === "error")
            console.error(`bridge ${bridgeId}: ${message}`);
        },
      }),
    );
  }
  const appToken = await signAppToken(secret, "demo-user", {
    bridges: bridgeIds,
    scope: "read control",
    expiresIn: APP_TOKEN_LIFETIME,
  });

  print(`relay listening on ${url} (embedded, state in memory)`);
  print(`${bridgeIds.length} simulated bridge(s): ${bridgeIds.join(", ")}`);
  print(`dashboard (the app token is valid for ${APP_TOKEN_LIFETIME}):`);
  print(`  ${url}/#token=${appToken}`);
  print("Press Ctrl-C to stop.");
  return waitForSignal(started, bridges);
}

/** Resolves with 0 once SIGINT or SIGTERM has closed the bridges and the relay. */
function waitForSignal(
  { relay, store }: DemoRelay,
  bridges: RunningBridge[],
): Promise<number> {
  return new Promise((resolve) => {
    const stop = (signal: NodeJS.Signals): void => {
      process.off("SIGINT", stop);
      process.off("SIGTERM", stop);
      print(`${signal} received, stopping the bridges and the relay`);
      for (const { client, stopWallSwitch } of bridges) {
        stopWallSwitch();
        client.close();
      }
      relay
        .close()
        .then(() => store.close())
        .then(
          () => resolve(0),
          (error: unknown) => {
            console.error(`relay shutdown failed: ${(error as Error).message}`);
            resolve(1);
          },
        );
    };
    process.on("SIGINT", stop);
    process.on("SIGTERM", stop);
  });
}

let exitCode: number;
try {
  exitCode = await run(process.argv.slice(2));
} catch (error) {
  if (!(error instanceof ConfigError)) throw error;
  console.error(error.message);
  exitCode = 1;
}
// The pretty log transport runs in a worker thread that keeps the process alive.
process.exit(exitCode);
