import assert from "node:assert/strict";
import { io, type Socket } from "socket.io-client";
import type {
  BridgePresence,
  BridgeSnapshotEvent,
  BridgeState,
  Light,
  LightSetCommand,
  LightsChangedEvent,
} from "../client-sdk/src/protocol.ts";
import {
  connect,
  connectApp,
  type ConnectOptions,
  connectBridge,
  connectError,
  nextEvent,
  randomBridgeId,
  record,
  request,
  requestData,
  settle,
} from "./support/clients.ts";
import { answerLightSet, untypedLightMap } from "./support/fake-bridge.ts";
import { waitUntil } from "./support/faults.ts";
import { light, realLights } from "./support/fixtures.ts";
import { appToken, bridgeToken, signClaims } from "./support/tokens.ts";
import { RawPollingSession } from "./support/raw-polling.ts";
import { CONTRACT_ENV, VARIANTS, type Deployment } from "./support/variants.ts";

type Answer = (answer: unknown) => void;

/** Orders in which a bridge sends a snapshot and a command's answer. */
const WRITE_ORDERS = [
  { name: "a snapshot, then the answer", answerFirst: false, late: false },
  { name: "the answer, then a snapshot", answerFirst: true, late: false },
  { name: "a snapshot, then a late answer", answerFirst: false, late: true },
  { name: "a late answer, then a snapshot", answerFirst: true, late: true },
];

/** Connections of one bridge opened at the same moment. */
const CONCURRENT_CONNECTIONS = 12;

for (const variant of VARIANTS) {
  describe(`contract: ${variant.name}`, function () {
    let deployment: Deployment;
    let url: string;
    const sockets: Socket[] = [];

    const track = <T extends Socket>(socket: T): T => {
      sockets.push(socket);
      return socket;
    };
    const bridgeWithLights = async (
      bridgeId: string,
      lights: object[],
      options: ConnectOptions = {},
    ) => {
      const bridge = track(await connectBridge(url, bridgeId, options));
      const ack = await request<{ version: number }>(bridge, "state:snapshot", {
        lights,
      });
      assert.equal(ack.ok, true, JSON.stringify(ack));
      return bridge;
    };
    const app = async (bridges: string[], scope = "read control") =>
      track(await connectApp(url, bridges, scope));
    /** Connects a polling bridge with light "a" at brightness 50, and an app subscribed to it. */
    const watchedPollingBridge = async (bridgeId: string) => {
      const bridge = await bridgeWithLights(bridgeId, [light("a", true, 50)], {
        transports: ["polling"],
      });
      const watcher = await app([bridgeId]);
      await requestData(watcher, "bridge:subscribe", { bridgeId });
      return { bridge, watcher };
    };
    const offlinePresence = (watcher: Socket) =>
      nextEvent<BridgePresence>(
        watcher,
        "bridge:presence",
        (event) => !event.online,
      );
    /**
     * Sends a change of light "a" and the disconnection in one polling
     * body: the first event keeps the transport's one POST busy, so the next
     * packets wait for it together.
     */
    const changeThenDisconnect = (bridge: Socket, brightness: number) => {
      bridge.emit("relay:info");
      bridge.emit(
        "state:changed",
        { lights: [{ id: "a", dimming: { brightness } }] },
        () => undefined,
      );
      bridge.disconnect();
    };

    before(async function () {
      this.timeout(60_000);
      deployment = await variant.start();
      url = deployment.relays[0]!.url;
    });

    afterEach(() => {
      for (const socket of sockets.splice(0)) socket.close();
    });

    after(async function () {
      this.timeout(30_000);
      await deployment?.stop();
    });

    describe("handshake", () => {
      it("admits a valid bridge token", async () => {
        const bridge = track(await connectBridge(url, randomBridgeId()));
        assert.equal(bridge.connected, true);
      });

      it("rejects a missing token", async () => {
        const error = await connectError(url, "/bridge", { auth: {} });
        assert.equal(error.data?.code, "UNAUTHORIZED");
        assert.match(error.message, /^[a-z]/);
      });

      it("rejects a malformed token", async () => {
        const error = await connectError(url, "/app", {
          auth: { token: "not.a.jwt" },
        });
        assert.equal(error.data?.code, "UNAUTHORIZED");
      });

      it("rejects a token signed with another secret", async () => {
        const token = await bridgeToken(randomBridgeId(), {
          secret: "another-secret-of-enough-length-000000",
        });
        const error = await connectError(url, "/bridge", { auth: { token } });
        assert.equal(error.data?.code, "UNAUTHORIZED");
      });

      it("rejects an expired token", async () => {
        const exp = Math.floor(Date.now() / 1000) - 3600;
        const token = await bridgeToken(randomBridgeId(), { exp });
        const error = await connectError(url, "/bridge", { auth: { token } });
        assert.equal(error.data?.code, "UNAUTHORIZED");
        assert.match(error.message, /expired/);
      });

      it("ignores a token in the query string", async () => {
        const token = await bridgeToken(randomBridgeId());
        const error = await connectError(url, "/bridge", { query: { token } });
        assert.equal(error.data?.code, "UNAUTHORIZED");
      });

      it("rejects an app token on /bridge", async () => {
        const token = await appToken("user-1", [randomBridgeId()]);
        const error = await connectError(url, "/bridge", { auth: { token } });
        assert.equal(error.data?.code, "FORBIDDEN");
      });

      it("rejects a bridge token on /app", async () => {
        const token = await bridgeToken(randomBridgeId());
        const error = await connectError(url, "/app", { auth: { token } });
        assert.equal(error.data?.code, "FORBIDDEN");
      });

      it("rejects the main namespace", async () => {
        const token = await bridgeToken(randomBridgeId());
        const error = await connectError(url, "/" as "/app", {
          auth: { token },
        });
        assert.equal(error.data?.code, "FORBIDDEN");
        assert.match(error.message, /connect to \/bridge or \/app/);
      });

      it("rejects a malformed bridges claim", async () => {
        const token = await appToken("user-1", ["not-a-bridge"]);
        const error = await connectError(url, "/app", { auth: { token } });
        assert.equal(error.data?.code, "UNAUTHORIZED");
      });

      it("limits handshakes per identity", async () => {
        const token = await signClaims({
          sub: `burst-${randomBridgeId()}`,
          role: "app",
          scope: "read",
        });
        const limit = Number(CONTRACT_ENV.HANDSHAKES_PER_IDENTITY_PER_MINUTE);
        for (let index = 0; index < limit; index += 1) {
          (
            await connect(url, "/app", {
              auth: { token },
              transports: ["websocket"],
            })
          ).close();
        }
        const error = await connectError(url, "/app", {
          auth: { token },
          transports: ["websocket"],
        });
        assert.equal(error.data?.code, "RATE_LIMITED");
        assert.ok(
          (error.data?.retryAfterMs ?? 0) > 0,
          "retryAfterMs is positive",
        );
      });

      it("disconnects a socket when its token expires", async function () {
        this.timeout(15_000);
        // Accepted within the 60 s clock leeway, and disconnected when that runs out.
        const exp = Math.floor(Date.now() / 1000) - 58;
        const token = await bridgeToken(randomBridgeId(), { exp });
        const bridge = track(
          await connect(url, "/bridge", { auth: { token } }),
        );
        const reason = await new Promise<string>((resolve) =>
          bridge.once("disconnect", resolve),
        );
        assert.equal(reason, "io server disconnect");
      });
    });

    describe("bridge state", () => {
      it("counts versions from a snapshot", async () => {
        const bridge = track(await connectBridge(url, randomBridgeId()));
        const first = await requestData<{ version: number }>(
          bridge,
          "state:snapshot",
          {
            lights: [light("a"), light("b")],
          },
        );
        assert.equal(first.version, 1);
      });

      it("keeps version 0 for an empty first snapshot", async () => {
        const bridge = track(await connectBridge(url, randomBridgeId()));
        const ack = await requestData<{ version: number }>(
          bridge,
          "state:snapshot",
          { lights: [] },
        );
        assert.equal(ack.version, 0);
      });

      it("keeps the version for an unchanged snapshot", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [
          light("a"),
          light("b"),
        ]);
        const watcher = await app([bridgeId]);
        await requestData(watcher, "bridge:subscribe", { bridgeId });
        const snapshots = record(watcher, "bridge:snapshot");
        const again = await requestData<{ version: number }>(
          bridge,
          "state:snapshot",
          {
            lights: [light("b"), light("a")],
          },
        );
        assert.equal(again.version, 1);
        await settle();
        assert.equal(snapshots.length, 0);
      });

      it("broadcasts a changed snapshot whole", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [
          light("a"),
          light("b"),
        ]);
        const watcher = await app([bridgeId]);
        await requestData(watcher, "bridge:subscribe", { bridgeId });
        const snapshot = nextEvent<BridgeSnapshotEvent>(
          watcher,
          "bridge:snapshot",
        );
        const ack = await requestData<{ version: number }>(
          bridge,
          "state:snapshot",
          { lights: [light("b", true)] },
        );
        const event = await snapshot;
        assert.equal(ack.version, 2);
        assert.equal(event.version, 2);
        assert.equal(event.bridgeId, bridgeId);
        assert.deepEqual(
          event.lights.map((item) => item.id),
          ["b"],
        );
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.deepEqual(
          state.lights.map((item) => item.id),
          ["b"],
          "absent light a was removed",
        );
      });

      it("accepts real CLIP v2 documents", async () => {
        const bridgeId = randomBridgeId();
        const documents = realLights();
        const bridge = await bridgeWithLights(bridgeId, documents);
        const watcher = await app([bridgeId]);
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(state.lights.length, documents.length);
        const first = state.lights.find((item) => item.id === documents[0]!.id);
        assert.ok(first, "first real light is stored");
        assert.equal(first.type, "light");
        assert.deepEqual(Object.keys(first).sort(), [
          "color",
          "color_temperature",
          "dimming",
          "id",
          "metadata",
          "on",
          "type",
        ]);
        assert.deepEqual(first.metadata, { name: "Light 1" });
        assert.deepEqual(first.color, { xy: { x: 0.5974, y: 0.36 } });
        bridge.close();
      });

      it("accepts 150 real-sized lights", async () => {
        const template = realLights()[0]!;
        const lights = Array.from({ length: 150 }, (_, index) => ({
          ...template,
          id: `light-${index}`,
        }));
        const bridge = track(await connectBridge(url, randomBridgeId()));
        const ack = await request<{ version: number }>(
          bridge,
          "state:snapshot",
          { lights },
        );
        assert.deepEqual(ack, { ok: true, data: { version: 1 } });
      });

      it("rejects 151 lights", async () => {
        const lights = Array.from({ length: 151 }, (_, index) =>
          light(`l${index}`),
        );
        const bridge = track(await connectBridge(url, randomBridgeId()));
        const ack = await request(bridge, "state:snapshot", { lights });
        assert.equal(ack.ok, false);
        assert.equal(!ack.ok && ack.error.code, "INVALID_PAYLOAD");
      });

      it("rejects a control character in a name", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [
          light("a"),
          light("b"),
        ]);
        const watcher = await app([bridgeId]);
        await requestData(watcher, "bridge:subscribe", { bridgeId });
        const snapshots = record(watcher, "bridge:snapshot");
        const ack = await request(bridge, "state:snapshot", {
          lights: [
            light("a", true),
            { ...light("b", true), metadata: { name: "Lamp\u001b[2Jb" } },
          ],
        });
        assert.equal(!ack.ok && ack.error.code, "INVALID_PAYLOAD");
        const message = !ack.ok ? ack.error.message : "";
        assert.match(message, /^invalid lights\[1\]\.metadata\.name: /);
        assert.match(message, /found U\+001B/);
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(state.version, 1, "the snapshot changed no version");
        // Lights are a set, so they are compared in ID order.
        const stored = [...state.lights].sort((x, y) =>
          x.id.localeCompare(y.id),
        );
        assert.deepEqual(
          stored.map((storedLight) => [storedLight.id, storedLight.on.on]),
          [
            ["a", false],
            ["b", false],
          ],
          "the snapshot stored no light",
        );
        assert.deepEqual(
          stored.map((storedLight) => storedLight.metadata?.name),
          ["Lamp a", "Lamp b"],
        );
        await settle();
        assert.equal(snapshots.length, 0, "the snapshot was not broadcast");
      });

      it("broadcasts a change with whole documents", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [
          light("a"),
          light("b"),
        ]);
        const watcher = await app([bridgeId]);
        await requestData(watcher, "bridge:subscribe", { bridgeId });
        const changed = nextEvent<LightsChangedEvent>(
          watcher,
          "lights:changed",
        );
        const ack = await requestData<{ version: number }>(
          bridge,
          "state:changed",
          {
            lights: [{ id: "a", on: { on: true } }],
          },
        );
        const event = await changed;
        assert.equal(ack.version, 2);
        assert.equal(event.version, 2);
        assert.deepEqual(event.lights, [
          {
            id: "a",
            type: "light",
            metadata: { name: "Lamp a" },
            on: { on: true },
            dimming: { brightness: 50 },
          },
        ]);
      });

      it("keeps the version for a no-op change", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        const watcher = await app([bridgeId]);
        await requestData(watcher, "bridge:subscribe", { bridgeId });
        const changes = record(watcher, "lights:changed");
        const ack = await requestData<{ version: number }>(
          bridge,
          "state:changed",
          {
            lights: [{ id: "a", on: { on: false } }],
          },
        );
        assert.equal(ack.version, 1);
        await settle();
        assert.equal(changes.length, 0);
      });

      it("rejects a change to an unknown light whole", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        const ack = await request(bridge, "state:changed", {
          lights: [
            { id: "a", on: { on: true } },
            { id: "ghost", on: { on: true } },
          ],
        });
        assert.equal(!ack.ok && ack.error.code, "NOT_FOUND");
        assert.match(!ack.ok ? ack.error.message : "", /ghost/);
        const watcher = await app([bridgeId]);
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(state.version, 1);
        assert.deepEqual(state.lights[0]?.on, { on: false });
      });

      it("rejects a change with another type", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [
          light("a"),
          light("typed"),
        ]);
        for (const type of ["grouped_light", "scene", null, 1]) {
          const ack = await request(bridge, "state:changed", {
            lights: [
              { id: "a", on: { on: true } },
              { id: "typed", type, on: { on: true } },
            ],
          });
          const label = `type ${JSON.stringify(type)}`;
          assert.equal(!ack.ok && ack.error.code, "INVALID_PAYLOAD", label);
          assert.match(
            !ack.ok ? ack.error.message : "",
            /^invalid lights\[1\]\.type: /,
            label,
          );
        }
        const watcher = await app([bridgeId]);
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(state.version, 1, "no rejected change bumped the version");
      });

      it("accepts a change with type light", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        const ack = await requestData<{ version: number }>(
          bridge,
          "state:changed",
          { lights: [{ id: "a", type: "light", on: { on: true } }] },
        );
        assert.equal(ack.version, 2);
      });

      it("rejects a change with only a type", async () => {
        const bridge = await bridgeWithLights(randomBridgeId(), [light("a")]);
        const ack = await request(bridge, "state:changed", {
          lights: [{ id: "a", type: "light" }],
        });
        assert.equal(!ack.ok && ack.error.code, "INVALID_PAYLOAD");
        assert.match(
          !ack.ok ? ack.error.message : "",
          /^invalid lights\[0\]: must carry at least one of/,
        );
      });

      it("names the invalid field", async () => {
        const bridge = await bridgeWithLights(randomBridgeId(), [light("a")]);
        const ack = await request(bridge, "state:changed", {
          lights: [{ id: "a", dimming: { brightness: 101 } }],
        });
        assert.equal(!ack.ok && ack.error.code, "INVALID_PAYLOAD");
        assert.match(
          !ack.ok ? ack.error.message : "",
          /lights\[0\]\.dimming\.brightness/,
        );
      });

      it("ignores __proto__ keys", async () => {
        const bridgeId = randomBridgeId();
        const bridge = track(await connectBridge(url, bridgeId));
        const payload = JSON.parse(
          '{"lights":[{"id":"a","on":{"on":true},"__proto__":{"polluted":true},"constructor":{"x":1}}]}',
        ) as unknown;
        const ack = await requestData<{ version: number }>(
          bridge,
          "state:snapshot",
          payload,
        );
        assert.equal(ack.version, 1);
        const watcher = await app([bridgeId]);
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.deepEqual(state.lights, [
          { id: "a", type: "light", on: { on: true } },
        ]);
        const info = await requestData<Record<string, unknown>>(
          watcher,
          "relay:info",
          {},
        );
        assert.equal(info.polluted, undefined);
      });

      it("takes null as no payload", async () => {
        const watcher = await app([randomBridgeId()]);
        const info = await request(watcher, "relay:info", null);
        assert.equal(info.ok, true, JSON.stringify(info));
        const list = await request(watcher, "bridge:list", null);
        assert.equal(list.ok, true, JSON.stringify(list));
      });

      it("answers PAYLOAD_TOO_LARGE and stays connected", async () => {
        const bridge = track(await connectBridge(url, randomBridgeId()));
        const padding = "x".repeat(1024 * 1024 + 10);
        const ack = await request(bridge, "state:snapshot", {
          lights: [],
          padding,
        });
        assert.equal(!ack.ok && ack.error.code, "PAYLOAD_TOO_LARGE");
        assert.equal(bridge.connected, true);
        const next = await request(bridge, "state:snapshot", { lights: [] });
        assert.equal(next.ok, true);
      });

      it("ignores a request without a callback", async () => {
        const bridge = track(await connectBridge(url, randomBridgeId()));
        bridge.emit("state:snapshot", { lights: [light("a")] });
        bridge.emit("state:changed", "garbage");
        const ack = await requestData<{ version: number }>(
          bridge,
          "state:snapshot",
          { lights: [light("a")] },
        );
        assert.ok(ack.version >= 0);
        assert.equal(bridge.connected, true);
      });

      it("answers despite extra arguments", async () => {
        const bridge = track(await connectBridge(url, randomBridgeId()));
        const ack = (await bridge
          .timeout(5000)
          .emitWithAck("state:snapshot", { lights: [] }, 1, 2, 3)) as {
          ok: boolean;
        };
        assert.equal(ack.ok, true);
      });

      it("rejects an unknown event", async () => {
        const bridge = track(await connectBridge(url, randomBridgeId()));
        const ack = await request(bridge, "bridge:list", {});
        assert.equal(!ack.ok && ack.error.code, "INVALID_PAYLOAD");
        assert.match(
          !ack.ok ? ack.error.message : "",
          /unknown event "bridge:list" on \/bridge/,
        );
      });

      it("rejects a deeply nested payload", async () => {
        const bridge = track(await connectBridge(url, randomBridgeId()));
        const depth = 20_000;
        // Written as a raw packet, because the client's own JSON encoder
        // cannot serialise this depth either.
        const answer = new Promise<string>((resolve) => {
          bridge.io.engine.on(
            "packet",
            (packet: { type: string; data?: unknown }) => {
              if (
                typeof packet.data === "string" &&
                packet.data.startsWith("3/bridge,991")
              )
                resolve(packet.data);
            },
          );
        });
        const nested = "[".repeat(depth) + "]".repeat(depth);
        bridge.io.engine.write(
          `2/bridge,991["state:snapshot",{"lights":[],"deep":${nested}}]`,
        );
        const raw = await answer;
        assert.match(raw, /INVALID_PAYLOAD/);
        assert.match(raw, /nested too deeply/);
        assert.equal(bridge.connected, true);
      });

      it("writes only the token's own bridge", async () => {
        const ownId = randomBridgeId();
        const otherId = randomBridgeId();
        await bridgeWithLights(otherId, [light("x")]);
        const bridge = track(await connectBridge(url, ownId));
        await requestData(bridge, "state:snapshot", {
          bridgeId: otherId,
          lights: [light("y")],
        });
        const watcher = await app([otherId]);
        const other = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId: otherId },
        );
        assert.deepEqual(
          other.lights.map((item) => item.id),
          ["x"],
        );
      });
    });

    describe("presence and takeover", () => {
      it("reports online and offline with lastSeen", async () => {
        const bridgeId = randomBridgeId();
        const watcher = await app([bridgeId]);
        const before = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(before.online, false);
        assert.equal(before.lastSeen, null);
        assert.equal(before.epoch, 0);
        assert.equal(before.version, 0);
        const online = nextEvent<BridgePresence>(
          watcher,
          "bridge:presence",
          (event) => event.online,
        );
        const bridge = track(await connectBridge(url, bridgeId));
        const up = await online;
        assert.equal(up.bridgeId, bridgeId);
        assert.equal(up.epoch, 1);
        assert.ok(
          !Number.isNaN(Date.parse(up.lastSeen ?? "")),
          "lastSeen is a timestamp",
        );
        const offline = nextEvent<BridgePresence>(
          watcher,
          "bridge:presence",
          (event) => !event.online,
        );
        bridge.close();
        const down = await offline;
        assert.equal(down.epoch, 1, "offline at the epoch it ends");
        assert.ok(
          Date.parse(down.lastSeen ?? "") >= Date.parse(up.lastSeen ?? ""),
        );
        const list = await requestData<{ bridges: BridgePresence[] }>(
          watcher,
          "bridge:list",
          {},
        );
        assert.deepEqual(list.bridges, [
          { bridgeId, online: false, lastSeen: down.lastSeen, epoch: 1 },
        ]);
      });

      it("reports offline after the last writes", async function () {
        this.timeout(10_000);
        const bridgeId = randomBridgeId();
        // Polling sends the answer and the disconnect in one request body,
        // so the relay reads them together.
        const { bridge, watcher } = await watchedPollingBridge(bridgeId);

        const events: string[] = [];
        watcher.onAny((event: string, payload: { version?: number }) => {
          events.push(
            event === "lights:changed" ? `version ${payload.version}` : event,
          );
        });
        const offline = offlinePresence(watcher);
        bridge.on("light:set", (_command: unknown, answer: Answer) => {
          // Holds the transport's one POST, so the next packets wait together.
          bridge.emit("relay:info");
          answer({ ok: true, data: { light: light("a", true, 90) } });
          bridge.disconnect();
        });

        const ack = await request(watcher, "light:set", {
          bridgeId,
          lightId: "a",
          change: { dimming: { brightness: 90 } },
        });
        assert.equal(ack.ok, true, JSON.stringify(ack));
        await offline;
        assert.deepEqual(events, ["version 2", "bridge:presence"]);
      });

      it("stores a change sent with the disconnect", async function () {
        this.timeout(10_000);
        const bridgeId = randomBridgeId();
        const { bridge, watcher } = await watchedPollingBridge(bridgeId);
        const changed = nextEvent<LightsChangedEvent>(
          watcher,
          "lights:changed",
        );
        const offline = offlinePresence(watcher);

        changeThenDisconnect(bridge, 70);

        const change = await changed;
        assert.equal(change.version, 2);
        assert.deepEqual(change.lights[0]?.dimming, { brightness: 70 });
        await offline;
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(state.online, false);
        assert.deepEqual(state.lights[0]?.dimming, { brightness: 70 });
      });

      it("stores a change sent with the transport's close", async () => {
        const bridgeId = randomBridgeId();
        const first = await bridgeWithLights(bridgeId, [light("a", true, 50)]);
        first.close();
        await settle(200);
        const watcher = await app([bridgeId]);
        await requestData(watcher, "bridge:subscribe", { bridgeId });
        const events: string[] = [];
        watcher.onAny((event: string, payload: { online?: boolean }) => {
          events.push(`${event} ${JSON.stringify(payload.online ?? null)}`);
        });
        const session = await RawPollingSession.open(url);
        const token = await bridgeToken(bridgeId);
        await session.post(`40/bridge,${JSON.stringify({ token })}`);
        await session.next((packet) => packet.startsWith("40/bridge,"));
        const offline = offlinePresence(watcher);

        // Engine.IO closes the session while it decodes this body, before
        // Socket.IO passes the change on.
        const change = { lights: [{ id: "a", dimming: { brightness: 70 } }] };
        await session.post(
          `42/bridge,1${JSON.stringify(["state:changed", change])}`,
          "1",
        );

        await offline;
        assert.deepEqual(events, [
          "bridge:presence true",
          "lights:changed null",
          "bridge:presence false",
        ]);
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.deepEqual(state.lights[0]?.dimming, { brightness: 70 });
      });

      it("limits the requests read with the disconnect", async function () {
        this.timeout(20_000);
        const bridgeId = randomBridgeId();
        const { bridge, watcher } = await watchedPollingBridge(bridgeId);
        // The snapshot counted once, and these use up the rest.
        const limit = Number(CONTRACT_ENV.REQUESTS_PER_SOCKET_PER_10S);
        const change = { lights: [{ id: "a", dimming: { brightness: 50 } }] };
        for (let sent = 1; sent < limit; sent += 25) {
          await Promise.all(
            Array.from({ length: Math.min(25, limit - sent) }, () =>
              requestData(bridge, "state:changed", change),
            ),
          );
        }
        const over = await request(bridge, "state:changed", change);
        assert.equal(over.ok ? "ok" : over.error.code, "RATE_LIMITED");
        const offline = offlinePresence(watcher);

        changeThenDisconnect(bridge, 90);

        await offline;
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(state.version, 1);
        assert.deepEqual(state.lights[0]?.dimming, { brightness: 50 });
      });

      it("keeps state after the bridge leaves", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a", true)]);
        bridge.close();
        await settle(200);
        const watcher = await app([bridgeId]);
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(state.online, false);
        assert.equal(state.version, 1);
        assert.deepEqual(state.lights[0]?.on, { on: true });
      });

      it("replaces the older connection", async () => {
        const bridgeId = randomBridgeId();
        const older = await bridgeWithLights(bridgeId, [light("a")]);
        const watcher = await app([bridgeId]);
        const first = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        const presence = record(watcher, "bridge:presence");
        const replaced = nextEvent<{ reason: string }>(
          older,
          "session:replaced",
        );
        const disconnected = new Promise<string>((resolve) =>
          older.once("disconnect", resolve),
        );
        const newer = track(await connectBridge(url, bridgeId));
        assert.match((await replaced).reason, /newer connection/);
        assert.equal(await disconnected, "io server disconnect");
        await settle();
        assert.equal(newer.connected, true);
        assert.deepEqual(presence, [], "takeover sends no presence event");
        const after = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(after.online, true);
        assert.ok(
          Date.parse(after.lastSeen ?? "") > Date.parse(first.lastSeen ?? ""),
          "lastSeen moved",
        );
        assert.equal(after.epoch, first.epoch + 1, "the takeover's epoch");
      });
    });

    describe("concurrent connections of one bridge", () => {
      it("keeps only the newest connected", async () => {
        const bridgeId = randomBridgeId();
        const token = await bridgeToken(bridgeId);
        const replaced = new Set<Socket>();
        const bridges = Array.from({ length: CONCURRENT_CONNECTIONS }, () => {
          const socket = track(
            io(`${url}/bridge`, {
              auth: { token },
              transports: ["websocket"],
              reconnection: false,
              forceNew: true,
            }),
          );
          socket.on("session:replaced", () => replaced.add(socket));
          return socket;
        });
        const connected = () => bridges.filter((socket) => socket.connected);
        const describeSockets = () =>
          `${connected().length} connected, ${replaced.size} replaced`;

        const settled = () =>
          connected().length === 1 &&
          replaced.size === CONCURRENT_CONNECTIONS - 1;
        await waitUntil("one connection left", settled, 5000).catch(() =>
          assert.fail(`after 5 s: ${describeSockets()}`),
        );
        // No late handshake brings a second connection.
        await settle(500);
        assert.equal(connected().length, 1, describeSockets());
        assert.equal(replaced.has(connected()[0]!), false);

        const watcher = await app([bridgeId]);
        const { bridges: listed } = await requestData<{
          bridges: BridgePresence[];
        }>(watcher, "bridge:list", {});
        assert.equal(listed[0]?.online, true);
        assert.equal(listed[0]?.epoch, CONCURRENT_CONNECTIONS);
      });
    });

    describe("app requests", () => {
      it("lists only the token's bridges", async () => {
        const online = randomBridgeId();
        const never = randomBridgeId();
        await bridgeWithLights(online, []);
        await bridgeWithLights(randomBridgeId(), []);
        const watcher = await app([online.toUpperCase(), never]);
        const { bridges } = await requestData<{ bridges: BridgePresence[] }>(
          watcher,
          "bridge:list",
          {},
        );
        const byId = new Map(bridges.map((item) => [item.bridgeId, item]));
        assert.equal(bridges.length, 2);
        assert.equal(byId.get(online)?.online, true);
        assert.deepEqual(byId.get(never), {
          bridgeId: never,
          online: false,
          lastSeen: null,
          epoch: 0,
        });
      });

      it("requires the read scope", async () => {
        const bridgeId = randomBridgeId();
        const watcher = await app([bridgeId], "control");
        const list = await request(watcher, "bridge:list", {});
        const subscribe = await request(watcher, "bridge:subscribe", {
          bridgeId,
        });
        assert.equal(!list.ok && list.error.code, "FORBIDDEN");
        assert.equal(!subscribe.ok && subscribe.error.code, "FORBIDDEN");
      });

      it("rejects a bridge outside the token", async () => {
        const watcher = await app([randomBridgeId()]);
        const ack = await request(watcher, "bridge:subscribe", {
          bridgeId: randomBridgeId(),
        });
        assert.equal(!ack.ok && ack.error.code, "FORBIDDEN");
      });

      it("accepts bridge IDs in any case", async () => {
        const bridgeId = randomBridgeId();
        await bridgeWithLights(bridgeId, [light("a")]);
        const watcher = await app([bridgeId]);
        const state = await requestData<BridgeState>(
          watcher,
          "bridge:subscribe",
          { bridgeId: bridgeId.toUpperCase() },
        );
        assert.equal(state.bridgeId, bridgeId);
        assert.equal(state.lights.length, 1);
      });

      it("rejects a malformed bridge ID", async () => {
        const watcher = await app([randomBridgeId()]);
        for (const bridgeId of [
          "001788fffe4f3a2",
          "001788fffe4f3a2bz",
          "00:17:88:ff:fe:4f:3a:2b",
          42,
          null,
        ]) {
          const ack = await request(watcher, "bridge:subscribe", { bridgeId });
          assert.equal(
            !ack.ok && ack.error.code,
            "INVALID_PAYLOAD",
            `bridgeId ${String(bridgeId)}`,
          );
          assert.match(!ack.ok ? ack.error.message : "", /bridgeId/);
        }
      });

      it("unsubscribes always with ok", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        const watcher = await app([bridgeId]);
        await requestData(watcher, "bridge:subscribe", { bridgeId });
        assert.deepEqual(
          await request(watcher, "bridge:unsubscribe", { bridgeId }),
          { ok: true, data: {} },
        );
        assert.deepEqual(
          await request(watcher, "bridge:unsubscribe", {
            bridgeId: randomBridgeId(),
          }),
          {
            ok: true,
            data: {},
          },
        );
        const changes = record(watcher, "lights:changed");
        await requestData(bridge, "state:changed", {
          lights: [{ id: "a", on: { on: true } }],
        });
        await settle();
        assert.equal(changes.length, 0);
      });

      it("limits requests per socket", async () => {
        const watcher = await app([randomBridgeId()]);
        const limit = Number(CONTRACT_ENV.REQUESTS_PER_SOCKET_PER_10S);
        const acks = await Promise.all(
          Array.from({ length: limit + 5 }, () =>
            request(watcher, "bridge:list", {}),
          ),
        );
        const limited = acks.filter(
          (ack) => !ack.ok && ack.error.code === "RATE_LIMITED",
        );
        assert.equal(limited.length, 5);
        const first = limited[0];
        assert.ok(
          first !== undefined &&
            !first.ok &&
            (first.error.retryAfterMs ?? 0) > 0,
        );
      });

      it("charges a long bridge list by its length", async () => {
        // 1,000 bridges cost 10 requests each time they are listed.
        const granted = Array.from({ length: 1000 }, randomBridgeId);
        const watcher = await app(granted);
        const limit = Number(CONTRACT_ENV.REQUESTS_PER_SOCKET_PER_10S);
        const affordable = limit / 10;
        const acks = [];
        for (let index = 0; index < affordable + 2; index += 1) {
          acks.push(
            await request<{ bridges: BridgePresence[] }>(
              watcher,
              "bridge:list",
              {},
            ),
          );
        }
        const codes = acks.map((ack) => (ack.ok ? "ok" : ack.error.code));
        assert.deepEqual(codes, [
          ...Array<string>(affordable).fill("ok"),
          "RATE_LIMITED",
          "RATE_LIMITED",
        ]);
        const first = acks[0];
        assert.equal(first?.ok && first.data.bridges.length, 1000);
      });

      it("answers INVALID_PAYLOAD before FORBIDDEN", async () => {
        const watcher = await app([randomBridgeId()], "read");
        const ack = await request(watcher, "light:set", {
          bridgeId: randomBridgeId(),
          lightId: "a",
          change: {},
        });
        assert.equal(!ack.ok && ack.error.code, "INVALID_PAYLOAD");
      });
    });

    describe("commands", () => {
      it("round-trips a command", async () => {
        const bridgeId = randomBridgeId();
        const lights = untypedLightMap("a");
        const bridge = await bridgeWithLights(bridgeId, [...lights.values()]);
        const received = answerLightSet(bridge, lights);
        const controller = await app([bridgeId]);
        await requestData(controller, "bridge:subscribe", { bridgeId });
        const changed = nextEvent<LightsChangedEvent>(
          controller,
          "lights:changed",
        );
        const ack = await request<{ light: Light }>(controller, "light:set", {
          bridgeId,
          lightId: "a",
          change: { on: { on: true }, dimming: { brightness: 80 } },
        });
        assert.equal(ack.ok, true, JSON.stringify(ack));
        assert.deepEqual(ack.ok && ack.data.light, {
          id: "a",
          type: "light",
          metadata: { name: "Lamp a" },
          on: { on: true },
          dimming: { brightness: 80 },
        });
        assert.equal(received.length, 1);
        assert.equal(
          typeof received[0]?.commandId,
          "string",
          "relay made up a commandId",
        );
        const event = await changed;
        assert.equal(event.version, 2);
      });

      it("requires the control scope", async () => {
        const bridgeId = randomBridgeId();
        await bridgeWithLights(bridgeId, [light("a")]);
        const reader = await app([bridgeId], "read");
        const ack = await request(reader, "light:set", {
          bridgeId,
          lightId: "a",
          change: { on: { on: true } },
        });
        assert.equal(!ack.ok && ack.error.code, "FORBIDDEN");
      });

      it("answers FORBIDDEN before BRIDGE_OFFLINE", async () => {
        const controller = await app([randomBridgeId()]);
        const ack = await request(controller, "light:set", {
          bridgeId: randomBridgeId(),
          lightId: "a",
          change: { on: { on: true } },
        });
        assert.equal(!ack.ok && ack.error.code, "FORBIDDEN");
      });

      it("answers BRIDGE_OFFLINE at once", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        bridge.close();
        await settle(200);
        const controller = await app([bridgeId]);
        const started = Date.now();
        const ack = await request(controller, "light:set", {
          bridgeId,
          lightId: "a",
          change: { on: { on: true } },
        });
        assert.equal(!ack.ok && ack.error.code, "BRIDGE_OFFLINE");
        assert.ok(
          Date.now() - started < 500,
          `answered in ${Date.now() - started} ms`,
        );
      });

      it("answers NOT_FOUND for an unknown light", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        const received = answerLightSet(bridge, untypedLightMap("a"));
        const controller = await app([bridgeId]);
        const ack = await request(controller, "light:set", {
          bridgeId,
          lightId: "b",
          change: { on: { on: true } },
        });
        assert.equal(!ack.ok && ack.error.code, "NOT_FOUND");
        assert.equal(received.length, 0);
      });

      it("answers NOT_FOUND for a light removed meanwhile", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [
          light("a"),
          light("b"),
        ]);
        // The bridge drops the light in a snapshot before it acknowledges the command.
        bridge.on(
          "light:set",
          (command: LightSetCommand, ack: (answer: unknown) => void) => {
            void requestData(bridge, "state:snapshot", {
              lights: [light("b")],
            }).then(() =>
              ack({
                ok: true,
                data: {
                  light: { ...light(command.lightId), ...command.change },
                },
              }),
            );
          },
        );
        const controller = await app([bridgeId]);
        const ack = await request(controller, "light:set", {
          bridgeId,
          lightId: "a",
          change: { on: { on: true } },
        });
        assert.equal(
          !ack.ok && ack.error.code,
          "NOT_FOUND",
          JSON.stringify(ack),
        );
      });

      it("answers TIMEOUT when the bridge is silent", async function () {
        this.timeout(10_000);
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        const received: LightSetCommand[] = [];
        bridge.on("light:set", (command: LightSetCommand) =>
          received.push(command),
        );
        const controller = await app([bridgeId]);
        const payload = {
          bridgeId,
          lightId: "a",
          change: { on: { on: true } },
          commandId: "silent-1",
        };
        const started = Date.now();
        const ack = await request(controller, "light:set", payload);
        const elapsed = Date.now() - started;
        assert.equal(!ack.ok && ack.error.code, "TIMEOUT");
        assert.ok(
          elapsed >= 1400 && elapsed < 4000,
          `answered in ${elapsed} ms`,
        );
        await request(controller, "light:set", payload);
        assert.equal(received.length, 2, "a TIMEOUT is not remembered");
      });

      it("passes a bridge refusal on", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        bridge.on(
          "light:set",
          (_command: LightSetCommand, ack: (answer: unknown) => void) =>
            ack({
              ok: false,
              error: {
                code: "LIGHT_UNREACHABLE",
                message: "light a does not respond",
              },
            }),
        );
        const controller = await app([bridgeId]);
        const ack = await request(controller, "light:set", {
          bridgeId,
          lightId: "a",
          change: { on: { on: true } },
        });
        assert.equal(!ack.ok && ack.error.code, "BRIDGE_ERROR");
        assert.deepEqual(!ack.ok && ack.error.details, {
          code: "LIGHT_UNREACHABLE",
          message: "light a does not respond",
        });
      });

      it("rejects a malformed bridge answer", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [
          light("a"),
          light("b"),
        ]);
        const answers: unknown[] = [
          { ok: true, data: { light: { id: "a", on: { on: "yes" } } } },
          { ok: true, data: { light: light("b") } },
          "whatever",
        ];
        bridge.on(
          "light:set",
          (_command: LightSetCommand, ack: (answer: unknown) => void) =>
            ack(answers.shift()),
        );
        const controller = await app([bridgeId]);
        for (let index = 0; index < 3; index += 1) {
          const ack = await request(controller, "light:set", {
            bridgeId,
            lightId: "a",
            change: { on: { on: true } },
          });
          assert.equal(
            !ack.ok && ack.error.code,
            "BRIDGE_ERROR",
            `answer ${index}`,
          );
          assert.equal(
            !ack.ok && ack.error.details?.code,
            "INVALID_ANSWER",
            `answer ${index}`,
          );
        }
        const state = await requestData<BridgeState>(
          controller,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(state.version, 1, "no invalid answer changed the state");
      });

      it("rejects an answer with another type", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("typed")]);
        bridge.on(
          "light:set",
          (command: LightSetCommand, ack: (answer: unknown) => void) =>
            ack({
              ok: true,
              data: {
                light: {
                  ...light(command.lightId, true),
                  type: "grouped_light",
                },
              },
            }),
        );
        const controller = await app([bridgeId]);
        const ack = await request(controller, "light:set", {
          bridgeId,
          lightId: "typed",
          change: { on: { on: true } },
        });
        assert.equal(!ack.ok && ack.error.code, "BRIDGE_ERROR");
        assert.equal(!ack.ok && ack.error.details?.code, "INVALID_ANSWER");
        assert.match(
          !ack.ok ? (ack.error.details?.message ?? "") : "",
          /^invalid data\.light\.type: /,
        );
        const state = await requestData<BridgeState>(
          controller,
          "bridge:subscribe",
          { bridgeId },
        );
        assert.equal(state.version, 1, "the invalid answer changed nothing");
        assert.deepEqual(state.lights[0]?.on, { on: false });
      });

      it("rejects a command with another type", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        const commands = record(bridge, "light:set");
        const controller = await app([bridgeId]);
        const ack = await request(controller, "light:set", {
          bridgeId,
          lightId: "a",
          change: { type: "scene", on: { on: true } },
        });
        assert.equal(!ack.ok && ack.error.code, "INVALID_PAYLOAD");
        assert.match(
          !ack.ok ? ack.error.message : "",
          /^invalid change\.type: /,
        );
        await settle();
        assert.equal(commands.length, 0, "the command reached the bridge");
      });

      it("accepts a partial light in an answer", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        bridge.on(
          "light:set",
          (command: LightSetCommand, ack: (answer: unknown) => void) =>
            ack({
              ok: true,
              data: {
                light: { id: command.lightId, dimming: { brightness: 42 } },
              },
            }),
        );
        const controller = await app([bridgeId]);
        const ack = await request<{ light: Light }>(controller, "light:set", {
          bridgeId,
          lightId: "a",
          change: { dimming: { brightness: 42 } },
        });
        assert.equal(ack.ok, true, JSON.stringify(ack));
        assert.deepEqual(ack.ok && ack.data.light, {
          id: "a",
          type: "light",
          metadata: { name: "Lamp a" },
          on: { on: false },
          dimming: { brightness: 42 },
        });
      });

      it("remembers answers by commandId", async () => {
        const bridgeId = randomBridgeId();
        const lights = untypedLightMap("a");
        const bridge = await bridgeWithLights(bridgeId, [...lights.values()]);
        const received = answerLightSet(bridge, lights);
        const controller = await app([bridgeId]);
        const payload = {
          bridgeId,
          lightId: "a",
          change: { on: { on: true } },
          commandId: "cmd-1",
        };
        const first = await request(controller, "light:set", payload);
        const second = await request(controller, "light:set", payload);
        assert.deepEqual(second, first);
        assert.equal(received.length, 1);
        assert.equal(received[0]?.commandId, "cmd-1");
      });

      it("repeats a command in any key order", async () => {
        const bridgeId = randomBridgeId();
        const lights = untypedLightMap("a");
        const bridge = await bridgeWithLights(bridgeId, [...lights.values()]);
        const received = answerLightSet(bridge, lights);
        const controller = await app([bridgeId]);
        const first = await request(controller, "light:set", {
          bridgeId,
          lightId: "a",
          change: { on: { on: true }, color: { xy: { x: 0.3, y: 0.4 } } },
          commandId: "ordered",
        });
        const second = await request(controller, "light:set", {
          commandId: "ordered",
          change: { color: { xy: { y: 0.4, x: 0.3 } }, on: { on: true } },
          lightId: "a",
          bridgeId: bridgeId.toUpperCase(),
        });
        assert.equal(first.ok, true, JSON.stringify(first));
        assert.deepEqual(second, first);
        assert.equal(received.length, 1);
      });

      const otherCommands = [
        {
          name: "another light",
          lightId: "typed",
          change: { on: { on: true } },
        },
        {
          name: "another change",
          lightId: "ok1",
          change: { on: { on: false } },
        },
        {
          name: "an added field",
          lightId: "ok1",
          change: { on: { on: true }, dimming: { brightness: 10 } },
        },
      ];
      for (const other of otherCommands) {
        it(`rejects a commandId reused for ${other.name}`, async () => {
          const bridgeId = randomBridgeId();
          const lights = untypedLightMap("ok1", "typed");
          const bridge = await bridgeWithLights(bridgeId, [...lights.values()]);
          const received = answerLightSet(bridge, lights);
          const controller = await app([bridgeId]);
          const first = await request(controller, "light:set", {
            bridgeId,
            lightId: "ok1",
            change: { on: { on: true } },
            commandId: "reused",
          });
          assert.equal(first.ok, true, JSON.stringify(first));
          const second = await request(controller, "light:set", {
            bridgeId,
            lightId: other.lightId,
            change: other.change,
            commandId: "reused",
          });
          assert.equal(!second.ok && second.error.code, "INVALID_PAYLOAD");
          assert.match(
            !second.ok ? second.error.message : "",
            /^invalid commandId: "reused" was already used for another command on bridge [0-9a-f]{16}/,
          );
          assert.equal(received.length, 1, "the bridge got only the first");
          const third = await request(controller, "light:set", {
            bridgeId,
            lightId: "ok1",
            change: { on: { on: true } },
            commandId: "reused",
          });
          assert.deepEqual(third, first, "a true repeat still gets the answer");
        });
      }

      it("rejects a reused commandId in flight", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [
          light("ok1"),
          light("typed"),
        ]);
        const received: LightSetCommand[] = [];
        bridge.on(
          "light:set",
          (command: LightSetCommand, ack: (answer: unknown) => void) => {
            received.push(command);
            setTimeout(
              () =>
                ack({
                  ok: true,
                  data: { light: { id: command.lightId, on: { on: true } } },
                }),
              300,
            );
          },
        );
        const one = await app([bridgeId]);
        const two = await app([bridgeId]);
        const payload = {
          bridgeId,
          lightId: "ok1",
          change: { on: { on: true } },
          commandId: "slow-reused",
        };
        const sent = request<{ light: Light }>(one, "light:set", payload);
        // The others go once the first is in flight at the bridge, so that
        // it is the first whatever the machine's load.
        await waitUntil(
          "the first command at the bridge",
          () => {
            return received.length === 1;
          },
          5000,
        );
        const [other, repeat] = await Promise.all([
          request(two, "light:set", { ...payload, lightId: "typed" }),
          request(two, "light:set", payload),
        ]);
        const first = await sent;
        assert.equal(first.ok, true, JSON.stringify(first));
        assert.equal(first.ok && first.data.light.id, "ok1");
        assert.equal(!other.ok && other.error.code, "INVALID_PAYLOAD");
        assert.match(
          !other.ok ? other.error.message : "",
          /already used for another command/,
        );
        assert.deepEqual(repeat, first, "the repeat joined the first");
        assert.equal(received.length, 1);
      });

      it("joins a repeat while in flight", async () => {
        const bridgeId = randomBridgeId();
        const bridge = await bridgeWithLights(bridgeId, [light("a")]);
        const received: LightSetCommand[] = [];
        bridge.on(
          "light:set",
          (command: LightSetCommand, ack: (answer: unknown) => void) => {
            received.push(command);
            setTimeout(
              () =>
                ack({
                  ok: true,
                  data: { light: { id: "a", on: { on: true } } },
                }),
              300,
            );
          },
        );
        const one = await app([bridgeId]);
        const two = await app([bridgeId]);
        const payload = {
          bridgeId,
          lightId: "a",
          change: { on: { on: true } },
          commandId: "slow-1",
        };
        const [first, second] = await Promise.all([
          request(one, "light:set", payload),
          (async () => {
            await settle(50);
            return request(two, "light:set", payload);
          })(),
        ]);
        assert.equal(first.ok, true);
        assert.deepEqual(second, first);
        assert.equal(received.length, 1);
      });

      it("remembers commandIds per bridge", async () => {
        const idOne = randomBridgeId();
        const idTwo = randomBridgeId();
        const one = await bridgeWithLights(idOne, [light("a")]);
        const two = await bridgeWithLights(idTwo, [light("a")]);
        const receivedOne = answerLightSet(one, untypedLightMap("a"));
        const receivedTwo = answerLightSet(two, untypedLightMap("a"));
        const controller = await app([idOne, idTwo]);
        const change = { on: { on: true } };
        await requestData(controller, "light:set", {
          bridgeId: idOne,
          lightId: "a",
          change,
          commandId: "same",
        });
        await requestData(controller, "light:set", {
          bridgeId: idTwo,
          lightId: "a",
          change,
          commandId: "same",
        });
        assert.equal(receivedOne.length, 1);
        assert.equal(receivedTwo.length, 1);
      });

      it("rejects a commandId over 64 characters", async () => {
        const bridgeId = randomBridgeId();
        const controller = await app([bridgeId]);
        const ack = await request(controller, "light:set", {
          bridgeId,
          lightId: "a",
          change: { on: { on: true } },
          commandId: "c".repeat(65),
        });
        assert.equal(!ack.ok && ack.error.code, "INVALID_PAYLOAD");
        assert.match(!ack.ok ? ack.error.message : "", /commandId/);
      });

      it("rejects a change id of another light", async () => {
        const bridgeId = randomBridgeId();
        const lights = untypedLightMap("a", "b");
        const bridge = await bridgeWithLights(bridgeId, [...lights.values()]);
        const received = answerLightSet(bridge, lights);
        const controller = await app([bridgeId]);
        const changes = [
          { id: "b", on: { on: true } },
          { id: "A", on: { on: true } },
          { id: 7, on: { on: true } },
          { id: null, on: { on: true } },
          { id: "b" },
        ];
        for (const change of changes) {
          const name = JSON.stringify(change);
          const ack = await request(controller, "light:set", {
            bridgeId,
            lightId: "a",
            change,
          });
          assert.equal(!ack.ok && ack.error.code, "INVALID_PAYLOAD", name);
          const message = !ack.ok ? ack.error.message : "";
          assert.match(message, /^invalid change\.id: /, name);
          const expected =
            typeof change.id === "string"
              ? /differs from lightId "a"/
              : /must be a string/;
          assert.match(message, expected, name);
        }
        assert.equal(received.length, 0, "the bridge got no command");
      });

      it("accepts the change's own id", async () => {
        const bridgeId = randomBridgeId();
        const lights = untypedLightMap("a", "b");
        const bridge = await bridgeWithLights(bridgeId, [...lights.values()]);
        const received = answerLightSet(bridge, lights);
        const controller = await app([bridgeId]);
        const ack = await request<{ light: Light }>(controller, "light:set", {
          bridgeId,
          lightId: "a",
          change: { id: "a", on: { on: false } },
        });
        assert.equal(ack.ok, true, JSON.stringify(ack));
        assert.equal(ack.ok && ack.data.light.id, "a");
        assert.equal(received.length, 1);
        assert.equal(received[0]!.lightId, "a");
        assert.deepEqual(received[0]!.change, { on: { on: false } });
      });

      it("commands a real CLIP v2 light", async () => {
        const bridgeId = randomBridgeId();
        const documents = realLights();
        const target = documents[1]!;
        const bridge = await bridgeWithLights(bridgeId, documents);
        const lights = new Map(
          documents.map((document) => [
            document.id,
            document as unknown as Light,
          ]),
        );
        answerLightSet(bridge, lights);
        const controller = await app([bridgeId]);
        const ack = await request<{ light: Light }>(controller, "light:set", {
          bridgeId,
          lightId: target.id,
          change: { color_temperature: { mirek: 250 } },
        });
        assert.equal(ack.ok, true, JSON.stringify(ack));
        assert.deepEqual(ack.ok && ack.data.light.color_temperature, {
          mirek: 250,
        });
        assert.equal(ack.ok && ack.data.light.metadata?.name, "Light 2");
      });

      for (const order of WRITE_ORDERS) {
        it(`stores ${order.name} in arrival order`, async function () {
          this.timeout(10_000);
          const bridgeId = randomBridgeId();
          // Polling sends the packets buffered meanwhile in one request
          // body, so the relay reads the snapshot and the answer together.
          const bridge = await bridgeWithLights(
            bridgeId,
            [light("a", true, 50)],
            { transports: ["polling"] },
          );
          bridge.on("light:set", (_command: unknown, answer: Answer) => {
            const send = (): void => {
              // Holds the transport's one POST, so the next two wait together.
              bridge.emit("relay:info");
              const reply = (): void =>
                answer({ ok: true, data: { light: light("a", true, 90) } });
              const snapshot = (): void =>
                void bridge.emit(
                  "state:snapshot",
                  { lights: [light("a", true, 10)] },
                  () => undefined,
                );
              if (order.answerFirst) reply();
              snapshot();
              if (!order.answerFirst) reply();
            };
            if (order.late) setTimeout(send, 1700);
            else send();
          });
          const controller = await app([bridgeId]);
          const ack = await request(controller, "light:set", {
            bridgeId,
            lightId: "a",
            change: { dimming: { brightness: 90 } },
          });
          assert.equal(
            ack.ok ? "ok" : ack.error.code,
            order.late ? "TIMEOUT" : "ok",
          );
          // Each write changes the light: the second one brings version 3.
          let state: BridgeState | undefined;
          await waitUntil(
            "both writes stored",
            async () => {
              state = await requestData<BridgeState>(
                controller,
                "bridge:subscribe",
                { bridgeId },
              );
              return state.version >= 3;
            },
            5000,
          );
          const expected = order.answerFirst ? 10 : 90;
          assert.equal(state?.lights[0]?.dimming?.brightness, expected);
        });
      }
    });
  });
}
