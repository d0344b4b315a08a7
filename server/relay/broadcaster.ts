import type { Namespace } from "socket.io";
import type {
  BridgePresence,
  BridgeSnapshotEvent,
  LightsChangedEvent,
} from "../../client-sdk/src/protocol.ts";
import { broadcasts } from "../metrics/relay-metrics.ts";
import { bridgeRoom } from "./rooms.ts";

/** Sends a bridge's state and presence events to every app subscribed to it, cluster-wide. */
export interface AppBroadcaster {
  lightsChanged(event: LightsChangedEvent): void;
  snapshot(event: BridgeSnapshotEvent): void;
  presence(event: BridgePresence): void;
}

/** Broadcasts through the `/app` namespace's adapter to room `bridge:<id>`. */
export function namespaceBroadcaster(apps: Namespace): AppBroadcaster {
  const emit = (
    name: "lights:changed" | "bridge:snapshot" | "bridge:presence",
    event: { bridgeId: string },
  ): void => {
    broadcasts.inc({ event: name });
    apps.to(bridgeRoom(event.bridgeId)).emit(name, event);
  };
  return {
    lightsChanged: (event) => emit("lights:changed", event),
    snapshot: (event) => emit("bridge:snapshot", event),
    presence: (event) => emit("bridge:presence", event),
  };
}
