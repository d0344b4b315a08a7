import type { RequestHandler } from "express";
import type { Logger } from "../logger.ts";
import { relayRegistry } from "../metrics/relay-metrics.ts";

/**
 * Serves `GET /metrics` with the text `scrape` returns: the whole
 * machine's metrics, which a cluster worker fetches from the primary.
 * A failed scrape gets a 503, so Prometheus records the target as down
 * rather than storing partial figures.
 */
export function metricsHandler(
  scrape: () => Promise<string>,
  logger: Logger,
): RequestHandler {
  return async (request, response) => {
    try {
      const text = await scrape();
      response.set("Content-Type", relayRegistry.contentType).send(text);
    } catch (error) {
      (request.log ?? logger).error({ err: error }, "metrics scrape failed");
      response
        .status(503)
        .type("text/plain")
        .send("metrics are unavailable, retry the scrape\n");
    }
  };
}
