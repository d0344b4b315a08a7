/**
 * Room of a bridge's subscribed apps in `/app`. Bridge sockets join no
 * room: commands reach them through their owner process, and each room
 * would cost a sharded subscription per connected bridge.
 */
export function bridgeRoom(bridgeId: string): string {
  return `bridge:${bridgeId}`;
}
