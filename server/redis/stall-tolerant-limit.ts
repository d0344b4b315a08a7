import { TimeoutReadError } from "redis";

/** Interval between two checks of the running commands' deadlines, in ms. */
export const CHECK_INTERVAL_MS = 25;

/**
 * Delay of a check past its interval from which the process counts as
 * stalled (a long GC pause, a loop blocked by a burst of disconnects), in ms.
 */
export const STALL_THRESHOLD_MS = 100;

/**
 * Factor from a limit to the node-redis command timeout behind it. That
 * timeout only ends commands that stay in node-redis's queue after the
 * limit has failed them, so a stall longer than about this many limits
 * still fails commands whose replies arrived in time.
 */
export const QUEUE_LIMIT_FACTOR = 10;

/** Source of time and of the periodic check, replaceable in tests. */
export interface LimitClock {
  /** Monotonic time in ms. */
  now(): number;
  /** Calls `tick` every `intervalMs` until the returned function is called. */
  every(intervalMs: number, tick: () => void): () => void;
}

/** The process's monotonic clock, with an unref'd interval that never keeps it alive. */
export const systemClock: LimitClock = {
  now: () => performance.now(),
  every(intervalMs, tick) {
    const timer = setInterval(tick, intervalMs);
    timer.unref();
    return () => clearInterval(timer);
  },
};

/** A command waiting for its reply. */
interface RunningCommand {
  readonly startedAt: number;
  deadline: number;
  extended: boolean;
  reject(error: unknown): void;
}

/**
 * A time limit on commands that a stall of this process does not use up.
 *
 * node-redis's own command timeout runs a timer per command. After the
 * process stalls, the timers phase of the next loop turn fires those
 * timers before the poll phase reads the replies that arrived meanwhile,
 * so commands fail that Redis replied to in time. Commands issued during
 * the stall fail too, before node-redis has written them. This limit
 * checks every running command from one interval instead:
 * - A command past its deadline fails from `setImmediate`, after the poll
 *   phase of the same loop turn. A reply read in that phase settles the
 *   command normally.
 * - A check that runs STALL_THRESHOLD_MS or more late means that the
 *   process stalled. Commands then past their deadline get a new one,
 *   `limitMs` after that check, once per command.
 *
 * So one stall does not fail a command unless it lasts about
 * QUEUE_LIMIT_FACTOR limits, and a command to a Redis that stays silent
 * fails one limit after it was issued, or one limit after the stall.
 * A failed command rejects with node-redis's `TimeoutReadError`, which
 * means that Redis may have run it, as node-redis does with
 * `rejectInFlight`.
 *
 * NOTE: the limit cannot see whether node-redis has written a command,
 * so one still in node-redis's write queue (a socket that Redis stopped
 * reading) also fails with `TimeoutReadError`, where node-redis's own
 * timeout throws `TimeoutError`.
 */
export class StallTolerantLimit {
  private readonly running = new Set<RunningCommand>();
  /** Commands found past their deadline, failed by the next `setImmediate`. */
  private expired: RunningCommand[] = [];
  private stopChecks: (() => void) | undefined;
  private lastCheckAt = 0;

  constructor(
    readonly limitMs: number,
    private readonly clock: LimitClock = systemClock,
  ) {
    if (!Number.isFinite(limitMs) || limitMs <= 0) {
      throw new RangeError(
        `invalid limitMs ${limitMs}: expected a positive number of ms`,
      );
    }
  }

  /** Number of commands waiting for their reply. */
  get runningCount(): number {
    return this.running.size;
  }

  /**
   * Calls `command` and, when it returns a promise, returns one that
   * settles like it or rejects with `TimeoutReadError` once the limit is
   * over. Any other result, or an exception, passes through untracked.
   */
  run<T>(command: () => T): T {
    const result = command();
    if (!isPromiseLike(result)) return result;
    const startedAt = this.clock.now();
    this.startChecks(startedAt);
    return new Promise((resolve, reject) => {
      const running: RunningCommand = {
        startedAt,
        deadline: startedAt + this.limitMs,
        extended: false,
        reject,
      };
      this.running.add(running);
      result.then(
        (value) => {
          if (this.running.delete(running)) resolve(value);
        },
        (error: unknown) => {
          if (this.running.delete(running)) reject(error);
        },
      );
    }) as T;
  }

  private startChecks(now: number): void {
    if (this.stopChecks !== undefined) return;
    this.lastCheckAt = now;
    this.stopChecks = this.clock.every(CHECK_INTERVAL_MS, this.check);
  }

  private readonly check = (): void => {
    const now = this.clock.now();
    const stalled =
      now - this.lastCheckAt >= CHECK_INTERVAL_MS + STALL_THRESHOLD_MS;
    this.lastCheckAt = now;
    if (this.running.size === 0) {
      this.stopChecks?.();
      this.stopChecks = undefined;
      return;
    }
    const expiredBefore = this.expired.length;
    // Expiry is decided with this check's time, so that work later in
    // this loop turn cannot make a command late.
    for (const running of this.running) {
      if (now < running.deadline) continue;
      if (stalled && !running.extended) {
        running.extended = true;
        running.deadline = now + this.limitMs;
        continue;
      }
      // Infinity keeps a later check from listing the command again.
      running.deadline = Infinity;
      this.expired.push(running);
    }
    if (expiredBefore === 0 && this.expired.length > 0) {
      setImmediate(this.rejectExpired);
    }
  };

  /** Fails the expired commands whose reply the poll phase did not read. */
  private readonly rejectExpired = (): void => {
    const expired = this.expired;
    this.expired = [];
    const now = this.clock.now();
    for (const running of expired) {
      if (!this.running.delete(running)) continue;
      running.reject(new TimeoutReadError(Math.round(now - running.startedAt)));
    }
  };
}

function isPromiseLike(value: unknown): value is PromiseLike<unknown> {
  return (
    typeof value === "object" &&
    value !== null &&
    typeof (value as { then?: unknown }).then === "function"
  );
}

/**
 * Methods that manage the connection rather than send a command, so that
 * no limit applies to them: `close` waits for every pending reply, and
 * `connect` for as many reconnection attempts as it takes.
 */
const UNLIMITED_METHODS = new Set<PropertyKey>([
  "connect",
  "close",
  "quit",
  "disconnect",
  "destroy",
]);

/** Methods that return a transaction, whose `exec` the limit then covers. */
const TRANSACTION_METHODS = new Set<PropertyKey>(["multi", "MULTI"]);

/**
 * Returns a view of a node-redis client, for one server or a cluster,
 * whose commands run under `limit`. Every method that returns a promise
 * (commands, `sendCommand`, `eval`, a transaction's `exec`) is limited.
 * Other properties read through, and a method that returns its own
 * client (chained calls such as `multi().set(…)`) returns the view.
 * `then` reads as undefined, so that `await` and `Promise.resolve` take
 * the view as a plain value. Clients made from it (`duplicate`,
 * `withCommandOptions`) have no limit.
 */
export function limitedCommands<Client extends object>(
  client: Client,
  limit: StallTolerantLimit,
): Client {
  /** Wrappers made so far, by property, with the method each wraps. */
  const wrappers = new Map<
    PropertyKey,
    { method: unknown; wrapper: (...args: unknown[]) => unknown }
  >();
  const view: Client = new Proxy(client, {
    get(target, property) {
      if (property === "then") return undefined;
      // The client itself is the receiver: node-redis clients keep their
      // state in private fields, which a proxy receiver cannot read.
      const value: unknown = Reflect.get(target, property, target);
      if (typeof value !== "function" || UNLIMITED_METHODS.has(property)) {
        return typeof value === "function" ? value.bind(target) : value;
      }
      const cached = wrappers.get(property);
      if (cached?.method === value) return cached.wrapper;
      const method = value as (...args: unknown[]) => unknown;
      const transaction = TRANSACTION_METHODS.has(property);
      const wrapper = (...args: unknown[]): unknown => {
        const result = limit.run(() => Reflect.apply(method, target, args));
        if (result === target) return view;
        if (transaction && typeof result === "object" && result !== null) {
          return limitedCommands(result, limit);
        }
        return result;
      };
      wrappers.set(property, { method: value, wrapper });
      return wrapper;
    },
  });
  return view;
}
