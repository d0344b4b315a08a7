/**
 * A timeout that lets input already waiting in the kernel win the race.
 *
 * After the process stops (a long garbage collection, a blocked loop, a
 * `SIGSTOP`), Node runs the timers that came due before it reads any
 * socket, so a plain `setTimeout` gives up on an answer that had arrived
 * in time and only waits to be read. This timer runs `onTimeout` one turn
 * later, from the check phase, after the poll phase has read that input.
 *
 * Returns a function that cancels the timeout.
 */
export function setInputFirstTimeout(
  onTimeout: () => void,
  ms: number,
): () => void {
  let immediate: NodeJS.Immediate | undefined;
  const timer = setTimeout(() => {
    immediate = setImmediate(onTimeout);
  }, ms);
  return () => {
    clearTimeout(timer);
    if (immediate !== undefined) clearImmediate(immediate);
  };
}
