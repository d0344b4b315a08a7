import assert from "node:assert/strict";
import {
  parseBusMessage,
  type BusMessage,
  type BusMessageParseResult,
} from "../server/messaging/bus-message.ts";

const BRIDGE_ID = "0017880a1b2c3d4e";

const COMMAND = {
  type: "command",
  requestId: "3f1c9a52-7d0e-4a55-9b43-0c6d2f8e1a77",
  origin: "worker-a",
  bridgeId: BRIDGE_ID,
  commandId: "command-1",
  lightId: "light-1",
  change: { on: { on: true }, dimming: { brightness: 40 } },
  idempotent: false,
  deadline: 1_760_000_000_000,
};

const LIGHT = {
  id: "light-1",
  type: "light",
  metadata: { name: "Desk" },
  on: { on: true },
  dimming: { brightness: 40 },
};

const VALID: Record<BusMessage["type"], object> = {
  command: COMMAND,
  reply: {
    type: "reply",
    requestId: COMMAND.requestId,
    answer: { ok: true, data: { light: LIGHT } },
  },
  replace: { type: "replace", bridgeId: BRIDGE_ID, socketId: "sock-1" },
  reclaim: {
    type: "reclaim",
    bridgeId: BRIDGE_ID,
    socketId: "sock-1",
    staleSocketId: "sock-0",
  },
  checkClaim: {
    type: "checkClaim",
    bridgeId: BRIDGE_ID,
    socketId: "sock-1",
    requester: { serverId: "worker-b", socketId: "sock-2" },
    takeOver: true,
  },
};

/** Parses `message` as it would arrive from Redis. */
function parse(message: unknown): BusMessageParseResult {
  return parseBusMessage(JSON.stringify(message));
}

/** Parses `message` and returns the message, failing the test if it was dropped. */
function parseValid(message: unknown): BusMessage {
  const result = parse(message);
  assert.ok(result.success, `dropped: ${result.success ? "" : result.problem}`);
  return result.message;
}

/** Parses `raw` and returns the drop, failing the test if it was accepted. */
function parseDropped(raw: string) {
  const result = parseBusMessage(raw);
  assert.ok(!result.success, `accepted ${raw}`);
  return result;
}

describe("bus message schema", () => {
  for (const [type, message] of Object.entries(VALID)) {
    it(`accepts a valid ${type} message`, () => {
      assert.deepEqual(parseValid(message), message);
    });
  }

  it("accepts a command without idempotent or deadline", () => {
    const { idempotent: _idempotent, deadline: _deadline, ...old } = COMMAND;
    const message = parseValid(old);
    assert.equal(message.type, "command");
    if (message.type !== "command") return;
    assert.equal(message.idempotent, undefined);
    assert.equal(message.deadline, undefined);
    assert.deepEqual(message.change, COMMAND.change);
  });

  it("accepts claim messages of an older relay", () => {
    const { staleSocketId: _staleSocketId, ...reclaim } = VALID.reclaim as {
      staleSocketId: string;
    };
    const { takeOver: _takeOver, ...checkClaim } = VALID.checkClaim as {
      takeOver: boolean;
    };
    assert.deepEqual(parseValid(reclaim), reclaim);
    assert.deepEqual(parseValid(checkClaim), checkClaim);
  });

  it("accepts a reply with an error answer", () => {
    const error = {
      code: "BRIDGE_ERROR",
      message: "bridge 0017880a1b2c3d4e refused the command: busy",
      details: { code: "busy", message: "busy" },
    };
    const message = parseValid({
      type: "reply",
      requestId: "r-1",
      answer: { ok: false, error },
    });
    assert.deepEqual(message, {
      type: "reply",
      requestId: "r-1",
      answer: { ok: false, error },
    });
  });

  it("accepts a rate-limited error answer", () => {
    const error = {
      code: "RATE_LIMITED",
      message: "slow down",
      retryAfterMs: 500,
    };
    const message = parseValid({
      type: "reply",
      requestId: "r-1",
      answer: { ok: false, error },
    });
    assert.equal(message.type, "reply");
    if (message.type !== "reply") return;
    assert.deepEqual(message.answer, { ok: false, error });
  });

  it("strips unknown fields of a newer relay", () => {
    const message = parseValid({
      ...COMMAND,
      priority: "high",
      change: { ...COMMAND.change, effects: { effect: "candle" } },
    });
    assert.deepEqual(message, COMMAND);
  });

  it("strips unknown fields of a reply's light", () => {
    const message = parseValid({
      ...VALID.reply,
      answer: { ok: true, data: { light: { ...LIGHT, owner: { rid: "x" } } } },
    });
    assert.deepEqual(message, VALID.reply);
  });

  describe("drops", () => {
    it("text that is not JSON", () => {
      const dropped = parseDropped("garbage{");
      assert.equal(dropped.reason, "not_json");
      assert.equal(dropped.type, undefined);
      assert.match(dropped.problem, /JSON/);
    });

    const nonObjects: [string, unknown][] = [
      ["null", null],
      ["number", 42],
      ["string", "command"],
      ["array", [COMMAND]],
    ];
    for (const [name, value] of nonObjects) {
      it(`a JSON ${name}`, () => {
        const dropped = parseDropped(JSON.stringify(value));
        assert.equal(dropped.reason, "invalid");
        assert.equal(dropped.type, undefined);
      });
    }

    it("a message without type", () => {
      const { type: _type, ...untyped } = VALID.replace as { type: string };
      const dropped = parseDropped(JSON.stringify(untyped));
      assert.equal(dropped.reason, "invalid");
      assert.equal(dropped.type, undefined);
      assert.match(dropped.problem, /^invalid type: /);
    });

    it("a message of an unknown type", () => {
      const dropped = parseDropped(
        JSON.stringify({ ...VALID.replace, type: "handover" }),
      );
      assert.equal(dropped.reason, "invalid");
      assert.equal(dropped.type, "handover");
      assert.match(dropped.problem, /^invalid type: /);
    });

    it("a non-string type without reporting it", () => {
      const dropped = parseDropped(
        JSON.stringify({ ...VALID.replace, type: { $gt: "" } }),
      );
      assert.equal(dropped.type, undefined);
    });

    it("a long type, cut to 64 characters", () => {
      const type = "x".repeat(1000);
      const dropped = parseDropped(JSON.stringify({ type }));
      assert.equal(dropped.type, "x".repeat(64));
    });

    // Each case names the field that the drop's problem must name.
    const invalid: [string, BusMessage["type"], object, string][] = [
      [
        "a command without requestId",
        "command",
        { ...COMMAND, requestId: undefined },
        "requestId",
      ],
      [
        "a command with an empty origin",
        "command",
        { ...COMMAND, origin: "" },
        "origin",
      ],
      [
        "a command whose bridgeId is not a bridge ID",
        "command",
        { ...COMMAND, bridgeId: "bridge-1" },
        "bridgeId",
      ],
      [
        "a command whose lightId is a number",
        "command",
        { ...COMMAND, lightId: 7 },
        "lightId",
      ],
      [
        "a command whose commandId has a line break",
        "command",
        { ...COMMAND, commandId: "a\nb" },
        "commandId",
      ],
      [
        "a command without change",
        "command",
        { ...COMMAND, change: undefined },
        "change",
      ],
      [
        "a command with an empty change",
        "command",
        { ...COMMAND, change: {} },
        "change",
      ],
      [
        "a command whose on.on is a string",
        "command",
        { ...COMMAND, change: { on: { on: "yes" } } },
        "change.on.on",
      ],
      [
        "a command whose brightness is out of range",
        "command",
        { ...COMMAND, change: { dimming: { brightness: 101 } } },
        "change.dimming.brightness",
      ],
      [
        "a command whose idempotent is a string",
        "command",
        { ...COMMAND, idempotent: "true" },
        "idempotent",
      ],
      [
        "a command whose deadline is a string",
        "command",
        { ...COMMAND, deadline: "soon" },
        "deadline",
      ],
      [
        "a reply without answer",
        "reply",
        { ...VALID.reply, answer: undefined },
        "answer",
      ],
      [
        "a reply whose ok is missing",
        "reply",
        { ...VALID.reply, answer: { data: { light: LIGHT } } },
        "answer.ok",
      ],
      [
        "a reply whose light has no on",
        "reply",
        {
          ...VALID.reply,
          answer: { ok: true, data: { light: { id: "light-1" } } },
        },
        "answer.data.light.on",
      ],
      [
        "a reply with an unknown error code",
        "reply",
        {
          ...VALID.reply,
          answer: { ok: false, error: { code: "TEAPOT", message: "no" } },
        },
        "answer.error.code",
      ],
      [
        "a reply with a negative retryAfterMs",
        "reply",
        {
          ...VALID.reply,
          answer: {
            ok: false,
            error: { code: "RATE_LIMITED", message: "no", retryAfterMs: -1 },
          },
        },
        "answer.error.retryAfterMs",
      ],
      [
        "a replace without socketId",
        "replace",
        { ...VALID.replace, socketId: undefined },
        "socketId",
      ],
      [
        "a reclaim whose bridgeId is a number",
        "reclaim",
        { ...VALID.reclaim, bridgeId: 17 },
        "bridgeId",
      ],
      [
        "a reclaim with an empty staleSocketId",
        "reclaim",
        { ...VALID.reclaim, staleSocketId: "" },
        "staleSocketId",
      ],
      [
        "a checkClaim whose takeOver is a string",
        "checkClaim",
        { ...VALID.checkClaim, takeOver: "yes" },
        "takeOver",
      ],
      [
        "a checkClaim without requester",
        "checkClaim",
        { ...VALID.checkClaim, requester: undefined },
        "requester",
      ],
      [
        "a checkClaim whose requester has no serverId",
        "checkClaim",
        { ...VALID.checkClaim, requester: { socketId: "sock-2" } },
        "requester.serverId",
      ],
    ];
    for (const [name, type, message, field] of invalid) {
      it(name, () => {
        const dropped = parseDropped(JSON.stringify(message));
        assert.equal(dropped.reason, "invalid");
        assert.equal(dropped.type, type);
        assert.ok(
          dropped.problem.startsWith(`invalid ${field}: `),
          `problem names another field: ${dropped.problem}`,
        );
      });
    }
  });
});
