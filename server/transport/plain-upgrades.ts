import {
  ServerResponse,
  type IncomingMessage,
  type Server as HttpServer,
} from "node:http";
import type { Socket } from "node:net";
import type { Duplex } from "node:stream";

/**
 * Serves a request that asks for an upgrade outside `socketIoPath` as a
 * plain HTTP/1.1 request, which RFC 9110 allows a server to do. One such
 * request is `Upgrade: h2c`, which `curl --http2` sends to an `http://`
 * address. Node hands every request with an Upgrade header to the
 * `upgrade` listeners instead of the `request` ones, so such a request
 * used to get no answer at all. The connection closes after the response.
 *
 * `socketIoPath` ends with a slash, as Engine.IO matches it. Node stops
 * parsing an upgrade request after its headers, so one that also carries
 * a body gets a 400 that says so. Engine.IO must be attached with
 * `destroyUpgrade: false`, or it closes these connections after 1 s
 * without a byte written.
 */
export function servePlainUpgrades(
  server: HttpServer,
  socketIoPath: string,
): void {
  server.on(
    "upgrade",
    (request: IncomingMessage, socket: Duplex, head: Buffer) => {
      if ((request.url ?? "").startsWith(socketIoPath)) return;
      const response = new ServerResponse(request);
      response.shouldKeepAlive = false;
      response.assignSocket(socket as Socket);
      // The socket stays assigned, so its close also closes the response,
      // which the drain waits for.
      response.once("finish", () => socket.end());
      if (hasBody(request, head)) {
        response.statusCode = 400;
        response.setHeader("Content-Type", "text/plain; charset=utf-8");
        response.end(
          "a request that asks for a protocol upgrade cannot carry a body here: send it without the Upgrade header\n",
        );
        return;
      }
      // The parser ended the request at its headers, so it emits no end
      // of its own.
      request.push(null);
      server.emit("request", request, response);
    },
  );
}

function hasBody(request: IncomingMessage, head: Buffer): boolean {
  const length = Number(request.headers["content-length"] ?? 0);
  return (
    head.length > 0 ||
    request.headers["transfer-encoding"] !== undefined ||
    length !== 0
  );
}
