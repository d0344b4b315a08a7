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
 * A stall inside a socket callback (a slow handler, a garbage collection
 * there) ends in the poll phase, and the other sockets that were ready
 * meanwhile are read in that phase, before the tick runs. Input read then
 * finds the tick overdue by at least `lateAfterMs`, which also counts.
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
    this.timer = undefined;
  }

  /**
   * True in the loop turn that follows a stall of at least `lateAfterMs`,
   * and while the next tick is overdue by that much.
   */
  get inputMayBeLate(): boolean {
    if (this.late) return true;
    if (this.timer === undefined) return false;
    return this.now() - this.lastTick >= TICK_MS + this.lateAfterMs;
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
