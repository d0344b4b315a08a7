import type {
  IncomingMessage,
  RequestListener,
  Server,
  ServerResponse,
} from "node:http";
import type { Duplex } from "node:stream";
import { discardRequest } from "./lingering-close.ts";

/**
 * A request's turn on its connection. It ends when the request's response
 * has finished or closed, or when the request was dropped, and the next
 * request on the connection then starts.
 */
class Turn {
  private ended = false;
  private next: (() => void) | undefined;

  end(): void {
    if (this.ended) return;
    this.ended = true;
    const next = this.next;
    this.next = undefined;
    next?.();
  }

  /** Runs `start` once this turn has ended, at once when it has. */
  whenEnded(start: () => void): void {
    if (this.ended) start();
    else this.next = start;
  }
}

/**
 * Serves the requests pipelined on one connection one at a time, and none
 * after a response that ended the connection.
 *
 * Node's HTTP server emits 'request' for each request as soon as it has
 * parsed its header, while the responses before it on the connection are
 * still pending, and sends the responses in order. When one of them ends
 * the connection (`Connection: close`, which a 413 carries, and every
 * response of a cluster worker, where @socket.io/sticky sets it), Node
 * drops the later responses unsent, but their handlers have run. A light
 * command pipelined behind an oversized body would reach its bridge while
 * the client reads only the 413.
 *
 * Here a request waits until the response before it on its connection has
 * finished or closed. When the connection's writable side has ended by
 * then, the request reaches no handler and its body is read and dropped
 * (`discardRequest`). Call this after every other 'request' listener that
 * may serve a request has been added: it wraps them.
 */
export function serveRequestsInTurn(server: Server): void {
  const listeners = server.listeners("request") as RequestListener[];
  server.removeAllListeners("request");
  const lastTurns = new WeakMap<Duplex, Turn>();
  server.on("request", (request: IncomingMessage, response: ServerResponse) => {
    const connection = request.socket;
    const turn = new Turn();
    const previous = lastTurns.get(connection);
    lastTurns.set(connection, turn);
    // Node's own 'finish' listener, added before 'request' is emitted,
    // has ended the connection or handed it to the next response by the
    // time this one runs (Node 20).
    const end = (): void => turn.end();
    response.once("finish", end);
    response.once("close", end);
    const start = (): void => {
      if (connection.writableEnded || connection.destroyed) {
        discardRequest(request);
        turn.end();
        return;
      }
      for (const listener of listeners) {
        listener.call(server, request, response);
      }
    };
    if (previous === undefined) start();
    else previous.whenEnded(start);
  });
}
