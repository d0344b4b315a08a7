import type { z } from "zod";
import { RelayError } from "../errors.ts";

function formatPath(path: readonly PropertyKey[]): string {
  let text = "";
  for (const key of path) {
    if (typeof key === "number") text += `[${key}]`;
    else text += text === "" ? String(key) : `.${String(key)}`;
  }
  return text === "" ? "payload" : text;
}

/** Describes the first issue of a failed parse, naming its field, e.g. `invalid lights[2].on: ...`. */
export function describeFirstIssue(error: z.ZodError): string {
  const issue = error.issues[0];
  const field = issue ? formatPath(issue.path) : "payload";
  const reason = issue?.message ?? "is invalid";
  return `invalid ${field}: ${reason}`;
}

/**
 * Parses `input` with `schema`, or throws an `INVALID_PAYLOAD` error whose
 * message names the first offending field, e.g. `lights[2].dimming.brightness`.
 */
export function parsePayload<S extends z.ZodType>(
  schema: S,
  input: unknown,
): z.output<S> {
  const result = schema.safeParse(input);
  if (result.success) return result.data;
  throw new RelayError("INVALID_PAYLOAD", describeFirstIssue(result.error));
}
