import express, {
  type Request,
  type RequestHandler,
  type Response,
  type Router,
} from "express";
import { z } from "zod";
import type { AppIdentity } from "../auth/identity.ts";
import type { TokenVerifier } from "../auth/verify.ts";
import { declaredBodyLength, hasBody } from "../cluster/stalled-connections.ts";
import { RelayError } from "../errors.ts";
import type { Logger } from "../logger.ts";
import {
  bridgeIdSchema,
  commandIdSchema,
  lightIdSchema,
  lightPatchSchema,
} from "../protocol/schemas.ts";
import { parsePayload } from "../protocol/validate.ts";
import { authorize, type AppService } from "../relay/app-service.ts";
import { lateCommandError, type StallMonitor } from "../relay/stall-monitor.ts";
import { bridgeListCost, type RateLimits } from "../transport/rate-limits.ts";
import { apiErrorHandler, sendError } from "./api-errors.ts";
import { authenticateApp } from "./bearer-auth.ts";
import {
  closeLingering,
  destroyRequestConnection,
  type LingerLimits,
} from "./lingering-close.ts";
import { openApiDocument } from "./openapi.ts";

/** Path under which the API router is mounted. */
export const API_BASE_PATH = "/api/v1";

export interface ApiDeps {
  service: AppService;
  verifier: TokenVerifier;
  limits: RateLimits;
  /** Largest request body, in bytes (`MAX_PAYLOAD_BYTES`). */
  maxPayloadBytes: number;
  /** Bounds of the lingering close after a 413 or another early response. */
  linger: LingerLimits;
  logger: Logger;
  /** Tells whether a command read now may have waited through a stall. */
  stalls: StallMonitor;
}

const bridgePathSchema = z.object({ bridgeId: bridgeIdSchema });
const lightPathSchema = z.object({
  bridgeId: bridgeIdSchema,
  lightId: lightIdSchema,
});
/** Printable ASCII, space included. */
const PRINTABLE_ASCII = /^[\x20-\x7e]*$/;

/**
 * HTTP carries header values as Latin-1 bytes, so a key with other
 * characters would name another command than the same `commandId` sent
 * over a socket: only printable ASCII is accepted.
 */
const idempotencyKeySchema = z.object({
  "Idempotency-Key": commandIdSchema
    .refine((key) => PRINTABLE_ASCII.test(key), {
      message: "must be printable ASCII",
    })
    .optional(),
});

/**
 * Returns the request's `Idempotency-Key`, if any. Node joins repeated
 * headers with ", ", which would make two keys one, so a repeated header
 * is `INVALID_PAYLOAD`.
 */
function idempotencyKeyOf(request: Request): string | undefined {
  const values = request.headersDistinct["idempotency-key"] ?? [];
  if (values.length > 1) {
    throw new RelayError(
      "INVALID_PAYLOAD",
      "invalid Idempotency-Key: send the header once",
    );
  }
  return parsePayload(idempotencyKeySchema, { "Idempotency-Key": values[0] })[
    "Idempotency-Key"
  ];
}

/** Response locals set by `authenticate`. */
interface ApiLocals {
  /** True when the request was read right after a stall of this process. */
  lateInput: boolean;
  identity: AppIdentity;
  /** Logged on the request's completion line. */
  userId: string;
}

/**
 * Creates the HTTP API router, to be mounted at `API_BASE_PATH`. Each
 * route runs the checks of its Socket.IO event, in the contract's order
 * (payload schema, grants and scope, rate limit, then the service's
 * presence and light checks), through the same schemas, `authorize` and
 * `AppService`. Authentication comes first, and the request body is read
 * only after it succeeds. A body whose `Content-Length` is over
 * `maxPayloadBytes` is rejected next, before it is read.
 */
export function createApiRouter(deps: ApiDeps): Router {
  const router = express.Router();
  const { service } = deps;
  // Noted on arrival: the body is read in later loop turns.
  router.use((_request, response, next) => {
    (response.locals as ApiLocals).lateInput = deps.stalls.inputMayBeLate;
    next();
  });
  const authenticate = authenticateWith(deps.verifier);
  const limitRate = rateLimitPerUser(deps.limits);

  router.get("/openapi.json", (_request, response) => {
    response.json(openApiDocument);
  });

  router.get("/bridges", authenticate, async (_request, response) => {
    const { identity } = response.locals as ApiLocals;
    authorize(identity, "read");
    await limitRate(identity, bridgeListCost(identity.bridges.size));
    response.json({ bridges: await service.listBridges(identity) });
  });

  router.get("/bridges/:bridgeId", authenticate, async (request, response) => {
    const { identity } = response.locals as ApiLocals;
    const { bridgeId } = parsePayload(bridgePathSchema, request.params);
    authorize(identity, "read", bridgeId);
    await limitRate(identity);
    response.json(await service.getBridge(bridgeId));
  });

  router.put(
    "/bridges/:bridgeId/lights/:lightId",
    authenticate,
    limitRequestBody(deps.maxPayloadBytes, deps.linger, deps.logger),
    express.json({ limit: deps.maxPayloadBytes }),
    async (request, response) => {
      const { identity, lateInput } = response.locals as ApiLocals;
      const { bridgeId, lightId } = parsePayload(
        lightPathSchema,
        request.params,
      );
      const body = jsonBody(request.body);
      rejectOtherLightId(body, lightId);
      const change = parsePayload(lightPatchSchema, body);
      const commandId = idempotencyKeyOf(request);
      authorize(identity, "control", bridgeId);
      if (lateInput) throw lateCommandError();
      await limitRate(identity);
      const light = await service.setLight({
        bridgeId,
        lightId,
        change,
        commandId,
      });
      response.json({ light });
    },
  );

  router.use((request) => {
    throw new RelayError(
      "NOT_FOUND",
      `no route ${request.method} ${API_BASE_PATH}${request.path}`,
    );
  });
  router.use(apiErrorHandler(deps.maxPayloadBytes, deps.logger));
  return router;
}

/**
 * Rejects a request whose `Content-Length` is over `maxBytes` with
 * `PAYLOAD_TOO_LARGE` before any of its body is read. express.json
 * (body-parser 2.4) compares the same header with its limit, but reads
 * and drops the whole body before it reports the error. A client that
 * stalled after the header therefore got the 408 of the body timeout
 * instead. An encoded body is held to the limit as sent, here, and as
 * decoded, by express.json.
 *
 * A body without `Content-Length` (chunked) is counted as it arrives, and
 * once it passes `maxBytes` the relay answers `PAYLOAD_TOO_LARGE` and closes
 * the connection lingering (`closeLingering`). express.json would otherwise read such a body to its
 * end before it answered, and a client could stream one for good.
 */
function limitRequestBody(
  maxBytes: number,
  linger: LingerLimits,
  logger: Logger,
): RequestHandler {
  return (request, response, next) => {
    const length = declaredBodyLength(request);
    if (length !== undefined && length > maxBytes) {
      throw new RelayError(
        "PAYLOAD_TOO_LARGE",
        `request body of ${length} bytes (Content-Length) is over the limit of ${maxBytes} bytes`,
      );
    }
    if (length === undefined && hasBody(request)) {
      closeChunkedBodyPastLimit(request, response, maxBytes, linger, logger);
    }
    next();
  };
}

/**
 * Counts the chunks of `request` beside express.json, which starts reading
 * in the same tick, and responds with 413 and closes the connection lingering
 * once they pass `maxBytes`. express.json's own error for the body comes
 * after the 413 has been written, so its handler sends nothing.
 */
function closeChunkedBodyPastLimit(
  request: Request,
  response: Response,
  maxBytes: number,
  linger: LingerLimits,
  logger: Logger,
): void {
  let received = 0;
  const count = (chunk: Buffer): void => {
    received += chunk.length;
    if (received <= maxBytes) return;
    request.off("data", count);
    if (response.writableFinished) {
      destroyRequestConnection(request);
      return;
    }
    closeLingering(request, response, linger);
    if (response.headersSent) return;
    const error = new RelayError(
      "PAYLOAD_TOO_LARGE",
      `request body is over the limit of ${maxBytes} bytes`,
    );
    sendError(response, error, request.log ?? logger);
  };
  request.on("data", count);
}

/** Verifies the bearer token and stores the identity in `response.locals`. */
function authenticateWith(verifier: TokenVerifier): RequestHandler {
  return async (request, response, next) => {
    const identity = await authenticateApp(request, verifier);
    const locals = response.locals as ApiLocals;
    locals.identity = identity;
    locals.userId = identity.userId;
    next();
  };
}

/**
 * Counts a request against the user's budget, so every token of one user
 * shares it, on every process (`REQUESTS_PER_SOCKET_PER_10S` per 10 s).
 */
function rateLimitPerUser(
  limits: RateLimits,
): (identity: AppIdentity, cost?: number) => Promise<void> {
  return (identity, cost = 1) =>
    limits.consumeApiRequest(identity.userId, cost);
}

/**
 * Throws `INVALID_PAYLOAD` when the body has an `id` other than `lightId`,
 * the light in the path. The patch schema drops unknown fields, so such
 * an `id` would otherwise be ignored and the command sent to the path's
 * light. An `id` equal to the path's is accepted and dropped.
 */
function rejectOtherLightId(body: unknown, lightId: string): void {
  if (typeof body !== "object" || body === null) return;
  if (!Object.hasOwn(body, "id")) return;
  const { id } = body as { id: unknown };
  if (id === lightId) return;
  if (typeof id !== "string") {
    throw new RelayError(
      "INVALID_PAYLOAD",
      `invalid id: must be a string, got ${id === null ? "null" : typeof id}. Leave id out or send the path's light ID`,
    );
  }
  const sent = JSON.stringify(id).slice(0, 80);
  throw new RelayError(
    "INVALID_PAYLOAD",
    `invalid id: ${sent} differs from the light ID ${JSON.stringify(lightId)} in the path. Leave id out or send the path's light ID`,
  );
}

/** Returns the parsed JSON body, or throws when the request carried none. */
function jsonBody(body: unknown): unknown {
  if (body === undefined) {
    throw new RelayError(
      "INVALID_PAYLOAD",
      "missing JSON body: send a light change with Content-Type: application/json",
    );
  }
  return body;
}
