import assert from "node:assert/strict";
import { execFile, execFileSync } from "node:child_process";
import {
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  requestData,
  settle,
} from "./support/clients.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";
import {
  startRelay,
  TEST_SECRET,
  type LogLine,
} from "./support/relay-process.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const run = promisify(execFile);

function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/**
 * Runs the relay with `env` until it exits, and returns its exit code and
 * output. A `launcher` (a command and its arguments) runs the relay
 * through that command.
 */
async function runRelay(
  env: Record<string, string>,
  launcher: string[] = [],
): Promise<{ code: number; output: string }> {
  const relayCommand = [process.execPath, "--import", "tsx", "server/main.ts"];
  const [command, ...args] = [...launcher, ...relayCommand];
  try {
    await run(command!, args, {
      cwd: ROOT,
      env: {
        ...process.env,
        PORT: "0",
        HOST: "127.0.0.1",
        REDIS_URL: "",
        AUTH_SECRET: "",
        ...env,
      },
      timeout: 15_000,
    });
    return { code: 0, output: "" };
  } catch (error) {
    const failure = error as { code: number; stdout: string; stderr: string };
    return { code: failure.code, output: failure.stdout + failure.stderr };
  }
}

describe("relay processes", function () {
  this.timeout(60_000);
  let redis: RedisServer;

  before(async () => {
    redis = await startRedisServer();
  });
  after(async () => redis?.stop());

  it("rejects invalid configuration at start", async () => {
    const { code, output } = await runRelay({
      PORT: "eighty",
      COMMAND_TIMEOUT_MS: "-5",
    });
    assert.equal(code, 1);
    assert.match(output, /PORT must be a whole number/);
    assert.match(output, /COMMAND_TIMEOUT_MS must be a whole number/);
  });

  for (const clustered of [false, true]) {
    it(`reports a port in use ${clustered ? "before forking" : "embedded"}`, async () => {
      const holder = createServer();
      await new Promise<void>((resolve) =>
        holder.listen(0, "127.0.0.1", resolve),
      );
      const { port } = holder.address() as AddressInfo;
      try {
        const { code, output } = await runRelay({
          PORT: String(port),
          REDIS_URL: clustered ? redis.url : "",
          LOG_FORMAT: "json",
        });
        assert.equal(code, 1);
        const fatal = output
          .split("\n")
          .filter((line) => line.startsWith("{"))
          .map((line) => JSON.parse(line) as LogLine)
          .find((line) => line.level === 60);
        assert.equal(
          fatal?.msg,
          `port ${port} on 127.0.0.1 is in use (EADDRINUSE); run with another PORT or HOST`,
        );
        assert.equal(fatal?.code, "EADDRINUSE");
        assert.doesNotMatch(output, /uncaught exception/);
        assert.doesNotMatch(output, /worker ready/);
      } finally {
        holder.close();
      }
    });
  }

  /** Returns the fatal log line of a relay's JSON output. */
  function fatalLine(output: string): LogLine | undefined {
    return output
      .split("\n")
      .filter((line) => line.startsWith("{"))
      .map((line) => JSON.parse(line) as LogLine)
      .find((line) => line.level === 60);
  }

  for (const clustered of [false, true]) {
    it(`reports an unknown HOST ${clustered ? "before forking" : "embedded"}`, async () => {
      // A DNS label is at most 63 bytes (RFC 1035), so the resolver rejects
      // this name with ENOTFOUND, as it does a name that does not exist,
      // without sending a query (checked with strace on glibc 2.36).
      const host = `${"a".repeat(64)}.invalid`;
      const { code, output } = await runRelay({
        HOST: host,
        REDIS_URL: clustered ? redis.url : "",
        LOG_FORMAT: "json",
      });
      assert.equal(code, 1);
      const fatal = fatalLine(output);
      assert.equal(
        fatal?.msg,
        `HOST ${JSON.stringify(host)} was not found (ENOTFOUND); set HOST to an IP address of this machine or to a host name that resolves to one`,
      );
      assert.equal(fatal?.code, "ENOTFOUND");
      assert.equal(fatal?.host, host);
      assert.doesNotMatch(output, /relay failed to start/);
      assert.doesNotMatch(output, /getaddrinfo/);
      assert.doesNotMatch(output, /worker ready/);
    });
  }

  for (const clustered of [false, true]) {
    it(`reports a failed DNS lookup ${clustered ? "before forking" : "embedded"}`, async function () {
      // In a network namespace of its own, with no interface up, the relay
      // cannot reach any DNS server, and nothing it sends leaves the machine.
      const isolate = ["unshare", "--map-root-user", "--net"];
      try {
        await run(isolate[0]!, [...isolate.slice(1), "true"]);
      } catch {
        this.skip();
      }
      const host = "relay-test.invalid";
      const { code, output } = await runRelay(
        {
          HOST: host,
          REDIS_URL: clustered ? redis.url : "",
          LOG_FORMAT: "json",
        },
        isolate,
      );
      assert.equal(code, 1);
      const fatal = fatalLine(output);
      assert.equal(
        fatal?.msg,
        `HOST ${JSON.stringify(host)} could not be resolved because the DNS lookup failed (EAI_AGAIN); check the DNS server, or set HOST to an IP address of this machine`,
      );
      assert.equal(fatal?.code, "EAI_AGAIN");
      assert.doesNotMatch(output, /relay failed to start/);
      assert.doesNotMatch(output, /worker ready/);
    });
  }

  for (const clustered of [false, true]) {
    it(`rejects a short secret file ${clustered ? "before forking" : "embedded"}`, async () => {
      const directory = mkdtempSync(join(tmpdir(), "relay-secret-"));
      const secretFile = join(directory, "auth-secret");
      writeFileSync(secretFile, "short\n", { mode: 0o644 });
      try {
        const { code, output } = await runRelay({
          AUTH_SECRET_FILE: secretFile,
          REDIS_URL: clustered ? redis.url : "",
          LOG_FORMAT: "json",
        });
        assert.equal(code, 1);
        const fatal = fatalLine(output);
        assert.equal(
          fatal?.msg,
          `AUTH_SECRET_FILE ${secretFile} contains a secret of 5 characters, too short: ` +
            "the secret must be at least 32 characters; put a longer secret in it, " +
            "or delete it so that a new one is created",
        );
        assert.equal(fatal?.file, secretFile);
        assert.equal(readFileSync(secretFile, "utf8"), "short\n");
        assert.equal(statSync(secretFile).mode & 0o777, 0o644);
        assert.doesNotMatch(output, /relay failed to start/);
        assert.doesNotMatch(output, /worker ready/);
      } finally {
        rmSync(directory, { recursive: true, force: true });
      }
    });
  }

  it("warns about a readable secret file", async () => {
    const directory = mkdtempSync(join(tmpdir(), "relay-secret-"));
    const secretFile = join(directory, "auth-secret");
    writeFileSync(secretFile, `${TEST_SECRET}\n`, { mode: 0o644 });
    const relay = await startRelay({
      env: { AUTH_SECRET: "", AUTH_SECRET_FILE: secretFile },
    });
    try {
      const warning = await relay.waitForLog((line) =>
        line.msg.startsWith(`AUTH_SECRET_FILE ${secretFile}`),
      );
      assert.equal(warning.level, 40);
      assert.equal(
        warning.msg,
        `AUTH_SECRET_FILE ${secretFile} can be read by its group or others (mode 0644); run chmod 600 ${secretFile}`,
      );
      assert.equal(warning.mode, "0644");
      assert.equal(warning.file, secretFile);
      // The relay uses the file's secret, which signed the test's token.
      const bridge = await connectBridge(relay.url, randomBridgeId());
      assert.equal(bridge.connected, true);
      bridge.close();
      assert.equal(readFileSync(secretFile, "utf8"), `${TEST_SECRET}\n`);
    } finally {
      await relay.stop();
      rmSync(directory, { recursive: true, force: true });
    }
  });

  it("requires a key in production", async () => {
    const { code, output } = await runRelay({ NODE_ENV: "production" });
    assert.equal(code, 1);
    assert.match(output, /AUTH_SECRET or AUTH_PUBLIC_KEY must be set/);
  });

  it("drains the cluster on SIGTERM", async () => {
    const relay = await startRelay({ redisUrl: redis.url, workers: 2 });
    const workers = relay.workers();
    const bridge = await connectBridge(relay.url, randomBridgeId());
    const app = await connectApp(relay.url, [randomBridgeId()]);
    const bridgeGone = new Promise<string>((resolve) =>
      bridge.once("disconnect", resolve),
    );
    const appGone = new Promise<string>((resolve) =>
      app.once("disconnect", resolve),
    );
    const started = Date.now();
    const code = await relay.stop("SIGTERM");
    assert.equal(code, 0);
    assert.ok(
      Date.now() - started < 6000,
      `stopped in ${Date.now() - started} ms`,
    );
    assert.equal(
      await bridgeGone,
      "transport close",
      "a plain close makes clients reconnect",
    );
    assert.equal(await appGone, "transport close");
    for (const worker of workers)
      assert.equal(isAlive(worker.pid), false, `worker ${worker.pid} exited`);
    assert.ok(relay.logs.some((line) => line.msg === "primary stopped"));
  });

  it("logs why workers exit with their primary", async () => {
    const relay = await startRelay({ redisUrl: redis.url, workers: 2 });
    const workers = relay.workers();
    process.kill(relay.pid, "SIGKILL");
    const deadline = Date.now() + 10_000;
    while (workers.some((worker) => isAlive(worker.pid))) {
      assert.ok(Date.now() < deadline, "workers outlived their primary");
      await settle(50);
    }
    await settle(200);
    const logged = relay.logs
      .filter((line) => line.msg.startsWith("primary process is gone"))
      .map((line) => line.pid)
      .sort();
    assert.deepEqual(logged, workers.map((worker) => worker.pid).sort());
  });

  it("listens with a deep accept backlog", async () => {
    const relay = await startRelay({ redisUrl: redis.url, workers: 1 });
    try {
      // For a listening socket, ss reports the backlog in the Send-Q column.
      const output = execFileSync("ss", ["-ltnH", `sport = :${relay.port}`], {
        encoding: "utf8",
      });
      const backlog = Number(output.trim().split(/\s+/)[2]);
      const somaxconn = Number(
        readFileSync("/proc/sys/net/core/somaxconn", "utf8"),
      );
      assert.equal(backlog, Math.min(4096, somaxconn));
    } finally {
      await relay.stop();
    }
  });

  it("stops the embedded relay on SIGINT", async () => {
    const relay = await startRelay();
    const bridge = await connectBridge(relay.url, randomBridgeId());
    const gone = new Promise<string>((resolve) =>
      bridge.once("disconnect", resolve),
    );
    assert.equal(await relay.stop("SIGINT"), 0);
    assert.equal(await gone, "transport close");
  });

  it("drains the embedded relay on SIGHUP", async () => {
    const relay = await startRelay();
    const bridge = await connectBridge(relay.url, randomBridgeId());
    const gone = new Promise<string>((resolve) =>
      bridge.once("disconnect", resolve),
    );
    assert.equal(await relay.stop("SIGHUP"), 0);
    assert.equal(await gone, "transport close");
    const shutdown = relay.logs.find((line) => line.msg === "shutting down");
    assert.equal(shutdown?.reason, "SIGHUP");
    assert.ok(relay.logs.some((line) => line.msg === "stopped"));
  });

  for (const target of ["primary", "process group"] as const) {
    it(`drains the cluster on SIGHUP to its ${target}`, async () => {
      const relay = await startRelay({
        redisUrl: redis.url,
        workers: 2,
        ownProcessGroup: true,
      });
      const workers = relay.workers();
      const bridge = await connectBridge(relay.url, randomBridgeId());
      const gone = new Promise<string>((resolve) =>
        bridge.once("disconnect", resolve),
      );
      // A terminal that closes sends SIGHUP to its whole foreground
      // process group: the primary and its workers at once.
      process.kill(target === "primary" ? relay.pid : -relay.pid, "SIGHUP");
      assert.equal(await relay.waitForExit(), 0);
      assert.equal(await gone, "transport close");

      const primaryStop = relay.logs.find(
        (line) => line.msg === "primary shutting down, draining workers",
      );
      assert.equal(primaryStop?.reason, "SIGHUP");
      assert.ok(relay.logs.some((line) => line.msg === "primary stopped"));

      for (const worker of workers) {
        assert.ok(
          relay.logs.some(
            (line) => line.msg === "stopped" && line.pid === worker.pid,
          ),
          `worker ${worker.pid} drained and logged its stop`,
        );
        assert.equal(isAlive(worker.pid), false, `worker ${worker.pid} exited`);
      }
      assert.ok(
        !relay.logs.some((line) =>
          line.msg.startsWith("primary process is gone"),
        ),
        "no worker lost its primary",
      );
    });
  }

  for (const clustered of [false, true]) {
    it(`stops ${clustered ? "a cluster" : "the embedded relay"} whose log reader is gone`, async () => {
      const relay = await startRelay(
        clustered ? { redisUrl: redis.url, workers: 1 } : {},
      );
      // Closing the read ends makes each log write fail with EPIPE.
      relay.child.stdout!.destroy();
      relay.child.stderr!.destroy();
      const startedAt = Date.now();
      const stopped = relay.stop("SIGTERM");
      const deadline = new Promise<string>((resolve) =>
        setTimeout(() => resolve("still running"), 8000),
      );
      const outcome = await Promise.race([stopped, deadline]);
      if (outcome === "still running") process.kill(relay.pid, "SIGKILL");
      assert.equal(outcome, 0, `exit after ${Date.now() - startedAt} ms`);
    });
  }

  it("keeps the embedded relay on SIGUSR2", async () => {
    const relay = await startRelay();
    try {
      const bridge = await connectBridge(relay.url, randomBridgeId());
      process.kill(relay.pid, "SIGUSR2");
      await relay.waitForLog((line) => line.msg.startsWith("SIGUSR2 ignored"));

      const info = await requestData<{ serverId: string }>(
        bridge,
        "relay:info",
        {},
      );
      assert.equal(typeof info.serverId, "string");
      bridge.close();
    } finally {
      await relay.stop();
    }
  });

  it("restarts dying workers with growing delays", async () => {
    const relay = await startRelay({ redisUrl: redis.url, workers: 1 });
    try {
      const died = (count: number) => (line: LogLine) =>
        line.msg === "worker died, restarting" &&
        relay.logs.filter((entry) => entry.msg === "worker died, restarting")
          .length === count;
      const delays: number[] = [];
      for (let crash = 1; crash <= 3; crash += 1) {
        const ready = relay.workers();
        const current = ready[ready.length - 1]!;
        process.kill(current.pid, "SIGKILL");
        const line = await relay.waitForLog(died(crash));
        delays.push(Number(line.restartInMs));
        await relay.waitForLog(
          (entry) =>
            entry.msg === "worker ready" &&
            relay.workers().length === crash + 1,
          15_000,
        );
      }
      assert.deepEqual(delays, [250, 500, 1000]);
      const bridge = await connectBridge(relay.url, randomBridgeId());
      assert.equal(bridge.connected, true, "the replacement worker serves");
      bridge.close();
    } finally {
      await relay.stop();
    }
  });

  it("serves no connection before a worker is ready", async () => {
    const relay = await startRelay({ redisUrl: redis.url, workers: 1 });
    try {
      const [worker] = relay.workers();
      process.kill(worker!.pid, "SIGKILL");
      await relay.waitForLog((line) => line.msg === "worker died, restarting");
      // With no ready worker the balancer answers 503 at once instead of
      // handing the connection to a worker that cannot serve it yet.
      const response = await fetch(`${relay.url}/readyz`, {
        signal: AbortSignal.timeout(3000),
      });
      assert.equal(response.status, 503);
      await relay.waitForLog(
        (line) => line.msg === "worker ready" && relay.workers().length === 2,
        15_000,
      );
      await settle(100);
      const ready = await fetch(`${relay.url}/readyz`, {
        signal: AbortSignal.timeout(3000),
      });
      assert.equal(ready.status, 200);
    } finally {
      await relay.stop();
    }
  });
});
