import assert from "node:assert/strict";
import { KeyedQueue } from "../server/relay/keyed-queue.ts";

function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

describe("KeyedQueue", () => {
  it("runs one key in call order", async () => {
    const queue = new KeyedQueue();
    const order: number[] = [];
    await Promise.all([
      queue.run("a", async () => {
        await delay(30);
        order.push(1);
      }),
      queue.run("a", async () => {
        order.push(2);
      }),
      queue.run("a", async () => {
        await delay(5);
        order.push(3);
      }),
    ]);
    assert.deepEqual(order, [1, 2, 3]);
  });

  it("runs different keys in parallel", async () => {
    const queue = new KeyedQueue();
    const order: string[] = [];
    await Promise.all([
      queue.run("a", async () => {
        await delay(30);
        order.push("a");
      }),
      queue.run("b", async () => {
        order.push("b");
      }),
    ]);
    assert.deepEqual(order, ["b", "a"]);
  });

  it("continues after a failed task", async () => {
    const queue = new KeyedQueue();
    const failed = queue.run("a", async () => {
      throw new Error("write failed");
    });
    const next = queue.run("a", async () => "written");
    await assert.rejects(failed, /write failed/);
    assert.equal(await next, "written");
  });

  it("forgets idle keys", async () => {
    const queue = new KeyedQueue();
    await queue.run("a", async () => undefined);
    await delay(0);
    assert.equal(queue.size, 0);
  });
});
