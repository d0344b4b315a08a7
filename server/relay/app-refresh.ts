import type { Namespace } from "socket.io";
import type { Logger } from "../logger.ts";
import type { StateStore } from "../state/store.ts";
import { bridgeRoom } from "./rooms.ts";

/** Bridge states read per store round trip. */
const REFRESH_BATCH = 200;
const ROOM_PREFIX = bridgeRoom("");

/**
 * Sends every app on this process the current state and presence of each
 * bridge it subscribes to, read from the store. Broadcasts published while
 * this process's subscriber connection was down are lost, so after a
 * reconnect the local apps may hold old lights. The events go to local
 * sockets only: apps on other processes did not miss anything.
 * Returns the number of bridges refreshed.
 */
export async function refreshSubscribedApps(
  apps: Namespace,
  store: StateStore,
  logger: Logger,
): Promise<number> {
  const bridgeIds = [...apps.adapter.rooms.keys()]
    .filter((room) => room.startsWith(ROOM_PREFIX))
    .map((room) => room.slice(ROOM_PREFIX.length));
  for (let start = 0; start < bridgeIds.length; start += REFRESH_BATCH) {
    const batch = bridgeIds.slice(start, start + REFRESH_BATCH);
    const states = await Promise.all(
      batch.map((bridgeId) => store.getState(bridgeId)),
    );
    for (const state of states) {
      const room = apps.local.to(bridgeRoom(state.bridgeId));
      room.emit("bridge:presence", {
        bridgeId: state.bridgeId,
        online: state.connection !== null,
        lastSeen: state.lastSeen,
      });
      room.emit("bridge:snapshot", {
        bridgeId: state.bridgeId,
        version: state.version,
        lights: state.lights,
      });
    }
  }
  logger.info(
    { bridges: bridgeIds.length },
    "sent current bridge state to local apps after a subscriber reconnect",
  );
  return bridgeIds.length;
}
