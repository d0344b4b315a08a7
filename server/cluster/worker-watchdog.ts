import type { Worker } from "node:cluster";
import type { Logger } from "../logger.ts";
import { sendToWorker } from "./worker-ipc.ts";

/** Message from the primary that a worker answers at once with `PONG_MESSAGE`. */
export const PING_MESSAGE = "relay:ping";
export const PONG_MESSAGE = "relay:pong";

/** A worker unresponsive for this many times the threshold is killed. */
const KILL_AFTER_THRESHOLDS = 6;
/** Pings per threshold. */
const PINGS_PER_THRESHOLD = 5;

export interface WatchdogOptions {
  /** Time without an answer after which a worker gets no new connections, in ms. */
  unresponsiveMs: number;
  /** Workers that serve now: ready and not draining. */
  serving: () => Iterable<Worker>;
  hide: (worker: Worker) => void;
  admit: (worker: Worker) => void;
  logger: Logger;
}

/**
 * Pings every serving worker over IPC. A worker whose event loop is stuck
 * (a busy loop, a frozen process) answers nothing, and sticky would keep
 * handing it new connections that hang. Such a worker is taken out of the
 * balancer after `unresponsiveMs` while another worker responds, admitted
 * again when it responds, and killed after six times that, so that the
 * primary replaces it. When every worker is slow, as in a reconnect storm,
 * they all stay in the balancer.
 * Returns a function that stops the watchdog.
 */
export function watchWorkers(options: WatchdogOptions): () => void {
  const { unresponsiveMs, logger } = options;
  const lastAnswer = new Map<number, number>();
  const hidden = new Set<number>();
  /** Silent workers left in the balancer because no other worker responded. */
  const keptInBalancer = new Set<number>();
  const listening = new WeakSet<Worker>();

  /**
   * Returns true when a serving worker other than `worker` is in the
   * balancer and responds. Hiding the last such worker would move no
   * connection elsewhere, because the balancer would reject them all with 503.
   */
  const othersResponding = (worker: Worker): boolean => {
    const now = performance.now();
    for (const other of options.serving()) {
      if (other.id === worker.id || hidden.has(other.id)) continue;
      const answeredAt = lastAnswer.get(other.id);
      if (answeredAt !== undefined && now - answeredAt < unresponsiveMs) {
        return true;
      }
    }
    return false;
  };

  const listen = (worker: Worker): void => {
    if (listening.has(worker)) return;
    listening.add(worker);
    lastAnswer.set(worker.id, performance.now());
    worker.on("message", (message: unknown) => {
      if (message !== PONG_MESSAGE) return;
      lastAnswer.set(worker.id, performance.now());
      keptInBalancer.delete(worker.id);
      if (!hidden.delete(worker.id)) return;
      options.admit(worker);
      logger.info(
        { workerId: worker.id, workerPid: worker.process.pid },
        "worker answers again, admitted to the balancer",
      );
    });
    worker.once("exit", () => {
      lastAnswer.delete(worker.id);
      hidden.delete(worker.id);
      keptInBalancer.delete(worker.id);
    });
  };

  const check = (worker: Worker): void => {
    listen(worker);
    const silentMs =
      performance.now() - (lastAnswer.get(worker.id) ?? performance.now());
    const ids = { workerId: worker.id, workerPid: worker.process.pid };
    if (silentMs >= unresponsiveMs * KILL_AFTER_THRESHOLDS) {
      logger.error({ ...ids, silentMs }, "worker unresponsive, killing it");
      worker.kill("SIGKILL");
      return;
    }
    if (silentMs >= unresponsiveMs && !hidden.has(worker.id)) {
      if (othersResponding(worker)) {
        keptInBalancer.delete(worker.id);
        hidden.add(worker.id);
        options.hide(worker);
        logger.warn(
          { ...ids, silentMs },
          "worker unresponsive, taken out of the balancer",
        );
      } else if (!keptInBalancer.has(worker.id)) {
        keptInBalancer.add(worker.id);
        logger.warn(
          { ...ids, silentMs },
          "worker unresponsive, kept in the balancer because no other worker responds",
        );
      }
    }
    sendToWorker(worker, PING_MESSAGE, logger);
  };

  let lastTick = performance.now();
  /**
   * Leaves out of every worker's silence the time the primary itself did
   * not run (stopped, or a VM paused) when that was longer than the
   * threshold: answers that came meanwhile are still unread. Silence before
   * and after the stall still counts, so repeated stalls of the primary do
   * not spare a worker that stays frozen.
   */
  const forgiveOwnStall = (): void => {
    const now = performance.now();
    const stalledMs = now - lastTick;
    lastTick = now;
    if (stalledMs < unresponsiveMs) return;
    for (const [id, answeredAt] of lastAnswer) {
      lastAnswer.set(id, Math.min(now, answeredAt + stalledMs));
    }
    logger.warn(
      { stalledMs: Math.round(stalledMs) },
      "primary was stalled, leaving that time out of worker silence",
    );
  };

  const timer = setInterval(
    () => {
      forgiveOwnStall();
      for (const worker of options.serving()) check(worker);
    },
    Math.max(1, Math.floor(unresponsiveMs / PINGS_PER_THRESHOLD)),
  );
  timer.unref();
  return () => clearInterval(timer);
}
