import cluster from "node:cluster";
import type { IncomingMessage } from "node:http";
import type { Server } from "socket.io";
import type { Logger } from "../logger.ts";
import { sendToPrimary, sendToWorker } from "./worker-ipc.ts";

/** Maximum wait for the primary to confirm a session binding, in ms. */
const BIND_TIMEOUT_MS = 1000;

interface BindMessage {
  type: "relay:bind" | "relay:bound";
  sid: string;
}

function isBindMessage(
  message: unknown,
  type: BindMessage["type"],
): message is BindMessage {
  return (
    typeof message === "object" &&
    message !== null &&
    (message as BindMessage).type === type &&
    typeof (message as BindMessage).sid === "string"
  );
}

/**
 * Makes a worker register each new Engine.IO session ID with the primary's
 * sticky balancer before the handshake response leaves, so that the
 * client's next polling request is routed to this worker.
 *
 * @socket.io/sticky registers a session only after the handshake, so a fast
 * client could send its next request before the primary knew where the
 * session lives, and get `Session ID unknown` from another worker. The
 * worker now sends sticky's own binding message, then a ping that the
 * primary answers; messages from one worker are handled in order, so the
 * answer means the binding is in place. A worker without an open channel,
 * or whose send fails, stops waiting at once, because no reply can come.
 *
 * A session opened on a websocket skips the wait: it makes no further
 * request to route, and its socket is already upgraded. Engine.IO listens
 * to that websocket only once the ID is generated, so packets the client
 * sends meanwhile, such as a namespace `CONNECT` sent without waiting for
 * the open packet, would be dropped.
 */
export function bindSessionsBeforeHandshake(io: Server, logger: Logger): void {
  const waiting = new Map<string, () => void>();
  process.on("message", (message: unknown) => {
    if (isBindMessage(message, "relay:bound")) waiting.get(message.sid)?.();
  });
  const generateId = io.engine.generateId.bind(io.engine);
  io.engine.generateId = async (request) => {
    const sid = await generateId(request);
    if (opensOnWebSocket(request)) return sid;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(resolve, BIND_TIMEOUT_MS);
      const stopWaiting = (): void => {
        clearTimeout(timer);
        resolve();
      };
      waiting.set(sid, stopWaiting);
      const registered = sendToPrimary(
        { type: "sticky:connection", data: sid },
        logger,
        stopWaiting,
      );
      const pinged = sendToPrimary(
        { type: "relay:bind", sid },
        logger,
        stopWaiting,
      );
      if (!registered || !pinged) stopWaiting();
    });
    waiting.delete(sid);
    return sid;
  };
}

function opensOnWebSocket(request: IncomingMessage): boolean {
  const query = (
    request as IncomingMessage & { _query?: { transport?: unknown } }
  )._query;
  return query?.transport === "websocket";
}

/** Answers the workers' binding pings (see `bindSessionsBeforeHandshake`). */
export function answerSessionBindings(logger: Logger): void {
  cluster.on("message", (worker, message: unknown) => {
    if (isBindMessage(message, "relay:bind")) {
      sendToWorker(worker, { type: "relay:bound", sid: message.sid }, logger);
    }
  });
}
