/**
 * A load generator process, started by `LoadAgent` in rpc.ts. It runs the
 * clients of a scenario (bridges, apps, MQTT clients) and replies to the
 * driver's calls over the IPC channel. It exits when that channel closes.
 */
import { CommandLoad, type CommandRun, type CommandSetup } from "./commands.ts";
import {
  ChangeSource,
  Dashboards,
  type ChangeSourceConnect,
  type DashboardsConnect,
} from "./fanout.ts";
import {
  IdleFleet,
  StormFleet,
  type IdleFleetConnect,
  type StormFleetStart,
} from "./fleet.ts";
import type { RpcRequest, RpcResponse } from "./rpc.ts";

const commands = new CommandLoad();
const idleFleet = new IdleFleet();
const stormFleet = new StormFleet();
const dashboards = new Dashboards();
const changes = new ChangeSource();

const methods: Record<string, (params: never) => unknown> = {
  // Resolves once the agent has loaded, so start-up time stays out of a measurement.
  ping: () => "pong",
  "commands.setup": (params: CommandSetup) => commands.setup(params),
  "commands.run": (params: CommandRun) => commands.run(params),
  "commands.close": () => commands.close(),
  "fleet.connect": (params: IdleFleetConnect) => idleFleet.connect(params),
  "fleet.close": () => idleFleet.close(),
  "storm.start": (params: StormFleetStart) => stormFleet.start(params),
  "storm.cut": (params: { timeoutMs: number }) => stormFleet.cut(params),
  "dashboards.connect": (params: DashboardsConnect) =>
    dashboards.connect(params),
  "dashboards.collect": () => dashboards.collect(),
  "dashboards.close": () => dashboards.close(),
  "changes.connect": (params: ChangeSourceConnect) => changes.connect(params),
  "changes.run": (params: {
    rate: number;
    durationMs: number;
    drainMs: number;
  }) => changes.run(params),
  "changes.close": () => changes.close(),
};

function reply(response: RpcResponse): void {
  process.send?.(response);
}

process.on("message", (request: RpcRequest) => {
  const method = methods[request.method];
  if (method === undefined) {
    reply({ id: request.id, error: `unknown method ${request.method}` });
    return;
  }
  Promise.resolve()
    .then(() => method(request.params as never))
    .then(
      (result) => reply({ id: request.id, result: result ?? null }),
      (error: unknown) =>
        reply({
          id: request.id,
          error: String((error as Error).stack ?? error),
        }),
    );
});

// The agent must not outlive the driver, however the driver ends.
process.on("disconnect", () => {
  commands.close();
  idleFleet.close();
  stormFleet.close();
  dashboards.close();
  changes.close();
  process.exit(0);
});
