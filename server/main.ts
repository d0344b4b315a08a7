import cluster from "node:cluster";
import {
  formatMode,
  resolveSecret,
  SecretFileError,
  secretFileWarning,
  type ResolvedSecret,
} from "./auth/secret.ts";
import { ConfigError, loadConfig } from "./config.ts";
import { runPrimary } from "./cluster/primary.ts";
import { runWorker } from "./cluster/worker.ts";
import { runEmbedded } from "./embedded.ts";
import { installCrashHandlers } from "./crash-handlers.ts";
import { checkAddressFree, ListenError } from "./http/listen.ts";
import { createLogger } from "./logger.ts";

async function main(): Promise<void> {
  let config;
  try {
    config = loadConfig();
  } catch (error) {
    if (error instanceof ConfigError) {
      console.error(error.message);
      process.exit(1);
    }
    throw error;
  }
  const role = cluster.isPrimary
    ? config.redis
      ? "primary"
      : "embedded"
    : "worker";
  const logger = createLogger(
    config,
    cluster.isWorker ? { role, worker: cluster.worker?.id } : { role },
  );
  installCrashHandlers(logger);
  let resolved: ResolvedSecret;
  try {
    resolved = resolveSecret(config);
  } catch (error) {
    if (!(error instanceof SecretFileError)) throw error;
    logger.fatal({ file: error.file }, error.message);
    process.exit(1);
  }
  const { secret, file, generated, exposedMode } = resolved;
  if (cluster.isPrimary && file !== undefined) {
    logger.warn(
      { file },
      generated
        ? "AUTH_SECRET is not set: created the development secret file with a new secret"
        : "AUTH_SECRET is not set: using the development secret stored in the file",
    );
    const warning = secretFileWarning(resolved);
    if (warning !== undefined && exposedMode !== undefined) {
      logger.warn({ file, mode: formatMode(exposedMode) }, warning);
    }
  }
  try {
    if (config.redis === undefined) {
      await runEmbedded(config, secret, logger);
      // PM2 with `wait_ready` waits for this; without an IPC channel it is a no-op.
      process.send?.("ready");
    } else if (cluster.isPrimary) {
      await checkAddressFree(config.port, config.host);
      runPrimary(config, logger);
    } else {
      await runWorker(config, secret, logger);
    }
  } catch (error) {
    if (!(error instanceof ListenError)) throw error;
    logger.fatal(
      { port: error.port, host: error.host, code: error.code },
      error.message,
    );
    process.exit(1);
  }
}

main().catch((error: unknown) => {
  console.error("relay failed to start:", error);
  process.exit(1);
});
