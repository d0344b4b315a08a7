/** Who a socket or HTTP request acts for, taken from a verified token. */
export type Identity = BridgeIdentity | AppIdentity;

export interface BridgeIdentity {
  role: "bridge";
  bridgeId: string;
  /** Expiry in seconds since the epoch, when the token has one. */
  exp: number | undefined;
}

export interface AppIdentity {
  role: "app";
  userId: string;
  /** Lowercase IDs of the bridges the token grants. */
  bridges: ReadonlySet<string>;
  /** `read` (list, subscribe, get) and `control` (commands). */
  scopes: ReadonlySet<string>;
  exp: number | undefined;
}

export function identityKey(identity: Identity): string {
  return identity.role === "bridge"
    ? `bridge:${identity.bridgeId}`
    : `app:${identity.userId}`;
}
