import assert from "node:assert/strict";
import { once } from "node:events";
import {
  connect as connectSocket,
  type AddressInfo,
  type Socket as NetSocket,
} from "node:net";
import express from "express";
import { pino } from "pino";
import type { Socket } from "socket.io-client";
import type {
  BridgePresence,
  BridgeState,
  Light,
  LightSetCommand,
} from "../client-sdk/src/protocol.ts";
import { TokenVerifier } from "../server/auth/verify.ts";
import { loadConfig } from "../server/config.ts";
import { API_BASE_PATH, createApiRouter } from "../server/http/api.ts";
import { LocalBus } from "../server/messaging/server-bus.ts";
import { AppService } from "../server/relay/app-service.ts";
import { CommandRouter } from "../server/relay/command-router.ts";
import { MemoryStore } from "../server/state/memory-store.ts";
import { StallMonitor } from "../server/relay/stall-monitor.ts";
import { RateLimits } from "../server/transport/rate-limits.ts";
import {
  connectBridge,
  randomBridgeId,
  requestData,
} from "./support/clients.ts";
import { answerLightSet, untypedLightMap } from "./support/fake-bridge.ts";
import { light } from "./support/fixtures.ts";
import {
  bearer,
  errorOf,
  send,
  sendElsewhere,
  sendJson,
  type HttpResponse,
} from "./support/http.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";
import {
  startRelay,
  TEST_SECRET,
  type RelayProcess,
} from "./support/relay-process.ts";
import { appToken, bridgeToken } from "./support/tokens.ts";

/** Largest body the test relay accepts, in bytes. */
const MAX_PAYLOAD_BYTES = 4096;
/** HTTP requests allowed per user per 10 s on each worker. */
const REQUESTS_PER_10S = 25;

/**
 * Acknowledges every `light:set` with the value `answer` returns, and
 * leaves the command unacknowledged when that value is undefined.
 */
function answerCommands(
  bridge: Socket,
  answer: (command: LightSetCommand) => unknown,
): void {
  bridge.on(
    "light:set",
    (command: LightSetCommand, ack: (answer: unknown) => void) => {
      const reply = answer(command);
      if (reply !== undefined) ack(reply);
    },
  );
}

async function serverOf(socket: Socket): Promise<string> {
  const info = await requestData<{ serverId: string }>(
    socket,
    "relay:info",
    {},
  );
  return info.serverId;
}

function assertError(
  response: HttpResponse,
  status: number,
  code: string,
): void {
  assert.equal(response.status, status, response.text);
  assert.equal(errorOf(response).code, code, response.text);
  assert.match(String(response.headers["content-type"]), /application\/json/);
}

describe("http api: 2 workers on Redis", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let relay: RelayProcess;
  let url: string;
  const sockets: Socket[] = [];
  const track = (socket: Socket): Socket => {
    sockets.push(socket);
    return socket;
  };

  /** Connects a bridge with lights `a` and `b` and returns it with its server ID. */
  const onlineBridge = async (
    bridgeId: string,
  ): Promise<{ bridge: Socket; serverId: string }> => {
    const bridge = track(await connectBridge(url, bridgeId));
    await requestData(bridge, "state:snapshot", {
      lights: [light("a"), light("b")],
    });
    return { bridge, serverId: await serverOf(bridge) };
  };
  const tokenFor = (bridges: string[], scope = "read control") =>
    appToken(`user-${randomBridgeId()}`, bridges, scope);
  const lightUrl = (bridgeId: string, lightId: string) =>
    `${url}${API_BASE_PATH}/bridges/${bridgeId}/lights/${lightId}`;

  before(async () => {
    redis = await startRedisServer();
    relay = await startRelay({
      redisUrl: redis.url,
      workers: 2,
      env: {
        MAX_PAYLOAD_BYTES: String(MAX_PAYLOAD_BYTES),
        REQUESTS_PER_SOCKET_PER_10S: String(REQUESTS_PER_10S),
        COMMAND_TIMEOUT_MS: "1000",
      },
    });
    url = relay.url;
  });
  afterEach(() => {
    for (const socket of sockets.splice(0)) socket.close();
  });
  after(async () => {
    await relay?.stop();
    await redis?.stop();
  });

  it("lists the token's bridges", async () => {
    const online = randomBridgeId();
    const never = randomBridgeId();
    const { serverId } = await onlineBridge(online);
    const token = await tokenFor([online, never], "read");
    const response = await sendElsewhere(
      () => send(`${url}${API_BASE_PATH}/bridges`, { headers: bearer(token) }),
      serverId,
    );
    assert.equal(response.status, 200, response.text);
    assert.notEqual(response.servedBy, serverId);
    const { bridges } = response.body as { bridges: BridgePresence[] };
    const expected = [online, never].sort();
    assert.deepEqual(
      bridges.map((entry) => entry.bridgeId),
      expected,
    );
    const byId = new Map(bridges.map((entry) => [entry.bridgeId, entry]));
    assert.equal(byId.get(online)?.online, true);
    assert.equal(typeof byId.get(online)?.lastSeen, "string");
    assert.equal(byId.get(never)?.online, false);
    assert.equal(byId.get(never)?.lastSeen, null);
  });

  it("gets a bridge by ID in any case", async () => {
    const bridgeId = randomBridgeId();
    const { serverId } = await onlineBridge(bridgeId);
    const token = await tokenFor([bridgeId], "read");
    const response = await sendElsewhere(
      () =>
        send(`${url}${API_BASE_PATH}/bridges/${bridgeId.toUpperCase()}`, {
          headers: bearer(token),
        }),
      serverId,
    );
    assert.equal(response.status, 200, response.text);
    const state = response.body as BridgeState;
    assert.equal(state.bridgeId, bridgeId);
    assert.equal(state.online, true);
    assert.equal(state.version, 1);
    assert.deepEqual(state.lights.map((entry) => entry.id).sort(), ["a", "b"]);
  });

  it("gets a never-seen bridge at version 0", async () => {
    const bridgeId = randomBridgeId();
    const token = await tokenFor([bridgeId], "read");
    const response = await send(`${url}${API_BASE_PATH}/bridges/${bridgeId}`, {
      headers: bearer(token),
    });
    assert.equal(response.status, 200, response.text);
    assert.deepEqual(response.body, {
      bridgeId,
      online: false,
      lastSeen: null,
      epoch: 0,
      version: 0,
      lights: [],
    });
  });

  it("sets a light across workers", async () => {
    const bridgeId = randomBridgeId();
    const { bridge, serverId } = await onlineBridge(bridgeId);
    const received = answerLightSet(bridge, untypedLightMap("a", "b"));
    const token = await tokenFor([bridgeId.toUpperCase()]);
    const response = await sendElsewhere(
      (index) =>
        sendJson(
          lightUrl(bridgeId.toUpperCase(), "a"),
          "PUT",
          { on: { on: true }, dimming: { brightness: 80 } },
          { ...bearer(token), "Idempotency-Key": `cross-${index}` },
        ),
      serverId,
    );
    assert.equal(response.status, 200, response.text);
    assert.notEqual(response.servedBy, serverId, "served by the other worker");

    const { light: answered } = response.body as { light: Light };
    assert.deepEqual(answered.on, { on: true });
    assert.deepEqual(answered.dimming, { brightness: 80 });
    assert.equal(answered.type, "light");
    const commandId = received.at(-1)?.commandId;
    assert.match(String(commandId), /^cross-\d$/);
    assert.deepEqual(received.at(-1)?.change, {
      on: { on: true },
      dimming: { brightness: 80 },
    });

    const state = await send(`${url}${API_BASE_PATH}/bridges/${bridgeId}`, {
      headers: bearer(token),
    });
    const stored = (state.body as BridgeState).lights.find(
      (entry) => entry.id === "a",
    );
    assert.deepEqual(stored?.dimming, { brightness: 80 });
  });

  it("makes up a commandId without Idempotency-Key", async () => {
    const bridgeId = randomBridgeId();
    const { bridge } = await onlineBridge(bridgeId);
    const received = answerLightSet(bridge, untypedLightMap("a", "b"));
    const token = await tokenFor([bridgeId]);
    const response = await sendJson(
      lightUrl(bridgeId, "b"),
      "PUT",
      { on: { on: true } },
      bearer(token),
    );
    assert.equal(response.status, 200, response.text);
    assert.equal(received.length, 1);
    assert.ok(received[0]!.commandId.length > 0);
  });

  it("repeats an Idempotency-Key without the bridge", async () => {
    const bridgeId = randomBridgeId();
    const { bridge } = await onlineBridge(bridgeId);
    const received = answerLightSet(bridge, untypedLightMap("a", "b"));
    const token = await tokenFor([bridgeId]);
    const put = () =>
      sendJson(
        lightUrl(bridgeId, "a"),
        "PUT",
        { dimming: { brightness: 10 } },
        { ...bearer(token), "Idempotency-Key": "repeat-me" },
      );
    const first = await put();
    const second = await put();
    assert.equal(first.status, 200, first.text);
    assert.equal(second.status, 200, second.text);
    assert.notEqual(first.servedBy, second.servedBy, "both workers answered");
    assert.deepEqual(second.body, first.body);
    assert.equal(received.length, 1, "the bridge got the command once");
  });

  it("answers 400 for invalid input", async () => {
    const bridgeId = randomBridgeId();
    await onlineBridge(bridgeId);
    const token = await tokenFor([bridgeId]);
    const cases: {
      name: string;
      target: string;
      body?: string;
      headers?: Record<string, string>;
      repeatedHeaders?: string[];
      message: RegExp;
    }[] = [
      {
        name: "brightness out of range",
        target: lightUrl(bridgeId, "a"),
        body: JSON.stringify({ dimming: { brightness: 101 } }),
        message: /dimming\.brightness/,
      },
      {
        name: "name with a right-to-left override",
        target: lightUrl(bridgeId, "a"),
        body: JSON.stringify({ metadata: { name: "Lamp \u202Ephgj.exe" } }),
        message:
          /^invalid metadata\.name: must not contain invisible .* found U\+202E at code point 6/,
      },
      {
        name: "name with an escaped zero-width space",
        target: lightUrl(bridgeId, "a"),
        body: '{"metadata": {"name": "Desk\\u200blamp"}}',
        message: /^invalid metadata\.name: .* found U\+200B at code point 5/,
      },
      {
        name: "another resource type",
        target: lightUrl(bridgeId, "a"),
        body: JSON.stringify({ type: "grouped_light", on: { on: true } }),
        message: /^invalid type: /,
      },
      {
        name: "empty change",
        target: lightUrl(bridgeId, "a"),
        body: "{}",
        message: /at least one of/,
      },
      {
        name: "malformed JSON",
        target: lightUrl(bridgeId, "a"),
        body: '{"on": {"on": tr',
        message: /not valid JSON/,
      },
      {
        name: "JSON null body",
        target: lightUrl(bridgeId, "a"),
        body: "null",
        message: /must be a JSON object/,
      },
      {
        name: "JSON string body",
        target: lightUrl(bridgeId, "a"),
        body: '"on"',
        message: /must be a JSON object/,
      },
      {
        name: "malformed percent-encoding in the path",
        target: lightUrl(bridgeId, "%E0%A4%A"),
        body: JSON.stringify({ on: { on: true } }),
        message: /path is not valid percent-encoding/,
      },
      {
        name: "undecodable gzip body",
        target: lightUrl(bridgeId, "a"),
        body: "not-compressed",
        headers: {
          "Content-Type": "application/json",
          "Content-Encoding": "gzip",
        },
        message: /could not be read/,
      },
      {
        name: "no JSON content type",
        target: lightUrl(bridgeId, "a"),
        body: JSON.stringify({ on: { on: true } }),
        headers: { "Content-Type": "text/plain" },
        message: /missing JSON body/,
      },
      {
        name: "malformed bridge ID",
        target: lightUrl("not-a-bridge", "a"),
        body: JSON.stringify({ on: { on: true } }),
        message: /bridgeId/,
      },
      {
        name: "malformed light ID",
        target: lightUrl(bridgeId, "a.b"),
        body: JSON.stringify({ on: { on: true } }),
        message: /lightId/,
      },
      {
        name: "Idempotency-Key too long",
        target: lightUrl(bridgeId, "a"),
        body: JSON.stringify({ on: { on: true } }),
        headers: { "Idempotency-Key": "k".repeat(65) },
        message: /Idempotency-Key/,
      },
      {
        name: "Idempotency-Key not ASCII",
        target: lightUrl(bridgeId, "a"),
        body: JSON.stringify({ on: { on: true } }),
        headers: { "Idempotency-Key": "caf\u00e9" },
        message: /Idempotency-Key.*printable ASCII/,
      },
      {
        name: "Idempotency-Key twice",
        target: lightUrl(bridgeId, "a"),
        body: JSON.stringify({ on: { on: true } }),
        repeatedHeaders: ["Idempotency-Key", "one", "Idempotency-Key", "two"],
        message: /Idempotency-Key: send the header once/,
      },
    ];
    for (const testCase of cases) {
      const response = await send(testCase.target, {
        method: "PUT",
        headers: {
          "Content-Type": "application/json",
          ...bearer(token),
          ...testCase.headers,
        },
        repeatedHeaders: testCase.repeatedHeaders,
        body: testCase.body,
      });
      assert.equal(response.status, 400, `${testCase.name}: ${response.text}`);
      assert.equal(errorOf(response).code, "INVALID_PAYLOAD", testCase.name);
      assert.match(errorOf(response).message, testCase.message, testCase.name);
    }
    const badGet = await send(`${url}${API_BASE_PATH}/bridges/xyz`, {
      headers: bearer(token),
    });
    assertError(badGet, 400, "INVALID_PAYLOAD");
  });

  it("rejects a body id of another light", async () => {
    const bridgeId = randomBridgeId();
    const { bridge } = await onlineBridge(bridgeId);
    const received = answerLightSet(bridge, untypedLightMap("a", "b"));
    const token = await tokenFor([bridgeId]);
    const bodies = [
      { id: "b", on: { on: true } },
      { id: "A", on: { on: true } },
      { id: 7, on: { on: true } },
      { id: null, on: { on: true } },
      { id: "b" },
    ];
    for (const body of bodies) {
      const name = JSON.stringify(body);
      const response = await sendJson(
        lightUrl(bridgeId, "a"),
        "PUT",
        body,
        bearer(token),
      );
      assert.equal(response.status, 400, `${name}: ${response.text}`);
      assert.equal(errorOf(response).code, "INVALID_PAYLOAD", name);
      assert.match(errorOf(response).message, /^invalid id: /, name);
      const expected =
        typeof body.id === "string" ? /"a" in the path/ : /must be a string/;
      assert.match(errorOf(response).message, expected, name);
    }
    assert.equal(received.length, 0, "the bridge got no command");
  });

  it("accepts a chunked body", async () => {
    const bridgeId = randomBridgeId();
    const { bridge } = await onlineBridge(bridgeId);
    answerLightSet(bridge, untypedLightMap("a", "b"));
    const token = await tokenFor([bridgeId]);
    const response = await send(lightUrl(bridgeId, "a"), {
      method: "PUT",
      headers: { "Content-Type": "application/json", ...bearer(token) },
      bodyParts: ['{"on":', '{"on":true}}'],
    });
    assert.equal(response.status, 200, response.text);
  });

  it("accepts the path's own id", async () => {
    const bridgeId = randomBridgeId();
    const { bridge } = await onlineBridge(bridgeId);
    const received = answerLightSet(bridge, untypedLightMap("a", "b"));
    const token = await tokenFor([bridgeId]);
    const response = await sendJson(
      lightUrl(bridgeId, "a"),
      "PUT",
      { id: "a", on: { on: false } },
      bearer(token),
    );
    assert.equal(response.status, 200, response.text);
    assert.equal((response.body as { light: Light }).light.id, "a");
    assert.equal(received.length, 1);
    assert.equal(received[0]!.lightId, "a");
    assert.deepEqual(received[0]!.change, { on: { on: false } });
  });

  it("answers 401 without a valid token", async () => {
    const bridgeId = randomBridgeId();
    const target = `${url}${API_BASE_PATH}/bridges`;
    const expired = await appToken("user-expired", [bridgeId], "read", {
      exp: Math.floor(Date.now() / 1000) - 3600,
    });
    const foreign = await appToken("user-foreign", [bridgeId], "read", {
      secret: "another-secret-0123456789abcdef0123456789",
    });
    const cases: { name: string; headers: Record<string, string> }[] = [
      { name: "no header", headers: {} },
      {
        name: "Basic scheme",
        headers: { Authorization: "Basic dXNlcjpwdw==" },
      },
      { name: "malformed token", headers: bearer("not.a.jwt") },
      { name: "other secret", headers: bearer(foreign) },
      { name: "expired", headers: bearer(expired) },
    ];
    for (const testCase of cases) {
      const response = await send(target, { headers: testCase.headers });
      assert.equal(response.status, 401, `${testCase.name}: ${response.text}`);
      assert.equal(errorOf(response).code, "UNAUTHORIZED", testCase.name);
      assert.equal(response.headers["www-authenticate"], "Bearer");
    }
    const put = await sendJson(
      lightUrl(bridgeId, "a"),
      "PUT",
      { on: { on: true } },
      bearer("not.a.jwt"),
    );
    assertError(put, 401, "UNAUTHORIZED");
  });

  it("answers 403 for grants and roles", async () => {
    const bridgeId = randomBridgeId();
    await onlineBridge(bridgeId);
    const other = randomBridgeId();
    const readOnly = await tokenFor([bridgeId], "read");
    const controlOnly = await tokenFor([bridgeId], "control");
    const bridgeCredential = await bridgeToken(bridgeId);

    const asBridge = await send(`${url}${API_BASE_PATH}/bridges`, {
      headers: bearer(bridgeCredential),
    });
    assertError(asBridge, 403, "FORBIDDEN");
    assert.match(errorOf(asBridge).message, /app token/);

    const notGranted = await send(`${url}${API_BASE_PATH}/bridges/${other}`, {
      headers: bearer(readOnly),
    });
    assertError(notGranted, 403, "FORBIDDEN");

    const noRead = await send(`${url}${API_BASE_PATH}/bridges`, {
      headers: bearer(controlOnly),
    });
    assertError(noRead, 403, "FORBIDDEN");
    assert.match(errorOf(noRead).message, /read scope/);

    const noControl = await sendJson(
      lightUrl(bridgeId, "a"),
      "PUT",
      { on: { on: true } },
      bearer(readOnly),
    );
    assertError(noControl, 403, "FORBIDDEN");
    assert.match(errorOf(noControl).message, /control scope/);
  });

  it("answers INVALID_PAYLOAD before FORBIDDEN", async () => {
    const token = await tokenFor([randomBridgeId()], "read");
    const response = await sendJson(
      lightUrl(randomBridgeId(), "a"),
      "PUT",
      { dimming: { brightness: -1 } },
      bearer(token),
    );
    assertError(response, 400, "INVALID_PAYLOAD");
  });

  it("answers 404 for an unknown light or route", async () => {
    const bridgeId = randomBridgeId();
    const { bridge } = await onlineBridge(bridgeId);
    const received = answerLightSet(bridge, untypedLightMap("a", "b"));
    const token = await tokenFor([bridgeId]);
    const unknownLight = await sendJson(
      lightUrl(bridgeId, "zzz"),
      "PUT",
      { on: { on: true } },
      bearer(token),
    );
    assertError(unknownLight, 404, "NOT_FOUND");
    assert.match(errorOf(unknownLight).message, /zzz/);
    assert.equal(received.length, 0, "the bridge got no command");

    const unknownRoute = await send(`${url}${API_BASE_PATH}/lamps`, {
      headers: bearer(token),
    });
    assertError(unknownRoute, 404, "NOT_FOUND");
    const wrongMethod = await send(`${url}${API_BASE_PATH}/bridges`, {
      method: "DELETE",
      headers: bearer(token),
    });
    assertError(wrongMethod, 404, "NOT_FOUND");
  });

  it("answers 409 when the bridge is offline", async () => {
    const bridgeId = randomBridgeId();
    const token = await tokenFor([bridgeId]);
    const response = await sendJson(
      lightUrl(bridgeId, "a"),
      "PUT",
      { on: { on: true } },
      bearer(token),
    );
    assertError(response, 409, "BRIDGE_OFFLINE");
  });

  it("answers 413 for an oversized body", async () => {
    const bridgeId = randomBridgeId();
    await onlineBridge(bridgeId);
    const token = await tokenFor([bridgeId]);
    const body = JSON.stringify({
      on: { on: true },
      padding: "x".repeat(MAX_PAYLOAD_BYTES),
    });
    const response = await send(lightUrl(bridgeId, "a"), {
      method: "PUT",
      headers: { "Content-Type": "application/json", ...bearer(token) },
      body,
    });
    assertError(response, 413, "PAYLOAD_TOO_LARGE");
    assert.match(errorOf(response).message, new RegExp(`${MAX_PAYLOAD_BYTES}`));
  });

  it("charges a long bridge list by its length", async () => {
    // 500 bridges cost 5 requests: 5 fit in the user's budget of 25.
    const token = await tokenFor(
      Array.from({ length: 500 }, randomBridgeId),
      "read",
    );
    const statuses: number[] = [];
    for (let index = 0; index < 8; index += 1) {
      const response = await send(`${url}${API_BASE_PATH}/bridges`, {
        headers: bearer(token),
      });
      statuses.push(response.status);
    }
    assert.deepEqual(statuses, [200, 200, 200, 200, 200, 429, 429, 429]);
  });

  it("shares a user's budget across workers", async () => {
    const token = await tokenFor([randomBridgeId()], "read");
    const statuses: number[] = [];
    const workers = new Set<string | undefined>();
    for (let index = 0; index < REQUESTS_PER_10S + 5; index += 1) {
      const response = await send(`${url}${API_BASE_PATH}/bridges`, {
        headers: bearer(token),
      });
      statuses.push(response.status);
      workers.add(response.servedBy);
    }
    assert.equal(workers.size, 2, "both workers served requests");
    assert.equal(
      statuses.filter((status) => status === 200).length,
      REQUESTS_PER_10S,
    );
    assert.deepEqual(
      statuses.slice(REQUESTS_PER_10S),
      [429, 429, 429, 429, 429],
    );
  });

  it("answers 429 with Retry-After", async () => {
    const bridgeId = randomBridgeId();
    const token = await tokenFor([bridgeId], "read");
    let limited: HttpResponse | undefined;
    for (let index = 0; index < REQUESTS_PER_10S + 5; index += 1) {
      const response = await send(`${url}${API_BASE_PATH}/bridges`, {
        headers: bearer(token),
      });
      if (response.status !== 200) {
        limited = response;
        break;
      }
    }
    assert.ok(limited !== undefined, "a request was rate limited");
    assertError(limited, 429, "RATE_LIMITED");
    const retryAfter = Number(limited.headers["retry-after"]);
    assert.ok(
      Number.isInteger(retryAfter) && retryAfter >= 1 && retryAfter <= 10,
      `Retry-After ${limited.headers["retry-after"]}`,
    );
    assert.ok((errorOf(limited).retryAfterMs ?? 0) > 0);
    const otherUser = await send(`${url}${API_BASE_PATH}/bridges`, {
      headers: bearer(await tokenFor([bridgeId], "read")),
    });
    assert.equal(otherUser.status, 200, "another user keeps its own budget");
  });

  it("answers 502 for a bridge refusal", async () => {
    const bridgeId = randomBridgeId();
    const { bridge, serverId } = await onlineBridge(bridgeId);
    answerCommands(bridge, () => ({
      ok: false,
      error: { code: "LIGHT_UNREACHABLE", message: "zigbee timeout" },
    }));
    const token = await tokenFor([bridgeId]);
    const response = await sendElsewhere(
      () =>
        sendJson(
          lightUrl(bridgeId, "a"),
          "PUT",
          { on: { on: true } },
          bearer(token),
        ),
      serverId,
    );
    assertError(response, 502, "BRIDGE_ERROR");
    assert.deepEqual(errorOf(response).details, {
      code: "LIGHT_UNREACHABLE",
      message: "zigbee timeout",
    });
  });

  it("answers 504 when the bridge is silent", async () => {
    const bridgeId = randomBridgeId();
    const { bridge, serverId } = await onlineBridge(bridgeId);
    answerCommands(bridge, () => undefined);
    const token = await tokenFor([bridgeId]);
    const response = await sendElsewhere(
      () =>
        sendJson(
          lightUrl(bridgeId, "a"),
          "PUT",
          { on: { on: true } },
          bearer(token),
        ),
      serverId,
    );
    assertError(response, 504, "TIMEOUT");
  });

  it("echoes X-Request-Id", async () => {
    const safe = await send(`${url}/healthz`, {
      headers: { "X-Request-Id": "probe-42" },
    });
    assert.equal(safe.headers["x-request-id"], "probe-42");
    const unsafe = await send(`${url}/healthz`, {
      headers: { "X-Request-Id": "bad id with spaces" },
    });
    assert.match(
      String(unsafe.headers["x-request-id"]),
      /^[0-9a-f-]{36}$/,
      "an unsafe ID is replaced by a UUID",
    );
  });

  it("serves the OpenAPI document", async () => {
    const response = await send(`${url}${API_BASE_PATH}/openapi.json`);
    assert.equal(response.status, 200);
    assert.equal((response.body as { openapi: string }).openapi, "3.1.0");
  });

  // Runs last: it stops Redis, which loses the relay's state.
  it("answers 503 while Redis is down", async () => {
    const bridgeId = randomBridgeId();
    const token = await tokenFor([bridgeId]);
    await redis.stop();
    try {
      for (let attempt = 0; attempt < 2; attempt += 1) {
        const response = await send(
          `${url}${API_BASE_PATH}/bridges/${bridgeId}`,
          { headers: bearer(token) },
        );
        assertError(response, 503, "UNAVAILABLE");
      }
      const put = await sendJson(
        lightUrl(bridgeId, "a"),
        "PUT",
        { on: { on: true } },
        bearer(token),
      );
      assertError(put, 503, "UNAVAILABLE");
    } finally {
      await redis.restart();
    }
    const deadline = Date.now() + 15_000;
    for (;;) {
      const response = await send(
        `${url}${API_BASE_PATH}/bridges/${bridgeId}`,
        {
          headers: bearer(token),
        },
      );
      if (response.status === 200) break;
      assert.ok(Date.now() < deadline, "the API recovered within 15 s");
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  });
});

describe("http api: unexpected errors", () => {
  it("answers 500 INTERNAL without details", async () => {
    const config = loadConfig({ AUTH_SECRET: TEST_SECRET });
    const store = new MemoryStore();
    const logger = pino({ level: "silent" });
    const router = new CommandRouter(
      new LocalBus("test"),
      async () => ({
        ok: true,
        data: { light: { id: "a", type: "light", on: { on: true } } },
      }),
      1000,
      logger,
    );
    class FailingService extends AppService {
      override async getBridge(): Promise<BridgeState> {
        throw new Error("store exploded at 10.0.0.5");
      }
    }
    const app = express();
    app.use(
      API_BASE_PATH,
      createApiRouter({
        service: new FailingService(store, router),
        verifier: new TokenVerifier({ ...config.auth, secret: TEST_SECRET }),
        limits: new RateLimits(config, undefined),
        stalls: new StallMonitor(config.commandTimeoutMs),
        maxPayloadBytes: config.maxPayloadBytes,
        linger: config.linger,
        logger,
      }),
    );
    const server = app.listen(0, "127.0.0.1");
    await new Promise((resolve) => server.once("listening", resolve));
    try {
      const { port } = server.address() as AddressInfo;
      const bridgeId = randomBridgeId();
      const token = await appToken("user-internal", [bridgeId], "read");
      const response = await send(
        `http://127.0.0.1:${port}${API_BASE_PATH}/bridges/${bridgeId}`,
        { headers: bearer(token) },
      );
      assert.equal(response.status, 500, response.text);
      assert.deepEqual(response.body, {
        error: { code: "INTERNAL", message: "internal error" },
      });
      assert.doesNotMatch(response.text, /10\.0\.0\.5/);
    } finally {
      await new Promise((resolve) => server.close(resolve));
      await store.close();
    }
  });
});

/** Length of the Idempotency-Key in the oversized-header tests: over Node's 16 KiB limit on a header section. */
const OVERSIZED_KEY_LENGTH = 20_000;

/** Reads a raw HTTP response from `socket` until the relay closes it. */
function readUntilClose(socket: NetSocket): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.once("error", reject);
    socket.once("end", () => {
      socket.end();
      resolve(Buffer.concat(chunks).toString("utf8"));
    });
  });
}

/** Sends `head` and `body` on a new loopback connection to `url`, and returns what comes back until the close. */
async function sendRaw(url: string, head: string, body = ""): Promise<string> {
  const { port } = new URL(url);
  const socket = connectSocket(Number(port), "127.0.0.1");
  await once(socket, "connect");
  const response = readUntilClose(socket);
  socket.write(head + body);
  return response;
}

/** Splits a raw HTTP response into its status, lower-case headers and body. */
function parseRawResponse(raw: string): {
  status: number;
  headers: Map<string, string>;
  body: string;
} {
  const end = raw.indexOf("\r\n\r\n");
  assert.notEqual(end, -1, `no end of header in ${JSON.stringify(raw)}`);
  const [statusLine = "", ...lines] = raw.slice(0, end).split("\r\n");
  const headers = new Map<string, string>();
  for (const line of lines) {
    const colon = line.indexOf(":");
    headers.set(
      line.slice(0, colon).trim().toLowerCase(),
      line.slice(colon + 1).trim(),
    );
  }
  return {
    status: Number(statusLine.split(" ")[1]),
    headers,
    body: raw.slice(end + 4),
  };
}

const OVERSIZED_HEADER_DEPLOYMENTS = [
  { name: "embedded", redis: false, workers: undefined },
  { name: "2 workers on Redis", redis: true, workers: 2 },
];

for (const deployment of OVERSIZED_HEADER_DEPLOYMENTS) {
  describe(`http api: oversized headers, ${deployment.name}`, function () {
    this.timeout(60_000);
    let redis: RedisServer | undefined;
    let relay: RelayProcess;
    let lightUrl: string;

    before(async () => {
      redis = deployment.redis ? await startRedisServer() : undefined;
      relay = await startRelay({
        redisUrl: redis?.url,
        workers: deployment.workers,
      });
      lightUrl = `${relay.url}${API_BASE_PATH}/bridges/${randomBridgeId()}/lights/a`;
    });
    after(async () => {
      await relay?.stop();
      await redis?.stop();
    });

    const assertHeaderTooLarge = (response: {
      status: number;
      contentType: string | undefined;
      body: string;
    }): void => {
      assert.equal(response.status, 431, response.body);
      assert.match(response.contentType ?? "", /^application\/json/);
      const parsed = JSON.parse(response.body) as {
        error: { code: string; message: string };
      };
      assert.equal(parsed.error.code, "PAYLOAD_TOO_LARGE");
      assert.match(parsed.error.message, /over the limit of 16384 bytes/);
    };

    const rawCases = [
      { name: "PUT with a body", method: "PUT", body: '{"on":{"on":true}}' },
      { name: "GET without a body", method: "GET", body: "" },
    ];
    for (const rawCase of rawCases) {
      it(`answers 431 JSON on a raw ${rawCase.name}`, async () => {
        const { host, pathname } = new URL(lightUrl);
        const lengthHeader =
          rawCase.body === ""
            ? ""
            : `Content-Type: application/json\r\nContent-Length: ${rawCase.body.length}\r\n`;
        const head =
          `${rawCase.method} ${pathname} HTTP/1.1\r\nHost: ${host}\r\n` +
          lengthHeader +
          `Idempotency-Key: ${"k".repeat(OVERSIZED_KEY_LENGTH)}\r\n\r\n`;
        const raw = await sendRaw(relay.url, head, rawCase.body);
        const response = parseRawResponse(raw);
        assert.equal(response.headers.get("connection"), "close");
        assert.equal(
          response.headers.get("content-length"),
          String(Buffer.byteLength(response.body)),
        );
        assertHeaderTooLarge({
          status: response.status,
          contentType: response.headers.get("content-type"),
          body: response.body,
        });
      });
    }

    it("answers 431 JSON to fetch", async () => {
      const response = await fetch(lightUrl, {
        method: "PUT",
        headers: {
          "Content-Type": "application/json",
          "Idempotency-Key": "k".repeat(OVERSIZED_KEY_LENGTH),
        },
        body: JSON.stringify({ on: { on: true } }),
      });
      assertHeaderTooLarge({
        status: response.status,
        contentType: response.headers.get("content-type") ?? undefined,
        body: await response.text(),
      });
    });

    it("serves requests after an oversized header", async () => {
      await sendRaw(
        relay.url,
        `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: ${"p".repeat(OVERSIZED_KEY_LENGTH)}\r\n\r\n`,
      );
      const response = await send(`${relay.url}/healthz`);
      assert.equal(response.status, 200, response.text);
    });

    it("keeps a plain 400 for a malformed request", async () => {
      const raw = await sendRaw(relay.url, "NOT HTTP\r\n\r\n");
      assert.match(raw, /^HTTP\/1\.1 400 Bad Request\r\n/);
    });
  });
}
