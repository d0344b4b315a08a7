import {
  ERROR_CODES,
  MAX_COMMAND_ID_LENGTH,
  MAX_LIGHTS_PER_BRIDGE,
  type ErrorCode,
} from "../../client-sdk/src/protocol.ts";
import { STATUS_BY_CODE } from "./api-errors.ts";
import { HEADER_TOO_LARGE_STATUS } from "./client-errors.ts";

/**
 * OpenAPI 3.1 description of every HTTP route the relay serves, at
 * `GET /api/v1/openapi.json`. test/openapi.test.ts checks that its paths
 * and methods match the Express routes, and that each operation lists the
 * statuses its route can return.
 */

const json = (schema: object) => ({ "application/json": { schema } });
const ref = (name: string) => ({ $ref: `#/components/schemas/${name}` });

const ERROR_DESCRIPTIONS: Record<ErrorCode, string> = {
  INVALID_PAYLOAD:
    "INVALID_PAYLOAD: a path parameter, header or body field is invalid; the message names it",
  UNAUTHORIZED:
    "UNAUTHORIZED: the bearer token is missing, malformed, badly signed or expired",
  FORBIDDEN:
    "FORBIDDEN: the token is not an app token, or does not grant this bridge or scope",
  NOT_FOUND: "NOT_FOUND: the bridge has reported no light with that ID",
  BRIDGE_OFFLINE: "BRIDGE_OFFLINE: the bridge is not connected to the relay",
  PAYLOAD_TOO_LARGE: "PAYLOAD_TOO_LARGE: the body is over MAX_PAYLOAD_BYTES",
  RATE_LIMITED:
    "RATE_LIMITED: too many requests for this user, or too many commands the bridge's connection has not answered; wait Retry-After seconds",
  INTERNAL: "INTERNAL: unexpected error; details are logged, never sent",
  BRIDGE_ERROR:
    "BRIDGE_ERROR: the bridge refused the command or answered invalidly; error.details has its code",
  UNAVAILABLE: "UNAVAILABLE: Redis is unreachable; safe to retry",
  TIMEOUT: "TIMEOUT: the bridge did not answer within the command timeout",
};

function errorResponses(codes: ErrorCode[]) {
  const responses: Record<string, object> = {};
  for (const code of codes) {
    const response: Record<string, object | string> = {
      description: ERROR_DESCRIPTIONS[code],
      content: json(ref("ErrorResponse")),
    };
    if (code === "RATE_LIMITED") {
      response.headers = {
        "Retry-After": {
          description: "Seconds to wait before retrying, rounded up",
          schema: { type: "integer", minimum: 1 },
        },
      };
    }
    responses[String(STATUS_BY_CODE[code])] = response;
  }
  return responses;
}

const bridgeIdParameter = {
  name: "bridgeId",
  in: "path",
  required: true,
  description: "Bridge ID: 16 hexadecimal digits, in any case",
  schema: { type: "string", pattern: "^[0-9A-Fa-f]{16}$" },
};

const lightIdParameter = {
  name: "lightId",
  in: "path",
  required: true,
  description: "Light ID as the bridge reports it (CLIP v2 uses UUIDs)",
  schema: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" },
};

const lightFields = {
  metadata: {
    type: "object",
    required: ["name"],
    properties: {
      name: {
        type: "string",
        minLength: 1,
        maxLength: 32,
        // The pattern covers only the control characters. The rule on
        // invisible characters needs Unicode property escapes and
        // lookbehind, and validators built on Python's re (no \p{...}) or
        // Go's RE2 (no lookbehind) would fail on such a pattern.
        pattern: "^[^\\u0000-\\u001F\\u007F-\\u009F]*$",
        description:
          "1-32 Unicode code points, with no control characters (U+0000-U+001F, U+007F-U+009F) and no invisible or direction-changing characters: format characters (Cf), line and paragraph separators (Zl, Zp), default-ignorable code points other than variation selectors, and noncharacters. U+200D (zero-width joiner) is allowed between two emoji, and U+200C and U+200D between letters of the scripts that need them, such as Persian and Sinhala.",
      },
    },
  },
  on: {
    type: "object",
    required: ["on"],
    properties: { on: { type: "boolean" } },
  },
  dimming: {
    type: "object",
    required: ["brightness"],
    properties: { brightness: { type: "number", minimum: 0, maximum: 100 } },
  },
  color_temperature: {
    type: "object",
    required: ["mirek"],
    properties: {
      mirek: { type: ["integer", "null"], minimum: 50, maximum: 1000 },
    },
  },
  color: {
    type: "object",
    required: ["xy"],
    properties: {
      xy: {
        type: "object",
        required: ["x", "y"],
        properties: {
          x: { type: "number", minimum: 0, maximum: 1 },
          y: { type: "number", minimum: 0, maximum: 1 },
        },
      },
    },
  },
};

const schemas = {
  Light: {
    type: "object",
    description:
      "A light in the shape of a Hue CLIP v2 light resource, trimmed",
    required: ["id", "type", "on"],
    properties: {
      id: { type: "string", pattern: "^[A-Za-z0-9_-]{1,64}$" },
      type: { const: "light" },
      ...lightFields,
    },
  },
  LightPatch: {
    type: "object",
    description:
      "A light change. Each field it carries replaces the stored field whole. An id, if present, must equal the lightId in the path, else the request is INVALID_PAYLOAD. Unknown fields are dropped.",
    // At least one field of the light besides id.
    anyOf: Object.keys(lightFields).map((field) => ({ required: [field] })),
    properties: {
      id: {
        type: "string",
        description: "Must equal the lightId in the path when present",
      },
      type: {
        const: "light",
        description: "Optional. Any other value is INVALID_PAYLOAD",
      },
      ...lightFields,
    },
  },
  BridgePresence: {
    type: "object",
    required: ["bridgeId", "online", "lastSeen", "epoch"],
    properties: {
      bridgeId: { type: "string", pattern: "^[0-9a-f]{16}$" },
      online: { type: "boolean" },
      lastSeen: {
        type: ["string", "null"],
        format: "date-time",
        description: "Last connection or disconnection, null if never seen",
      },
      epoch: {
        type: "integer",
        minimum: 0,
        description:
          "Count of the bridge's connections, 0 if never connected. A lower epoch is older; at the same epoch, offline follows online.",
      },
    },
  },
  BridgeState: {
    allOf: [
      ref("BridgePresence"),
      {
        type: "object",
        required: ["version", "lights"],
        properties: {
          version: { type: "integer", minimum: 0 },
          lights: {
            type: "array",
            maxItems: MAX_LIGHTS_PER_BRIDGE,
            items: ref("Light"),
          },
        },
      },
    ],
  },
  ErrorResponse: {
    type: "object",
    required: ["error"],
    properties: {
      error: {
        type: "object",
        required: ["code", "message"],
        properties: {
          code: { enum: [...ERROR_CODES] },
          message: { type: "string" },
          retryAfterMs: {
            type: "integer",
            description:
              "With RATE_LIMITED: milliseconds until a retry may pass",
          },
          details: {
            type: "object",
            description: "With BRIDGE_ERROR: the bridge's own code and message",
            required: ["code", "message"],
            properties: {
              code: { type: "string" },
              message: { type: "string" },
            },
          },
        },
      },
    },
  },
};

const READ_ERRORS: ErrorCode[] = [
  "UNAUTHORIZED",
  "FORBIDDEN",
  "RATE_LIMITED",
  "INTERNAL",
  "UNAVAILABLE",
];

export const openApiDocument = {
  openapi: "3.1.0",
  info: {
    title: "bridge-relay HTTP API",
    version: "1.0.0",
    description:
      "HTTP access to the relay's app operations. Each route follows the rules of its Socket.IO event on /app; success bodies are that event's acknowledgement data.",
  },
  components: {
    securitySchemes: {
      appToken: {
        type: "http",
        scheme: "bearer",
        bearerFormat: "JWT",
        description: "An app token (role app), as for the /app namespace",
      },
    },
    schemas,
  },
  paths: {
    "/": {
      get: {
        summary: "The web dashboard, when `npm run build` has built it",
        responses: {
          "200": {
            description: "The dashboard's index.html",
            content: { "text/html": { schema: { type: "string" } } },
          },
          "404": {
            description:
              "The dashboard is not built; the text names the command that builds it",
            content: { "text/plain": { schema: { type: "string" } } },
          },
        },
      },
    },
    "/healthz": {
      get: {
        summary: "Liveness: 200 while the process runs",
        responses: {
          "200": {
            description: "The process runs",
            content: json({
              type: "object",
              properties: { status: { const: "ok" } },
            }),
          },
        },
      },
    },
    "/readyz": {
      get: {
        summary: "Readiness: 200 when this process can serve",
        responses: {
          "200": {
            description:
              "Redis (when configured) answers and the process is not draining",
            content: json({
              type: "object",
              properties: { status: { const: "ready" } },
            }),
          },
          "503": {
            description: "Draining before exit, or Redis unreachable",
            content: json({
              type: "object",
              properties: { status: { enum: ["draining", "unavailable"] } },
            }),
          },
        },
      },
    },
    "/metrics": {
      get: {
        summary:
          "Prometheus metrics of the whole machine (all workers and the primary)",
        responses: {
          "200": {
            description: "Prometheus text exposition format 0.0.4",
            content: { "text/plain": { schema: { type: "string" } } },
          },
          "503": {
            description:
              "The primary did not return the workers' metrics in time",
            content: { "text/plain": { schema: { type: "string" } } },
          },
        },
      },
    },
    "/api/v1/openapi.json": {
      get: {
        summary: "This document",
        responses: {
          "200": {
            description: "OpenAPI 3.1 document",
            content: json({ type: "object" }),
          },
        },
      },
    },
    "/api/v1/bridges": {
      get: {
        summary:
          "List the token's bridges with their presence (as bridge:list)",
        security: [{ appToken: [] }],
        responses: {
          "200": {
            description: "Every bridge the token grants, sorted by ID",
            content: json({
              type: "object",
              required: ["bridges"],
              properties: {
                bridges: { type: "array", items: ref("BridgePresence") },
              },
            }),
          },
          ...errorResponses(READ_ERRORS),
        },
      },
    },
    "/api/v1/bridges/{bridgeId}": {
      get: {
        summary:
          "Get a bridge's presence and lights (as the bridge:subscribe answer, without subscribing)",
        security: [{ appToken: [] }],
        parameters: [bridgeIdParameter],
        responses: {
          "200": {
            description:
              "The bridge's state; version 0 and no lights if it never reported",
            content: json(ref("BridgeState")),
          },
          ...errorResponses(["INVALID_PAYLOAD", ...READ_ERRORS]),
        },
      },
    },
    "/api/v1/bridges/{bridgeId}/lights/{lightId}": {
      put: {
        summary: "Send a light command to the bridge (as light:set)",
        description:
          "Needs the control scope. The relay answers once the bridge has answered, with the stored light after the change.",
        security: [{ appToken: [] }],
        parameters: [
          bridgeIdParameter,
          lightIdParameter,
          {
            name: "Idempotency-Key",
            in: "header",
            required: false,
            description:
              "The command's commandId: a repeat within 60 s of the bridge's answer returns that answer without reaching the bridge again. The same key with another light or body is INVALID_PAYLOAD",
            schema: {
              type: "string",
              minLength: 1,
              maxLength: MAX_COMMAND_ID_LENGTH,
            },
          },
        ],
        requestBody: {
          required: true,
          content: json(ref("LightPatch")),
        },
        responses: {
          "200": {
            description: "The bridge applied the change",
            content: json({
              type: "object",
              required: ["light"],
              properties: { light: ref("Light") },
            }),
          },
          ...errorResponses([
            "INVALID_PAYLOAD",
            "NOT_FOUND",
            "BRIDGE_OFFLINE",
            "PAYLOAD_TOO_LARGE",
            "BRIDGE_ERROR",
            "TIMEOUT",
            ...READ_ERRORS,
          ]),
          [String(HEADER_TOO_LARGE_STATUS)]: {
            description:
              "PAYLOAD_TOO_LARGE: the request line and headers are over Node.js's 16 KiB limit, e.g. an oversized Idempotency-Key",
            content: json(ref("ErrorResponse")),
          },
        },
      },
    },
  },
};
