import { execFile } from "node:child_process";
import { promisify } from "node:util";

const run = promisify(execFile);

/**
 * Returns the kernel's TCP sockets, in any state, whose local port is
 * `localPort` and whose remote port is one of `remotePorts`, as lines of
 * `ss` (state, receive queue, send queue, addresses). A socket closed with
 * a FIN while bytes wait for a stalled peer stays in FIN-WAIT-1 with
 * those bytes. A socket closed with a reset is gone at once.
 */
export async function tcpSocketsBetween(
  localPort: number,
  remotePorts: number[],
): Promise<string[]> {
  if (remotePorts.length === 0) return [];
  const peers = remotePorts.map((port) => `dport = :${port}`).join(" or ");
  const { stdout } = await run("ss", [
    "-tnH",
    "state",
    "all",
    `( sport = :${localPort} ) and ( ${peers} )`,
  ]);
  return stdout.split("\n").filter((line) => line.trim() !== "");
}
