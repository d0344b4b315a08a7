import type { ErrorRequestHandler, Response } from "express";
import type { ErrorCode } from "../../client-sdk/src/protocol.ts";
import { RelayError, toErrorBody } from "../errors.ts";
import type { Logger } from "../logger.ts";

/** HTTP status of each error code of the contract. */
export const STATUS_BY_CODE: Record<ErrorCode, number> = {
  INVALID_PAYLOAD: 400,
  UNAUTHORIZED: 401,
  FORBIDDEN: 403,
  NOT_FOUND: 404,
  BRIDGE_OFFLINE: 409,
  PAYLOAD_TOO_LARGE: 413,
  RATE_LIMITED: 429,
  INTERNAL: 500,
  BRIDGE_ERROR: 502,
  UNAVAILABLE: 503,
  TIMEOUT: 504,
};

/**
 * Sends `{ error: { code, message, ... } }` with the code's status. A
 * `RATE_LIMITED` response also gets `Retry-After` in whole seconds, rounded
 * up. Errors other than RelayError become `INTERNAL` and are logged in
 * full, because their message may carry internal details.
 */
export function sendError(
  response: Response,
  error: unknown,
  logger: Logger,
): void {
  const body = toErrorBody(error);
  if (error instanceof RelayError) {
    logger.debug(
      { code: body.code, reason: body.message },
      "http request rejected",
    );
  } else {
    logger.error({ err: error }, "http request handler failed");
  }
  if (body.retryAfterMs !== undefined) {
    response.set("Retry-After", String(Math.ceil(body.retryAfterMs / 1000)));
  }
  if (body.code === "UNAUTHORIZED") response.set("WWW-Authenticate", "Bearer");
  // Logged on the request's completion line.
  response.locals.errorCode = body.code;
  response.status(STATUS_BY_CODE[body.code]).json({ error: body });
}

/** Error raised by body-parser (express.json), which carries a `type` and a `status`. */
interface BodyParserError {
  type: string;
  status: number;
  /** The raw body, on a parse failure. */
  body?: unknown;
}

function isJson(text: unknown): boolean {
  if (typeof text !== "string") return false;
  try {
    JSON.parse(text);
    return true;
  } catch {
    return false;
  }
}

function isBodyParserError(error: unknown): error is BodyParserError {
  return (
    typeof error === "object" &&
    error !== null &&
    typeof (error as BodyParserError).status === "number"
  );
}

/**
 * Turns body-parser's errors into the contract's codes: a body over the
 * limit is `PAYLOAD_TOO_LARGE`, and malformed JSON, an unsupported charset
 * or encoding, or an aborted upload is `INVALID_PAYLOAD`.
 */
export function toBodyError(error: unknown, maxBytes: number): unknown {
  // Express raises a URIError, with status 400, for a path parameter
  // whose percent-encoding does not decode.
  if (error instanceof URIError) {
    return new RelayError(
      "INVALID_PAYLOAD",
      "request path is not valid percent-encoding: encode each byte as %XX",
    );
  }
  if (!isBodyParserError(error)) return error;
  if (error.type === "entity.too.large") {
    return new RelayError(
      "PAYLOAD_TOO_LARGE",
      `request body is over the limit of ${maxBytes} bytes`,
    );
  }
  if (error.type === "entity.parse.failed") {
    // express.json parses only objects and arrays, so valid JSON such as
    // `null` or `"on"` fails here too.
    const message = isJson(error.body)
      ? "request body must be a JSON object"
      : "request body is not valid JSON";
    return new RelayError("INVALID_PAYLOAD", message);
  }
  if (error.status >= 400 && error.status < 500) {
    // A body whose Content-Encoding does not decode fails in zlib, whose
    // errors carry status 400 but no body-parser type.
    const reason =
      typeof error.type === "string"
        ? error.type
        : "undecodable content encoding";
    return new RelayError(
      "INVALID_PAYLOAD",
      `request body could not be read (${reason})`,
    );
  }
  return error;
}

/** Express error handler of the API: every error leaves as the contract's JSON body. */
export function apiErrorHandler(
  maxBytes: number,
  logger: Logger,
): ErrorRequestHandler {
  return (error: unknown, request, response, _next) => {
    if (response.headersSent) {
      // Express's own handler would print the stack outside the logs. An
      // error after the response began is a client that went away or a
      // body the relay gave up on. A response cut short is destroyed with
      // its connection. One written in full is left alone, since the
      // connection after a 413 must close lingering, not with a reset.
      (request.log ?? logger).debug(
        { err: error },
        "http request failed after its response began",
      );
      if (!response.writableEnded) response.destroy();
      return;
    }
    sendError(response, toBodyError(error, maxBytes), request.log ?? logger);
  };
}
