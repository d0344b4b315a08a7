import assert from "node:assert/strict";
import type { AddressInfo } from "node:net";
import type { Express } from "express";
import { pino } from "pino";
import { TokenVerifier } from "../server/auth/verify.ts";
import { loadConfig } from "../server/config.ts";
import { API_BASE_PATH } from "../server/http/api.ts";
import { createHttpApp } from "../server/http/app.ts";
import { openApiDocument } from "../server/http/openapi.ts";
import { LocalBus } from "../server/messaging/server-bus.ts";
import { AppService } from "../server/relay/app-service.ts";
import { CommandRouter } from "../server/relay/command-router.ts";
import { MemoryStore } from "../server/state/memory-store.ts";
import { StallMonitor } from "../server/relay/stall-monitor.ts";
import { RateLimits } from "../server/transport/rate-limits.ts";
import { send } from "./support/http.ts";
import { TEST_SECRET } from "./support/relay-process.ts";

/** Statuses each API operation must document: the ones its route can return. */
const EXPECTED_STATUSES: Record<string, number[]> = {
  "GET /api/v1/bridges": [200, 401, 403, 429, 500, 503],
  "GET /api/v1/bridges/{bridgeId}": [200, 400, 401, 403, 429, 500, 503],
  "PUT /api/v1/bridges/{bridgeId}/lights/{lightId}": [
    200, 400, 401, 403, 404, 409, 413, 429, 431, 500, 502, 503, 504,
  ],
  "GET /readyz": [200, 503],
  "GET /metrics": [200, 503],
};

interface RouterLayer {
  route?: { path: string; methods: Record<string, boolean> };
  handle: { stack?: RouterLayer[] };
  rawPath?: string;
}

/** Lists `METHOD /path` of every route in an Express router, with OpenAPI path templates. */
function listRoutes(stack: RouterLayer[], prefix = ""): string[] {
  const routes: string[] = [];
  for (const layer of stack) {
    if (layer.route !== undefined) {
      const path = `${prefix}${layer.route.path}`.replace(
        /:([A-Za-z]+)/g,
        "{$1}",
      );
      for (const method of Object.keys(layer.route.methods)) {
        routes.push(`${method.toUpperCase()} ${path}`);
      }
    } else if (layer.handle.stack !== undefined) {
      const mount = typeof layer.rawPath === "string" ? layer.rawPath : "";
      routes.push(...listRoutes(layer.handle.stack, `${prefix}${mount}`));
    }
  }
  return routes.sort();
}

function documentedRoutes(): string[] {
  const routes: string[] = [];
  for (const [path, item] of Object.entries(openApiDocument.paths)) {
    for (const method of Object.keys(item)) {
      routes.push(`${method.toUpperCase()} ${path}`);
    }
  }
  return routes.sort();
}

function operation(route: string): { responses: Record<string, unknown> } {
  const [method, path] = route.split(" ") as [string, string];
  const paths = openApiDocument.paths as Record<
    string,
    Record<string, { responses: Record<string, unknown> }>
  >;
  const found = paths[path]?.[method.toLowerCase()];
  if (found === undefined) throw new Error(`${route} is not documented`);
  return found;
}

/** Collects every `$ref` value in `value`. */
function refsIn(value: unknown, found: string[] = []): string[] {
  if (Array.isArray(value)) {
    for (const item of value) refsIn(item, found);
  } else if (typeof value === "object" && value !== null) {
    for (const [key, item] of Object.entries(value)) {
      if (key === "$ref" && typeof item === "string") found.push(item);
      else refsIn(item, found);
    }
  }
  return found;
}

function buildApp(): { app: Express; close: () => Promise<void> } {
  const config = loadConfig({ AUTH_SECRET: TEST_SECRET });
  const logger = pino({ level: "silent" });
  const store = new MemoryStore();
  const router = new CommandRouter(
    new LocalBus("openapi-test"),
    async () => ({
      ok: false,
      error: { code: "BRIDGE_OFFLINE", message: "no bridges in this test" },
    }),
    1000,
    logger,
  );
  const app = createHttpApp({
    checkDependencies: () => store.ping(),
    isDraining: () => false,
    logger,
    api: {
      service: new AppService(store, router),
      verifier: new TokenVerifier({ ...config.auth, secret: TEST_SECRET }),
      limits: new RateLimits(config, undefined),
      stalls: new StallMonitor(config.commandTimeoutMs),
      maxPayloadBytes: config.maxPayloadBytes,
      linger: config.linger,
      logger,
    },
    scrapeMetrics: async () => "",
    serverId: "openapi-test",
    production: false,
  });
  return { app, close: () => store.close() };
}

describe("openapi document", () => {
  let built: ReturnType<typeof buildApp>;

  before(() => {
    built = buildApp();
  });
  after(async () => built?.close());

  it("documents every Express route", () => {
    const stack = (built.app.router as unknown as { stack: RouterLayer[] })
      .stack;
    const routes = listRoutes(stack);
    assert.ok(
      routes.includes("PUT /api/v1/bridges/{bridgeId}/lights/{lightId}"),
      `the route walk found the API router: ${routes.join(", ")}`,
    );
    assert.deepEqual(documentedRoutes(), routes);
  });

  for (const [route, statuses] of Object.entries(EXPECTED_STATUSES)) {
    it(`lists the statuses of ${route}`, () => {
      const documented = Object.keys(operation(route).responses)
        .map(Number)
        .sort((a, b) => a - b);
      assert.deepEqual(documented, statuses);
    });
  }

  it("declares OpenAPI 3.1 with resolvable references", () => {
    assert.equal(openApiDocument.openapi, "3.1.0");
    const schemas = openApiDocument.components.schemas as Record<
      string,
      unknown
    >;
    const refs = refsIn(openApiDocument);
    assert.ok(refs.length > 0);
    for (const ref of refs) {
      const name = ref.replace("#/components/schemas/", "");
      assert.ok(ref.startsWith("#/components/schemas/"), ref);
      assert.ok(name in schemas, `${ref} resolves`);
    }
  });

  it("forbids control characters in names", () => {
    const { schemas } = openApiDocument.components;
    for (const schema of ["Light", "LightPatch"] as const) {
      const { pattern } = schemas[schema].properties.metadata.properties.name;
      // JSON Schema patterns are ECMA-262 regular expressions.
      const namePattern = new RegExp(pattern, "u");
      const rejected = [
        "Lamp\u0000",
        "Hall\nway",
        "\u001f",
        "\u007f",
        "\u0080",
        "Lamp\u0085",
        "\u009f",
      ];
      for (const name of rejected) {
        assert.equal(namePattern.test(name), false, JSON.stringify(name));
      }
      for (const name of ["Lamp 1", "Desk ~", "\u00a0\u00a1", "灯💡"]) {
        assert.equal(namePattern.test(name), true, JSON.stringify(name));
      }
    }
  });

  it("serves the document at its path", async () => {
    const server = built.app.listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const response = await send(
        `http://127.0.0.1:${port}${API_BASE_PATH}/openapi.json`,
      );
      assert.equal(response.status, 200);
      assert.match(String(response.headers["content-type"]), /json/);
      assert.deepEqual(
        response.body,
        JSON.parse(JSON.stringify(openApiDocument)),
      );
    } finally {
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
