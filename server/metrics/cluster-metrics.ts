import cluster, { type Worker } from "node:cluster";
import { randomUUID } from "node:crypto";
import {
  AggregatorRegistry,
  Counter,
  Gauge,
  Registry,
  collectDefaultMetrics,
  type PrometheusContentType,
} from "prom-client";
import type { Logger } from "../logger.ts";
import { sendToPrimary, sendToWorker } from "../cluster/worker-ipc.ts";
import { relayRegistry } from "./relay-metrics.ts";

/**
 * Whole-machine metrics in cluster mode. HTTP requests land on workers,
 * and only the primary can reach every worker, so the worker that receives
 * `GET /metrics` requests them from the primary over IPC. The primary collects every
 * worker's registry with prom-client's AggregatorRegistry (another IPC
 * round to each worker), appends its own registry and returns the text.
 */

const REQUEST_TYPE = "relay:metrics-request";
const RESPONSE_TYPE = "relay:metrics-response";

/**
 * Maximum wait of a worker for the primary's response, in ms. It is above
 * the 5 s after which prom-client (15.1) gives up on a silent worker, so a
 * worker that hangs yields the primary's error rather than this timeout.
 */
export const SCRAPE_TIMEOUT_MS = 6000;

interface MetricsRequest {
  type: typeof REQUEST_TYPE;
  requestId: string;
}

interface MetricsResponse {
  type: typeof RESPONSE_TYPE;
  requestId: string;
  text?: string;
  error?: string;
}

function isMessage<T extends { type: string }>(
  message: unknown,
  type: T["type"],
): message is T {
  return (
    typeof message === "object" &&
    message !== null &&
    (message as { type?: unknown }).type === type &&
    typeof (message as { requestId?: unknown }).requestId === "string"
  );
}

/** Metrics kept by the cluster primary itself. */
export interface PrimaryMetrics {
  /** Counts workers that exited unexpectedly and are restarted. */
  workerRestarts: Counter;
  /** Counts connections the primary closed at MAX_CONNECTIONS. */
  connectionsRejected: Counter;
}

/**
 * Makes this primary respond to the workers' metrics requests, and creates the
 * primary's own registry. Its metric names differ from every worker metric,
 * so appending its text to the workers' aggregate keeps one `# TYPE` block
 * per name. `readyWorkers` returns the number of workers that receive
 * connections.
 */
export function serveClusterMetrics(
  logger: Logger,
  readyWorkers: () => number,
): PrimaryMetrics {
  const primaryRegistry = new Registry();
  collectDefaultMetrics({
    register: primaryRegistry,
    prefix: "relay_primary_",
  });
  const workerRestarts = new Counter({
    name: "relay_worker_restarts_total",
    help: "Workers that exited unexpectedly and were scheduled for a restart by the primary.",
    registers: [primaryRegistry],
  });
  const connectionsRejected = new Counter({
    name: "relay_primary_connections_rejected_total",
    help: "Connections the primary closed on arrival because MAX_CONNECTIONS were open on it.",
    registers: [primaryRegistry],
  });
  new Gauge({
    name: "relay_workers_ready",
    help: "Workers that have reported ready and receive connections.",
    registers: [primaryRegistry],
    collect() {
      this.set(readyWorkers());
    },
  });

  const aggregator = new AggregatorRegistry<PrometheusContentType>();
  cluster.on("message", (worker: Worker, message: unknown) => {
    if (!isMessage<MetricsRequest>(message, REQUEST_TYPE)) return;
    const { requestId } = message;
    collectMachineMetrics(aggregator, primaryRegistry).then(
      (text) => reply(worker, logger, { type: RESPONSE_TYPE, requestId, text }),
      (error: unknown) => {
        logger.error(
          { err: error, workerId: worker.id, requestId },
          "could not collect the workers' metrics",
        );
        reply(worker, logger, {
          type: RESPONSE_TYPE,
          requestId,
          error: error instanceof Error ? error.message : String(error),
        });
      },
    );
  });
  return { workerRestarts, connectionsRejected };
}

async function collectMachineMetrics(
  aggregator: AggregatorRegistry<PrometheusContentType>,
  primaryRegistry: Registry,
): Promise<string> {
  const workers = await aggregator.clusterMetrics();
  const own = await primaryRegistry.metrics();
  return `${workers.trimEnd()}\n\n${own}`;
}

function reply(
  worker: Worker,
  logger: Logger,
  response: MetricsResponse,
): void {
  // The requesting worker may have exited while the metrics were collected.
  sendToWorker(worker, response, logger);
}

/**
 * Makes this worker respond to the primary's collection requests with
 * `relayRegistry`, and returns the function that fetches the whole
 * machine's metrics text from the primary.
 */
export function clusterMetricsClient(logger: Logger): () => Promise<string> {
  AggregatorRegistry.setRegistries([relayRegistry]);
  // The constructor installs prom-client's listener for the primary's requests.
  new AggregatorRegistry();

  const pending = new Map<
    string,
    { resolve: (text: string) => void; reject: (error: Error) => void }
  >();
  process.on("message", (message: unknown) => {
    if (!isMessage<MetricsResponse>(message, RESPONSE_TYPE)) return;
    const request = pending.get(message.requestId);
    if (request === undefined) return;
    pending.delete(message.requestId);
    if (message.text !== undefined) request.resolve(message.text);
    else
      request.reject(
        new Error(message.error ?? "the primary's response carried no metrics"),
      );
  });

  return () =>
    new Promise<string>((resolve, reject) => {
      if (process.send === undefined || !process.connected) {
        reject(
          new Error("this process has no open IPC channel to the primary"),
        );
        return;
      }
      const requestId = randomUUID();
      const timer = setTimeout(() => {
        pending.delete(requestId);
        reject(
          new Error(
            `the primary did not respond to the metrics request within ${SCRAPE_TIMEOUT_MS} ms`,
          ),
        );
      }, SCRAPE_TIMEOUT_MS);
      pending.set(requestId, {
        resolve: (text) => {
          clearTimeout(timer);
          resolve(text);
        },
        reject: (error) => {
          clearTimeout(timer);
          reject(error);
        },
      });
      const request: MetricsRequest = { type: REQUEST_TYPE, requestId };
      sendToPrimary(request, logger, (error) => {
        const failed = pending.get(requestId);
        pending.delete(requestId);
        failed?.reject(
          new Error(
            `sending the metrics request to the primary failed: ${error.message}`,
          ),
        );
      });
    });
}
