import {
  AppClient,
  type BridgeState,
  type Light,
  type TransportName,
} from "../../client-sdk/src/index.ts";
import { randomBridgeId } from "./clients.ts";
import { FAST_RECONNECT, sortLights } from "./fake-bridge.ts";
import { appToken } from "./tokens.ts";

/** An event that replaced an app's whole copy of a bridge, with its arrival time (`Date.now()`). */
export interface Refresh {
  bridgeId: string;
  kind: "bridge:snapshot" | "resynced";
  version: number;
  at: number;
}

/**
 * An app on the SDK's AppClient that keeps its own copy of each subscribed
 * bridge, updated only from what the relay sends: the `bridge:subscribe`
 * acknowledgement,
 * `lights:changed`, `bridge:snapshot`, `bridge:presence` and the SDK's
 * `resynced`. Tests compare that copy with the bridge's own lights.
 */
export interface AppView {
  readonly client: AppClient;
  /** Server ID of the worker that held the app's socket when it started. */
  readonly serverId: string;
  readonly states: Map<string, BridgeState>;
  readonly refreshes: Refresh[];
  /** Subscribes to each bridge and stores the states it returns. */
  subscribe(bridgeIds: string[]): Promise<void>;
  /** The app's copy of a bridge's lights, sorted by ID. */
  sortedLights(bridgeId: string): Light[];
  close(): void;
}

export interface AppViewOptions {
  url: string;
  /** Bridges the app token grants. */
  bridgeIds: string[];
  transports?: TransportName[];
}

/** Connects an app with a `read control` token for `bridgeIds`; it subscribes to nothing yet. */
export async function startAppView(options: AppViewOptions): Promise<AppView> {
  const token = await appToken(
    `user-${randomBridgeId()}`,
    options.bridgeIds,
    "read control",
  );
  const client = new AppClient({
    url: options.url,
    token,
    reconnect: FAST_RECONNECT,
    transports: options.transports ?? ["websocket"],
  });
  const states = new Map<string, BridgeState>();
  const refreshes: Refresh[] = [];

  client.on("lights:changed", (event) => {
    const state = states.get(event.bridgeId);
    if (state === undefined) return;
    const byId = new Map(state.lights.map((light) => [light.id, light]));
    for (const change of event.lights) {
      const current = byId.get(change.id);
      byId.set(change.id, { ...current, ...change } as Light);
    }
    states.set(event.bridgeId, {
      ...state,
      version: event.version,
      lights: [...byId.values()],
    });
  });
  client.on("bridge:snapshot", (event) => {
    const state = states.get(event.bridgeId);
    if (state !== undefined) {
      states.set(event.bridgeId, {
        ...state,
        version: event.version,
        lights: event.lights,
      });
    }
    refreshes.push({
      bridgeId: event.bridgeId,
      kind: "bridge:snapshot",
      version: event.version,
      at: Date.now(),
    });
  });
  client.on("bridge:presence", (event) => {
    const state = states.get(event.bridgeId);
    if (state !== undefined) states.set(event.bridgeId, { ...state, ...event });
  });
  client.on("resynced", ({ bridgeId, state }) => {
    states.set(bridgeId, state);
    refreshes.push({
      bridgeId,
      kind: "resynced",
      version: state.version,
      at: Date.now(),
    });
  });

  await client.connect();
  const { serverId } = await client.serverInfo();
  return {
    client,
    serverId,
    states,
    refreshes,
    subscribe: async (bridgeIds) => {
      for (const bridgeId of bridgeIds) {
        states.set(bridgeId, await client.subscribe(bridgeId));
      }
    },
    sortedLights: (bridgeId) => sortLights(states.get(bridgeId)?.lights ?? []),
    close: () => client.close(),
  };
}

/**
 * Starts one app view on each worker of `serverIds`. New connections go to
 * the workers round-robin, so an app that lands on a worker already served
 * is closed and another one started, up to `attempts` in all.
 */
export async function startAppViewOnEachWorker(
  options: AppViewOptions,
  serverIds: string[],
  attempts = 4 * serverIds.length,
): Promise<Map<string, AppView>> {
  const views = new Map<string, AppView>();
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    if (views.size === serverIds.length) return views;
    const view = await startAppView(options);
    if (serverIds.includes(view.serverId) && !views.has(view.serverId)) {
      views.set(view.serverId, view);
    } else {
      view.close();
    }
  }
  for (const view of views.values()) view.close();
  throw new Error(
    `no app landed on each of the workers ${serverIds.join(", ")} within ${attempts} connections`,
  );
}
