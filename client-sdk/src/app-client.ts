import createDebug from "debug";
import { backoffDelay, type BackoffOptions } from "./backoff.ts";
import {
  RelayConnection,
  type ConnectionState,
  type RequestData,
  type RequestPayload,
  type RetryEvent,
  type StateChangeEvent,
  type TransportName,
} from "./connection.ts";
import { RelayClientError, toRelayClientError } from "./errors.ts";
import { PresenceOrder } from "./presence-order.ts";
import {
  APP_NAMESPACE,
  normalizeBridgeId,
  type AppLightSetPayload,
  type AppToRelayEvents,
  type BridgePresence,
  type BridgeSnapshotEvent,
  type BridgeState,
  type ErrorCode,
  type Light,
  type LightPatch,
  type LightsChangedEvent,
  type RelayToAppEvents,
  type ServerInfo,
} from "./protocol.ts";
import { TypedEmitter } from "./typed-emitter.ts";
import { VersionTracker, type VersionedEvent } from "./version-tracker.ts";

const debug = createDebug("relay-sdk:app");

/** Subscribe failures after which an automatic resubscribe gives up. */
const FINAL_SUBSCRIBE_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "INVALID_PAYLOAD",
  "FORBIDDEN",
  "NOT_FOUND",
  "PAYLOAD_TOO_LARGE",
]);

/**
 * Subscribe rounds in a row whose buffered events skip a version before
 * subscribe() gives up with `INTERNAL`. Each round is one request, and a gap
 * inside one round means the relay delivered events out of order.
 */
const MAX_SUBSCRIBE_ROUNDS = 5;

export interface AppClientOptions {
  /** Origin of the relay, e.g. `https://relay.example.com`; the client adds `/app`. */
  url: string;
  /** JWT with `role: "app"`, the granted `bridges` and the `scope`. */
  token: string;
  /**
   * Socket.IO transports in the order tried, as in Socket.IO's client. Polling
   * first works through proxies that block websockets, but needs sticky
   * sessions on a cluster.
   * @default ["polling", "websocket"]
   */
  transports?: TransportName[];
  /**
   * Milliseconds to wait for an acknowledgement before rejecting with `TIMEOUT`.
   * @default 10000
   */
  requestTimeoutMs?: number;
  /**
   * Bounds of the reconnect delay (exponential backoff with full jitter).
   * @default { minDelayMs: 1000, maxDelayMs: 30000 }
   */
  reconnect?: BackoffOptions;
}

export interface SetLightOptions {
  /**
   * Makes the command idempotent for 60 seconds: a repeat with the same ID
   * returns the first answer. At most 64 characters.
   */
  commandId?: string;
  /** Milliseconds to wait for the answer; defaults to `requestTimeoutMs`. */
  timeoutMs?: number;
}

/** Payload of the `resynced` event. */
export interface ResyncedEvent {
  bridgeId: string;
  /** The bridge's whole state after the automatic resubscribe. */
  state: BridgeState;
}

/** Payload of the `error` event: an automatic resubscribe gave up. */
export interface AppClientErrorEvent {
  bridgeId: string;
  error: RelayClientError;
}

export interface AppClientEvents {
  /** Lights of a subscribed bridge changed; `version` follows the last one. */
  "lights:changed": (event: LightsChangedEvent) => void;
  /** A subscribed bridge sent its whole state. */
  "bridge:snapshot": (event: BridgeSnapshotEvent) => void;
  /** A subscribed bridge came online or went offline. */
  "bridge:presence": (event: BridgePresence) => void;
  /** The connection state changed. */
  state: (event: StateChangeEvent) => void;
  /** A reconnect attempt was scheduled. */
  retry: (event: RetryEvent) => void;
  /** The client subscribed again after a reconnect or a version gap. */
  resynced: (event: ResyncedEvent) => void;
  /** An automatic resubscribe failed for good; the bridge is no longer tracked. */
  error: (event: AppClientErrorEvent) => void;
}

/**
 * The app side of the relay: lists bridges, subscribes to their state and
 * sends light commands over the `/app` namespace. It checks the version of
 * every event, subscribes again after a gap or a reconnect, and reports
 * each of those with a `resynced` event that carries the whole state.
 *
 * @example
 * const app = new AppClient({ url: "https://relay.example.com", token });
 * await app.connect();
 * const view = new Map([[bridgeId, await app.subscribe(bridgeId)]]);
 * app.on("resynced", ({ bridgeId, state }) => view.set(bridgeId, state));
 * app.on("lights:changed", (event) => applyToView(view, event));
 * await app.setLight(bridgeId, lightId, { on: { on: true } });
 */
export class AppClient extends TypedEmitter<AppClientEvents> {
  private readonly connection: RelayConnection<
    RelayToAppEvents,
    AppToRelayEvents
  >;
  private readonly requestTimeoutMs: number;
  private readonly tracker = new VersionTracker();
  private readonly presence = new PresenceOrder();
  private readonly subscribing = new Map<string, Promise<BridgeState>>();
  private readonly resyncTimers = new Map<
    string,
    ReturnType<typeof setTimeout>
  >();

  constructor(options: AppClientOptions) {
    super();
    this.requestTimeoutMs = options.requestTimeoutMs ?? 10_000;
    this.connection = new RelayConnection({
      url: options.url,
      namespace: APP_NAMESPACE,
      token: options.token,
      transports: options.transports ?? ["polling", "websocket"],
      reconnect: options.reconnect,
    });
    this.connection.on("state", (event) => this.onStateChange(event));
    this.connection.on("retry", (event) => this.emit("retry", event));
    this.listenToRelay();
  }

  /** Current connection state. */
  get state(): ConnectionState {
    return this.connection.state;
  }

  /**
   * Starts connecting. Resolves once connected; rejects with a
   * RelayClientError when the client becomes `unauthorized` or `closed`
   * first. Network failures do not reject: the client keeps retrying.
   */
  connect(): Promise<void> {
    return this.connection.open();
  }

  /** Returns presence of every bridge the token grants. */
  async listBridges(): Promise<BridgePresence[]> {
    const data = await this.request("bridge:list", {});
    return data.bridges;
  }

  /**
   * Subscribes to a bridge and returns its whole state. Events that arrive
   * while the request is in flight are applied to the returned state, not
   * emitted; every later event of the bridge is emitted. After a reconnect
   * or a version gap the client subscribes again by itself and emits
   * `resynced`.
   */
  async subscribe(bridgeId: string): Promise<BridgeState> {
    const id = requireBridgeId(bridgeId);
    if (!this.connection.connected) {
      // Rejects with UNAVAILABLE, and the bridge stays untracked.
      return this.request("bridge:subscribe", { bridgeId: id });
    }
    const wasTracked = this.tracker.has(id);
    this.cancelResync(id);
    try {
      return await this.syncBridge(id);
    } catch (error) {
      if (wasTracked) this.retryResync(id, error, 1);
      else {
        this.tracker.forget(id);
        this.presence.forget(id);
      }
      throw error;
    }
  }

  /**
   * Unsubscribes from a bridge. Its events stop at once, even when the
   * request fails (a failure while disconnected is harmless, because the
   * relay drops a connection's subscriptions when it ends).
   */
  async unsubscribe(bridgeId: string): Promise<void> {
    const id = requireBridgeId(bridgeId);
    this.tracker.forget(id);
    this.presence.forget(id);
    // A later subscribe must send its own request, after this unsubscribe.
    this.subscribing.delete(id);
    this.cancelResync(id);
    await this.request("bridge:unsubscribe", { bridgeId: id });
  }

  /**
   * Sends a `light:set` command and returns the light as the relay stored it
   * after the bridge's answer. Needs the `control` scope.
   */
  async setLight(
    bridgeId: string,
    lightId: string,
    change: LightPatch,
    options: SetLightOptions = {},
  ): Promise<Light> {
    const payload: AppLightSetPayload = {
      bridgeId: requireBridgeId(bridgeId),
      lightId,
      change,
    };
    if (options.commandId !== undefined) payload.commandId = options.commandId;
    const timeoutMs = options.timeoutMs ?? this.requestTimeoutMs;
    const data = await this.request("light:set", payload, timeoutMs);
    return data.light;
  }

  /** Returns the identity of the relay process serving this connection. */
  serverInfo(): Promise<ServerInfo> {
    return this.request("relay:info", {});
  }

  /** Disconnects for good: no reconnect, requests in flight reject. */
  close(): void {
    this.cancelAllResyncs();
    this.tracker.clear();
    this.presence.clear();
    this.connection.close("closed");
  }

  private request<Event extends keyof AppToRelayEvents & string>(
    event: Event,
    payload: RequestPayload<AppToRelayEvents[Event]>,
    timeoutMs = this.requestTimeoutMs,
  ): Promise<RequestData<AppToRelayEvents[Event]>> {
    return this.connection.request(event, payload, timeoutMs);
  }

  private listenToRelay(): void {
    this.connection.listen("lights:changed", (event) =>
      this.onVersioned({ name: "lights:changed", event }),
    );
    this.connection.listen("bridge:snapshot", (event) =>
      this.onVersioned({ name: "bridge:snapshot", event }),
    );
    this.connection.listen("bridge:resync", ({ bridgeId, reason }) => {
      if (!this.tracker.has(bridgeId)) return;
      debug("relay asked to resubscribe to %s: %s", bridgeId, reason);
      this.resync(bridgeId, 1);
    });
    this.connection.listen("bridge:presence", (event) => {
      // NOTE: presence has no version, so one that arrives while a subscribe
      // is in flight may be older or newer than the acknowledged `online`.
      if (!this.tracker.has(event.bridgeId)) return;
      if (this.presence.accept(event)) {
        this.emit("bridge:presence", event);
      } else {
        debug(
          "dropped presence of %s: %s at epoch %d is stale",
          event.bridgeId,
          event.online ? "online" : "offline",
          event.epoch,
        );
      }
    });
  }

  private onStateChange(event: StateChangeEvent): void {
    if (event.state !== "connected") this.cancelAllResyncs();
    this.emit("state", event);
    if (event.state === "connected") {
      for (const bridgeId of this.tracker.bridgeIds()) this.resync(bridgeId, 1);
    }
  }

  private onVersioned(item: VersionedEvent): void {
    const { bridgeId, version } = item.event;
    if (!Number.isInteger(version)) {
      debug("ignored %s of %s without a version", item.name, bridgeId);
      return;
    }
    const outcome = this.tracker.receive(item);
    if (outcome === "resync") {
      debug(
        "%s of %s at version %d is out of sequence",
        item.name,
        bridgeId,
        version,
      );
      this.resync(bridgeId, 1);
    } else if (outcome !== "deliver") {
      debug(
        "%s of %s at version %d: %s",
        item.name,
        bridgeId,
        version,
        outcome,
      );
    } else if (item.name === "lights:changed") {
      this.emit("lights:changed", item.event);
    } else {
      this.emit("bridge:snapshot", item.event);
    }
  }

  /** Subscribes once per bridge at a time; concurrent callers share the request. */
  private syncBridge(bridgeId: string): Promise<BridgeState> {
    const running = this.subscribing.get(bridgeId);
    if (running !== undefined) return running;
    const request = this.subscribeRounds(bridgeId).finally(() => {
      if (this.subscribing.get(bridgeId) === request) {
        this.subscribing.delete(bridgeId);
      }
    });
    this.subscribing.set(bridgeId, request);
    return request;
  }

  private async subscribeRounds(bridgeId: string): Promise<BridgeState> {
    for (let attempt = 1; attempt <= MAX_SUBSCRIBE_ROUNDS; attempt += 1) {
      const round = this.tracker.begin(bridgeId);
      const acknowledged = await this.request("bridge:subscribe", { bridgeId });
      const outcome = this.tracker.settle(round, acknowledged);
      if (outcome.status !== "gap") {
        this.presence.record(outcome.state);
        return outcome.state;
      }
      debug("events of %s skipped a version during subscribe", bridgeId);
    }
    const message = `events of bridge ${bridgeId} kept skipping versions during subscribe`;
    throw new RelayClientError("INTERNAL", message);
  }

  /** Subscribes again in the background and emits `resynced`. */
  private resync(bridgeId: string, attempt: number): void {
    this.syncBridge(bridgeId).then(
      (state) => {
        if (this.tracker.has(bridgeId))
          this.emit("resynced", { bridgeId, state });
      },
      (error: unknown) => this.retryResync(bridgeId, error, attempt),
    );
  }

  private retryResync(bridgeId: string, error: unknown, attempt: number): void {
    // Unsubscribed meanwhile, or disconnected: the next connect resubscribes.
    if (!this.tracker.has(bridgeId) || !this.connection.connected) return;
    const failure = toRelayClientError(error);
    if (FINAL_SUBSCRIBE_CODES.has(failure.code)) {
      debug("resubscribe to %s failed for good: %s", bridgeId, failure.message);
      this.tracker.forget(bridgeId);
      this.presence.forget(bridgeId);
      this.emit("error", { bridgeId, error: failure });
      return;
    }
    const backoff = this.connection.backoffOptions;
    const delayMs = Math.max(
      failure.retryAfterMs ?? 0,
      backoffDelay(attempt, backoff),
    );
    debug(
      "resubscribe to %s failed (%s), retry in %d ms",
      bridgeId,
      failure.code,
      Math.round(delayMs),
    );
    this.cancelResync(bridgeId);
    const timer = setTimeout(() => {
      this.resyncTimers.delete(bridgeId);
      this.resync(bridgeId, attempt + 1);
    }, delayMs);
    this.resyncTimers.set(bridgeId, timer);
  }

  private cancelResync(bridgeId: string): void {
    clearTimeout(this.resyncTimers.get(bridgeId));
    this.resyncTimers.delete(bridgeId);
  }

  private cancelAllResyncs(): void {
    for (const timer of this.resyncTimers.values()) clearTimeout(timer);
    this.resyncTimers.clear();
  }
}

/** Returns the canonical bridge ID, or throws `INVALID_PAYLOAD`. */
function requireBridgeId(bridgeId: string): string {
  const id = normalizeBridgeId(bridgeId);
  if (id !== null) return id;
  const quoted = JSON.stringify(String(bridgeId).slice(0, 40));
  throw new RelayClientError(
    "INVALID_PAYLOAD",
    `invalid bridgeId ${quoted}: must be 16 hexadecimal digits`,
  );
}
