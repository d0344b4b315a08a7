/**
 * Storage of the app token. The page keeps it in session storage only, so
 * it lasts while the tab is open and reaches no URL query string, cookie
 * or log. A link may carry the token in the fragment
 * (`#token=...`), which browsers do not send to servers. The page moves it
 * into storage and removes it from the address bar at once.
 */

/** Session storage key of the app token. */
export const TOKEN_STORAGE_KEY = "relay-dashboard:token";

/** The browser objects the token store uses; tests pass plain objects. */
export interface TokenEnvironment {
  location: Pick<Location, "hash" | "pathname" | "search">;
  history: Pick<History, "replaceState" | "state">;
  storage: Pick<Storage, "getItem" | "setItem" | "removeItem">;
}

/** Shape of a compact JWS: three base64url parts separated by dots. */
const TOKEN_SHAPE = /^[\w-]+\.[\w-]+\.[\w-]+$/;

/** Returns true when `token` has the shape of a JWT. */
export function isTokenShaped(token: string): boolean {
  return TOKEN_SHAPE.test(token);
}

/**
 * Moves a `token` parameter of the URL fragment into storage and removes it
 * from the address bar, keeping any other fragment parameters. Returns the
 * token the fragment carried, or null when it carried none. An empty
 * `token=` is removed from the address bar and not stored.
 */
export function takeTokenFromFragment(env: TokenEnvironment): string | null {
  const params = new URLSearchParams(env.location.hash.replace(/^#/, ""));
  if (!params.has("token")) return null;
  const token = (params.get("token") ?? "").trim();
  params.delete("token");
  const rest = params.toString();
  const { pathname, search } = env.location;
  env.history.replaceState(
    env.history.state,
    "",
    `${pathname}${search}${rest === "" ? "" : `#${rest}`}`,
  );
  if (token === "") return null;
  storeToken(env.storage, token);
  return token;
}

/** Returns the stored token, or null. */
export function readStoredToken(
  env: Pick<TokenEnvironment, "storage">,
): string | null {
  const token = env.storage.getItem(TOKEN_STORAGE_KEY);
  return token === null || token === "" ? null : token;
}

/** Stores `token` for this tab. */
export function storeToken(
  storage: TokenEnvironment["storage"],
  token: string,
): void {
  storage.setItem(TOKEN_STORAGE_KEY, token);
}

/** Removes the stored token. */
export function clearToken(storage: TokenEnvironment["storage"]): void {
  storage.removeItem(TOKEN_STORAGE_KEY);
}
