import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import type { LightSetCommand } from "../client-sdk/src/protocol.ts";
import { API_BASE_PATH } from "../server/http/api.ts";
import {
  connect,
  connectError,
  randomBridgeId,
  request,
  requestData,
} from "./support/clients.ts";
import { light } from "./support/fixtures.ts";
import { bearer, send, sendJson } from "./support/http.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";
import {
  startRelay,
  type LogLine,
  type RelayProcess,
} from "./support/relay-process.ts";
import { appToken, bridgeToken } from "./support/tokens.ts";

describe("logs: secrets and context", function () {
  this.timeout(60_000);
  // A secret of its own, so that a match in the logs can only come from this run.
  const secret = `logs-secret-${randomBytes(16).toString("hex")}`;
  const signing = { secret };
  let redis: RedisServer;
  let relay: RelayProcess;
  let url: string;
  /** Every credential sent to the relay, valid or not. */
  const credentials: string[] = [];
  const remember = (token: string): string => {
    credentials.push(token);
    return token;
  };

  before(async () => {
    redis = await startRedisServer();
    relay = await startRelay({
      redisUrl: redis.url,
      workers: 2,
      env: { AUTH_SECRET: secret, LOG_LEVEL: "debug" },
    });
    url = relay.url;

    const bridgeId = randomBridgeId();
    const validBridge = remember(await bridgeToken(bridgeId, signing));
    const validApp = remember(
      await appToken("user-logs", [bridgeId], "read control", signing),
    );
    const foreign = remember(
      await appToken("user-foreign", [bridgeId], "read", {
        secret: "another-secret-0123456789abcdef0123456789",
      }),
    );
    const expired = remember(
      await appToken("user-expired", [bridgeId], "read", {
        ...signing,
        exp: Math.floor(Date.now() / 1000) - 3600,
      }),
    );
    const garbage = remember(`not-a-jwt-${randomBytes(8).toString("hex")}`);

    const bridge = await connect(url, "/bridge", {
      auth: { token: validBridge },
    });
    bridge.on(
      "light:set",
      (command: LightSetCommand, ack: (answer: unknown) => void) => {
        ack({ ok: true, data: { light: light(command.lightId, true) } });
      },
    );
    await requestData(bridge, "state:snapshot", { lights: [light("a")] });
    const app = await connect(url, "/app", {
      auth: { token: validApp },
      // The contract ignores tokens in the query string; they must not be logged either.
      query: { token: validApp },
    });
    await request(app, "light:set", {
      bridgeId,
      lightId: "a",
      change: { on: { on: true } },
    });
    for (const token of [foreign, expired, garbage, validApp]) {
      await connectError(url, "/bridge", { auth: { token } });
    }

    await send(`${url}${API_BASE_PATH}/bridges`, {
      headers: { ...bearer(validApp), "X-Request-Id": "logs-valid-call" },
    });
    await sendJson(
      `${url}${API_BASE_PATH}/bridges/${bridgeId}/lights/a`,
      "PUT",
      { on: { on: false } },
      bearer(validApp),
    );
    for (const token of [foreign, expired, garbage, validBridge]) {
      await send(`${url}${API_BASE_PATH}/bridges`, { headers: bearer(token) });
    }
    await send(`${url}${API_BASE_PATH}/bridges?access_token=${validApp}`);
    // A token pasted into the path, by mistake or as a probe.
    await send(`${url}${API_BASE_PATH}/bridges/${validApp}`, {
      headers: bearer(validApp),
    });
    await send(`${url}/${validBridge}`);
    await send(`${url}${API_BASE_PATH}/bridges`, {
      headers: { Authorization: `Basic ${validApp}` },
    });
    bridge.close();
    app.close();
    await relay.stop();
  });
  after(async () => {
    await relay?.stop();
    await redis?.stop();
  });

  const allOutput = (): string =>
    [...relay.output, ...relay.logs.map((line) => JSON.stringify(line))].join(
      "\n",
    );

  it("captured the run's log lines", () => {
    assert.ok(relay.logs.length > 20, `${relay.logs.length} lines`);
  });

  it("logs no token", () => {
    const output = allOutput();
    for (const token of credentials) {
      assert.ok(!output.includes(token), `a token appears in the logs`);
      // A JWT's signature alone is as sensitive as the whole token.
      const signature = token.split(".")[2];
      if (signature !== undefined && signature.length > 10) {
        assert.ok(!output.includes(signature), "a token signature appears");
      }
    }
  });

  it("logs no secret", () => {
    assert.ok(!allOutput().includes(secret));
  });

  it("logs no Authorization value", () => {
    const output = allOutput();
    // Error messages may name the Bearer scheme, but never with a JWT after it.
    assert.doesNotMatch(output, /Bearer\s+[\w-]+\.[\w-]+/i);
    assert.doesNotMatch(output, /Basic\s+[\w-]+\.[\w-]+/i);
    assert.doesNotMatch(output, /"authorization":"(?!\[redacted\])/i);
  });

  it("tags every line with its process", () => {
    for (const line of relay.logs) {
      const role = line.role as string | undefined;
      assert.ok(
        role === "primary" || role === "worker",
        `role of ${JSON.stringify(line)}`,
      );
      if (role !== "worker") continue;
      assert.equal(typeof line.worker, "number", JSON.stringify(line));
      assert.equal(typeof line.serverId, "string", JSON.stringify(line));
    }
  });

  it("logs rejected handshakes with codes", () => {
    const rejected = relay.logs.filter((line) =>
      line.msg.startsWith("handshake rejected"),
    );
    assert.ok(rejected.length >= 2, `${rejected.length} rejections logged`);
    const codes = new Set(rejected.map((line) => line.code));
    assert.ok(codes.has("UNAUTHORIZED"));
    assert.ok(codes.has("FORBIDDEN"));
  });

  it("logs HTTP requests with IDs", () => {
    const completed = (line: LogLine): boolean =>
      line.msg === "request completed";
    const valid = relay.logs.find(
      (line) => completed(line) && line.reqId === "logs-valid-call",
    );
    assert.ok(valid !== undefined, "the request ID sent was logged");
    assert.equal(valid.userId, "user-logs");
    assert.equal(typeof valid.serverId, "string");
    const unauthorized = relay.logs.filter(
      (line) => completed(line) && line.errorCode === "UNAUTHORIZED",
    );
    assert.ok(unauthorized.length >= 4, `${unauthorized.length} lines`);
    for (const line of unauthorized) {
      assert.equal(typeof line.reqId, "string");
    }
  });

  it("logs the sockets of bridges", () => {
    const connected = relay.logs.find(
      (line) => line.msg === "bridge connected",
    );
    assert.ok(connected !== undefined);
    assert.equal(typeof connected.socketId, "string");
    assert.equal(typeof connected.bridgeId, "string");
  });
});

describe("logs: floods and probes", function () {
  this.timeout(60_000);
  let redis: RedisServer;
  let relay: RelayProcess;
  let url: string;

  before(async () => {
    redis = await startRedisServer();
    relay = await startRelay({
      redisUrl: redis.url,
      workers: 2,
      env: { LOG_LEVEL: "debug" },
    });
    url = relay.url;
  });
  after(async () => {
    await relay?.stop();
    await redis?.stop();
  });

  it("counts repeated handshake rejections", async () => {
    const flood = async (): Promise<void> => {
      const garbage = `flood-${randomBytes(8).toString("hex")}`;
      const error = await connectError(url, "/bridge", {
        auth: { token: garbage },
      });
      assert.equal(error.data?.code, "UNAUTHORIZED", error.message);
    };
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const before = relay.logs.length;
    for (let index = 0; index < 40; index += 1) await flood();
    // One more rejection per worker after the window reports the count.
    await new Promise((resolve) => setTimeout(resolve, 1100));
    for (let index = 0; index < 4; index += 1) await flood();
    await new Promise((resolve) => setTimeout(resolve, 300));
    const lines = relay.logs
      .slice(before)
      .filter(
        (line) =>
          line.msg.startsWith("handshake rejected") &&
          line.namespace === "bridge" &&
          line.code === "UNAUTHORIZED",
      );
    // Two workers each log the first rejection of a window, then the counted one.
    assert.ok(lines.length <= 6, `${lines.length} lines for 44 rejections`);
    const counted = lines.reduce(
      (sum, line) => sum + Number(line.suppressed ?? 0),
      0,
    );
    assert.ok(
      counted + lines.length >= 35,
      `${counted} rejections counted, ${lines.length} logged`,
    );
  });

  it("logs failing probes below error level", async () => {
    await redis.stop();
    try {
      for (let index = 0; index < 3; index += 1) {
        const response = await send(`${url}/readyz`);
        assert.equal(response.status, 503);
      }
    } finally {
      await redis.restart();
    }
    const probes = relay.logs.filter(
      (line) =>
        (line.req as { path?: string } | undefined)?.path === "/readyz" &&
        (line.res as { statusCode?: number } | undefined)?.statusCode === 503,
    );
    assert.ok(probes.length >= 3, `${probes.length} probe lines`);
    for (const line of probes)
      assert.ok(line.level < 50, `probe logged at level ${line.level}`);
  });
});
