import { execFile } from "node:child_process";
import { connect, type Socket } from "node:net";
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

/**
 * Opens a TCP connection to `port` on loopback that sends nothing, and
 * resolves once it is open. The server may have closed it by then.
 */
export function openIdle(port: number): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const socket = connect(port, "127.0.0.1", () => resolve(socket));
    socket.once("error", reject);
  });
}

/**
 * Resolves with the ms until the server closed `socket` (0 when it is
 * closed already), or -1 when it stayed open for `ms`.
 */
export function closedWithin(socket: Socket, ms: number): Promise<number> {
  const startedAt = Date.now();
  return new Promise((resolve) => {
    if (socket.closed) {
      resolve(0);
      return;
    }
    const timer = setTimeout(() => resolve(-1), ms);
    socket.on("error", () => undefined);
    socket.once("close", () => {
      clearTimeout(timer);
      resolve(Date.now() - startedAt);
    });
  });
}
