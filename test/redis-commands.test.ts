import assert from "node:assert/strict";
import { createClient } from "redis";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
  requestData,
  settle,
} from "./support/clients.ts";
import { answerLightSet, lightMap } from "./support/fake-bridge.ts";
import { light } from "./support/fixtures.ts";
import { deploy, type Deployment } from "./support/variants.ts";

const COMMANDS = 20;

/**
 * Splits a MONITOR line (`<time> [<db> <client>] "cmd" "arg" ...`) into
 * its quoted arguments. Commands that scripts run show `lua` as client.
 */
function monitoredArgs(line: string): string[] {
  return [...line.matchAll(/"((?:[^"\\]|\\.)*)"/g)].map((match) => match[1]!);
}

describe("Redis commands per light command", function () {
  this.timeout(30_000);
  let deployment: Deployment;

  before(async () => {
    deployment = await deploy(2, 1);
  });

  after(async () => {
    await deployment?.stop();
  });

  /**
   * Sends COMMANDS commands from an app on `appUrl` to a bridge on
   * `bridgeUrl`, after one that fills the caches, and returns the names of
   * the Redis commands that name the bridge, scripts' own calls left out.
   */
  async function commandsNamingBridge(
    bridgeUrl: string,
    appUrl: string,
  ): Promise<string[]> {
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(bridgeUrl, bridgeId);
    const app = await connectApp(appUrl, [bridgeId]);
    const monitor = createClient({ url: deployment.redis!.url });
    await monitor.connect();
    try {
      answerLightSet(bridge, lightMap("lamp-1"));
      await requestData(bridge, "state:snapshot", {
        lights: [light("lamp-1")],
      });
      const send = (brightness: number) =>
        requestData(app, "light:set", {
          bridgeId,
          lightId: "lamp-1",
          change: { dimming: { brightness } },
        });
      // The first command reads the light, which the bridge's process then
      // keeps. Its broadcast may reach Redis after its acknowledgement
      // reaches the app.
      await send(1);
      await settle(200);

      const seen: string[] = [];
      await monitor.monitor((line) => seen.push(line));
      for (let index = 0; index < COMMANDS; index += 1) await send(index + 2);
      await settle(200);

      const names = seen
        .filter((line) => !/\[\d+ lua\]/.test(line))
        .map(monitoredArgs)
        .filter((args) => args.some((arg) => arg.includes(bridgeId)))
        .map((args) => args[0]!.toLowerCase());
      console.log(
        `      Redis commands naming the bridge per light command, scripts counted once: ${(names.length / COMMANDS).toFixed(2)} (${[...new Set(names)].join(", ")})`,
      );
      return names;
    } finally {
      await monitor.close();
      bridge.close();
      app.close();
    }
  }

  function count(names: string[], name: string): number {
    return names.filter((item) => item === name).length;
  }

  it("reads nothing for a bridge on the app's worker", async () => {
    const url = deployment.relays[0]!.url;
    const names = await commandsNamingBridge(url, url);
    // One script that writes the state and one broadcast of the change.
    assert.deepEqual([...new Set(names)].sort(), ["evalsha", "spublish"]);
    assert.equal(count(names, "evalsha"), COMMANDS);
    assert.equal(count(names, "spublish"), COMMANDS);
  });

  it("reads only presence for a bridge on another server", async () => {
    const [bridgeRelay, appRelay] = deployment.relays;
    const names = await commandsNamingBridge(bridgeRelay!.url, appRelay!.url);
    // The app's server reads the presence and publishes the command. The
    // bridge's server checks the light in its copy, writes the state and
    // broadcasts the change. The reply names no bridge.
    assert.deepEqual([...new Set(names)].sort(), [
      "evalsha",
      "hmget",
      "spublish",
    ]);
    assert.equal(count(names, "hmget"), COMMANDS);
    assert.equal(count(names, "evalsha"), COMMANDS);
    assert.equal(count(names, "spublish"), 2 * COMMANDS);
  });
});
