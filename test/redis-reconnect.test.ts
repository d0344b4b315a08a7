import assert from "node:assert/strict";
import { reconnectDelay } from "../server/redis/clients.ts";

describe("redis reconnect delay", () => {
  it("doubles from 100 ms to 5 s", () => {
    const ceilings = [0, 1, 2, 3, 5, 6, 20].map((retries) =>
      reconnectDelay(retries, () => 1),
    );
    assert.deepEqual(ceilings, [100, 200, 400, 800, 3200, 5000, 5000]);
  });

  it("stops doubling at a given ceiling", () => {
    assert.equal(
      reconnectDelay(20, () => 1, 1000),
      1000,
    );
    assert.equal(
      reconnectDelay(20, () => 0, 1000),
      500,
    );
  });

  it("takes off at most half", () => {
    assert.equal(
      reconnectDelay(0, () => 0),
      50,
    );
    assert.equal(
      reconnectDelay(20, () => 0),
      2500,
    );
  });

  it("spreads retries of one attempt", () => {
    const delays = new Set(
      Array.from({ length: 50 }, () => reconnectDelay(10)),
    );
    assert.ok(delays.size > 10, `only ${delays.size} distinct delays`);
    for (const delay of delays) {
      assert.ok(delay >= 2500, `delay ${delay} below half the ceiling`);
      assert.ok(delay <= 5000, `delay ${delay} above the ceiling`);
    }
  });
});
