import assert from "node:assert/strict";
import { describeRedisTarget } from "../server/redis/start-wait.ts";

describe("describeRedisTarget", () => {
  it("leaves out the password of a server URL", () => {
    assert.equal(
      describeRedisTarget({
        kind: "standalone",
        url: "rediss://relay:s3cret@redis.example:6380/2",
      }),
      "rediss://relay@redis.example:6380/2",
    );
  });

  it("leaves out the passwords of seed URLs", () => {
    assert.equal(
      describeRedisTarget({
        kind: "cluster",
        nodeUrls: ["redis://:s3cret@10.0.0.5:6379", "redis://10.0.0.6:6379"],
      }),
      "redis://10.0.0.5:6379,redis://10.0.0.6:6379",
    );
  });
});
