import cluster, { type Worker } from "node:cluster";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { setupMaster } from "@socket.io/sticky";
import type { RelayConfig } from "../config.ts";
import type { Logger } from "../logger.ts";
import { serveClusterMetrics } from "../metrics/cluster-metrics.ts";
import { answerSessionBindings } from "./session-binding.ts";
import { listenOn } from "../http/listen.ts";
import {
  DRAINING_MESSAGE,
  requestShutdown,
  setShutdownHandler,
  SHUTDOWN_SIGNALS,
} from "./shutdown.ts";
import { capListenedConnections } from "./connection-cap.ts";
import { rerouteHandoffsOnExit } from "./dead-worker-handoffs.ts";
import { answerForwardedRequestsOnExit } from "./forwarded-requests.ts";
import { closeIdleConnections } from "./idle-connections.ts";
import { onFirstChunk, stopReadingBeforeHandoff } from "./sticky-handoff.ts";
import { watchWorkers } from "./worker-watchdog.ts";
import { sendToWorker, watchWorkerErrors } from "./worker-ipc.ts";
import { HEADERS_TIMEOUT_MS } from "./stalled-connections.ts";
import { READY_MESSAGE, SHUTDOWN_MESSAGE } from "./worker.ts";

/** Restart delays after a worker dies: doubled per recent crash, up to the maximum. */
const RESTART_DELAY_MIN_MS = 250;
const RESTART_DELAY_MAX_MS = 30_000;
/** A worker that lived this long resets the crash count. */
const STABLE_UPTIME_MS = 60_000;
/**
 * Pending-connection queue of the listening socket. Node's default of 511
 * overflowed in a reconnect storm of 5,000 bridges, so the kernel dropped
 * connection attempts and even `/healthz` waited seconds. Linux caps this
 * at `net.core.somaxconn` (4096 by default since kernel 5.4).
 */
const LISTEN_BACKLOG = 4096;

/** Time the primary gives a worker to exit after its own shutdown deadline, in ms. */
const EXIT_GRACE_MS = 1000;
/**
 * Time a rolling restart waits for a replacement worker to report ready,
 * in ms. NOTE: a guess that covers loading the code and connecting to
 * Redis; a slower start aborts the restart and leaves the old workers.
 */
const WORKER_START_TIMEOUT_MS = 30_000;
/** Message PM2 waits for with `wait_ready`: the process serves. */
const PROCESS_MANAGER_READY = "ready";

/**
 * Admits `worker` to the balancer, which hands new connections to the
 * workers listed in `cluster.workers`. The entry is defined, not assigned,
 * because an assignment keeps a hidden entry non-enumerable, which left a
 * worker the watchdog had hidden out of the balancer for good.
 * NOTE: this edits Node's own map, in which Node only adds and deletes entries.
 */
function admitToBalancer(worker: Worker): void {
  if (cluster.workers === undefined) return;
  Object.defineProperty(cluster.workers, worker.id, {
    value: worker,
    enumerable: true,
    configurable: true,
    writable: true,
  });
}

/**
 * Stops handing new connections to `worker` but keeps routing its existing
 * Engine.IO sessions to it. @socket.io/sticky 2.0.1 picks a worker for a
 * new connection from `Object.keys(cluster.workers)` and looks a known
 * session's worker up by ID, so a non-enumerable entry gets only the latter.
 */
function hideFromBalancer(worker: Worker): void {
  const workers = cluster.workers;
  if (workers?.[worker.id] === undefined) return;
  Object.defineProperty(workers, worker.id, {
    value: worker,
    enumerable: false,
    configurable: true,
    writable: true,
  });
}

/** Resolves true when `worker` reports ready, false when it exits or the timeout passes first. */
function waitForReady(worker: Worker, timeoutMs: number): Promise<boolean> {
  return new Promise((resolve) => {
    const finish = (ready: boolean): void => {
      clearTimeout(timer);
      worker.off("message", onMessage);
      worker.off("exit", onExit);
      resolve(ready);
    };
    const onMessage = (message: unknown): void => {
      if (message === READY_MESSAGE) finish(true);
    };
    const onExit = (): void => finish(false);
    const timer = setTimeout(() => finish(false), timeoutMs);
    worker.on("message", onMessage);
    worker.on("exit", onExit);
  });
}

/** Resolves with the exit code or signal of `worker`, at once if it has exited. */
function waitForExit(
  worker: Worker,
): Promise<{ code: number | null; signal: string | null }> {
  const { exitCode, signalCode } = worker.process;
  if (exitCode !== null || signalCode !== null) {
    return Promise.resolve({ code: exitCode, signal: signalCode });
  }
  return new Promise((resolve) => {
    worker.once("exit", (code: number | null, signal: string | null) =>
      resolve({ code, signal }),
    );
  });
}

/**
 * Runs the cluster primary, which owns the listening socket and hands each
 * connection to a worker with @socket.io/sticky. It balances round-robin,
 * because least-connection piles a burst onto one worker. It restarts
 * workers that die with a growing delay, replaces its workers one at a
 * time on SIGUSR2, and drains them all on SIGTERM, SIGINT or SIGHUP.
 */
export function runPrimary(config: RelayConfig, logger: Logger): void {
  // Sticky passes sockets and buffers to workers over IPC, which needs the
  // advanced serialization; without it no client can connect.
  cluster.setupPrimary({ serialization: "advanced" });
  const httpServer = createServer();
  setupMaster(httpServer, { loadBalancingMethod: "round-robin" });
  const forwardedRequests = answerForwardedRequestsOnExit(
    config.linger,
    logger,
  );
  onFirstChunk(httpServer, [
    forwardedRequests.noteFirstChunk,
    stopReadingBeforeHandoff,
  ]);
  closeIdleConnections(httpServer, {
    firstByteTimeoutMs: HEADERS_TIMEOUT_MS,
    linger: config.linger,
  });
  answerSessionBindings(logger);
  const metrics = serveClusterMetrics(
    logger,
    () => Object.keys(cluster.workers ?? {}).length,
  );
  if (config.maxConnections !== undefined) {
    capListenedConnections(
      httpServer,
      config.maxConnections,
      logger,
      metrics.connectionsRejected,
    );
  }

  let stopping = false;
  let restarting = false;
  let recentCrashes = 0;
  const startedAt = new Map<number, number>();
  /** Every live worker, ready or not (cluster.workers lists only ready ones). */
  const live = new Map<number, Worker>();
  /** Workers that reported ready. */
  const ready = new Set<number>();
  /** Workers that drain: they get no new connections, and no second admission. */
  const draining = new Set<number>();
  /** Workers whose exit is planned, so that it does not count as a crash. */
  const plannedExits = new Set<number>();
  /**
   * Old workers of a rolling restart in progress. One that dies is not
   * restarted, because its replacement is starting. A restart that fails
   * starts workers for those that died.
   */
  const replaced = new Set<number>();
  /**
   * Old workers of a rolling restart that left the balancer and wait for
   * their turn to drain. The watchdog does not readmit them, and a restart
   * that stops readmits those still running.
   */
  const outgoing = new Set<Worker>();

  let listening = false;
  // The primary listens only once a worker is ready, so until then
  // connections are refused and PM2 waits. This warning repeats until then.
  const waitingSince = Date.now();
  const noWorkerReadyLog = setInterval(() => {
    if (listening || stopping) {
      clearInterval(noWorkerReadyLog);
      return;
    }
    logger.warn(
      {
        waitedMs: Date.now() - waitingSince,
        workers: live.size,
        port: config.port,
      },
      "no worker is ready yet, so the relay does not listen: the workers' log lines say what they wait for",
    );
  }, config.startupWaitLogIntervalMs);
  noWorkerReadyLog.unref();
  const listen = (): void => {
    listening = true;
    clearInterval(noWorkerReadyLog);
    const address = {
      port: config.port,
      host: config.host,
      backlog: LISTEN_BACKLOG,
    };
    listenOn(httpServer, address).then(
      () => {
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
        // Only a process manager that started the primary with an IPC
        // channel (PM2) receives this.
        process.send?.(PROCESS_MANAGER_READY);
      },
      (error: unknown) => {
        // Another process took the port after `checkAddressFree`.
        logger.fatal(
          { err: error, port: config.port, host: config.host },
          error instanceof Error ? error.message : "the relay could not listen",
        );
        if (!requestShutdown("listen failed", 1)) process.exit(1);
      },
    );
  };

  const fork = (): Worker => {
    const worker = cluster.fork();
    watchWorkerErrors(worker, logger);
    rerouteHandoffsOnExit(worker, logger);
    forwardedRequests.watch(worker);
    startedAt.set(worker.id, Date.now());
    live.set(worker.id, worker);
    // Sticky hands connections to every entry of cluster.workers, and a worker
    // that has not set up its relay yet leaves them unanswered. So a worker is
    // kept out of that map until it reports ready.
    delete cluster.workers?.[worker.id];
    worker.on("message", (message: unknown) => {
      if (message === DRAINING_MESSAGE) {
        draining.add(worker.id);
        // Once the primary stops listening, hiding buys nothing. Hiding every
        // worker would make sticky destroy each connection whose request body
        // it still forwards, at that body's next chunk.
        if (!stopping) hideFromBalancer(worker);
        return;
      }
      if (message !== READY_MESSAGE || !worker.isConnected()) return;
      if (draining.has(worker.id)) return;
      ready.add(worker.id);
      admitToBalancer(worker);
      if (!listening && !stopping) listen();
    });
    return worker;
  };

  /**
   * Asks `worker` to drain and exit. A worker listens for the message only
   * once it is ready, so one still starting gets SIGTERM instead. That ends
   * it at once, or drains it if its shutdown handler is already installed.
   * A worker whose IPC channel fails the message gets SIGTERM too.
   */
  const stopWorker = (worker: Worker): void => {
    if (ready.has(worker.id) && worker.isConnected()) {
      sendToWorker(worker, SHUTDOWN_MESSAGE, logger, () =>
        worker.process.kill("SIGTERM"),
      );
    } else {
      worker.kill("SIGTERM");
    }
  };

  /**
   * Drains `worker` and resolves once it has exited, killing it after the
   * shutdown deadline. `role` names the worker in the log: an old worker,
   * or a replacement left over when a restart stopped.
   */
  const retire = async (
    worker: Worker,
    role: "old worker" | "surplus replacement",
  ): Promise<void> => {
    plannedExits.add(worker.id);
    draining.add(worker.id);
    hideFromBalancer(worker);
    stopWorker(worker);
    const started = Date.now();
    const killTimer = setTimeout(() => {
      logger.error(
        { workerId: worker.id, workerPid: worker.process.pid },
        "worker did not exit by the shutdown deadline, killing it",
      );
      worker.kill("SIGKILL");
    }, config.shutdownTimeoutMs + EXIT_GRACE_MS);
    const { code, signal } = await waitForExit(worker);
    clearTimeout(killTimer);
    logger.info(
      {
        workerId: worker.id,
        workerPid: worker.process.pid,
        code,
        signal,
        drainMs: Date.now() - started,
      },
      `rolling restart: ${role} exited`,
    );
  };

  /**
   * Starts one replacement per worker in `previous` and resolves with each
   * replacement and whether it reported ready in time. Until then, a
   * replacement's exit stops the restart instead of restarting it.
   */
  const startReplacements = (
    previous: Worker[],
  ): Promise<{ worker: Worker; started: boolean }[]> =>
    Promise.all(
      previous.map(async (old) => {
        const worker = fork();
        plannedExits.add(worker.id);
        logger.info(
          { workerId: worker.id, replaces: old.id },
          "rolling restart: replacement worker started",
        );
        const started = await waitForReady(worker, WORKER_START_TIMEOUT_MS);
        if (started) plannedExits.delete(worker.id);
        return { worker, started };
      }),
    );

  /**
   * Ends a restart whose replacements did not all start: kills those that
   * failed, keeps ready ones in place of old workers that died meanwhile,
   * starts any still missing, and drains the ready ones left over. The old
   * workers that live keep serving.
   */
  const abandonReplacements = async (
    previous: Worker[],
    replacements: { worker: Worker; started: boolean }[],
  ): Promise<void> => {
    const failed = replacements.filter(({ started }) => !started);
    for (const { worker } of failed) worker.kill("SIGKILL");
    const running = replacements
      .filter(({ started, worker }) => started && live.has(worker.id))
      .map(({ worker }) => worker);
    const lost = previous.filter((old) => !live.has(old.id)).length;
    const surplus = running.slice(lost);
    const missing = Math.max(0, lost - running.length);
    logger.error(
      {
        failed: failed.map(({ worker }) => worker.id),
        timeoutMs: WORKER_START_TIMEOUT_MS,
        keptReplacements: running.length - surplus.length,
        forked: missing,
        remaining: previous.length - lost,
      },
      "rolling restart stopped: a replacement worker exited or did not report ready, old workers keep serving",
    );
    for (let index = 0; index < missing; index += 1) fork();
    await Promise.all(
      surplus.map((worker) => retire(worker, "surplus replacement")),
    );
  };

  /**
   * Replaces the live workers, `RESTART_SURGE` at a time (all by default).
   * Each batch of replacements starts and reports ready before as many old
   * workers drain, one at a time, each to its exit. Once the first batch is
   * ready, every old worker leaves the balancer, so a client of an old
   * worker reconnects to a replacement, never to another old worker that
   * closes it again. The machine runs the workers plus one batch. A
   * replacement that fails to start stops the restart, and the old workers
   * left keep serving.
   */
  const rollingRestart = async (signal: string): Promise<void> => {
    if (stopping) return;
    if (restarting) {
      logger.warn(
        { signal },
        "rolling restart already in progress, signal ignored",
      );
      return;
    }
    restarting = true;
    const restartBegan = Date.now();
    const previous = [...live.values()].filter(
      (worker) => !draining.has(worker.id),
    );
    for (const worker of previous) replaced.add(worker.id);
    const surge = Math.min(config.restartSurge ?? Infinity, previous.length);
    logger.info(
      { signal, workers: previous.length, surge },
      "rolling restart started",
    );
    try {
      for (let first = 0; first < previous.length; first += surge) {
        const finished = await replaceBatch(previous, first, surge);
        if (!finished) return;
      }
      logger.info(
        { durationMs: Date.now() - restartBegan, workers: live.size },
        "rolling restart finished",
      );
    } finally {
      for (const worker of outgoing)
        if (live.has(worker.id)) admitToBalancer(worker);
      outgoing.clear();
      replaced.clear();
      restarting = false;
    }
  };

  /**
   * Starts replacements for the `surge` old workers from index `first` of
   * `previous`, then drains those old workers. Resolves false when the
   * restart ends here: the primary stops, or a replacement failed.
   */
  const replaceBatch = async (
    previous: Worker[],
    first: number,
    surge: number,
  ): Promise<boolean> => {
    const batch = previous.slice(first, first + surge);
    const replacements = await startReplacements(batch);
    if (stopping) return false;
    if (replacements.some(({ started }) => !started)) {
      await abandonReplacements(previous.slice(first), replacements);
      return false;
    }
    if (first === 0) {
      const remaining = previous.filter((old) => live.has(old.id));
      for (const old of remaining) {
        outgoing.add(old);
        hideFromBalancer(old);
      }
      logger.info(
        {
          workers: replacements.map(({ worker }) => worker.id),
          draining: batch
            .filter((old) => live.has(old.id))
            .map((old) => old.id),
          waiting: remaining.filter((old) => !batch.includes(old)).length,
        },
        "rolling restart: replacements ready, draining the old workers",
      );
    }
    for (const old of batch) {
      if (!live.has(old.id)) continue;
      outgoing.delete(old);
      await retire(old, "old worker");
    }
    return true;
  };

  cluster.on("exit", (worker, code, signal) => {
    const uptime = Date.now() - (startedAt.get(worker.id) ?? Date.now());
    startedAt.delete(worker.id);
    live.delete(worker.id);
    draining.delete(worker.id);
    ready.delete(worker.id);
    if (plannedExits.delete(worker.id) || stopping) return;
    if (replaced.delete(worker.id)) {
      logger.error(
        { workerId: worker.id, workerPid: worker.process.pid, code, signal },
        "worker died during a rolling restart, its replacement takes over",
      );
      return;
    }
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

  /** Workers in the balancer or hidden only by the watchdog: ready, not draining. */
  const serving = (): Worker[] =>
    [...live.values()].filter(
      (worker) => ready.has(worker.id) && !draining.has(worker.id),
    );
  const stopWatchdog = watchWorkers({
    unresponsiveMs: config.workerUnresponsiveMs,
    serving,
    hide: hideFromBalancer,
    // A worker that began to drain since its ping stays out of the balancer.
    admit: (worker) => {
      if (!draining.has(worker.id) && !outgoing.has(worker))
        admitToBalancer(worker);
    },
    logger,
  });

  const stop = (reason: string, exitCode: number): void => {
    if (stopping) return;
    stopping = true;
    stopWatchdog();
    logger.info({ reason }, "primary shutting down, draining workers");
    httpServer.close();
    for (const worker of live.values()) stopWorker(worker);
    const deadline = setTimeout(() => {
      logger.error("workers did not exit by the deadline, killing them");
      for (const worker of live.values()) worker.kill("SIGKILL");
      logger.flush?.();
      process.exit(1);
    }, config.shutdownTimeoutMs + EXIT_GRACE_MS);
    deadline.unref();
    const exitWhenDone = (): void => {
      if (live.size === 0) {
        logger.info({ exitCode }, "primary stopped");
        logger.flush?.();
        process.exit(exitCode);
      }
    };
    cluster.on("exit", exitWhenDone);
    exitWhenDone();
  };
  setShutdownHandler(stop);
  for (const signal of SHUTDOWN_SIGNALS)
    process.on(signal, () => stop(signal, 0));
  process.on("SIGUSR2", () => {
    rollingRestart("SIGUSR2").catch((error: unknown) => {
      restarting = false;
      logger.error({ err: error }, "rolling restart failed");
    });
  });
}
