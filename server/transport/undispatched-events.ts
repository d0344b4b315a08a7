import type { Socket } from "socket.io";

/**
 * Events of each socket that passed the socket middleware and whose
 * listeners have not run yet. Sockets with none have no entry.
 */
const pending = new WeakMap<Socket, unknown[][]>();

/**
 * Records each event of `socket` from its socket middleware until its
 * listeners have had their turn. Socket.IO 4.8 runs an event's listeners
 * a tick after the middleware, and drops the event when the socket
 * disconnected meanwhile (`dispatch` in socket.io's `socket.js`). So an
 * event read in the same batch as the client's disconnection, such as a
 * bridge's last change before it closes, would be lost. Registered before
 * any other socket middleware, it also records events that a later one
 * rejects.
 */
export function recordUndispatchedEvents(socket: Socket): void {
  socket.use((event, next) => {
    let events = pending.get(socket);
    if (events === undefined) {
      events = [];
      pending.set(socket, events);
    }
    events.push(event);
    next();
    // Queued after the tick that Socket.IO queued in next() for this event.
    process.nextTick(forgetOldest, socket);
  });
}

function forgetOldest(socket: Socket): void {
  const events = pending.get(socket);
  events?.shift();
  if (events?.length === 0) pending.delete(socket);
}

/**
 * Returns the events of `socket` that Socket.IO will drop because the
 * socket disconnected before their listeners ran, oldest first, each as
 * its arguments with the event name first. Call it from a `disconnect`
 * listener.
 */
export function takeUndispatchedEvents(socket: Socket): unknown[][] {
  const events = pending.get(socket) ?? [];
  pending.delete(socket);
  return events;
}
