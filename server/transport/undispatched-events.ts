import type { Socket } from "socket.io";

/**
 * Events of each socket that passed the socket middleware and whose
 * listeners have not run yet. Sockets with none have no entry.
 */
const pending = new WeakMap<Socket, unknown[][]>();

/**
 * Records each event of `socket` from its socket middleware until its
 * listeners have run. Socket.IO 4.8 runs an event's listeners a tick after
 * the middleware, and drops the event when the socket has disconnected by
 * then (`dispatch` in socket.io's `socket.js`). It also passes the packets
 * read with the disconnection to the middleware a tick after the
 * disconnection. An event dropped either way stays recorded, so that a
 * bridge's last change before it closes is not lost. Register it after
 * the socket middleware that may reject an event, so that it records only
 * the events passed on.
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
    process.nextTick(forgetDispatched, socket);
  });
}

/** Forgets the oldest event of `socket` once its listeners ran, which they do only while it is connected. */
function forgetDispatched(socket: Socket): void {
  if (socket.disconnected) return;
  const events = pending.get(socket);
  events?.shift();
  if (events?.length === 0) pending.delete(socket);
}

/**
 * Returns the events of `socket` that Socket.IO dropped because the
 * socket disconnected before their listeners ran, oldest first, each as
 * its arguments with the event name first. Call it once the turn of the
 * event loop in which the socket disconnected is over.
 */
export function takeUndispatchedEvents(socket: Socket): unknown[][] {
  const events = pending.get(socket) ?? [];
  pending.delete(socket);
  return events;
}
