import {
  ERROR_CODES,
  type ErrorBody,
  type ErrorCode,
  type HandshakeErrorCode,
  type HandshakeErrorData,
} from "./protocol.ts";

/** Codes a RelayClientError carries: the acknowledgement and handshake codes. */
export type RelayClientErrorCode = ErrorCode | HandshakeErrorCode;

export interface RelayClientErrorOptions {
  /** Milliseconds to wait before retrying, with `RATE_LIMITED`. */
  retryAfterMs?: number | undefined;
  /** The bridge's own code and message, with `BRIDGE_ERROR`. */
  details?: ErrorBody["details"];
  /** The underlying error, such as Socket.IO's `connect_error`. */
  cause?: unknown;
}

/**
 * An error raised by the SDK: a failed acknowledgement, a rejected
 * handshake, a local timeout (`TIMEOUT`) or a missing connection
 * (`UNAVAILABLE`). Branch on `code`, which is stable, not on `message`.
 *
 * @example
 * try {
 *   await app.setLight(bridgeId, lightId, { on: { on: true } });
 * } catch (error) {
 *   if (error instanceof RelayClientError && error.code === "BRIDGE_OFFLINE") {
 *     showOffline(bridgeId);
 *   }
 * }
 */
export class RelayClientError extends Error {
  override readonly name = "RelayClientError";
  readonly code: RelayClientErrorCode;
  readonly retryAfterMs: number | undefined;
  readonly details: ErrorBody["details"];

  constructor(
    code: RelayClientErrorCode,
    message: string,
    options: RelayClientErrorOptions = {},
  ) {
    super(message, { cause: options.cause });
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
    this.details = options.details;
  }

  /**
   * Builds the error for the `error` object of a failed acknowledgement. A
   * code that this SDK version does not know becomes `INTERNAL`, with the
   * relay's code and message kept in `details`.
   */
  static fromBody(body: unknown): RelayClientError {
    const record = isRecord(body) ? body : {};
    const message =
      typeof record.message === "string" ? record.message : "request failed";
    const retryAfterMs = readNonNegative(record.retryAfterMs);
    if (!isErrorCode(record.code)) {
      const details = { code: String(record.code), message };
      return new RelayClientError("INTERNAL", message, { details });
    }
    const details = readDetails(record.details);
    return new RelayClientError(record.code, message, {
      retryAfterMs,
      details,
    });
  }
}

/** Returns true when `value` is one of the contract's error codes. */
export function isErrorCode(value: unknown): value is ErrorCode {
  return (ERROR_CODES as readonly unknown[]).includes(value);
}

/**
 * Reads the relay's `data` from a Socket.IO `connect_error`, or returns
 * undefined when the error carries none (a network failure, for example).
 */
export function readHandshakeError(
  error: unknown,
): HandshakeErrorData | undefined {
  if (!isRecord(error) || !isRecord(error.data)) return undefined;
  const { code, retryAfterMs } = error.data;
  if (!isHandshakeErrorCode(code)) return undefined;
  const data: HandshakeErrorData = { code };
  const delay = readNonNegative(retryAfterMs);
  if (delay !== undefined) data.retryAfterMs = delay;
  return data;
}

const HANDSHAKE_ERROR_CODES: ReadonlySet<unknown> = new Set<HandshakeErrorCode>(
  ["UNAUTHORIZED", "FORBIDDEN", "RATE_LIMITED", "UNAVAILABLE"],
);

function isHandshakeErrorCode(value: unknown): value is HandshakeErrorCode {
  return HANDSHAKE_ERROR_CODES.has(value);
}

/** Wraps any thrown value in a RelayClientError, keeping one as it is. */
export function toRelayClientError(
  error: unknown,
  code: RelayClientErrorCode = "INTERNAL",
): RelayClientError {
  if (error instanceof RelayClientError) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new RelayClientError(code, message, { cause: error });
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null;
}

function readNonNegative(value: unknown): number | undefined {
  return typeof value === "number" && Number.isFinite(value) && value >= 0
    ? value
    : undefined;
}

function readDetails(value: unknown): ErrorBody["details"] {
  if (!isRecord(value)) return undefined;
  if (typeof value.code !== "string" || typeof value.message !== "string") {
    return undefined;
  }
  return { code: value.code, message: value.message };
}
