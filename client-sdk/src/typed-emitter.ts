/**
 * A small event emitter whose event names and listener signatures are
 * checked by the compiler. It has no Node dependency, so the browser
 * bundle can use it.
 */

/** Map of event name to listener signature. */
export type EventsMap<Events> = {
  [Event in keyof Events]: (...args: never[]) => void;
};

interface Registration {
  listener: (...args: never[]) => void;
  once: boolean;
}

export class TypedEmitter<Events extends EventsMap<Events>> {
  private readonly registrations = new Map<keyof Events, Registration[]>();

  /** Adds `listener` for `event`. */
  on<Event extends keyof Events>(event: Event, listener: Events[Event]): this {
    return this.register(event, { listener, once: false });
  }

  /** Adds `listener` for the next `event` only. */
  once<Event extends keyof Events>(
    event: Event,
    listener: Events[Event],
  ): this {
    return this.register(event, { listener, once: true });
  }

  /** Removes `listener` from `event`, also one added with `once`. */
  off<Event extends keyof Events>(event: Event, listener: Events[Event]): this {
    const list = this.registrations.get(event) ?? [];
    const kept = list.filter((entry) => entry.listener !== listener);
    this.registrations.set(event, kept);
    return this;
  }

  /** Returns the number of listeners of `event`. */
  listenerCount(event: keyof Events): number {
    return this.registrations.get(event)?.length ?? 0;
  }

  /**
   * Calls every listener of `event` in the order they were added. A
   * listener that throws does not stop the others, and its error is thrown
   * again from a microtask, so it surfaces as an uncaught error instead of
   * breaking the emitter's caller halfway through an update.
   */
  protected emit<Event extends keyof Events>(
    event: Event,
    ...args: Parameters<Events[Event]>
  ): void {
    const list = this.registrations.get(event);
    if (list === undefined || list.length === 0) return;
    this.registrations.set(
      event,
      list.filter((entry) => !entry.once),
    );
    for (const { listener } of list) {
      try {
        (listener as (...values: Parameters<Events[Event]>) => void)(...args);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }

  private register(event: keyof Events, registration: Registration): this {
    const list = this.registrations.get(event) ?? [];
    this.registrations.set(event, [...list, registration]);
    return this;
  }
}
