/** Room of a bridge, in both namespaces: its own socket, or its subscribed apps. */
export function bridgeRoom(bridgeId: string): string {
  return `bridge:${bridgeId}`;
}
