import type { ErrorBody, ErrorCode } from "../client-sdk/src/protocol.ts";

/**
 * An error with one of the contract's codes. Its message is sent to the
 * client as it is, so it must never carry secrets or internal details.
 */
export class RelayError extends Error {
  readonly code: ErrorCode;
  readonly retryAfterMs: number | undefined;
  readonly details: ErrorBody["details"];

  constructor(
    code: ErrorCode,
    message: string,
    options: { retryAfterMs?: number; details?: ErrorBody["details"] } = {},
  ) {
    super(message);
    this.name = "RelayError";
    this.code = code;
    this.retryAfterMs = options.retryAfterMs;
    this.details = options.details;
  }

  toBody(): ErrorBody {
    const body: ErrorBody = { code: this.code, message: this.message };
    if (this.retryAfterMs !== undefined) body.retryAfterMs = this.retryAfterMs;
    if (this.details !== undefined) body.details = this.details;
    return body;
  }
}

/** Returns the body sent to the client for any thrown value. */
export function toErrorBody(error: unknown): ErrorBody {
  if (error instanceof RelayError) return error.toBody();
  return { code: "INTERNAL", message: "internal error" };
}
