import cluster from "node:cluster";
import { resolveSecret } from "./auth/secret.ts";
import { ConfigError, loadConfig } from "./config.ts";
import { runPrimary } from "./cluster/primary.ts";
import { runWorker } from "./cluster/worker.ts";
import { runEmbedded } from "./embedded.ts";
import { createLogger, type Logger } from "./logger.ts";

function installCrashLogging(logger: Logger): void {
  process.on("unhandledRejection", (reason) => {
    logger.error({ err: reason }, "unhandled promise rejection");
  });
  process.on("uncaughtException", (error) => {
    logger.fatal({ err: error }, "uncaught exception, exiting");
    logger.flush?.();
    process.exit(1);
  });
}

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
    ? config.redisUrl
      ? "primary"
      : "embedded"
    : "worker";
  const logger = createLogger(
    config,
    cluster.isWorker ? { role, worker: cluster.worker?.id } : { role },
  );
  installCrashLogging(logger);
  const { secret, file, generated } = resolveSecret(config);
  if (cluster.isPrimary && file !== undefined) {
    logger.warn(
      { file },
      generated
        ? "AUTH_SECRET is not set: generated a development secret and stored it in the file"
        : "AUTH_SECRET is not set: using the development secret stored in the file",
    );
  }
  if (config.redisUrl === undefined) {
    await runEmbedded(config, secret, logger);
  } else if (cluster.isPrimary) {
    runPrimary(config, logger);
  } else {
    await runWorker(config, secret, logger);
  }
}

main().catch((error: unknown) => {
  console.error("relay failed to start:", error);
  process.exit(1);
});
