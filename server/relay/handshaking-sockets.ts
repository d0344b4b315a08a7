import type { Socket } from "socket.io";

/** A socket between its claim and its `connection` event. */
interface Handshake {
  replaced: boolean;
  onClose: () => void;
}

/**
 * Bridge sockets that claimed their bridge and have not connected yet.
 * A newer connection's claim, on this process or another, can replace
 * such a socket before Socket.IO lists it in the namespace, where the
 * replacement looks for it. The replacement is then kept here and carried
 * out once the socket connects, so it is not lost and the socket does not
 * stay connected without its claim.
 */
export class HandshakingSockets {
  private readonly handshakes = new Map<string, Handshake>();

  /** Adds `socket`, which is forgotten when its transport closes first. */
  begin(socket: Socket): void {
    const onClose = (): void => {
      this.handshakes.delete(socket.id);
    };
    this.handshakes.set(socket.id, { replaced: false, onClose });
    socket.conn.once("close", onClose);
  }

  /** Returns true while the socket with `socketId` is handshaking. */
  has(socketId: string): boolean {
    return this.handshakes.has(socketId);
  }

  /** Marks the socket replaced and returns true, or returns false when it is not handshaking. */
  markReplaced(socketId: string): boolean {
    const handshake = this.handshakes.get(socketId);
    if (handshake === undefined) return false;
    handshake.replaced = true;
    return true;
  }

  /** Forgets `socket` and returns whether a newer connection replaced it meanwhile. */
  end(socket: Socket): boolean {
    const handshake = this.handshakes.get(socket.id);
    if (handshake === undefined) return false;
    this.handshakes.delete(socket.id);
    socket.conn.off("close", handshake.onClose);
    return handshake.replaced;
  }

  get size(): number {
    return this.handshakes.size;
  }
}
