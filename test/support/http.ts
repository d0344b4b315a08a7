import { request as httpRequest, type IncomingHttpHeaders } from "node:http";

export interface HttpResponse {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  body: unknown;
  /** `X-Relay-Server`: the server ID of the worker that responded. */
  servedBy: string | undefined;
}

export interface HttpOptions {
  method?: string;
  headers?: Record<string, string>;
  /** Header names and values, alternately, sent after `headers`; a name may repeat. */
  repeatedHeaders?: string[];
  body?: string | Buffer;
  /**
   * Body written in these parts, ahead of `body` when both are set. The
   * request then has no Content-Length, so Node sends it with
   * Transfer-Encoding: chunked.
   */
  bodyParts?: (string | Buffer)[];
}

/**
 * Sends one HTTP request on a new connection (no keep-alive agent), so the
 * cluster primary balances each request to the next worker round-robin.
 */
export function send(
  url: string,
  options: HttpOptions = {},
): Promise<HttpResponse> {
  return new Promise((resolve, reject) => {
    const outgoing = httpRequest(
      url,
      {
        method: options.method ?? "GET",
        headers:
          options.repeatedHeaders === undefined
            ? (options.headers ?? {})
            : [
                // Node adds no Host header to headers given as a list, and
                // sends a body with them chunked, without Content-Length.
                "Host",
                new URL(url).host,
                ...(options.body === undefined
                  ? []
                  : [
                      "Content-Length",
                      String(Buffer.byteLength(options.body)),
                    ]),
                ...Object.entries(options.headers ?? {}).flat(),
                ...options.repeatedHeaders,
              ],
        agent: false,
        timeout: 10_000,
      },
      (incoming) => {
        const chunks: Buffer[] = [];
        incoming.on("data", (chunk: Buffer) => chunks.push(chunk));
        incoming.on("error", reject);
        incoming.on("end", () => {
          const text = Buffer.concat(chunks).toString("utf8");
          let body: unknown;
          try {
            body = JSON.parse(text);
          } catch {
            body = undefined;
          }
          const served = incoming.headers["x-relay-server"];
          resolve({
            status: incoming.statusCode ?? 0,
            headers: incoming.headers,
            text,
            body,
            servedBy: typeof served === "string" ? served : undefined,
          });
        });
      },
    );
    outgoing.on("timeout", () => {
      outgoing.destroy(
        new Error(`${options.method ?? "GET"} ${url} timed out`),
      );
    });
    outgoing.on("error", reject);
    for (const part of options.bodyParts ?? []) outgoing.write(part);
    outgoing.end(options.body);
  });
}

/** Sends JSON with `Content-Type: application/json`. */
export function sendJson(
  url: string,
  method: string,
  body: unknown,
  headers: Record<string, string> = {},
): Promise<HttpResponse> {
  return send(url, {
    method,
    headers: { "Content-Type": "application/json", ...headers },
    body: JSON.stringify(body),
  });
}

/** Returns `Authorization: Bearer <token>`. */
export function bearer(token: string): Record<string, string> {
  return { Authorization: `Bearer ${token}` };
}

/**
 * Repeats `attempt` until a worker other than `avoidServerId` answers it
 * and returns that response. Round-robin makes this take one or two tries
 * with 2 workers; each try is a new request, so `attempt` must tolerate
 * being repeated.
 */
export async function sendElsewhere(
  attempt: (index: number) => Promise<HttpResponse>,
  avoidServerId: string,
  attempts = 8,
): Promise<HttpResponse> {
  for (let index = 0; index < attempts; index += 1) {
    const response = await attempt(index);
    if (response.servedBy === undefined)
      throw new Error("the response has no X-Relay-Server header");
    if (response.servedBy !== avoidServerId) return response;
  }
  throw new Error(`every request was served by ${avoidServerId}`);
}

/** The `{ error: { code, message } }` body of an error response. */
export function errorOf(response: HttpResponse): {
  code: string;
  message: string;
  retryAfterMs?: number;
  details?: { code: string; message: string };
} {
  const body = response.body as { error?: { code: string; message: string } };
  if (body?.error === undefined)
    throw new Error(
      `not an error body (status ${response.status}): ${response.text}`,
    );
  return body.error;
}
