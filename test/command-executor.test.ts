import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server as HttpServer } from "node:http";
import type { AddressInfo } from "node:net";
import { pino } from "pino";
import type { Light } from "../client-sdk/src/protocol.ts";
import { Server, type Socket as ServerSocket } from "socket.io";
import { io as connect, type Socket as ClientSocket } from "socket.io-client";
import type { BridgeSessions } from "../server/relay/bridge-sessions.ts";
import { CommandExecutor } from "../server/relay/command-executor.ts";
import type { AppBroadcaster } from "../server/relay/broadcaster.ts";
import { StateWriter } from "../server/relay/state-writer.ts";
import { MemoryStore } from "../server/state/memory-store.ts";
import { waitUntil } from "./support/faults.ts";
import { light } from "./support/fixtures.ts";

const BRIDGE_ID = "bridge-executor-1";
const TIMEOUT_MS = 1000;

const silentBroadcaster: AppBroadcaster = {
  lightsChanged: () => undefined,
  snapshot: () => undefined,
  presence: () => undefined,
};

describe("CommandExecutor on a real socket", () => {
  let httpServer: HttpServer;
  let server: Server;
  let client: ClientSocket;
  let socket: ServerSocket;
  let store: MemoryStore;
  let executor: CommandExecutor;

  beforeEach(async () => {
    httpServer = createServer();
    server = new Server(httpServer);
    httpServer.listen(0, "127.0.0.1");
    await once(httpServer, "listening");
    const { port } = httpServer.address() as AddressInfo;
    const connected = once(server, "connection");
    client = connect(`http://127.0.0.1:${port}`, {
      transports: ["websocket"],
      reconnection: false,
    });
    [socket] = (await connected) as [ServerSocket];
    store = new MemoryStore();
    const { epoch } = await store.claimConnection(
      BRIDGE_ID,
      "server-1",
      socket.id,
      new Date(),
    );
    await store.writeLights(BRIDGE_ID, {
      epoch,
      expectedVersion: 0,
      replaceAll: true,
      lights: [light("lamp") as unknown as Light],
    });
    // The registry is a stand-in because the race it covers, a session
    // still listed after its transport closed, cannot be produced on demand.
    const sessions = {
      get: (bridgeId: string) =>
        bridgeId === BRIDGE_ID ? { bridgeId, epoch, socket } : undefined,
    } as unknown as BridgeSessions;
    executor = new CommandExecutor(
      sessions,
      store,
      new StateWriter(store, silentBroadcaster),
      TIMEOUT_MS,
      pino({ level: "silent" }),
      16,
    );
  });

  afterEach(async () => {
    client.close();
    await server.close();
    await store.close();
  });

  const command = (commandId: string, lightId = "lamp") => ({
    bridgeId: BRIDGE_ID,
    commandId,
    lightId,
    change: { on: { on: true } },
  });

  it("sends over an open transport", async () => {
    client.on(
      "light:set",
      (_command: unknown, ack: (answer: unknown) => void) =>
        ack({ ok: false, error: { code: "LIGHT_BUSY", message: "busy" } }),
    );

    const answer = await executor.execute(command("open-1"));

    assert.equal(answer.ok, false);
    assert.equal(answer.ok ? undefined : answer.error.code, "BRIDGE_ERROR");
  });

  it("rejects an unknown light", async () => {
    let received = 0;
    client.on("light:set", () => (received += 1));

    const answer = await executor.execute(command("unknown-1", "no-such"));

    assert.equal(answer.ok ? undefined : answer.error.code, "NOT_FOUND");
    assert.equal(received, 0);
  });

  it("stores an answer after the timeout", async () => {
    let received = 0;
    client.on(
      "light:set",
      (_command: unknown, ack: (answer: unknown) => void) => {
        received += 1;
        setTimeout(
          () => ack({ ok: true, data: { light: light("lamp", true) } }),
          TIMEOUT_MS + 200,
        );
      },
    );

    const answer = await executor.execute(command("late-1"));
    assert.equal(answer.ok ? undefined : answer.error.code, "TIMEOUT");
    await waitUntil(
      "the late answer's light stored",
      async () => {
        const state = await store.getState(BRIDGE_ID);
        return state.lights[0]?.on.on === true;
      },
      2000,
    );

    const repeated = await executor.execute(command("late-1"));
    assert.equal(repeated.ok, true);
    assert.equal(received, 1);
  });

  it("rejects another command while one awaits its late answer", async () => {
    const received: string[] = [];
    client.on(
      "light:set",
      (sent: { lightId: string }, ack: (answer: unknown) => void) => {
        received.push(sent.lightId);
        setTimeout(
          () => ack({ ok: true, data: { light: light(sent.lightId, true) } }),
          TIMEOUT_MS + 300,
        );
      },
    );

    const first = await executor.execute(command("late-2"));
    assert.equal(first.ok ? undefined : first.error.code, "TIMEOUT");
    // The bridge may still answer the first command.
    const other = await executor.execute({
      ...command("late-2"),
      change: { on: { on: false } },
    });
    assert.equal(other.ok ? undefined : other.error.code, "INVALID_PAYLOAD");
    assert.deepEqual(received, ["lamp"], "commands that reached the bridge");
  });

  it("rejects a closed transport at once", async () => {
    let received = 0;
    client.on("light:set", () => (received += 1));
    socket.conn.close();
    await waitUntil(
      "the server side of the transport closed",
      () => socket.conn.readyState !== "open",
      2000,
    );

    const started = performance.now();
    const answer = await executor.execute(command("closed-1"));
    const elapsedMs = performance.now() - started;

    assert.equal(answer.ok, false);
    assert.equal(answer.ok ? undefined : answer.error.code, "BRIDGE_OFFLINE");
    assert.ok(elapsedMs < TIMEOUT_MS / 2, `answered after ${elapsedMs} ms`);
    assert.equal(received, 0);
  });
});
