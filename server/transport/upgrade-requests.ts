import type { Server as HttpServer, IncomingMessage } from "node:http";
import type { Duplex } from "node:stream";

type Listener = (...args: unknown[]) => void;
/** The wrapper `rawListeners()` returns for a listener added with `once`. */
type OnceWrapper = Listener & { listener: Listener };

const closeListenersBefore = new WeakMap<Duplex, Set<Listener>>();

function isOnceWrapper(listener: Listener): listener is OnceWrapper {
  return typeof (listener as Partial<OnceWrapper>).listener === "function";
}

function rememberCloseListeners(
  _request: IncomingMessage,
  socket: Duplex,
): void {
  closeListenersBefore.set(
    socket,
    new Set(socket.rawListeners("close") as Listener[]),
  );
}

function dropAddedOnceListeners(
  _request: IncomingMessage,
  socket: Duplex,
): void {
  const before = closeListenersBefore.get(socket);
  closeListenersBefore.delete(socket);
  if (before === undefined) return;
  for (const listener of socket.rawListeners("close") as Listener[]) {
    if (!before.has(listener) && isOnceWrapper(listener)) {
      socket.removeListener("close", listener.listener);
    }
  }
}

/**
 * Lets the HTTP request that opened a websocket be collected once the
 * upgrade is handled. Engine.IO 6.6 wraps each upgrade in a stand-in
 * response that refers to the request, and registers a `once` close
 * listener on the TCP socket so that Engine.IO middlewares learn when the
 * response ends. That listener keeps the request, its headers and parser
 * state, about 1.4 KB per connection measured on Node 20, for as long as
 * the connection lives. The relay registers no Engine.IO middleware, so
 * nothing listens for that event.
 *
 * Call it after Socket.IO is attached to `server`: the close listeners of
 * an upgrading socket are read just before Engine.IO's upgrade handler
 * runs and just after, and the `once` listeners it added in between are
 * removed. The websocket library's own close listener is added with `on`
 * and stays.
 */
export function releaseUpgradeRequests(server: HttpServer): void {
  server.prependListener("upgrade", rememberCloseListeners);
  server.on("upgrade", dropAddedOnceListeners);
}
