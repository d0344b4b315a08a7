import type { Namespace } from "socket.io";
import type { Logger } from "../logger.ts";
import { bridgeRoom } from "./rooms.ts";

const ROOM_PREFIX = bridgeRoom("");

export const MISSED_EVENTS_REASON =
  "the relay may have missed events of this bridge; subscribe again";

/**
 * Asks every app on this process to subscribe again to each bridge it
 * follows, with `bridge:resync`. Broadcasts published while this process's
 * subscriber connection was down are lost, so after a reconnect its apps
 * may hold old lights. A new subscription reads the whole state and is
 * ordered against the events that follow it, which a snapshot pushed from
 * here would not be. Only local sockets get it: apps on other processes
 * missed nothing. Returns the number of bridges concerned.
 */
export function askAppsToResubscribe(apps: Namespace, logger: Logger): number {
  let bridges = 0;
  for (const room of apps.adapter.rooms.keys()) {
    if (!room.startsWith(ROOM_PREFIX)) continue;
    const bridgeId = room.slice(ROOM_PREFIX.length);
    apps.local
      .to(room)
      .emit("bridge:resync", { bridgeId, reason: MISSED_EVENTS_REASON });
    bridges += 1;
  }
  logger.info(
    { bridges },
    "asked local apps to subscribe again after a subscriber reconnect",
  );
  return bridges;
}
