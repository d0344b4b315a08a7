import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
  symlinkSync,
} from "node:fs";
import os, { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import {
  resolveSecret,
  SecretFileError,
  secretFileWarning,
} from "../server/auth/secret.ts";
import {
  defaultConnectionReserve,
  defaultMaxConnections,
} from "../server/cluster/open-files-limit.ts";
import { ConfigError, loadConfig, type RelayConfig } from "../server/config.ts";

const SECRET_32 = "0123456789abcdef0123456789abcdef";

const ecPublicKeyPem = generateKeyPairSync("ec", { namedCurve: "P-256" })
  .publicKey.export({ type: "spki", format: "pem" })
  .toString();

const DEFAULT_CONFIG: RelayConfig = {
  production: false,
  port: 8080,
  host: "0.0.0.0",
  workers: os.availableParallelism(),
  restartSurge: undefined,
  redis: undefined,
  redisKeyPrefix: "relay",
  auth: {
    secret: undefined,
    publicKeyPem: undefined,
    issuer: undefined,
    audience: undefined,
    secretFile: ".data/auth-secret",
  },
  commandTimeoutMs: 5000,
  redisCommandTimeoutMs: 1000,
  presenceHeartbeatMs: 5000,
  maxPayloadBytes: 1024 * 1024,
  limits: {
    handshakesPerAddressPerMinute: 1200,
    handshakesPerIdentityPerMinute: 30,
    handshakesPerWorkerPerSecond: 200,
    requestsPerSocketPer10s: 300,
    unansweredCommandsPerBridge: 256,
    appMaxBufferedBytes: 1024 * 1024,
  },
  workerUnresponsiveMs: 5000,
  startupWaitLogIntervalMs: 10_000,
  maxConnections: defaultMaxConnections(),
  connectionReserve: defaultConnectionReserve(defaultMaxConnections()),
  requestBodyTimeoutMs: 30000,
  linger: { timeoutMs: 2000, maxBytes: 16 * 1024 * 1024 },
  shutdownTimeoutMs: 10000,
  drainWindowMs: 3000,
  logLevel: "info",
  logFormat: "pretty",
};

/** Loads `env`, which must be invalid, and returns the ConfigError. */
function configFailure(env: NodeJS.ProcessEnv): ConfigError {
  try {
    loadConfig(env);
  } catch (error) {
    assert.ok(error instanceof ConfigError, `expected ConfigError: ${error}`);
    return error;
  }
  assert.fail(`expected ${JSON.stringify(env)} to be rejected`);
}

/** Matches the line of a ConfigError message that reports `variable`. */
function linePattern(variable: string): RegExp {
  return new RegExp(`^  ${variable}: `, "m");
}

describe("loadConfig", () => {
  it("returns defaults for empty environment", () => {
    assert.deepEqual(loadConfig({}), DEFAULT_CONFIG);
  });

  it("ignores unrelated environment variables", () => {
    assert.deepEqual(
      loadConfig({ PATH: "/usr/bin", TERM: "xterm" }),
      DEFAULT_CONFIG,
    );
  });

  it("reads every variable", () => {
    const config = loadConfig({
      NODE_ENV: "production",
      PORT: "0",
      HOST: "127.0.0.1",
      WORKERS: "3",
      REDIS_URL: "rediss://127.0.0.1:6380",
      REDIS_KEY_PREFIX: "relay.test_1-a",
      AUTH_SECRET: SECRET_32,
      AUTH_PUBLIC_KEY: ecPublicKeyPem,
      AUTH_ISSUER: "https://auth.example.test",
      AUTH_AUDIENCE: "bridge-relay",
      AUTH_SECRET_FILE: "/tmp/relay-secret",
      COMMAND_TIMEOUT_MS: "2500",
      REDIS_COMMAND_TIMEOUT_MS: "400",
      PRESENCE_HEARTBEAT_MS: "750",
      MAX_PAYLOAD_BYTES: "65536",
      HANDSHAKES_PER_ADDRESS_PER_MINUTE: "600",
      HANDSHAKES_PER_IDENTITY_PER_MINUTE: "10",
      HANDSHAKES_PER_WORKER_PER_SECOND: "75",
      APP_MAX_BUFFERED_BYTES: "262144",
      REQUESTS_PER_SOCKET_PER_10S: "50",
      UNANSWERED_COMMANDS_PER_BRIDGE: "16",
      WORKER_UNRESPONSIVE_MS: "900",
      STARTUP_WAIT_LOG_INTERVAL_MS: "2000",
      REQUEST_BODY_TIMEOUT_MS: "4000",
      LINGER_TIMEOUT_MS: "500",
      LINGER_MAX_BYTES: "1048576",
      MAX_CONNECTIONS: "5000",
      MAX_CONNECTIONS_RESERVE: "7",
      SHUTDOWN_TIMEOUT_MS: "1500",
      DRAIN_WINDOW_MS: "700",
      RESTART_SURGE: "1",
      LOG_LEVEL: "debug",
      LOG_FORMAT: "pretty",
    });
    assert.deepEqual(config, {
      production: true,
      port: 0,
      host: "127.0.0.1",
      workers: 3,
      restartSurge: 1,
      redis: { kind: "standalone", url: "rediss://127.0.0.1:6380" },
      redisKeyPrefix: "relay.test_1-a",
      auth: {
        secret: SECRET_32,
        publicKeyPem: ecPublicKeyPem,
        issuer: "https://auth.example.test",
        audience: "bridge-relay",
        secretFile: "/tmp/relay-secret",
      },
      commandTimeoutMs: 2500,
      redisCommandTimeoutMs: 400,
      presenceHeartbeatMs: 750,
      maxPayloadBytes: 65536,
      limits: {
        handshakesPerAddressPerMinute: 600,
        handshakesPerIdentityPerMinute: 10,
        handshakesPerWorkerPerSecond: 75,
        requestsPerSocketPer10s: 50,
        unansweredCommandsPerBridge: 16,
        appMaxBufferedBytes: 262144,
      },
      workerUnresponsiveMs: 900,
      startupWaitLogIntervalMs: 2000,
      requestBodyTimeoutMs: 4000,
      linger: { timeoutMs: 500, maxBytes: 1048576 },
      maxConnections: 5000,
      connectionReserve: 7,
      shutdownTimeoutMs: 1500,
      drainWindowMs: 700,
      logLevel: "debug",
      logFormat: "pretty",
    });
  });

  it("defaults to JSON logs in production", () => {
    const config = loadConfig({
      NODE_ENV: "production",
      AUTH_SECRET: SECRET_32,
    });
    assert.equal(config.production, true);
    assert.equal(config.logFormat, "json");
  });

  it("unescapes newlines in AUTH_PUBLIC_KEY", () => {
    const escaped = ecPublicKeyPem.replace(/\n/g, "\\n");
    const config = loadConfig({ AUTH_PUBLIC_KEY: escaped });
    assert.equal(config.auth.publicKeyPem, ecPublicKeyPem);
  });

  describe("invalid values", () => {
    const cases: [string, string][] = [
      ["PORT", "abc"],
      ["PORT", "-1"],
      ["PORT", "65536"],
      ["PORT", "80.5"],
      ["PORT", "8080abc"],
      ["WORKERS", "0"],
      ["WORKERS", "-2"],
      ["WORKERS", "1.5"],
      ["WORKERS", "many"],
      ["WORKERS", "Infinity"],
      ["WORKERS", "257"],
      ["REDIS_URL", "http://127.0.0.1:6379"],
      ["REDIS_URL", "127.0.0.1:6379"],
      ["REDIS_CLUSTER_NODES", "127.0.0.1:7000"],
      ["REDIS_CLUSTER_NODES", "http://127.0.0.1:7000"],
      ["REDIS_CLUSTER_NODES", "redis://127.0.0.1:7000,"],
      ["REDIS_CLUSTER_NODES", "redis://127.0.0.1:7000,,redis://127.0.0.1:7001"],
      ["REDIS_CLUSTER_NODES", "redis://127.0.0.1:7000/1"],
      ["REDIS_CLUSTER_NODES", "redis://"],
      ["REDIS_KEY_PREFIX", "has space"],
      ["REDIS_KEY_PREFIX", "a:b"],
      ["REDIS_KEY_PREFIX", "p".repeat(33)],
      ["AUTH_SECRET", "short"],
      ["AUTH_SECRET", "s".repeat(31)],
      ["AUTH_PUBLIC_KEY", "not a PEM key"],
      ["COMMAND_TIMEOUT_MS", "0"],
      ["REDIS_COMMAND_TIMEOUT_MS", "0"],
      ["REDIS_COMMAND_TIMEOUT_MS", "1s"],
      ["COMMAND_TIMEOUT_MS", "five"],
      ["PRESENCE_HEARTBEAT_MS", "99"],
      ["PRESENCE_HEARTBEAT_MS", "2147483648"],
      ["COMMAND_TIMEOUT_MS", "2147483648"],
      ["SHUTDOWN_TIMEOUT_MS", "86400001"],
      ["MAX_CONNECTIONS", "0"],
      ["MAX_CONNECTIONS", "1e4"],
      ["MAX_CONNECTIONS_RESERVE", "-1"],
      ["WORKER_UNRESPONSIVE_MS", "99"],
      ["STARTUP_WAIT_LOG_INTERVAL_MS", "99"],
      ["REQUEST_BODY_TIMEOUT_MS", "99"],
      ["LINGER_TIMEOUT_MS", "0"],
      ["LINGER_TIMEOUT_MS", "86400001"],
      ["LINGER_MAX_BYTES", "0"],
      ["LINGER_MAX_BYTES", "16MiB"],
      ["PRESENCE_HEARTBEAT_MS", "0"],
      ["MAX_PAYLOAD_BYTES", "-1"],
      ["MAX_PAYLOAD_BYTES", "1MB"],
      ["MAX_PAYLOAD_BYTES", "999999999999"],
      [
        "AUTH_PUBLIC_KEY",
        generateKeyPairSync("ec", { namedCurve: "P-256" })
          .privateKey.export({ type: "pkcs8", format: "pem" })
          .toString(),
      ],
      ["HANDSHAKES_PER_ADDRESS_PER_MINUTE", "0"],
      ["HANDSHAKES_PER_IDENTITY_PER_MINUTE", "2.5"],
      ["HANDSHAKES_PER_WORKER_PER_SECOND", "0"],
      ["APP_MAX_BUFFERED_BYTES", "65535"],
      ["APP_MAX_BUFFERED_BYTES", "1MiB"],
      ["REQUESTS_PER_SOCKET_PER_10S", "x"],
      ["SHUTDOWN_TIMEOUT_MS", "-5"],
      ["DRAIN_WINDOW_MS", "-1"],
      ["DRAIN_WINDOW_MS", "soon"],
      ["DRAIN_WINDOW_MS", "10000"],
      ["RESTART_SURGE", "0"],
      ["RESTART_SURGE", "half"],
      ["LOG_LEVEL", "verbose"],
      ["LOG_LEVEL", "INFO"],
      ["LOG_FORMAT", "xml"],
    ];
    for (const [variable, value] of cases) {
      it(`rejects ${variable}=${JSON.stringify(value.slice(0, 20))}`, () => {
        const error = configFailure({ [variable]: value });
        assert.match(error.message, linePattern(variable));
      });
    }

    it("lists every invalid variable", () => {
      const error = configFailure({ PORT: "abc", LOG_LEVEL: "loud" });
      assert.match(error.message, linePattern("PORT"));
      assert.match(error.message, linePattern("LOG_LEVEL"));
    });

    it("sets ConfigError name", () => {
      const error = configFailure({ PORT: "abc" });
      assert.equal(error.name, "ConfigError");
    });
  });

  describe("empty values", () => {
    const variables = [
      "NODE_ENV",
      "PORT",
      "HOST",
      "WORKERS",
      "REDIS_URL",
      "REDIS_CLUSTER_NODES",
      "REDIS_KEY_PREFIX",
      "AUTH_SECRET",
      "AUTH_PUBLIC_KEY",
      "AUTH_ISSUER",
      "AUTH_AUDIENCE",
      "AUTH_SECRET_FILE",
      "COMMAND_TIMEOUT_MS",
      "PRESENCE_HEARTBEAT_MS",
      "MAX_PAYLOAD_BYTES",
      "HANDSHAKES_PER_ADDRESS_PER_MINUTE",
      "HANDSHAKES_PER_IDENTITY_PER_MINUTE",
      "HANDSHAKES_PER_WORKER_PER_SECOND",
      "APP_MAX_BUFFERED_BYTES",
      "REQUESTS_PER_SOCKET_PER_10S",
      "SHUTDOWN_TIMEOUT_MS",
      "WORKER_UNRESPONSIVE_MS",
      "REQUEST_BODY_TIMEOUT_MS",
      "LINGER_TIMEOUT_MS",
      "LINGER_MAX_BYTES",
      "DRAIN_WINDOW_MS",
      "RESTART_SURGE",
      "LOG_LEVEL",
      "LOG_FORMAT",
    ];
    for (const variable of variables) {
      it(`treats empty ${variable} as unset`, () => {
        assert.deepEqual(loadConfig({ [variable]: "" }), DEFAULT_CONFIG);
      });
    }
  });

  describe("Redis Cluster nodes", () => {
    it("reads the seed node URLs", () => {
      const config = loadConfig({
        REDIS_CLUSTER_NODES:
          " redis://10.0.0.5:6379 ,redis://10.0.0.6:6379/0,redis://10.0.0.7 ",
      });
      assert.deepEqual(config.redis, {
        kind: "cluster",
        nodeUrls: [
          "redis://10.0.0.5:6379",
          "redis://10.0.0.6:6379/0",
          "redis://10.0.0.7",
        ],
      });
    });

    it("accepts the same credentials on every node", () => {
      const config = loadConfig({
        REDIS_CLUSTER_NODES:
          "redis://relay:s3cret@10.0.0.5:6379,redis://relay:s3cret@10.0.0.6:6379",
      });
      assert.equal(config.redis?.kind, "cluster");
    });

    it("rejects REDIS_URL as well", () => {
      const error = configFailure({
        REDIS_URL: "redis://10.0.0.5:6379",
        REDIS_CLUSTER_NODES: "redis://10.0.0.6:6379",
      });
      assert.match(error.message, linePattern("REDIS_CLUSTER_NODES"));
      assert.match(error.message, /REDIS_URL is set as well/);
    });

    it("names a bad entry by position", () => {
      const error = configFailure({
        REDIS_CLUSTER_NODES: "redis://10.0.0.5:6379,http://10.0.0.6:6379",
      });
      assert.match(error.message, /REDIS_CLUSTER_NODES entry 2 must be/);
      assert.doesNotMatch(error.message, /entry 1/);
    });

    it("accepts TLS seeds", () => {
      const config = loadConfig({
        REDIS_CLUSTER_NODES: "rediss://10.0.0.5:6379,rediss://10.0.0.6:6379",
      });
      assert.deepEqual(config.redis, {
        kind: "cluster",
        nodeUrls: ["rediss://10.0.0.5:6379", "rediss://10.0.0.6:6379"],
      });
    });

    it("rejects mixed schemes", () => {
      const error = configFailure({
        REDIS_CLUSTER_NODES: "rediss://10.0.0.5:6379,redis://10.0.0.6:6379",
      });
      assert.match(error.message, /all use redis:\/\/ or all rediss:\/\//);
    });

    it("rejects differing credentials", () => {
      const error = configFailure({
        REDIS_CLUSTER_NODES:
          "redis://relay:one-secret@10.0.0.5:6379,redis://relay:other-secret@10.0.0.6:6379",
      });
      assert.match(error.message, /same user name and password/);
    });

    it("keeps passwords out of messages", () => {
      const error = configFailure({
        REDIS_CLUSTER_NODES:
          "redis://relay:hidden-pass@10.0.0.5:6379/3,redis://relay:hidden-pass@:1",
      });
      assert.match(error.message, /entry 1 names a database/);
      assert.doesNotMatch(error.message, /hidden-pass/);
    });

    it("rejects a broken percent-encoding", () => {
      const error = configFailure({
        REDIS_CLUSTER_NODES: "redis://:Sup3r%zz@10.0.0.5:6379",
      });
      assert.match(error.message, /entry 1 has an invalid percent-encoding/);
      assert.doesNotMatch(error.message, /Sup3r/);
    });

    it("accepts an encoded percent sign", () => {
      const config = loadConfig({
        REDIS_CLUSTER_NODES: "redis://:Sup3r%25zz@10.0.0.5:6379",
      });
      assert.equal(config.redis?.kind, "cluster");
    });
  });

  describe("REDIS_URL", () => {
    it("rejects a broken percent-encoding", () => {
      const error = configFailure({
        REDIS_URL: "redis://:Sup3r%zz@127.0.0.1:6379",
      });
      assert.match(error.message, /REDIS_URL has an invalid percent-encoding/);
      assert.doesNotMatch(error.message, /Sup3r/);
    });
  });

  describe("drain window", () => {
    it("defaults to half a short shutdown timeout", () => {
      const config = loadConfig({ SHUTDOWN_TIMEOUT_MS: "4000" });
      assert.equal(config.drainWindowMs, 2000);
    });

    it("accepts 0 to close at once", () => {
      const config = loadConfig({ DRAIN_WINDOW_MS: "0" });
      assert.equal(config.drainWindowMs, 0);
    });

    it("rejects a window reaching the deadline", () => {
      const error = configFailure({
        SHUTDOWN_TIMEOUT_MS: "4000",
        DRAIN_WINDOW_MS: "4000",
      });
      assert.match(error.message, linePattern("DRAIN_WINDOW_MS"));
      assert.match(error.message, /less than SHUTDOWN_TIMEOUT_MS \(4000\)/);
    });
  });

  describe("production authentication", () => {
    it("requires a key in production", () => {
      const error = configFailure({ NODE_ENV: "production" });
      assert.match(error.message, /AUTH_SECRET or AUTH_PUBLIC_KEY/);
    });

    it("treats blank keys as missing", () => {
      const error = configFailure({
        NODE_ENV: "production",
        AUTH_SECRET: "",
        AUTH_PUBLIC_KEY: "   ",
      });
      assert.match(error.message, /AUTH_SECRET or AUTH_PUBLIC_KEY/);
    });

    it("accepts AUTH_SECRET in production", () => {
      const config = loadConfig({
        NODE_ENV: "production",
        AUTH_SECRET: SECRET_32,
      });
      assert.equal(config.auth.secret, SECRET_32);
    });

    it("accepts AUTH_PUBLIC_KEY in production", () => {
      const config = loadConfig({
        NODE_ENV: "production",
        AUTH_PUBLIC_KEY: ecPublicKeyPem,
      });
      assert.equal(config.auth.publicKeyPem, ecPublicKeyPem);
    });

    it("rejects short AUTH_SECRET in production", () => {
      const error = configFailure({
        NODE_ENV: "production",
        AUTH_SECRET: SECRET_32.slice(1),
      });
      assert.match(error.message, linePattern("AUTH_SECRET"));
    });
  });
});

describe("defaultMaxConnections", () => {
  const limitsOf = (openFiles: string): string => {
    const dir = mkdtempSync(join(tmpdir(), "relay-limits-"));
    const file = join(dir, "limits");
    writeFileSync(
      file,
      [
        "Limit                     Soft Limit           Hard Limit           Units",
        "Max processes             63711                63711                processes",
        `Max open files            ${openFiles}                1048576              files`,
      ].join("\n"),
    );
    return file;
  };

  it("keeps 1000 descriptors free", () => {
    assert.equal(defaultMaxConnections(limitsOf("20000")), 19000);
  });

  it("keeps a tenth of a small limit free", () => {
    assert.equal(defaultMaxConnections(limitsOf("1024")), 921);
  });

  it("sets no cap when unlimited", () => {
    assert.equal(defaultMaxConnections(limitsOf("unlimited")), undefined);
  });

  it("sets no cap without the file", () => {
    assert.equal(defaultMaxConnections("/nonexistent/limits"), undefined);
  });
});

describe("defaultConnectionReserve", () => {
  it("keeps 1% of the cap", () => {
    assert.equal(defaultConnectionReserve(921), 10);
  });

  it("keeps at least 4", () => {
    assert.equal(defaultConnectionReserve(8), 4);
  });

  it("keeps at most 100", () => {
    assert.equal(defaultConnectionReserve(19000), 100);
  });

  it("keeps none without a cap", () => {
    assert.equal(defaultConnectionReserve(undefined), 0);
  });
});

describe("resolveSecret", () => {
  let directory: string;
  let secretFile: string;

  beforeEach(() => {
    directory = mkdtempSync(join(os.tmpdir(), "relay-secret-test-"));
    secretFile = join(directory, "nested", "auth-secret");
  });

  afterEach(() => {
    rmSync(directory, { recursive: true, force: true });
  });

  function developmentConfig(env: NodeJS.ProcessEnv = {}): RelayConfig {
    return loadConfig({ AUTH_SECRET_FILE: secretFile, ...env });
  }

  it("creates 0600 secret file", () => {
    const resolved = resolveSecret(developmentConfig());
    assert.equal(resolved.generated, true);
    assert.equal(resolved.file, secretFile);
    assert.ok((resolved.secret ?? "").length >= 32);
    assert.equal(readFileSync(secretFile, "utf8").trim(), resolved.secret);
    assert.equal(statSync(secretFile).mode & 0o777, 0o600);
  });

  it("reuses secret on next call", () => {
    const first = resolveSecret(developmentConfig());
    const second = resolveSecret(developmentConfig());
    assert.equal(second.secret, first.secret);
    assert.equal(second.file, secretFile);
    assert.equal(second.generated, undefined);
  });

  /** Writes `content` to the secret file with `mode`, as a user would. */
  function writeSecretFile(content: string, mode: number): void {
    mkdirSync(dirname(secretFile), { recursive: true });
    writeFileSync(secretFile, content);
    chmodSync(secretFile, mode);
  }

  it("rejects short stored secret", () => {
    writeSecretFile("short\n", 0o644);
    assert.throws(
      () => resolveSecret(developmentConfig()),
      (error: Error) => {
        assert.ok(error instanceof SecretFileError);
        assert.equal(error.file, secretFile);
        assert.equal(
          error.message,
          `AUTH_SECRET_FILE ${secretFile} contains a secret of 5 characters, too short: ` +
            "the secret must be at least 32 characters; put a longer secret in it, " +
            "or delete it so that a new one is created",
        );
        return true;
      },
    );
    assert.equal(readFileSync(secretFile, "utf8"), "short\n");
    assert.equal(statSync(secretFile).mode & 0o777, 0o644);
  });

  it("rejects empty secret file", () => {
    writeSecretFile("\n", 0o600);
    assert.throws(
      () => resolveSecret(developmentConfig()),
      (error: Error) => {
        assert.ok(error instanceof SecretFileError);
        assert.match(error.message, / is empty: /);
        return true;
      },
    );
    assert.equal(readFileSync(secretFile, "utf8"), "\n");
  });

  it("rejects unreadable secret file", () => {
    mkdirSync(secretFile, { recursive: true });
    assert.throws(
      () => resolveSecret(developmentConfig()),
      (error: Error) => {
        assert.ok(error instanceof SecretFileError);
        assert.match(error.message, /could not be read \(EISDIR\)/);
        return true;
      },
    );
  });

  it("flags secret readable by others", () => {
    writeSecretFile(`${SECRET_32}\n`, 0o644);
    const resolved = resolveSecret(developmentConfig());
    assert.equal(resolved.secret, SECRET_32);
    assert.equal(resolved.generated, undefined);
    assert.equal(resolved.exposedMode, 0o644);
    assert.equal(
      secretFileWarning(resolved),
      `AUTH_SECRET_FILE ${secretFile} can be read by its group or others (mode 0644); run chmod 600 ${secretFile}`,
    );
    assert.equal(statSync(secretFile).mode & 0o777, 0o644);
  });

  it("flags secret readable by group", () => {
    writeSecretFile(`${SECRET_32}\n`, 0o640);
    assert.equal(resolveSecret(developmentConfig()).exposedMode, 0o640);
  });

  it("accepts private secret silently", () => {
    writeSecretFile(`${SECRET_32}\n`, 0o600);
    const resolved = resolveSecret(developmentConfig());
    assert.equal(resolved.secret, SECRET_32);
    assert.equal(resolved.exposedMode, undefined);
    assert.equal(secretFileWarning(resolved), undefined);
  });

  it("names a dangling symbolic link", () => {
    const target = join(dirname(secretFile), "missing-target");
    mkdirSync(dirname(secretFile), { recursive: true });
    symlinkSync(target, secretFile);
    assert.throws(
      () => resolveSecret(developmentConfig()),
      (error: Error) => {
        assert.ok(error instanceof SecretFileError);
        assert.match(
          error.message,
          /is a symbolic link to .*missing-target, which does not exist/,
        );
        return true;
      },
    );
    assert.equal(existsSync(target), false);
  });

  it("leaves no temporary file", () => {
    resolveSecret(developmentConfig());
    assert.deepEqual(readdirSync(dirname(secretFile)), ["auth-secret"]);
  });

  it("prefers configured AUTH_SECRET", () => {
    const resolved = resolveSecret(
      developmentConfig({ AUTH_SECRET: SECRET_32 }),
    );
    assert.deepEqual(resolved, { secret: SECRET_32 });
    assert.equal(existsSync(secretFile), false);
  });

  it("skips file with public key", () => {
    const resolved = resolveSecret(
      developmentConfig({ AUTH_PUBLIC_KEY: ecPublicKeyPem }),
    );
    assert.equal(resolved.secret, undefined);
    assert.equal(existsSync(secretFile), false);
  });

  it("skips file in production", () => {
    const production = { ...developmentConfig(), production: true };
    const resolved = resolveSecret(production);
    assert.equal(resolved.secret, undefined);
    assert.equal(existsSync(secretFile), false);
  });

  it("ignores existing file in production", () => {
    const generated = resolveSecret(developmentConfig());
    assert.equal(generated.generated, true);
    const production = { ...developmentConfig(), production: true };
    const resolved = resolveSecret(production);
    assert.equal(resolved.secret, undefined);
  });
});
