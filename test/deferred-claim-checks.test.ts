import assert from "node:assert/strict";
import {
  DeferredClaimChecks,
  type DeferredClaimCheck,
} from "../server/relay/deferred-claim-checks.ts";

function checkOf(
  bridgeId: string,
  socketId = "gone-socket",
): DeferredClaimCheck {
  return {
    bridgeId,
    socketId,
    requester: { serverId: "server-b", socketId: "live-socket" },
    takeOver: true,
  };
}

describe("deferred claim checks", () => {
  it("keeps the latest check per bridge", () => {
    const checks = new DeferredClaimChecks(10, 1000);
    assert.equal(checks.add(checkOf("bridge-1", "first"), 0), "added");
    assert.equal(checks.add(checkOf("bridge-1", "second"), 10), "replaced");

    assert.deepEqual(checks.takeAll(20), [checkOf("bridge-1", "second")]);
    assert.equal(checks.size, 0);
  });

  it("rejects a check when full", () => {
    const checks = new DeferredClaimChecks(2, 1000);
    checks.add(checkOf("bridge-1"), 0);
    checks.add(checkOf("bridge-2"), 0);

    assert.equal(checks.add(checkOf("bridge-3"), 10), "full");
    assert.equal(checks.add(checkOf("bridge-2"), 10), "replaced");
    assert.deepEqual(
      checks.takeAll(20).map((check) => check.bridgeId),
      ["bridge-1", "bridge-2"],
    );
  });

  it("drops expired checks to make room", () => {
    const checks = new DeferredClaimChecks(2, 1000);
    checks.add(checkOf("bridge-1"), 0);
    checks.add(checkOf("bridge-2"), 500);

    assert.equal(checks.add(checkOf("bridge-3"), 1001), "added");
    assert.deepEqual(
      checks.takeAll(1002).map((check) => check.bridgeId),
      ["bridge-2", "bridge-3"],
    );
  });

  it("counts a renewed check from its latest request", () => {
    const checks = new DeferredClaimChecks(10, 1000);
    checks.add(checkOf("bridge-1"), 0);
    checks.add(checkOf("bridge-2"), 100);
    checks.add(checkOf("bridge-1"), 900);

    assert.deepEqual(
      checks.takeAll(1500).map((check) => check.bridgeId),
      ["bridge-1"],
    );
  });
});
