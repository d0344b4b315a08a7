import type { ConnectionState } from "../src/index.ts";

/** State shown by the connection banner. */
export type BannerState = "connecting" | "live" | "reconnecting" | "signed-out";

const HEADLINES: Record<BannerState, string> = {
  connecting: "Connecting to the relay…",
  live: "Live",
  reconnecting: "Connection lost. Reconnecting…",
  "signed-out": "Signed out",
};

/** Returns the banner state of an AppClient connection state. */
export function bannerStateOf(state: ConnectionState): BannerState {
  switch (state) {
    case "idle":
    case "connecting":
      return "connecting";
    case "connected":
      return "live";
    case "reconnecting":
      return "reconnecting";
    default:
      // unauthorized, closed and replaced are final: the client never reconnects.
      return "signed-out";
  }
}

/**
 * The banner at the top of the page. Its `data-state` attribute carries the
 * state for styles and tests, and it is a polite live region, so screen
 * readers announce changes.
 */
export class ConnectionBanner {
  constructor(private readonly element: HTMLElement) {}

  /** Shows `state`, with an optional sentence of detail after the headline. */
  show(state: BannerState, detail?: string): void {
    this.element.dataset.state = state;
    const headline = document.createElement("strong");
    headline.textContent = HEADLINES[state];
    this.element.replaceChildren(headline);
    if (detail === undefined) return;
    const text = document.createElement("span");
    text.className = "banner-detail";
    text.textContent = detail;
    this.element.append(" ", text);
  }
}
