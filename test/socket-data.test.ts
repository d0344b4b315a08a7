import assert from "node:assert/strict";
import { createShardedAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";
import { Server } from "socket.io";
import type { Socket } from "socket.io-client";
import {
  connectApp,
  connectBridge,
  randomBridgeId,
} from "./support/clients.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";
import { startRelay, type RelayProcess } from "./support/relay-process.ts";

/**
 * The relay keeps only plain data in `socket.data`, so that another node
 * of the Socket.IO cluster can read it with `fetchSockets()`, which sends
 * it through Redis. The test process joins the cluster as such a node,
 * with the relay's adapter settings and no socket of its own.
 */
describe("socket data across processes", function () {
  this.timeout(30_000);
  let redis: RedisServer;
  let relay: RelayProcess;
  let node: Server;
  let quitRedis: () => Promise<unknown> = async () => undefined;
  const sockets: Socket[] = [];

  before(async () => {
    redis = await startRedisServer();
    relay = await startRelay({ redisUrl: redis.url, workers: 2 });
    const pub = createClient({ url: redis.url });
    const sub = pub.duplicate();
    await Promise.all([pub.connect(), sub.connect()]);
    quitRedis = () => Promise.all([pub.quit(), sub.quit()]);
    node = new Server();
    node.adapter(
      createShardedAdapter(pub, sub, {
        channelPrefix: "relay:sio",
        subscriptionMode: "dynamic",
      }),
    );
  });

  after(async () => {
    for (const socket of sockets) socket.close();
    node?.close();
    await quitRedis();
    await relay?.stop();
    await redis?.stop();
  });

  it("fetches bridges and apps remotely", async () => {
    const bridgeIds = [randomBridgeId(), randomBridgeId(), randomBridgeId()];
    for (const bridgeId of bridgeIds) {
      sockets.push(await connectBridge(relay.url, bridgeId));
    }
    sockets.push(await connectApp(relay.url, bridgeIds));

    const bridges = await node.of("/bridge").timeout(5000).fetchSockets();
    const fetched = bridges.map(
      (socket) =>
        (socket.data as { identity?: { bridgeId?: string } }).identity
          ?.bridgeId,
    );
    assert.deepEqual([...fetched].sort(), [...bridgeIds].sort());

    const apps = await node.of("/app").timeout(5000).fetchSockets();
    assert.equal(apps.length, 1);
    assert.equal(
      (apps[0]!.data as { identity?: { role?: string } }).identity?.role,
      "app",
    );
  });
});
