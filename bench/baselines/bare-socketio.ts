/**
 * A bare Socket.IO relay of the same shape as the real one, as a baseline:
 * a bridge joins the room of its ID, an app's `light:set` is forwarded to
 * that room with `emitWithAck` and the bridge's answer returned, and a
 * bridge's `state:changed` is broadcast to the apps subscribed to it. No
 * authentication, validation, state or rate limits. With REDIS_URL set it
 * uses the sharded Redis adapter in the relay's subscription mode, so
 * several such processes form one cluster.
 *
 *   PORT=0 REDIS_URL=redis://127.0.0.1:6380 node --import tsx bench/baselines/bare-socketio.ts
 */
import { createServer } from "node:http";
import { createShardedAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";

const COMMAND_TIMEOUT_MS = 5000;
const room = (bridgeId: unknown): string => `bridge:${String(bridgeId)}`;

const httpServer = createServer();
const io = new Server(httpServer, { serveClient: false });
if (process.env.REDIS_URL) {
  const pub = createClient({ url: process.env.REDIS_URL });
  const sub = pub.duplicate();
  await Promise.all([pub.connect(), sub.connect()]);
  io.adapter(createShardedAdapter(pub, sub, { subscriptionMode: "dynamic" }));
}

io.of("/bridge").on("connection", (socket) => {
  const bridgeId = socket.handshake.auth.bridgeId as unknown;
  void socket.join(room(bridgeId));
  socket.on(
    "state:changed",
    (payload: object, ack: (reply: unknown) => void) => {
      io.of("/app")
        .to(room(bridgeId))
        .emit("lights:changed", { bridgeId, ...payload });
      ack({ ok: true, data: {} });
    },
  );
});

io.of("/app").on("connection", (socket) => {
  socket.on("bridge:subscribe", async (payload: { bridgeId: string }, ack) => {
    await socket.join(room(payload.bridgeId));
    ack({ ok: true, data: {} });
  });
  socket.on("light:set", async (payload: { bridgeId: string }, ack) => {
    try {
      const answers: unknown[] = await io
        .of("/bridge")
        .to(room(payload.bridgeId))
        .timeout(COMMAND_TIMEOUT_MS)
        .emitWithAck("light:set", payload);
      ack(answers[0] ?? { ok: false, error: { code: "BRIDGE_OFFLINE" } });
    } catch {
      ack({ ok: false, error: { code: "TIMEOUT" } });
    }
  });
});

httpServer.listen(Number(process.env.PORT ?? 0), "127.0.0.1", () => {
  const address = httpServer.address();
  const port =
    typeof address === "object" && address !== null ? address.port : 0;
  console.log(JSON.stringify({ msg: "listening", port, pid: process.pid }));
});
process.on("SIGTERM", () => process.exit(0));
