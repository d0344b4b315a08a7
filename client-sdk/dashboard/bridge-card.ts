import type {
  BridgePresence,
  BridgeState,
  Light,
  LightPatch,
} from "../src/index.ts";
import { element } from "./dom.ts";
import { LightCard } from "./light-card.ts";
import { compareSortKeys } from "./name-order.ts";
import { formatRelativeTime } from "./relative-time.ts";

/** Sends a light command to one bridge; see AppClient.setLight. */
export type SetBridgeLight = (
  bridgeId: string,
  lightId: string,
  patch: LightPatch,
) => Promise<Light>;

/**
 * A bridge's section of the page: online or offline with the time of the
 * last connection or disconnection, any error, and a card per light. Its
 * controls are disabled while the bridge is offline or the page is not
 * connected, because commands would fail then.
 */
export class BridgeCard {
  readonly element: HTMLElement;
  private readonly presenceText: HTMLElement;
  private readonly lastSeen: HTMLTimeElement;
  private readonly lastSeenLabel: HTMLElement;
  private readonly error: HTMLElement;
  private readonly status: HTMLElement;
  private readonly lightGrid: HTMLFieldSetElement;
  private readonly lights = new Map<string, LightCard>();
  private presence: BridgePresence;
  private connectionLive = false;
  private loaded = false;

  /**
   * @param readOnly - true when the token lacks the `control` scope: the
   * controls stay disabled and a note explains why.
   */
  constructor(
    readonly bridgeId: string,
    presence: BridgePresence,
    private readonly setLight: SetBridgeLight,
    private readonly readOnly = false,
  ) {
    this.presence = presence;
    const headingId = `bridge-${bridgeId}-name`;
    this.presenceText = element("span", { className: "presence" });
    this.lastSeen = element("time");
    this.lastSeenLabel = element("span", { className: "last-seen" });
    this.error = element("p", {
      className: "bridge-error",
      attributes: { role: "alert" },
    });
    this.status = element("p", { className: "bridge-status" });
    this.lightGrid = element(
      "fieldset",
      { className: "light-grid" },
      element("legend", {
        className: "visually-hidden",
        text: `Lights of bridge ${bridgeId}`,
      }),
    );
    this.element = element(
      "section",
      {
        className: "bridge-card",
        attributes: {
          "data-bridge-id": bridgeId,
          "aria-labelledby": headingId,
        },
      },
      element(
        "header",
        { className: "bridge-header" },
        element("h2", {
          text: `Bridge ${bridgeId}`,
          attributes: { id: headingId },
        }),
        this.presenceText,
        this.lastSeenLabel,
      ),
      this.error,
      this.status,
      this.lightGrid,
    );
    this.setError(undefined);
    this.render();
  }

  /** Shows the bridge's whole state: presence and every light. */
  setState(state: BridgeState): void {
    this.presence = {
      bridgeId: state.bridgeId,
      online: state.online,
      lastSeen: state.lastSeen,
      epoch: state.epoch,
    };
    this.loaded = true;
    this.replaceLights(state.lights);
  }

  /** Replaces every light, as after a `bridge:snapshot`. */
  replaceLights(lights: Light[]): void {
    const keptIds = new Set(lights.map((light) => light.id));
    for (const [id, card] of this.lights) {
      if (keptIds.has(id)) continue;
      card.dispose();
      card.element.remove();
      this.lights.delete(id);
    }
    this.updateLights(lights);
  }

  /** Applies changed lights, as in `lights:changed`; unknown ones are added. */
  updateLights(lights: Light[]): void {
    for (const light of lights) {
      const card = this.lights.get(light.id);
      if (card === undefined) {
        this.lights.set(
          light.id,
          new LightCard(this.bridgeId, light, (lightId, patch) =>
            this.setLight(this.bridgeId, lightId, patch),
          ),
        );
      } else {
        card.applyRelay(light);
      }
    }
    this.orderLights();
    this.render();
  }

  setPresence(presence: BridgePresence): void {
    this.presence = presence;
    this.render();
  }

  /** Records whether the page's connection is up; controls work only then. */
  setConnectionLive(live: boolean): void {
    this.connectionLive = live;
    this.render();
  }

  /** Shows `message` as the bridge's error, or hides the error when undefined. */
  setError(message: string | undefined): void {
    this.error.hidden = message === undefined;
    this.error.textContent = message ?? "";
  }

  /** Updates the relative "last seen" text. */
  refreshTimes(nowMs = Date.now()): void {
    const { lastSeen, online } = this.presence;
    if (lastSeen === null) {
      this.lastSeenLabel.replaceChildren("never connected");
      return;
    }
    this.lastSeen.dateTime = lastSeen;
    this.lastSeen.title = lastSeen;
    this.lastSeen.textContent = formatRelativeTime(lastSeen, nowMs);
    this.lastSeenLabel.replaceChildren(
      online ? "connected " : "last seen ",
      this.lastSeen,
    );
  }

  dispose(): void {
    for (const card of this.lights.values()) card.dispose();
  }

  private render(): void {
    const { online } = this.presence;
    this.element.dataset.online = String(online);
    this.presenceText.textContent = online ? "Online" : "Offline";
    this.lightGrid.disabled = this.readOnly || !(online && this.connectionLive);
    this.refreshTimes();
    if (!this.loaded) this.status.textContent = "Loading lights…";
    else if (this.lights.size === 0)
      this.status.textContent = "No lights reported.";
    else if (this.readOnly)
      this.status.textContent =
        "Read only: this token lacks the control scope.";
    else this.status.textContent = "";
    this.status.hidden = this.status.textContent === "";
  }

  /**
   * Puts the cards in name order. Nodes already in place are not moved,
   * because moving the focused control would drop keyboard focus.
   */
  private orderLights(): void {
    const sorted = [...this.lights.values()].sort((a, b) =>
      compareSortKeys(a.sortKey, b.sortKey),
    );
    let previous: Element | null = this.lightGrid.querySelector("legend");
    for (const card of sorted) {
      const expected = previous === null ? null : previous.nextElementSibling;
      if (expected !== card.element) {
        if (previous === null) this.lightGrid.prepend(card.element);
        else previous.after(card.element);
      }
      previous = card.element;
    }
  }
}
