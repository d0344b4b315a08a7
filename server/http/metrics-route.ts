import type { RequestHandler } from "express";
import type { Logger } from "../logger.ts";
import { relayRegistry } from "../metrics/relay-metrics.ts";

/**
 * Shares one scrape among all requests that arrive while it runs, so a
 * flood of concurrent scrapes costs one round of messages to the primary
 * and its workers rather than one per request. A scrape that starts after
 * the previous one finished gets fresh figures.
 */
function shareScrape(scrape: () => Promise<string>): () => Promise<string> {
  let running: Promise<string> | undefined;
  return () => {
    if (running !== undefined) return running;
    const text = scrape();
    running = text;
    const clear = (): void => {
      if (running === text) running = undefined;
    };
    text.then(clear, clear);
    return text;
  };
}

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
  const cachedScrape = shareScrape(scrape);
  return async (request, response) => {
    try {
      const text = await cachedScrape();
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
