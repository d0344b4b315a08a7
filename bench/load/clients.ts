import { randomBytes } from "node:crypto";
import { io, type Socket } from "socket.io-client";
import type { Ack } from "../../client-sdk/src/protocol.ts";
import { appToken, bridgeToken } from "../../test/support/tokens.ts";

/**
 * Server under test. `relay` is the product, which checks a JWT in the
 * handshake and keeps state. `bare` is the baseline in
 * bench/baselines/bare-socketio.ts, which takes the bridge ID unchecked.
 */
export type ServerKind = "relay" | "bare";

/** The light every benchmark bridge reports, and the target of its commands. */
export const BENCH_LIGHT = {
  id: "a",
  type: "light",
  on: { on: true },
  dimming: { brightness: 50 },
  metadata: { name: "Lamp a" },
} as const;

export function randomBridgeId(): string {
  return randomBytes(8).toString("hex");
}

export interface OpenOptions {
  /** Loopback source address, such as 127.0.0.2, to spread connections over more local ports. */
  localAddress?: string;
  timeoutMs?: number;
}

/** Opens a websocket-only Socket.IO connection without reconnection and resolves once connected. */
export function openSocket(
  url: string,
  namespace: "/bridge" | "/app",
  auth: Record<string, unknown>,
  options: OpenOptions = {},
): Promise<Socket> {
  const socket = io(`${url}${namespace}`, {
    transports: ["websocket"],
    auth,
    reconnection: false,
    forceNew: true,
    // engine.io-client passes localAddress on to the ws package; its types omit it.
    ...(options.localAddress === undefined
      ? {}
      : ({ localAddress: options.localAddress } as object)),
  });
  const timeoutMs = options.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(
        new Error(`connecting to ${namespace} timed out after ${timeoutMs} ms`),
      );
    }, timeoutMs);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve(socket);
    });
    socket.once(
      "connect_error",
      (error: Error & { data?: { code?: string } }) => {
        clearTimeout(timer);
        socket.close();
        const code = error.data?.code ?? "CONNECT_ERROR";
        reject(new Error(`${code}: ${error.message}`));
      },
    );
  });
}

/** Sends a request and resolves with its acknowledgement, or rejects after `timeoutMs`. */
export function ask<T = unknown>(
  socket: Socket,
  event: string,
  payload: unknown,
  timeoutMs = 10_000,
): Promise<Ack<T>> {
  return socket.timeout(timeoutMs).emitWithAck(event, payload) as Promise<
    Ack<T>
  >;
}

/** Sends a request that must succeed and resolves with its `data`. */
export async function askData<T = unknown>(
  socket: Socket,
  event: string,
  payload: unknown,
): Promise<T> {
  const ack = await ask<T>(socket, event, payload);
  if (!ack.ok) {
    throw new Error(`${event} failed: ${ack.error.code} ${ack.error.message}`);
  }
  return ack.data;
}

/**
 * Connects a bridge. On the relay it authenticates with a bridge token and
 * reports `lights` in a snapshot, as bridge firmware does after connecting.
 */
export async function openBridge(
  kind: ServerKind,
  url: string,
  bridgeId: string,
  lights: readonly object[],
  options: OpenOptions = {},
): Promise<Socket> {
  if (kind === "bare") return openSocket(url, "/bridge", { bridgeId }, options);
  const token = await bridgeToken(bridgeId);
  const socket = await openSocket(url, "/bridge", { token }, options);
  await askData(socket, "state:snapshot", { lights });
  return socket;
}

/** Connects an app allowed to read and control `bridgeIds`. */
export async function openApp(
  kind: ServerKind,
  url: string,
  bridgeIds: string[],
  options: OpenOptions = {},
): Promise<Socket> {
  if (kind === "bare") return openSocket(url, "/app", {}, options);
  const token = await appToken(
    `bench-${randomBridgeId()}`,
    bridgeIds,
    "read control",
  );
  return openSocket(url, "/app", { token }, options);
}

/** Returns the relay process that serves `socket`. */
export async function serverIdOf(socket: Socket): Promise<string> {
  const info = await askData<{ serverId: string }>(socket, "relay:info", {});
  return info.serverId;
}

/** Runs `task` for each item with at most `concurrency` running at once. */
export async function forEachLimited<T>(
  items: readonly T[],
  concurrency: number,
  task: (item: T, index: number) => Promise<void>,
): Promise<void> {
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const index = next++;
      await task(items[index]!, index);
    }
  };
  await Promise.all(
    Array.from({ length: Math.min(concurrency, items.length) }, worker),
  );
}
