import assert from "node:assert/strict";
import { createClient, type RedisClientType } from "redis";
import { RedisLeaseTable } from "../server/state/lease-table.ts";
import { sleep } from "./support/faults.ts";
import { startRedisServer, type RedisServer } from "./support/redis-server.ts";

const TTL_MS = 200;

describe("presence lease table", () => {
  let redis: RedisServer;
  let client: RedisClientType;
  let table: RedisLeaseTable;
  let prefix: string;

  before(async () => {
    redis = await startRedisServer();
    client = createClient({ url: redis.url });
    client.on("error", () => undefined);
    await client.connect();
  });

  after(async () => {
    await client.quit();
    await redis.stop();
  });

  beforeEach(() => {
    prefix = `lease${Math.random().toString(36).slice(2, 8)}`;
    table = new RedisLeaseTable(client, prefix);
  });

  it("restores a new lease, then renews it", async () => {
    assert.equal(await table.renew("a", TTL_MS), "restored");
    assert.equal(await table.renew("a", TTL_MS), "renewed");
  });

  it("lists a lease only after its TTL", async () => {
    await table.renew("a", TTL_MS);
    await table.renew("b", 60_000);
    assert.deepEqual(await table.listExpired(10), []);
    await sleep(TTL_MS + 50);
    assert.deepEqual(await table.listExpired(10), ["a"]);
  });

  it("restores an expired lease", async () => {
    await table.renew("a", TTL_MS);
    await sleep(TTL_MS + 50);
    assert.equal(await table.renew("a", TTL_MS), "restored");
    assert.deepEqual(await table.listExpired(10), []);
  });

  it("grants one sweep of an expired lease", async () => {
    await table.renew("a", TTL_MS);
    await sleep(TTL_MS + 50);
    assert.equal(await table.beginSweep("a", 5000), true);
    assert.equal(await table.beginSweep("a", 5000), false);
  });

  it("refuses to sweep a live lease", async () => {
    await table.renew("a", 60_000);
    assert.equal(await table.beginSweep("a", 5000), false);
  });

  it("does not renew during a sweep", async () => {
    await table.renew("a", TTL_MS);
    await sleep(TTL_MS + 50);
    await table.beginSweep("a", 5000);
    assert.equal(await table.renew("a", TTL_MS), "sweeping");
    await table.endSweep("a");
    assert.equal(await table.renew("a", TTL_MS), "restored");
  });

  it("forgets a swept server", async () => {
    await table.renew("a", TTL_MS);
    await table.track("a", ["b1", "b2"]);
    await sleep(TTL_MS + 50);
    await table.beginSweep("a", 5000);
    await table.endSweep("a");
    assert.deepEqual(await table.listExpired(10), []);
    const page = await table.scanTracked("a", "0", 10);
    assert.deepEqual(page.bridgeIds, []);
  });

  it("scans every tracked bridge", async () => {
    const bridgeIds = Array.from({ length: 1200 }, (_, index) => `b${index}`);
    await table.track("a", bridgeIds);
    await table.untrack("a", "b7");
    const seen = new Set<string>();
    let cursor = "0";
    do {
      const page = await table.scanTracked("a", cursor, 100);
      cursor = page.cursor;
      for (const id of page.bridgeIds) seen.add(id);
    } while (cursor !== "0");
    assert.equal(seen.size, 1199);
    assert.equal(seen.has("b7"), false);
  });

  it("drops a lease and its bridges", async () => {
    await table.renew("a", TTL_MS);
    await table.track("a", ["b1"]);
    await table.drop("a");
    await sleep(TTL_MS + 50);
    assert.deepEqual(await table.listExpired(10), []);
    const page = await table.scanTracked("a", "0", 10);
    assert.deepEqual(page.bridgeIds, []);
  });
});
