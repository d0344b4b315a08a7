/**
 * Reads the `scope` claim of an app token without verifying it, only to
 * decide whether the page offers controls. The relay verifies the token and
 * enforces the scope on every command, so a forged claim gains nothing.
 */
export function tokenGrantsControl(token: string): boolean {
  const payload = token.split(".")[1];
  if (payload === undefined) return false;
  try {
    const base64 = payload.replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(base64)) as { scope?: unknown };
    return (
      typeof claims.scope === "string" &&
      claims.scope.split(" ").includes("control")
    );
  } catch {
    return false;
  }
}
