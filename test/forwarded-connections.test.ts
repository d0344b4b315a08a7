import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import { Duplex } from "node:stream";
import { releaseForwardedConnections } from "../server/cluster/forwarded-connections.ts";

/**
 * A stand-in connection like the one @socket.io/sticky gives a worker for
 * a request with a body: a duplex stream that the primary feeds, and
 * whose readable side is never ended.
 */
class ForwardedConnection extends Duplex {
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

/** Feeds one request with a body to `server` over a stand-in connection. */
function forward(server: Server) {
  const connection = new ForwardedConnection();
  const finished = once(connection, "finish");
  const closed = once(connection, "close");
  server.emit("connection", connection);
  connection.push(
    "PUT /lights HTTP/1.1\r\nHost: relay\r\nContent-Length: 2\r\n\r\non",
  );
  return { connection, finished, closed };
}

describe("forwarded connections", () => {
  const answer = (server: Server): void => {
    server.on("request", (request, response) => {
      request.resume();
      request.once("end", () => {
        response.setHeader("Connection", "close");
        response.end("done");
      });
    });
  };

  it("destroys one after its response", async () => {
    const server = createServer();
    answer(server);
    releaseForwardedConnections(server);
    const { connection, finished, closed } = forward(server);
    await finished;
    assert.match(connection.written, /^HTTP\/1\.1 200 OK/);
    await closed;
    assert.equal(connection.destroyed, true);
  });

  it("stays open without the release", async () => {
    const server = createServer();
    answer(server);
    const { connection, finished } = forward(server);
    await finished;
    await new Promise((resolve) => setTimeout(resolve, 50));
    assert.equal(connection.destroyed, false);
    connection.destroy();
  });
});
