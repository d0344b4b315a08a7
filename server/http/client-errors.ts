import { maxHeaderSize, STATUS_CODES, type Server } from "node:http";
import { Socket } from "node:net";
import type { Duplex } from "node:stream";
import {
  MAX_COMMAND_ID_LENGTH,
  type ErrorBody,
} from "../../client-sdk/src/protocol.ts";
import type { Logger } from "../logger.ts";
import { destroyAfterLinger, type LingerLimits } from "./lingering-close.ts";

/**
 * HTTP status of a request whose header section is over Node's limit. The
 * contract's table has no status for it, so the relay keeps Node's own.
 */
export const HEADER_TOO_LARGE_STATUS = 431;

/** Node's parser error for a header section over `maxHeaderSize`. */
const HEADER_OVERFLOW = "HPE_HEADER_OVERFLOW";

/** Responses that Node 20's server writes for a client error when no 'clientError' listener handles it, by error code. */
const NODE_DEFAULT_RESPONSES: Record<string, Buffer> = {
  [HEADER_OVERFLOW]: statusOnlyResponse(431),
  HPE_CHUNK_EXTENSIONS_OVERFLOW: statusOnlyResponse(413),
  ERR_HTTP_REQUEST_TIMEOUT: statusOnlyResponse(408),
};
const NODE_DEFAULT_RESPONSE = statusOnlyResponse(400);

function statusOnlyResponse(status: number): Buffer {
  return Buffer.from(
    `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nConnection: close\r\n\r\n`,
    "ascii",
  );
}

/** The response a connection is sending, which Node keeps on the socket. */
interface ConnectionWithResponse {
  _httpMessage?: { _headerSent?: boolean } | null;
}

/**
 * Responds to a request whose header section is over Node's `maxHeaderSize`
 * (16 KiB by default) with status 431 and the contract's error body, code
 * `PAYLOAD_TOO_LARGE`. Node's parser rejects such a request before Express
 * runs and would send 431 with no body. Every other client error gets what
 * Node sends without a listener: a status line only, then a destroyed
 * connection.
 *
 * The JSON response ends the connection and closes it lingering, so that a
 * client still sending the rest of its request reads the response rather
 * than a TCP reset. A cluster worker gets a stand-in stream from
 * @socket.io/sticky for a request with a body, and ending it makes the
 * primary end the real connection.
 */
export function answerClientErrors(
  server: Server,
  linger: LingerLimits,
  logger: Logger,
): void {
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Duplex) => {
    const inFlight = (socket as Duplex & ConnectionWithResponse)._httpMessage;
    if (
      error.code !== HEADER_OVERFLOW ||
      !socket.writable ||
      (inFlight ?? null) !== null
    ) {
      answerAsNodeDoes(error, socket);
      return;
    }
    logger.debug(
      {
        remoteAddress: (socket as Partial<Socket>).remoteAddress,
        maxHeaderSize,
      },
      "http request rejected: header section over the limit",
    );
    socket.end(headerTooLargeResponse());
    if (socket instanceof Socket) destroyAfterLinger(socket, socket, linger);
  });
}

/**
 * Writes Node 20's own response to a client error and destroys the
 * connection, as its server does without a 'clientError' listener. A
 * header overflow behind a pipelined request still in flight comes here too.
 */
function answerAsNodeDoes(error: NodeJS.ErrnoException, socket: Duplex): void {
  const inFlight = (socket as Duplex & ConnectionWithResponse)._httpMessage;
  if (socket.writable && inFlight?._headerSent !== true) {
    socket.write(
      NODE_DEFAULT_RESPONSES[error.code ?? ""] ?? NODE_DEFAULT_RESPONSE,
    );
  }
  socket.destroy(error);
}

function headerTooLargeResponse(): Buffer {
  const error: ErrorBody = {
    code: "PAYLOAD_TOO_LARGE",
    message: `request line and headers are over the limit of ${maxHeaderSize} bytes; send shorter headers (an Idempotency-Key is at most ${MAX_COMMAND_ID_LENGTH} characters)`,
  };
  const body = Buffer.from(JSON.stringify({ error }), "utf8");
  const head =
    `HTTP/1.1 ${HEADER_TOO_LARGE_STATUS} ${STATUS_CODES[HEADER_TOO_LARGE_STATUS]}\r\n` +
    "Content-Type: application/json; charset=utf-8\r\n" +
    `Content-Length: ${body.length}\r\n` +
    "Connection: close\r\n\r\n";
  return Buffer.concat([Buffer.from(head, "ascii"), body]);
}
