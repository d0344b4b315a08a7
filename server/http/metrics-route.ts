import type { RequestHandler } from "express";
import type { Logger } from "../logger.ts";
import { relayRegistry } from "../metrics/relay-metrics.ts";

/** How long one scrape's text answers further scrapes, in ms. */
const SCRAPE_CACHE_MS = 1000;

/**
 * Shares one scrape among all requests within `SCRAPE_CACHE_MS`, so a flood
 * of scrapes costs one round of IPC to the primary and its workers per
 * second rather than one per request. A failed scrape is not cached.
 */
function shareScrape(scrape: () => Promise<string>): () => Promise<string> {
  let cached: { text: Promise<string>; at: number } | undefined;
  return () => {
    const now = Date.now();
    if (cached !== undefined && now - cached.at < SCRAPE_CACHE_MS)
      return cached.text;
    const text = scrape();
    const entry = { text, at: now };
    cached = entry;
    text.catch(() => {
      if (cached === entry) cached = undefined;
    });
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
