import { randomBytes } from "node:crypto";
import { io, Manager, type Socket } from "socket.io-client";
import type { Ack } from "../../client-sdk/src/protocol.ts";
import { appToken, bridgeToken } from "./tokens.ts";

/** Returns a fresh random bridge ID, so tests sharing a relay never share state. */
export function randomBridgeId(): string {
  return randomBytes(8).toString("hex");
}

export interface ConnectOptions {
  transports?: ("polling" | "websocket")[];
  auth?: Record<string, unknown>;
  query?: Record<string, string>;
}

/** Connects a raw Socket.IO client and resolves once connected. */
export async function connect(
  url: string,
  namespace: "/bridge" | "/app",
  options: ConnectOptions,
): Promise<Socket> {
  const socket = io(`${url}${namespace}`, {
    transports:
      options.transports ??
      (namespace === "/bridge" ? ["websocket"] : ["polling", "websocket"]),
    auth: options.auth ?? {},
    query: options.query ?? {},
    reconnection: false,
    forceNew: true,
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error(`connecting to ${namespace} timed out`));
    }, 5000);
    socket.once("connect", () => {
      clearTimeout(timer);
      resolve();
    });
    socket.once("connect_error", (error) => {
      clearTimeout(timer);
      socket.close();
      reject(error);
    });
  });
  return socket;
}

export async function connectBridge(
  url: string,
  bridgeId: string,
  options: ConnectOptions = {},
): Promise<Socket> {
  return connect(url, "/bridge", {
    auth: { token: await bridgeToken(bridgeId) },
    ...options,
  });
}

export async function connectApp(
  url: string,
  bridges: string[],
  scope = "read control",
  options: ConnectOptions = {},
): Promise<Socket> {
  return connect(url, "/app", {
    auth: { token: await appToken(`user-${randomBridgeId()}`, bridges, scope) },
    ...options,
  });
}

export interface ConnectError {
  message: string;
  data: { code: string; retryAfterMs?: number } | undefined;
}

/** Attempts a connection that must fail and returns its `connect_error`. */
export async function connectError(
  url: string,
  namespace: "/bridge" | "/app",
  options: ConnectOptions,
): Promise<ConnectError> {
  try {
    const socket = await connect(url, namespace, options);
    socket.close();
  } catch (error) {
    const { message, data } = error as Error & { data?: ConnectError["data"] };
    return { message, data };
  }
  throw new Error(`connection to ${namespace} unexpectedly succeeded`);
}

/** Sends a request and returns its acknowledgement. */
export function request<T = unknown>(
  socket: Socket,
  event: string,
  payload?: unknown,
  timeoutMs = 8000,
): Promise<Ack<T>> {
  return socket.timeout(timeoutMs).emitWithAck(event, payload) as Promise<
    Ack<T>
  >;
}

/** Sends a request that must succeed and returns its `data`. */
export async function requestData<T = unknown>(
  socket: Socket,
  event: string,
  payload?: unknown,
): Promise<T> {
  const ack = await request<T>(socket, event, payload);
  if (!ack.ok)
    throw new Error(`${event} failed: ${ack.error.code} ${ack.error.message}`);
  return ack.data;
}

/** Resolves with the next `event` whose payload matches, or rejects after `timeoutMs`. */
export function nextEvent<T = unknown>(
  socket: Socket,
  event: string,
  match: (payload: T) => boolean = () => true,
  timeoutMs = 5000,
): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.off(event, listener);
      reject(new Error(`no ${event} event within ${timeoutMs} ms`));
    }, timeoutMs);
    const listener = (payload: T): void => {
      if (!match(payload)) return;
      clearTimeout(timer);
      socket.off(event, listener);
      resolve(payload);
    };
    socket.on(event, listener);
  });
}

/** Records every payload of `event` on `socket`. */
export function record<T = unknown>(socket: Socket, event: string): T[] {
  const payloads: T[] = [];
  socket.on(event, (payload: T) => payloads.push(payload));
  return payloads;
}

/** Resolves after `ms`: only for letting unwanted events arrive before asserting they did not. */
export function settle(ms = 300): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Connects sockets until one lands on a server other than `serverId` (round-robin makes that quick). */
export async function connectElsewhere(
  open: () => Promise<Socket>,
  avoidServerId: string,
  attempts = 8,
): Promise<{ socket: Socket; serverId: string }> {
  for (let attempt = 0; attempt < attempts; attempt += 1) {
    const socket = await open();
    const { serverId } = await requestData<{ serverId: string }>(
      socket,
      "relay:info",
      {},
    );
    if (serverId !== avoidServerId) return { socket, serverId };
    socket.close();
  }
  throw new Error(`every connection landed on server ${avoidServerId}`);
}

/**
 * Opens an Engine.IO connection over websocket that joins no namespace,
 * and returns it, for tests that send raw packets. The caller closes it.
 */
export async function openEngine(url: string): Promise<Manager["engine"]> {
  const manager = new Manager(url, {
    transports: ["websocket"],
    reconnection: false,
    autoConnect: false,
  });
  await new Promise<void>((resolve, reject) =>
    manager.open((error) => (error ? reject(error) : resolve())),
  );
  return manager.engine;
}
