/**
 * Entry point of the dashboard page that the relay serves at `/`: sign-in
 * with an app token, sign-out, and one Dashboard per signed-in session.
 *
 * Debug hook for tests and diagnostics: when a script sets
 * `window.__RELAY_DASHBOARD_DEBUG__ = true` before this module runs (for
 * example Playwright's `page.addInitScript`), the page exposes
 * `window.relayDashboardDebug.serverInfo()`, which returns the `serverId`
 * of the relay process holding the page's connection.
 */
import type { ServerInfo } from "../src/index.ts";
import { ConnectionBanner } from "./banner.ts";
import { Dashboard } from "./dashboard.ts";
import { requireElement } from "./dom.ts";
import {
  clearToken,
  isTokenShaped,
  readStoredToken,
  storeToken,
  takeTokenFromFragment,
  type TokenEnvironment,
} from "./token-store.ts";

declare global {
  interface Window {
    __RELAY_DASHBOARD_DEBUG__?: boolean;
    relayDashboardDebug?: { serverInfo: () => Promise<ServerInfo> };
  }
}

const banner = new ConnectionBanner(
  requireElement("connection-banner", HTMLElement),
);
const signInForm = requireElement("sign-in", HTMLFormElement);
const tokenInput = requireElement("token-input", HTMLInputElement);
const signInError = requireElement("sign-in-error", HTMLElement);
const signOutButton = requireElement("sign-out", HTMLButtonElement);
const bridgesRoot = requireElement("bridges", HTMLElement);
const pageMessage = requireElement("page-message", HTMLElement);

const tokenEnvironment: TokenEnvironment = {
  location: window.location,
  history: window.history,
  storage: window.sessionStorage,
};

let dashboard: Dashboard | undefined;

function startSession(token: string): void {
  dashboard?.stop();
  signInForm.hidden = true;
  signOutButton.hidden = false;
  const session = new Dashboard({
    url: window.location.origin,
    token,
    root: bridgesRoot,
    message: pageMessage,
    banner,
    onRejected: (reason) => endSession(reason),
  });
  dashboard = session;
  if (window.__RELAY_DASHBOARD_DEBUG__ === true) {
    window.relayDashboardDebug = { serverInfo: () => session.serverInfo() };
  }
  session.start();
}

/** Stops the session, clears the stored token and shows the sign-in form with `reason`. */
function endSession(reason: string): void {
  dashboard?.stop();
  dashboard = undefined;
  clearToken(tokenEnvironment.storage);
  banner.show("signed-out", reason);
  showSignIn();
}

function showSignIn(error?: string): void {
  signOutButton.hidden = true;
  signInForm.hidden = false;
  signInError.hidden = error === undefined;
  signInError.textContent = error ?? "";
  tokenInput.value = "";
  tokenInput.focus();
}

signInForm.addEventListener("submit", (event) => {
  // The token input has no `name`, so even a submit that got past this
  // handler would send nothing.
  event.preventDefault();
  const token = tokenInput.value.trim();
  if (!isTokenShaped(token)) {
    showSignIn(
      "That is not an app token: expected three base64url parts separated by dots (a JWT).",
    );
    return;
  }
  storeToken(tokenEnvironment.storage, token);
  tokenInput.value = "";
  startSession(token);
});

signOutButton.addEventListener("click", () => endSession("You signed out."));

// A link with #token=... opened in a tab that already shows the page.
window.addEventListener("hashchange", () => {
  const token = takeTokenFromFragment(tokenEnvironment);
  if (token !== null) startSession(token);
});

const initialToken =
  takeTokenFromFragment(tokenEnvironment) ?? readStoredToken(tokenEnvironment);
if (initialToken === null) {
  banner.show("signed-out", "Paste an app token to sign in.");
  showSignIn();
} else {
  startSession(initialToken);
}
