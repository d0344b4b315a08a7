import assert from "node:assert/strict";
import { createClient, type RedisClientType } from "redis";
import {
  RedisBus,
  droppedBusMessages,
  type BusMessage,
} from "../server/messaging/server-bus.ts";
import { serverConnectionState } from "../server/redis/connection-state.ts";
import { capturingLogger } from "./support/capturing-logger.ts";
import { waitUntil } from "./support/faults.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";

const SERVER_ID = "bus-test";
const CHANNEL = `relay:server:${SERVER_ID}`;
const BRIDGE_ID = "0017880a1b2c3d4e";

/** Returns the count of `relay_bus_messages_dropped_total` for `reason` and `type`. */
async function droppedCount(reason: string, type: string): Promise<number> {
  const { values } = await droppedBusMessages.get();
  const value = values.find(
    ({ labels }) => labels.reason === reason && labels.type === type,
  );
  return value?.value ?? 0;
}

describe("redis bus", function () {
  this.timeout(15_000);
  let redis: RedisServer;
  let main: RedisClientType;
  let subscriber: RedisClientType;
  let bus: RedisBus;
  const received: BusMessage[] = [];
  const { logger, lines } = capturingLogger();

  before(async () => {
    redis = await startRedisServer();
    main = createClient({ url: redis.url });
    subscriber = main.duplicate();
    await Promise.all([main.connect(), subscriber.connect()]);
    bus = new RedisBus(
      SERVER_ID,
      { main, subscriber, subscriberState: serverConnectionState(subscriber) },
      "relay",
      logger,
    );
    await bus.listen((message) => received.push(message));
  });

  after(async () => {
    await bus.close();
    await Promise.allSettled([main.close(), subscriber.close()]);
    await redis.stop();
  });

  it("drops invalid messages before the handler", async () => {
    const notJsonBefore = await droppedCount("not_json", "unknown");
    const invalidBefore = await droppedCount("invalid", "command");
    const wrongTyped = {
      type: "command",
      requestId: "r-1",
      origin: "other-server",
      bridgeId: BRIDGE_ID,
      commandId: "command-1",
      lightId: "light-1",
      change: { on: { on: "yes" } },
    };
    const valid: BusMessage = {
      type: "replace",
      bridgeId: BRIDGE_ID,
      socketId: "sock-1",
    };

    // One connection delivers a channel's messages in publish order, so the
    // valid message arrives after the bus has handled the ones before it.
    await main.sPublish(CHANNEL, "garbage{");
    await main.sPublish(CHANNEL, "garbage again");
    await main.sPublish(CHANNEL, JSON.stringify(wrongTyped));
    await main.sPublish(CHANNEL, JSON.stringify(valid));
    await waitUntil("valid message handled", () => received.length > 0, 5000);

    assert.deepEqual(received, [valid]);
    assert.equal(await droppedCount("not_json", "unknown"), notJsonBefore + 2);
    assert.equal(await droppedCount("invalid", "command"), invalidBefore + 1);

    const drops = lines.filter(
      (line) =>
        typeof line.msg === "string" &&
        line.msg.startsWith("dropped a server bus message"),
    );
    // The second text that is not JSON falls in the first one's log window.
    assert.equal(drops.length, 2, JSON.stringify(drops));
    assert.equal(drops[0]?.reason, "not_json");
    assert.equal(drops[0]?.level, 40);
    assert.equal(drops[1]?.reason, "invalid");
    assert.equal(drops[1]?.type, "command");
    assert.match(String(drops[1]?.problem), /^invalid change\.on\.on: /);
  });
});
