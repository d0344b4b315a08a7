import { RelayError } from "../errors.ts";

/** Interval of the ticks that measure stalls, in ms. */
const TICK_MS = 100;

/**
 * Notices when this process resumes after a stall (a stop signal, a long
 * garbage collection, a blocked loop). Requests that arrived meanwhile
 * waited in the kernel for up to the stall's length, and a command whose
 * app gave up waiting must not reach the bridge.
 *
 * After a stop of the whole process (a stop signal, a paused VM) or a
 * stall in a timer, Node runs due timers before it reads sockets. So the
 * tick that measures the stall runs first, and the input read in that
 * loop turn finds `inputMayBeLate`. The flag ends in the check phase of
 * that turn.
 *
 * NOTE: a stall inside a socket callback (a slow handler, a garbage
 * collection there) is not caught: the other sockets that were ready
 * meanwhile are read in the same poll phase, before the tick runs.
 */
export class StallMonitor {
  private lastTick: number;
  private late = false;
  private timer: NodeJS.Timeout | undefined;

  /** `lateAfterMs`: the stall after which input read on resume counts as late. */
  constructor(
    private readonly lateAfterMs: number,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.lastTick = now();
  }

  start(): void {
    this.lastTick = this.now();
    this.timer = setInterval(() => this.tick(), TICK_MS);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** True in the loop turn that follows a stall of at least `lateAfterMs`. */
  get inputMayBeLate(): boolean {
    return this.late;
  }

  private tick(): void {
    const now = this.now();
    const stalledMs = now - this.lastTick - TICK_MS;
    this.lastTick = now;
    if (stalledMs < this.lateAfterMs) return;
    this.late = true;
    setImmediate(() => {
      this.late = false;
    });
  }
}

/** Returns the error for a command read right after a stall: it may have waited past its app's timeout. */
export function lateCommandError(): RelayError {
  return new RelayError(
    "UNAVAILABLE",
    "the server was stalled for longer than the command timeout and did not run this command, which may be stale: send it again if it is still wanted",
  );
}
