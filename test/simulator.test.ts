import assert from "node:assert/strict";
import { execFile, spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
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
