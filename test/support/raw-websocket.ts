import { randomBytes } from "node:crypto";
import { once } from "node:events";
import { connect as connectTcp, type Socket as TcpSocket } from "node:net";

/** Opens a TCP connection to the relay and resolves once it is connected. */
export async function openTcp(port: number): Promise<TcpSocket> {
  const socket = connectTcp({ host: "127.0.0.1", port });
  socket.on("error", () => undefined);
  await once(socket, "connect");
  return socket;
}

/** Encodes a masked websocket text frame, as a client must send it (RFC 6455). */
function websocketFrame(text: string): Buffer {
  const payload = Buffer.from(text);
  const mask = randomBytes(4);
  let header: Buffer;
  if (payload.length < 126) {
    header = Buffer.from([0x81, 0x80 | payload.length]);
  } else {
    header = Buffer.alloc(4);
    header[0] = 0x81;
    header[1] = 0x80 | 126;
    header.writeUInt16BE(payload.length, 2);
  }
  const masked = Buffer.alloc(payload.length);
  for (let index = 0; index < payload.length; index += 1)
    masked[index] = payload[index]! ^ mask[index % 4]!;
  return Buffer.concat([header, mask, masked]);
}

/**
 * A websocket client written on a bare TCP socket, so that a test can cut
 * the connection with a TCP reset at any byte. Speaks just enough of RFC
 * 6455 for Engine.IO text packets: unfragmented text frames under 64 KiB.
 */
export class RawWebSocket {
  private buffer = Buffer.alloc(0);
  /** True once the HTTP 101 response has been read. */
  private upgraded = false;
  private readonly frames: string[] = [];
  private readonly waiters = new Set<() => void>();

  private constructor(readonly socket: TcpSocket) {
    socket.on("data", (chunk: Buffer) => {
      this.buffer = Buffer.concat([this.buffer, chunk]);
      this.readFrames();
      for (const waiter of this.waiters) waiter();
    });
  }

  /** Connects to the relay's Engine.IO websocket endpoint and waits for the open packet. */
  static async open(port: number): Promise<RawWebSocket> {
    const client = await RawWebSocket.upgrade(port);
    await client.next((text) => text.startsWith("0"));
    return client;
  }

  /**
   * Connects to the relay's Engine.IO websocket endpoint and resolves once
   * the server accepts the upgrade, without waiting for the open packet.
   */
  static async upgrade(port: number, timeoutMs = 5000): Promise<RawWebSocket> {
    const socket = await openTcp(port);
    const key = randomBytes(16).toString("base64");
    socket.write(
      "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n" +
        `Host: 127.0.0.1:${port}\r\n` +
        "Upgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`,
    );
    const client = new RawWebSocket(socket);
    await client.wait(() => client.upgraded, timeoutMs, "no upgrade");
    return client;
  }

  send(text: string): void {
    this.socket.write(websocketFrame(text));
  }

  /** Writes a frame for each of `texts` in one TCP write, so that the relay reads them together. */
  sendTogether(...texts: string[]): void {
    this.socket.write(Buffer.concat(texts.map(websocketFrame)));
  }

  /** Writes the first half of a frame, so that the relay waits for the rest. */
  sendHalf(text: string): void {
    const frame = websocketFrame(text);
    this.socket.write(frame.subarray(0, Math.floor(frame.length / 2)));
  }

  /** Resolves with the next text frame that matches. */
  async next(match: (text: string) => boolean, timeoutMs = 5000) {
    let found: string | undefined;
    await this.wait(
      () => {
        const index = this.frames.findIndex(match);
        if (index >= 0) found = this.frames.splice(index, 1)[0];
        return found !== undefined;
      },
      timeoutMs,
      "no matching frame",
    );
    return found!;
  }

  /** Resolves once `done` returns true, checked after each read. */
  private async wait(
    done: () => boolean,
    timeoutMs: number,
    failure: string,
  ): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!done()) {
      if (Date.now() > deadline)
        throw new Error(`${failure} within ${timeoutMs} ms`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, 100);
        this.waiters.add(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      this.waiters.clear();
    }
  }

  /** Sends a TCP RST instead of closing. */
  reset(): void {
    this.socket.resetAndDestroy();
  }

  private readFrames(): void {
    // Skips the HTTP 101 response that precedes the first frame.
    if (!this.upgraded) {
      const end = this.buffer.indexOf("\r\n\r\n");
      if (end < 0) return;
      this.buffer = this.buffer.subarray(end + 4);
      this.upgraded = true;
    }
    for (;;) {
      if (this.buffer.length < 2) return;
      const length7 = this.buffer[1]! & 0x7f;
      const headerLength = length7 === 126 ? 4 : 2;
      if (this.buffer.length < headerLength) return;
      const length = length7 === 126 ? this.buffer.readUInt16BE(2) : length7;
      if (this.buffer.length < headerLength + length) return;
      const opcode = this.buffer[0]! & 0x0f;
      const payload = this.buffer.subarray(headerLength, headerLength + length);
      this.buffer = this.buffer.subarray(headerLength + length);
      if (opcode === 1) this.frames.push(payload.toString("utf8"));
    }
  }
}
