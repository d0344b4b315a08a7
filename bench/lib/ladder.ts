/** One fixed-rate step of a search for the maximum sustained rate. */
export interface Step {
  rate: number;
  sustained: boolean;
}

export interface LadderOptions<S extends Step> {
  /** Rates to try in ascending order, until one is not sustained. */
  rates: number[];
  /** Bisections between the last sustained and the first failed rate. */
  refinements: number;
  runStep: (rate: number) => Promise<S>;
  /**
   * Pause after each step, so that one step's backlog does not leak into
   * the next, in ms.
   * @default 500
   */
  settleMs?: number;
}

export interface LadderResult<S extends Step> {
  /** Every step run, in ascending order of rate, a repeated rate twice. */
  steps: S[];
  /** Highest rate sustained, or 0 when the lowest rate failed. */
  maxSustainedRate: number;
}

/**
 * Runs steps at rising rates until one fails its target twice in a row,
 * then bisects between the last rate that passed and the first that
 * failed. Latency is not monotonic in rate on a busy machine, so the
 * result is the highest rate that passed before the first failure.
 */
export async function findMaxSustainedRate<S extends Step>(
  options: LadderOptions<S>,
): Promise<LadderResult<S>> {
  const steps: S[] = [];
  const run = async (rate: number): Promise<S> => {
    const step = await options.runStep(rate);
    steps.push(step);
    await new Promise((resolve) =>
      setTimeout(resolve, options.settleMs ?? 500),
    );
    return step;
  };
  // A failed step runs once more before it counts, because on a shared
  // machine one stall of a few hundred ms fails a 5 s step's p99.
  const sustains = async (rate: number): Promise<boolean> =>
    (await run(rate)).sustained || (await run(rate)).sustained;
  let passed = 0;
  let failed: number | undefined;
  for (const rate of options.rates) {
    if (await sustains(rate)) {
      passed = rate;
    } else {
      failed = rate;
      break;
    }
  }
  for (
    let round = 0;
    round < options.refinements && failed !== undefined;
    round += 1
  ) {
    const middle = Math.round((passed + failed) / 2);
    // Closer than 5 % apart, the noise of a busy machine swamps the difference.
    if (failed - passed <= Math.max(1, failed * 0.05)) break;
    if (await sustains(middle)) passed = middle;
    else failed = middle;
  }
  steps.sort((a, b) => a.rate - b.rate);
  return { steps, maxSustainedRate: passed };
}
