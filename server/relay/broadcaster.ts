import type { Namespace } from "socket.io";
import type {
  BridgePresence,
  BridgeSnapshotEvent,
  LightsChangedEvent,
} from "../../client-sdk/src/protocol.ts";
import { bridgeRoom } from "./rooms.ts";

/** Sends a bridge's state and presence events to every app subscribed to it, cluster-wide. */
export interface AppBroadcaster {
  lightsChanged(event: LightsChangedEvent): void;
  snapshot(event: BridgeSnapshotEvent): void;
  presence(event: BridgePresence): void;
}

/** Broadcasts through the `/app` namespace's adapter to room `bridge:<id>`. */
export function namespaceBroadcaster(apps: Namespace): AppBroadcaster {
  return {
    lightsChanged: (event) =>
      apps.to(bridgeRoom(event.bridgeId)).emit("lights:changed", event),
    snapshot: (event) =>
      apps.to(bridgeRoom(event.bridgeId)).emit("bridge:snapshot", event),
    presence: (event) =>
      apps.to(bridgeRoom(event.bridgeId)).emit("bridge:presence", event),
  };
}
