import { Duplex } from "node:stream";

/**
 * A stand-in connection like the one @socket.io/sticky gives a worker for
 * a request with a body: a duplex stream that the primary feeds, and
 * whose readable side is never ended.
 */
export class ForwardedConnection extends Duplex {
  written = "";

  constructor() {
    super({ allowHalfOpen: true });
  }

  override _read(): void {}

  override _write(
    chunk: Buffer,
    _encoding: BufferEncoding,
    callback: () => void,
  ): void {
    this.written += chunk.toString();
    callback();
  }

  setTimeout(): this {
    return this;
  }

  setNoDelay(): this {
    return this;
  }

  setKeepAlive(): this {
    return this;
  }

  /** Ends the writable side, which Node's server calls after a last response. */
  destroySoon(): void {
    this.end();
  }
}
