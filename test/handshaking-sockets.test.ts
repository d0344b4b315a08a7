import assert from "node:assert/strict";
import { EventEmitter } from "node:events";
import type { Socket } from "socket.io";
import { HandshakingSockets } from "../server/relay/handshaking-sockets.ts";

/** Returns a stand-in socket: the class reads its `id` and its transport's close event. */
function socketWithId(id: string): Socket & { conn: EventEmitter } {
  return { id, conn: new EventEmitter() } as unknown as Socket & {
    conn: EventEmitter;
  };
}

describe("HandshakingSockets", () => {
  it("reports a replacement on end", () => {
    const sockets = new HandshakingSockets();
    const socket = socketWithId("a");
    sockets.begin(socket);

    assert.equal(sockets.markReplaced("a"), true);
    assert.equal(sockets.end(socket), true);
    assert.equal(sockets.size, 0);
  });

  it("ends unreplaced sockets quietly", () => {
    const sockets = new HandshakingSockets();
    const socket = socketWithId("a");
    sockets.begin(socket);

    assert.equal(sockets.end(socket), false);
    assert.equal(socket.conn.listenerCount("close"), 0);
  });

  it("ignores sockets not handshaking", () => {
    const sockets = new HandshakingSockets();

    assert.equal(sockets.markReplaced("unknown"), false);
    assert.equal(sockets.end(socketWithId("unknown")), false);
  });

  it("forgets a socket whose transport closes", () => {
    const sockets = new HandshakingSockets();
    const socket = socketWithId("a");
    sockets.begin(socket);
    socket.conn.emit("close");

    assert.equal(sockets.size, 0);
    assert.equal(sockets.markReplaced("a"), false);
  });
});
