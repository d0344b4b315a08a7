import { toRelayClientError } from "../src/errors.ts";
import {
  AppClient,
  backoffDelay,
  type ServerInfo,
  type StateChangeEvent,
} from "../src/index.ts";
import { tokenGrantsControl } from "./token-scope.ts";
import { bannerStateOf, type ConnectionBanner } from "./banner.ts";
import { BridgeCard } from "./bridge-card.ts";

/** Subscribe failures that a retry would not fix. */
const FINAL_SUBSCRIBE_CODES = new Set([
  "FORBIDDEN",
  "NOT_FOUND",
  "INVALID_PAYLOAD",
]);

/** Delay bounds of the page's own retries of a failed subscribe, in ms. */
const SUBSCRIBE_RETRY = { minDelayMs: 1000, maxDelayMs: 30_000 };

/** How often the "last seen" times are rewritten, in ms. */
const TIME_REFRESH_MS = 15_000;

export interface DashboardOptions {
  /** Origin of the relay; the page's own origin. */
  url: string;
  token: string;
  /** Element that receives a section per bridge. */
  root: HTMLElement;
  /** Element for page-wide messages, such as a failed bridge list. */
  message: HTMLElement;
  banner: ConnectionBanner;
  /** Called once when the relay rejects the token for good. */
  onRejected: (reason: string) => void;
}

/**
 * One signed-in session: an AppClient, a BridgeCard per bridge the token
 * grants, and the wiring from the client's events to the cards. The
 * AppClient subscribes again after a reconnect or a version gap and emits
 * `resynced`, which replaces a card's whole state.
 */
export class Dashboard {
  private readonly client: AppClient;
  private readonly cards = new Map<string, BridgeCard>();
  /** Bridges whose subscribe failed and must be retried. */
  private readonly unsubscribed = new Set<string>();
  private readonly retryTimers = new Map<
    string,
    ReturnType<typeof setTimeout>
  >();
  private readonly timeRefresh: ReturnType<typeof setInterval>;
  private bridgesListed = false;
  private listing: Promise<void> | undefined;
  private stopped = false;

  constructor(private readonly options: DashboardOptions) {
    this.client = new AppClient({ url: options.url, token: options.token });
    this.timeRefresh = setInterval(() => {
      for (const card of this.cards.values()) card.refreshTimes();
    }, TIME_REFRESH_MS);
    this.listen();
  }

  /**
   * Connects. Once connected, the `state` listener lists the token's
   * bridges and subscribes to each.
   */
  start(): void {
    this.options.banner.show("connecting");
    // A rejection means the token was rejected or the page closed the
    // client, and the `state` listener has shown it.
    this.client.connect().catch(() => undefined);
  }

  /** Closes the connection and removes the bridges from the page. */
  stop(): void {
    if (this.stopped) return;
    this.stopped = true;
    clearInterval(this.timeRefresh);
    for (const timer of this.retryTimers.values()) clearTimeout(timer);
    this.retryTimers.clear();
    this.client.close();
    for (const card of this.cards.values()) {
      card.dispose();
      card.element.remove();
    }
    this.cards.clear();
    this.options.message.hidden = true;
  }

  /** Returns the relay process serving this page's connection, for diagnostics. */
  serverInfo(): Promise<ServerInfo> {
    return this.client.serverInfo();
  }

  private listen(): void {
    const { client } = this;
    client.on("state", (event) => this.onState(event));
    client.on("retry", ({ delayMs }) => {
      const seconds = Math.max(1, Math.round(delayMs / 1000));
      this.options.banner.show("reconnecting", `Next attempt in ${seconds} s.`);
    });
    client.on("lights:changed", ({ bridgeId, lights }) => {
      this.cards.get(bridgeId)?.updateLights(lights);
    });
    client.on("bridge:snapshot", ({ bridgeId, lights }) => {
      this.cards.get(bridgeId)?.replaceLights(lights);
    });
    client.on("bridge:presence", (presence) => {
      this.cards.get(presence.bridgeId)?.setPresence(presence);
    });
    client.on("resynced", ({ bridgeId, state }) => {
      const card = this.cards.get(bridgeId);
      card?.setState(state);
      card?.setError(undefined);
    });
    client.on("error", ({ bridgeId, error }) => {
      this.cards
        .get(bridgeId)
        ?.setError(
          `Stopped following this bridge: ${error.message} (${error.code})`,
        );
    });
  }

  private onState({ state, error }: StateChangeEvent): void {
    if (this.stopped) return;
    const live = state === "connected";
    for (const card of this.cards.values()) card.setConnectionLive(live);
    if (state === "unauthorized") {
      const reason = error === undefined ? "" : `: ${error.message}`;
      this.options.onRejected(`The relay rejected the token${reason}.`);
      return;
    }
    if (state !== "reconnecting")
      this.options.banner.show(bannerStateOf(state));
    if (!live) return;
    if (!this.bridgesListed) {
      this.listing ??= this.listBridges().finally(() => {
        this.listing = undefined;
      });
      return;
    }
    for (const bridgeId of this.unsubscribed) void this.subscribe(bridgeId, 1);
  }

  private async listBridges(): Promise<void> {
    const { message, root } = this.options;
    let presences;
    try {
      presences = await this.client.listBridges();
    } catch (error) {
      const failure = toRelayClientError(error);
      // A later `connected` state retries; a rejected scope will not change.
      message.textContent = `Could not list the bridges: ${failure.message} (${failure.code})`;
      message.hidden = false;
      return;
    }
    if (this.stopped || this.bridgesListed) return;
    this.bridgesListed = true;
    message.hidden = presences.length > 0;
    message.textContent =
      presences.length > 0 ? "" : "This token grants no bridges.";
    for (const presence of presences) {
      const card = new BridgeCard(
        presence.bridgeId,
        presence,
        (bridgeId, lightId, patch) =>
          this.client.setLight(bridgeId, lightId, patch),
        !tokenGrantsControl(this.options.token),
      );
      card.setConnectionLive(this.client.state === "connected");
      this.cards.set(presence.bridgeId, card);
      root.append(card.element);
    }
    await Promise.all(
      presences.map(({ bridgeId }) => this.subscribe(bridgeId, 1)),
    );
  }

  private async subscribe(bridgeId: string, attempt: number): Promise<void> {
    clearTimeout(this.retryTimers.get(bridgeId));
    this.retryTimers.delete(bridgeId);
    const card = this.cards.get(bridgeId);
    if (card === undefined || this.stopped) return;
    try {
      const state = await this.client.subscribe(bridgeId);
      this.unsubscribed.delete(bridgeId);
      card.setState(state);
      card.setError(undefined);
    } catch (error) {
      const failure = toRelayClientError(error);
      card.setError(
        `Could not load this bridge: ${failure.message} (${failure.code})`,
      );
      if (FINAL_SUBSCRIBE_CODES.has(failure.code)) return;
      this.unsubscribed.add(bridgeId);
      // While disconnected, the next `connected` state retries instead.
      if (this.client.state !== "connected" || this.stopped) return;
      const delayMs = Math.max(
        failure.retryAfterMs ?? 0,
        backoffDelay(attempt, SUBSCRIBE_RETRY),
      );
      this.retryTimers.set(
        bridgeId,
        setTimeout(() => void this.subscribe(bridgeId, attempt + 1), delayMs),
      );
    }
  }
}
