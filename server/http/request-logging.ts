import { randomUUID } from "node:crypto";
import type { IncomingMessage, ServerResponse } from "node:http";
import type { RequestHandler } from "express";
import { pinoHttp } from "pino-http";
import type { Logger } from "../logger.ts";
import { httpDuration, httpRequests } from "../metrics/relay-metrics.ts";

export const REQUEST_ID_HEADER = "X-Request-Id";

/** A client's request ID is kept only when it is this safe to log and echo. */
const CLIENT_REQUEST_ID = /^[A-Za-z0-9._:-]{1,128}$/;

/** Paths polled by load balancers and Prometheus, logged at debug level only. */
const PROBE_PATHS = new Set(["/healthz", "/readyz", "/metrics"]);

/** Three base64url parts joined by dots: the shape of a JWT. */
const JWT_SHAPE = /[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/g;

function pathOf(url: string | undefined): string {
  const path = (url ?? "/").split("?")[0];
  return path === undefined || path === "" ? "/" : path;
}

/** Returns the path of `url` with anything shaped like a JWT replaced, for the log. */
function loggedPath(url: string | undefined): string {
  return pathOf(url).replace(JWT_SHAPE, "[redacted]");
}

/**
 * Logs every HTTP request once, when its response ends, with a request ID
 * that handlers also log under `reqId` (through `request.log`). The ID is
 * the client's `X-Request-Id` when it is safe, else a new UUID, and the
 * response echoes it. The logged request carries no headers and no query
 * string, so credentials in either never reach the log, and a token
 * pasted into the path is redacted.
 */
export function requestLogging(logger: Logger): RequestHandler {
  return pinoHttp({
    logger,
    quietReqLogger: true,
    genReqId: (request: IncomingMessage, response: ServerResponse) => {
      const offered = request.headers["x-request-id"];
      const id =
        typeof offered === "string" && CLIENT_REQUEST_ID.test(offered)
          ? offered
          : randomUUID();
      response.setHeader(REQUEST_ID_HEADER, id);
      return id;
    },
    serializers: {
      req: (request: {
        method?: string;
        url?: string;
        remoteAddress?: string;
      }) => ({
        method: request.method,
        path: loggedPath(request.url),
        remoteAddress: request.remoteAddress,
      }),
      res: (response: { statusCode?: number }) => ({
        statusCode: response.statusCode,
      }),
    },
    customProps: (_request, response) => {
      const locals = (
        response as ServerResponse & {
          locals?: { userId?: string; errorCode?: string };
        }
      ).locals;
      const props: Record<string, string> = {};
      if (locals?.userId !== undefined) props.userId = locals.userId;
      if (locals?.errorCode !== undefined) props.errorCode = locals.errorCode;
      return props;
    },
    customLogLevel: (request, response, error) => {
      // Probes fail together during an outage; their failures are counted
      // by their own handlers, so they stay at debug here.
      if (PROBE_PATHS.has(pathOf(request.url))) return "debug";
      // 502, 503 and 504 report a bridge or Redis problem that the contract
      // defines (BRIDGE_ERROR, UNAVAILABLE, TIMEOUT), not a relay fault.
      if ([502, 503, 504].includes(response.statusCode)) return "warn";
      if (error !== undefined || response.statusCode >= 500) return "error";
      return "info";
    },
  });
}

/** Route label of the dashboard's files, which no Express route serves. */
export const DASHBOARD_METRICS_ROUTE = "dashboard";

/**
 * Counts every HTTP request in `relay_http_requests_total` and times it.
 * The route label is the matched Express route pattern, so bridge IDs never
 * become label values. It is `dashboard` for the dashboard's files and
 * `unmatched` when nothing served the request.
 */
export function requestMetrics(): RequestHandler {
  return (request, response, next) => {
    const stopTimer = httpDuration.startTimer();
    response.once("finish", () => {
      const routePath = (request.route as { path?: unknown } | undefined)?.path;
      const labelled = response.locals.metricsRoute as unknown;
      const route =
        typeof routePath === "string"
          ? `${request.baseUrl}${routePath}`
          : typeof labelled === "string"
            ? labelled
            : "unmatched";
      stopTimer({ method: request.method, route });
      httpRequests.inc({
        method: request.method,
        route,
        status: String(response.statusCode),
      });
    });
    next();
  };
}

/** Sets `X-Relay-Server` to this process's server ID, for tests and diagnostics. */
export function relayServerHeader(serverId: string): RequestHandler {
  return (_request, response, next) => {
    response.set("X-Relay-Server", serverId);
    next();
  };
}
