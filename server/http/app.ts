import express, { type Express, type RequestHandler } from "express";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { declaredBodyLength, hasBody } from "../cluster/stalled-connections.ts";
import { RelayError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import { apiErrorHandler } from "./api-errors.ts";
import { API_BASE_PATH, createApiRouter, type ApiDeps } from "./api.ts";
import {
  closeLingering,
  destroyRequestConnection,
  type LingerLimits,
} from "./lingering-close.ts";
import { metricsHandler } from "./metrics-route.ts";
import {
  DASHBOARD_METRICS_ROUTE,
  relayServerHeader,
  requestLogging,
  requestMetrics,
} from "./request-logging.ts";

/**
 * Folder of the built dashboard that `npm run build` writes, dist/dashboard/,
 * found from this module's place: server/http/ in the sources, or
 * dist/server/http/ when compiled.
 */
const DEFAULT_DASHBOARD_DIR = fileURLToPath(
  new URL(
    /\/dist\/server\/http\/[^/]+$/.test(new URL(import.meta.url).pathname)
      ? "../../dashboard/"
      : "../../dist/dashboard/",
    import.meta.url,
  ),
);

/**
 * Headers of every HTTP response. The policy lets the dashboard load
 * scripts, styles and images from this origin only, connect only back to
 * it (Socket.IO over polling or websocket), and be shown in no frame.
 */
const SECURITY_HEADERS: Record<string, string> = {
  "Content-Security-Policy":
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  "Referrer-Policy": "no-referrer",
  "X-Content-Type-Options": "nosniff",
  "X-Frame-Options": "DENY",
  "Cross-Origin-Opener-Policy": "same-origin",
};

export interface HttpDeps {
  /** Resolves when every dependency answers (Redis when configured). */
  checkDependencies: () => Promise<void>;
  isDraining: () => boolean;
  logger: Logger;
  api: ApiDeps;
  /** Returns the Prometheus text of the whole machine. */
  scrapeMetrics: () => Promise<string>;
  /** Sent in `X-Relay-Server` outside production, to show which process responded. */
  serverId: string;
  production: boolean;
}

/**
 * Time the dependency check of `/readyz` may take, in ms. A Redis that
 * accepts connections but does not respond (paused, swapping) would
 * otherwise keep each probe waiting until it responds, and the probe
 * would then report ready.
 */
export const READINESS_TIMEOUT_MS = 1000;

/** Resolves as `check` does, or rejects with `UNAVAILABLE` after READINESS_TIMEOUT_MS. */
async function withinReadinessTimeout(check: Promise<void>): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(
      () =>
        reject(
          new RelayError(
            "UNAVAILABLE",
            `dependency check timed out after ${READINESS_TIMEOUT_MS} ms`,
          ),
        ),
      READINESS_TIMEOUT_MS,
    );
  });
  try {
    await Promise.race([check, timedOut]);
  } finally {
    clearTimeout(timer);
  }
}

/** Creates the Express app served beside Socket.IO on the same port. */
export function createHttpApp(deps: HttpDeps): Express {
  const app = express();
  app.disable("x-powered-by");
  app.use((_request, response, next) => {
    response.set(SECURITY_HEADERS);
    next();
  });
  app.use(closeUnreadBodies(deps.api.maxPayloadBytes, deps.api.linger));
  app.use(requestLogging(deps.logger), requestMetrics());
  if (!deps.production) app.use(relayServerHeader(deps.serverId));

  app.get("/healthz", (_request, response) => {
    response.json({ status: "ok" });
  });

  let failedChecks = 0;
  app.get("/readyz", async (_request, response) => {
    if (deps.isDraining()) {
      response.status(503).json({ status: "draining" });
      return;
    }
    try {
      await withinReadinessTimeout(deps.checkDependencies());
      if (failedChecks > 0) {
        deps.logger.info({ failedChecks }, "readiness check passes again");
        failedChecks = 0;
      }
      response.json({ status: "ready" });
    } catch (error) {
      // Log the first failure of an outage, then one in 20, with the count.
      failedChecks += 1;
      if (failedChecks === 1 || failedChecks % 20 === 0) {
        deps.logger.warn(
          { err: error, failedChecks },
          "readiness check failed",
        );
      }
      response.status(503).json({ status: "unavailable" });
    }
  });

  app.get("/metrics", metricsHandler(deps.scrapeMetrics, deps.logger));
  app.use(API_BASE_PATH, createApiRouter(deps.api));

  serveDashboard(app, DEFAULT_DASHBOARD_DIR, deps.logger);
  // Express's own 404 waits for the request's body. After the 408 of a
  // stalled body it wrote a second response, which threw and ended the
  // process. The message leaves out the path, which may carry a token.
  app.use((request) => {
    throw new RelayError(
      "NOT_FOUND",
      `no route for ${request.method} at this path; the API is under ${API_BASE_PATH}`,
    );
  });
  app.use(apiErrorHandler(deps.api.maxPayloadBytes, deps.logger));
  return app;
}

/**
 * Time the rest of an unread body has to arrive once the response has
 * finished, in ms. A body sent at once is there in much less, so its
 * connection stays open for the client's next request.
 */
const UNREAD_BODY_GRACE_MS = 1000;

/**
 * Reads and drops the body of a request whose response finished before
 * the body was read, such as a 401 or a 404, and closes the connection
 * when the rest does not arrive within UNREAD_BODY_GRACE_MS. Node would
 * wait for the rest however long it takes, so a client sending one byte
 * at a time could keep the connection open without a token. A body whose
 * `Content-Length` is over `maxBodyBytes` is not waited for. Its response
 * carries `Connection: close`, and the connection closes lingering once
 * the response has been sent (`closeLingering`).
 */
function closeUnreadBodies(
  maxBodyBytes: number,
  linger: LingerLimits,
): RequestHandler {
  return (request, response, next) => {
    if ((declaredBodyLength(request) ?? 0) > maxBodyBytes) {
      closeLingering(request, response, linger);
      next();
      return;
    }
    response.once("finish", () => {
      if (request.complete || !hasBody(request)) return;
      // A connection whose last response has been sent is already ended.
      // Node destroys it, or it closes lingering, as after a chunked 413.
      if (request.socket.writableEnded) return;
      const timer = setTimeout(
        () => destroyRequestConnection(request),
        UNREAD_BODY_GRACE_MS,
      );
      timer.unref();
      const stop = (): void => clearTimeout(timer);
      request.once("end", stop);
      request.once("close", stop);
      request.resume();
    });
    next();
  };
}

/**
 * Serves the built dashboard at `/`. When it was not built, `/` responds
 * with 404 and the command that builds it. The check runs per request, so
 * a build made after the start is served without a restart.
 */
export function serveDashboard(
  app: Express,
  dir: string,
  logger: Logger,
): void {
  if (!existsSync(join(dir, "index.html"))) {
    logger.warn(
      { dir },
      "dashboard not built: run `npm run build` to serve it at /",
    );
  }
  const files = express.static(dir, { index: "index.html", redirect: false });
  app.use((request, response, next) => {
    // Labels the metrics of a file served here, which matches no route.
    response.locals.metricsRoute = DASHBOARD_METRICS_ROUTE;
    files(request, response, (error?: unknown) => {
      delete response.locals.metricsRoute;
      next(error);
    });
  });
  app.get("/", (_request, response) => {
    response
      .status(404)
      .type("text/plain")
      .send(
        "The dashboard is not built. Run `npm run build` in the relay's folder, then reload this page.\n",
      );
  });
}
