import assert from "node:assert/strict";
import { once } from "node:events";
import { createServer, type Server } from "node:http";
import { releaseForwardedConnections } from "../server/cluster/forwarded-connections.ts";
import { ForwardedConnection } from "./support/forwarded-connection.ts";

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
