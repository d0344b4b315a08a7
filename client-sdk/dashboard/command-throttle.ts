/** Timer functions a throttle uses; tests pass a fake clock. */
export interface ThrottleClock {
  now(): number;
  setTimeout(callback: () => void, delayMs: number): unknown;
  clearTimeout(handle: unknown): void;
}

export interface CommandThrottleOptions {
  /**
   * Minimum time between the starts of two sends of one key, in ms.
   * @default 100 (at most 10 sends per second per key)
   */
  intervalMs?: number;
  /** @default the global timers and `Date.now` */
  clock?: ThrottleClock;
}

interface KeyState<Value> {
  /** The newest value not sent yet. */
  pending: { value: Value } | undefined;
  /** Start time of the last send, or -Infinity before the first. */
  lastStartMs: number;
  timer: unknown;
  inFlight: boolean;
}

const SYSTEM_CLOCK: ThrottleClock = {
  now: () => Date.now(),
  setTimeout: (callback, delayMs) => setTimeout(callback, delayMs),
  clearTimeout: (handle) =>
    clearTimeout(handle as ReturnType<typeof setTimeout>),
};

/**
 * A trailing throttle with one queue per key, such as one per light and
 * field. The first value of a quiet key is sent at once. After that, a key
 * starts a send at most once per `intervalMs` and never while its previous
 * send is still in flight. Values pushed meanwhile replace each other, and
 * the newest is sent as soon as both conditions allow, so the last value
 * pushed is the last one sent, unless cancelAll() drops it.
 *
 * @example
 * const throttle = new CommandThrottle((key, brightness: number) =>
 *   client.setLight(bridgeId, key, { dimming: { brightness } }).then(() => undefined),
 * );
 * slider.addEventListener("input", () => throttle.push(lightId, slider.valueAsNumber));
 */
export class CommandThrottle<Value> {
  private readonly keys = new Map<string, KeyState<Value>>();
  private readonly intervalMs: number;
  private readonly clock: ThrottleClock;

  /**
   * @param send - sends one value; the key's next send waits until the
   *   returned promise settles. The throttle ignores a rejection or a
   *   throw, so `send` must report its own errors.
   */
  constructor(
    private readonly send: (key: string, value: Value) => Promise<void>,
    options: CommandThrottleOptions = {},
  ) {
    this.intervalMs = options.intervalMs ?? 100;
    this.clock = options.clock ?? SYSTEM_CLOCK;
  }

  /** Queues `value` as the newest value of `key`. */
  push(key: string, value: Value): void {
    let state = this.keys.get(key);
    if (state === undefined) {
      state = {
        pending: undefined,
        lastStartMs: Number.NEGATIVE_INFINITY,
        timer: undefined,
        inFlight: false,
      };
      this.keys.set(key, state);
    }
    state.pending = { value };
    this.schedule(key, state);
  }

  /** Drops every value not sent yet and stops the timers; sends in flight go on. */
  cancelAll(): void {
    for (const state of this.keys.values()) {
      state.pending = undefined;
      if (state.timer !== undefined) this.clock.clearTimeout(state.timer);
      state.timer = undefined;
    }
  }

  private schedule(key: string, state: KeyState<Value>): void {
    if (state.pending === undefined) return;
    if (state.inFlight || state.timer !== undefined) return;
    const waitMs = state.lastStartMs + this.intervalMs - this.clock.now();
    if (waitMs <= 0) {
      this.start(key, state);
      return;
    }
    state.timer = this.clock.setTimeout(() => {
      state.timer = undefined;
      this.schedule(key, state);
    }, waitMs);
  }

  private start(key: string, state: KeyState<Value>): void {
    const { value } = state.pending!;
    state.pending = undefined;
    state.inFlight = true;
    state.lastStartMs = this.clock.now();
    const settle = () => {
      state.inFlight = false;
      this.schedule(key, state);
    };
    // A synchronous throw becomes a rejection, so the key is never stuck in flight.
    new Promise<void>((resolve) => resolve(this.send(key, value))).then(
      settle,
      settle,
    );
  }
}
