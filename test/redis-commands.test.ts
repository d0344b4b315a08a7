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
    deployment = await deploy(1, 1);
  });

  after(async () => {
    await deployment?.stop();
  });

  it("reads nothing for a bridge on the app's worker", async () => {
    const url = deployment.relays[0]!.url;
    const bridgeId = randomBridgeId();
    const bridge = await connectBridge(url, bridgeId);
    const app = await connectApp(url, [bridgeId]);
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
      // The first command reads the light, which the worker then keeps.
      // Its broadcast may reach Redis after its acknowledgement reaches the app.
      await send(1);
      await settle(200);

      const seen: string[] = [];
      await monitor.monitor((line) => seen.push(line));
      for (let index = 0; index < COMMANDS; index += 1) await send(index + 2);
      await settle(200);

      const forBridge = seen
        .filter((line) => !/\[\d+ lua\]/.test(line))
        .map(monitoredArgs)
        .filter((args) => args.some((arg) => arg.includes(bridgeId)));
      const names = forBridge.map((args) => args[0]!.toLowerCase());
      console.log(
        `      Redis commands naming the bridge per light command, scripts counted once: ${(forBridge.length / COMMANDS).toFixed(2)} (${[...new Set(names)].join(", ")})`,
      );
      // One script that writes the state and one broadcast of the change.
      assert.deepEqual(
        [...new Set(names)].sort(),
        ["evalsha", "spublish"],
        JSON.stringify(forBridge.slice(0, 6)),
      );
      assert.equal(names.filter((name) => name === "evalsha").length, COMMANDS);
      assert.equal(
        names.filter((name) => name === "spublish").length,
        COMMANDS,
      );
    } finally {
      await monitor.close();
      bridge.close();
      app.close();
    }
  });
});
