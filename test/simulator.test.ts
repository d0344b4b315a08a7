import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import {
  mkdtempSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { jwtVerify } from "jose";
import type {
  BridgePresence,
  BridgeState,
  Light,
} from "../client-sdk/src/protocol.ts";
import { connect, nextEvent, requestData } from "./support/clients.ts";
import {
  startRelay,
  TEST_SECRET,
  type RelayProcess,
} from "./support/relay-process.ts";

const ROOT = fileURLToPath(new URL("..", import.meta.url));
const run = promisify(execFile);
const env = { ...process.env, AUTH_SECRET: TEST_SECRET };

/** Runs the token tool as a user would and returns the JWT it printed. */
async function mintToken(...args: string[]): Promise<string> {
  const { stdout } = await run(
    process.execPath,
    ["--import", "tsx", "server/tools/token.ts", ...args],
    {
      cwd: ROOT,
      env,
    },
  );
  return stdout.trim();
}

describe("simulator and token tool", function () {
  this.timeout(60_000);
  let relay: RelayProcess;
  let simulator: ChildProcess;
  const output: string[] = [];

  before(async () => {
    relay = await startRelay();
    simulator = spawn(
      process.execPath,
      [
        "--import",
        "tsx",
        "client-sdk/simulator/main.ts",
        "--url",
        relay.url,
        "--bridges",
        "2",
        "--change-interval-ms",
        "300",
      ],
      { cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] },
    );
    createInterface({ input: simulator.stdout! }).on("line", (line) =>
      output.push(line),
    );
    createInterface({ input: simulator.stderr! }).on("line", (line) =>
      output.push(line),
    );
  });

  after(async () => {
    if (simulator.exitCode === null) {
      const exited = once(simulator, "exit");
      simulator.kill("SIGTERM");
      const forced = setTimeout(() => simulator.kill("SIGKILL"), 5000);
      await exited;
      clearTimeout(forced);
    }
    await relay.stop();
  });

  it("rejects a malformed bridge ID", async () => {
    await assert.rejects(
      mintToken("bridge", "not-hex"),
      (error: Error & { code?: number; stderr?: string }) => {
        assert.equal(error.code, 2);
        assert.match(error.stderr ?? "", /16 hexadecimal digits/);
        return true;
      },
    );
  });

  it("drives commands and switches", async () => {
    const bridges = ["001788fffe000000", "001788fffe000001"];
    const token = await mintToken(
      "app",
      "tester",
      "--bridges",
      bridges.join(","),
      "--scope",
      "read control",
    );
    assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/);
    const app = await connect(relay.url, "/app", { auth: { token } });
    try {
      let online: BridgePresence[] = [];
      const deadline = Date.now() + 20_000;
      while (online.length < 2) {
        assert.ok(
          Date.now() < deadline,
          `bridges online in time; simulator said: ${output.join("\n")}`,
        );
        const list = await requestData<{ bridges: BridgePresence[] }>(
          app,
          "bridge:list",
          {},
        );
        online = list.bridges.filter((bridge) => bridge.online);
        await new Promise((resolve) => setTimeout(resolve, 200));
      }
      const state = await requestData<BridgeState>(app, "bridge:subscribe", {
        bridgeId: bridges[0],
      });
      assert.equal(
        state.lights.length,
        8,
        "all eight real CLIP v2 lights arrived",
      );
      const target = state.lights[0]!;
      const { light } = await requestData<{ light: Light }>(app, "light:set", {
        bridgeId: bridges[0],
        lightId: target.id,
        change: { dimming: { brightness: 7 } },
      });
      assert.deepEqual(light.dimming, { brightness: 7 });
      const wallSwitch = await nextEvent<{ version: number }>(
        app,
        "lights:changed",
        () => true,
        10_000,
      );
      assert.ok(
        wallSwitch.version > state.version,
        "a wall-switch change arrived",
      );
    } finally {
      app.close();
    }
  });
});

describe("token tool and simulator: secret file", function () {
  this.timeout(30_000);
  let directory: string;
  let secretFile: string;

  beforeEach(() => {
    directory = mkdtempSync(join(tmpdir(), "relay-secret-"));
    secretFile = join(directory, "auth-secret");
  });

  afterEach(() => {
    rmSync(directory, { recursive: true, force: true });
  });

  /** Runs `script` with the secret file and no AUTH_SECRET, and returns its exit code and output. */
  async function runWithSecretFile(
    script: string,
    args: string[],
  ): Promise<{ code: number; stdout: string; stderr: string }> {
    try {
      const { stdout, stderr } = await run(
        process.execPath,
        ["--import", "tsx", script, ...args],
        {
          cwd: ROOT,
          env: {
            ...process.env,
            NODE_ENV: "development",
            AUTH_SECRET: "",
            AUTH_PUBLIC_KEY: "",
            AUTH_SECRET_FILE: secretFile,
          },
          timeout: 15_000,
        },
      );
      return { code: 0, stdout, stderr };
    } catch (error) {
      const failure = error as { code: number; stdout: string; stderr: string };
      return failure;
    }
  }

  const tokenArgs = ["bridge", "001788fffe000000"];
  // The simulator reads the secret file before it connects, and no relay
  // listens on port 1.
  const simulatorArgs = ["--url", "http://127.0.0.1:1", "--bridges", "1"];
  const tools = [
    { name: "token tool", script: "server/tools/token.ts", args: tokenArgs },
    {
      name: "simulator",
      script: "client-sdk/simulator/main.ts",
      args: simulatorArgs,
    },
  ];

  for (const tool of tools) {
    it(`${tool.name} rejects a short secret file`, async () => {
      writeFileSync(secretFile, "short\n", { mode: 0o644 });
      const { code, stderr } = await runWithSecretFile(tool.script, tool.args);
      assert.equal(code, 1);
      assert.equal(
        stderr.trim(),
        `AUTH_SECRET_FILE ${secretFile} contains a secret of 5 characters, too short: ` +
          "the secret must be at least 32 characters; put a longer secret in it, " +
          "or delete it so that a new one is created",
      );
      assert.equal(readFileSync(secretFile, "utf8"), "short\n");
      assert.equal(statSync(secretFile).mode & 0o777, 0o644);
    });
  }

  it("token tool warns about a readable secret file", async () => {
    writeFileSync(secretFile, `${TEST_SECRET}\n`, { mode: 0o644 });
    const { code, stdout, stderr } = await runWithSecretFile(
      "server/tools/token.ts",
      tokenArgs,
    );
    assert.equal(code, 0);
    assert.equal(
      stderr.trim(),
      `AUTH_SECRET_FILE ${secretFile} can be read by its group or others (mode 0644); run chmod 600 ${secretFile}`,
    );
    const { payload } = await jwtVerify(
      stdout.trim(),
      new TextEncoder().encode(TEST_SECRET),
    );
    assert.equal(payload.sub, "001788fffe000000");
  });

  it("simulator warns about a readable secret file", async () => {
    writeFileSync(secretFile, `${TEST_SECRET}\n`, { mode: 0o644 });
    const simulator = spawn(
      process.execPath,
      ["--import", "tsx", "client-sdk/simulator/main.ts", ...simulatorArgs],
      {
        cwd: ROOT,
        env: {
          ...process.env,
          NODE_ENV: "development",
          AUTH_SECRET: "",
          AUTH_PUBLIC_KEY: "",
          AUTH_SECRET_FILE: secretFile,
        },
        stdio: ["ignore", "pipe", "pipe"],
      },
    );
    const exited = once(simulator, "exit");
    try {
      const lines = createInterface({ input: simulator.stderr! });
      const [first] = (await once(lines, "line")) as [string];
      assert.equal(
        first,
        `AUTH_SECRET_FILE ${secretFile} can be read by its group or others (mode 0644); run chmod 600 ${secretFile}`,
      );
    } finally {
      simulator.kill("SIGTERM");
      await exited;
    }
  });

  it("token tool creates a missing secret file", async () => {
    const { code, stdout, stderr } = await runWithSecretFile(
      "server/tools/token.ts",
      tokenArgs,
    );
    assert.equal(code, 0);
    assert.equal(stderr.trim(), `created development secret in ${secretFile}`);
    assert.equal(statSync(secretFile).mode & 0o777, 0o600);
    const secret = readFileSync(secretFile, "utf8").trim();
    await jwtVerify(stdout.trim(), new TextEncoder().encode(secret));
  });
});
