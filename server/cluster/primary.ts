import cluster, { type Worker } from "node:cluster";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { setupMaster } from "@socket.io/sticky";
import type { RelayConfig } from "../config.ts";
import type { Logger } from "../logger.ts";
import { serveClusterMetrics } from "../metrics/cluster-metrics.ts";
import { answerSessionBindings } from "./session-binding.ts";
import { stopReadingBeforeHandoff } from "./sticky-handoff.ts";
import { READY_MESSAGE, SHUTDOWN_MESSAGE } from "./worker.ts";

/** Restart delays after a worker dies: doubled per recent crash, up to the maximum. */
const RESTART_DELAY_MIN_MS = 250;
const RESTART_DELAY_MAX_MS = 30_000;
/** A worker that lived this long resets the crash count. */
const STABLE_UPTIME_MS = 60_000;

/**
 * Runs the cluster primary, which owns the listening socket and hands each
 * connection to a worker with @socket.io/sticky. It balances round-robin,
 * because least-connection piles a burst onto one worker. It restarts
 * workers that die with a growing delay, and drains them all on SIGTERM
 * or SIGINT.
 */
export function runPrimary(config: RelayConfig, logger: Logger): void {
  // Sticky passes sockets and buffers to workers over IPC, which needs the
  // advanced serialization; without it no client can connect.
  cluster.setupPrimary({ serialization: "advanced" });
  const httpServer = createServer();
  setupMaster(httpServer, { loadBalancingMethod: "round-robin" });
  stopReadingBeforeHandoff(httpServer);
  answerSessionBindings();
  const metrics = serveClusterMetrics(
    logger,
    () => Object.keys(cluster.workers ?? {}).length,
  );

  let stopping = false;
  let recentCrashes = 0;
  const startedAt = new Map<number, number>();
  /** Every live worker, ready or not (cluster.workers lists only ready ones). */
  const live = new Map<number, Worker>();

  let listening = false;
  const listen = (): void => {
    listening = true;
    httpServer.listen(config.port, config.host, () => {
      const { port } = httpServer.address() as AddressInfo;
      logger.info(
        {
          port,
          host: config.host,
          workers: config.workers,
          redis: "configured",
        },
        `relay listening on http://${config.host}:${port} with ${config.workers} workers`,
      );
    });
  };

  const fork = (): Worker => {
    const worker = cluster.fork();
    startedAt.set(worker.id, Date.now());
    live.set(worker.id, worker);
    // Sticky hands connections to every entry of cluster.workers, and a worker
    // that has not set up its relay yet leaves them unanswered. So a worker is
    // kept out of that map until it reports ready.
    // NOTE: this edits Node's own map; Node only adds and deletes entries in it.
    delete cluster.workers?.[worker.id];
    worker.on("message", (message: unknown) => {
      if (message !== READY_MESSAGE || !worker.isConnected()) return;
      if (cluster.workers !== undefined) cluster.workers[worker.id] = worker;
      if (!listening && !stopping) listen();
    });
    return worker;
  };

  cluster.on("exit", (worker, code, signal) => {
    const uptime = Date.now() - (startedAt.get(worker.id) ?? Date.now());
    startedAt.delete(worker.id);
    live.delete(worker.id);
    if (stopping) return;
    metrics.workerRestarts.inc();
    recentCrashes = uptime >= STABLE_UPTIME_MS ? 1 : recentCrashes + 1;
    const delay = Math.min(
      RESTART_DELAY_MAX_MS,
      RESTART_DELAY_MIN_MS * 2 ** (recentCrashes - 1),
    );
    logger.error(
      {
        workerId: worker.id,
        workerPid: worker.process.pid,
        code,
        signal,
        uptimeMs: uptime,
        restartInMs: delay,
      },
      "worker died, restarting",
    );
    setTimeout(() => {
      if (!stopping) fork();
    }, delay);
  });

  for (let index = 0; index < config.workers; index += 1) fork();

  const stop = (signal: string): void => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal }, "primary shutting down, draining workers");
    httpServer.close();
    for (const worker of live.values()) {
      if (worker.isConnected()) worker.send(SHUTDOWN_MESSAGE);
      else worker.kill("SIGTERM");
    }
    const deadline = setTimeout(() => {
      logger.error("workers did not exit by the deadline, killing them");
      for (const worker of Object.values(cluster.workers ?? {}))
        worker?.kill("SIGKILL");
      process.exit(1);
    }, config.shutdownTimeoutMs + 1000);
    deadline.unref();
    const exitWhenDone = (): void => {
      if (live.size === 0) {
        logger.info("primary stopped");
        process.exit(0);
      }
    };
    cluster.on("exit", exitWhenDone);
    exitWhenDone();
  };
  process.on("SIGTERM", () => stop("SIGTERM"));
  process.on("SIGINT", () => stop("SIGINT"));
}
