import type { Server as HttpServer } from "node:http";
import type { Namespace, Socket } from "socket.io";
import { RelayError } from "../errors.ts";
import { socketRequests } from "../metrics/relay-metrics.ts";
import type {
  CommandAnswer,
  CommandExecutor,
  RoutedCommand,
} from "./command-router.ts";
import {
  commandKey,
  joinRunning,
  type RunningCommand,
} from "./command-executor.ts";

/** Shortest gap between two batches, in ms: a wider window gets more batches, not shorter gaps. */
const MIN_BATCH_GAP_MS = 50;

/** Figures of one drain, logged when it ends. */
export interface DrainSummary {
  /** Sockets open when the drain started. */
  sockets: number;
  batches: number;
  /** Sockets whose closing waited for a request or a command in flight. */
  waited: number;
  /** Sockets closed at the force deadline with work still in flight. */
  forced: number;
  /** Time from the first socket closed to the last, in ms. */
  spreadMs: number;
}

export interface ConnectionDrainOptions {
  /** Time over which the sockets are closed, in ms. */
  windowMs: number;
  /** Time from the start of the drain after which busy sockets are closed anyway, in ms. */
  forceAfterMs: number;
}

type CloseOutcome = "idle" | "waited" | "forced" | "gone";

/**
 * Closes a relay's sockets for a deploy without cutting work in flight.
 * Sockets are closed in batches spread over a window, so that their
 * clients do not all reconnect to the other servers at the same moment.
 * When a socket's turn comes, new requests on it and new commands to its
 * bridge get `UNAVAILABLE`, and the socket closes once its own requests
 * and the commands sent to its bridge have their acknowledgements.
 *
 * Closing the transport, not the Socket.IO session, makes clients see
 * `transport close`, which socket.io-client and the SDK both answer by
 * reconnecting, to another server since this one rejects handshakes.
 */
export class ConnectionDrain {
  /** Requests and bridge commands in flight, per socket ID. */
  private readonly busy = new Map<string, number>();
  /** Sockets whose turn came, which take no new work. */
  private readonly refusing = new Set<string>();
  /** Callbacks that close a socket once it is idle, per socket ID. */
  private readonly closeWhenIdle = new Map<string, () => void>();
  /** Commands in flight through `guardCommands`, by bridge and command ID. */
  private readonly commands = new Map<string, RunningCommand>();
  /** HTTP requests and bus messages that must finish before Redis closes. */
  private readonly tasks = new Set<Promise<unknown>>();

  constructor(private readonly options: ConnectionDrainOptions) {}

  /**
   * Counts the requests in flight on every socket of `namespace`, and
   * rejects new requests on a socket whose turn to close came.
   */
  watchNamespace(namespace: Namespace): void {
    namespace.on("connection", (socket) => {
      socket.use((packet, next) => {
        // A refused packet is dropped: next() is not called, so no handler runs.
        if (this.admitPacket(socket, packet)) next();
      });
      socket.on("disconnect", this.forgetSocket);
    });
  }

  /**
   * Drops what the drain keeps for a socket that disconnected. Socket.IO
   * calls it with the socket as `this`, so one function serves every
   * socket, with no closure kept per connection.
   */
  private readonly forgetSocket = ((drain: ConnectionDrain) =>
    function (this: Socket): void {
      drain.busy.delete(this.id);
      drain.refusing.delete(this.id);
      drain.closeWhenIdle.get(this.id)?.();
    })(this);

  /** Tracks the HTTP requests in flight on `server`, so closing waits for their responses. */
  watchHttp(server: HttpServer): void {
    server.on("request", (_request, response) => {
      this.track(
        new Promise<void>((resolve) => response.once("close", resolve)),
      );
    });
  }

  /** Keeps the drain from finishing before `task` settles. */
  track(task: Promise<unknown>): void {
    const settled = task.then(
      () => undefined,
      () => undefined,
    );
    this.tasks.add(settled);
    void settled.then(() => this.tasks.delete(settled));
  }

  /**
   * Wraps the execution of commands on this process's bridges: counts each
   * command as work in flight on its bridge's socket, and answers
   * `UNAVAILABLE` to a new command for a bridge whose socket is closing. A
   * repeat of a command in flight still joins it, and another command
   * under its `commandId` gets `INVALID_PAYLOAD`.
   */
  guardCommands(
    execute: CommandExecutor,
    socketIdOf: (bridgeId: string) => string | undefined,
  ): CommandExecutor {
    return (command: RoutedCommand) => {
      const key = commandKey(command);
      const running = this.commands.get(key);
      if (running !== undefined) return joinRunning(running, command);
      const socketId = socketIdOf(command.bridgeId);
      if (socketId === undefined) return execute(command);
      if (this.refusing.has(socketId)) {
        return Promise.resolve(movingAnswer(command.bridgeId));
      }
      this.begin(socketId);
      const answer = execute(command);
      this.commands.set(key, { command, answer });
      void answer.finally(() => {
        this.commands.delete(key);
        this.end(socketId);
      });
      return answer;
    };
  }

  /**
   * Closes `sockets` in batches spread evenly over the window, the first
   * at once and the last at the window's end. Each closes once idle, or
   * at the force deadline. Then waits for the tracked tasks, up to the
   * same deadline.
   */
  async run(sockets: Socket[]): Promise<DrainSummary> {
    const { windowMs, forceAfterMs } = this.options;
    const started = Date.now();
    let forceTimer: NodeJS.Timeout | undefined;
    const forced = new Promise<void>((resolve) => {
      forceTimer = setTimeout(resolve, Math.max(forceAfterMs, windowMs));
    });

    const batches = batchCount(sockets.length, windowMs);
    const closes: Promise<{ outcome: CloseOutcome; at: number }>[] = [];
    for (let batch = 0; batch < batches; batch += 1) {
      const offset = batches === 1 ? 0 : (batch * windowMs) / (batches - 1);
      await sleep(started + offset - Date.now());
      for (const socket of batchMembers(sockets, batch, batches)) {
        closes.push(this.closeSocket(socket, forced));
      }
    }
    const results = await Promise.all(closes);
    await Promise.race([Promise.all([...this.tasks]), forced]);
    clearTimeout(forceTimer);

    const closedAt = results
      .filter((result) => result.outcome !== "gone")
      .map((result) => result.at);
    return {
      sockets: sockets.length,
      batches,
      waited: results.filter((result) => result.outcome === "waited").length,
      forced: results.filter((result) => result.outcome === "forced").length,
      spreadMs:
        closedAt.length === 0
          ? 0
          : Math.max(...closedAt) - Math.min(...closedAt),
    };
  }

  /**
   * Returns false for a request that was refused because its socket is
   * closing, after answering it. Wraps the callback of an admitted request,
   * so that the socket counts as busy until it is called.
   */
  private admitPacket(socket: Socket, packet: unknown[]): boolean {
    const event = packet[0];
    const ack = packet[packet.length - 1];
    // Requests without a callback need no answer, and unknown events are
    // answered by their own listener, which never calls a wrapped callback.
    // Socket.IO's own no-op listener of "error" never calls it either.
    if (typeof ack !== "function" || typeof event !== "string") return true;
    if (event === "error" || socket.listenerCount(event) === 0) return true;
    if (this.refusing.has(socket.id)) {
      const error = new RelayError(
        "UNAVAILABLE",
        "this connection is closing for a restart, retry after the reconnect",
      );
      (ack as (response: unknown) => void)({
        ok: false,
        error: error.toBody(),
      });
      socketRequests.inc({ event, outcome: "UNAVAILABLE" });
      return false;
    }
    this.begin(socket.id);
    let answered = false;
    packet[packet.length - 1] = (...args: unknown[]) => {
      (ack as (...args: unknown[]) => void)(...args);
      if (answered) return;
      answered = true;
      this.end(socket.id);
    };
    return true;
  }

  private begin(socketId: string): void {
    this.busy.set(socketId, (this.busy.get(socketId) ?? 0) + 1);
  }

  private end(socketId: string): void {
    const remaining = (this.busy.get(socketId) ?? 1) - 1;
    if (remaining > 0) {
      this.busy.set(socketId, remaining);
      return;
    }
    this.busy.delete(socketId);
    this.closeWhenIdle.get(socketId)?.();
  }

  private closeSocket(
    socket: Socket,
    forced: Promise<void>,
  ): Promise<{ outcome: CloseOutcome; at: number }> {
    if (socket.disconnected) {
      return Promise.resolve({ outcome: "gone", at: Date.now() });
    }
    this.refusing.add(socket.id);
    return new Promise((resolve) => {
      const close = (outcome: CloseOutcome): void => {
        if (!this.closeWhenIdle.delete(socket.id)) return;
        if (socket.connected) socket.conn.close();
        else outcome = "gone";
        resolve({ outcome, at: Date.now() });
      };
      const busy = this.busy.has(socket.id);
      this.closeWhenIdle.set(socket.id, () => close(busy ? "waited" : "idle"));
      if (!busy) {
        close("idle");
        return;
      }
      void forced.then(() => close("forced"));
    });
  }
}

/** Answer to a command for a bridge whose socket is closing. */
function movingAnswer(bridgeId: string): CommandAnswer {
  const error = new RelayError(
    "UNAVAILABLE",
    `bridge ${bridgeId} is reconnecting to another server, retry`,
  );
  return { ok: false, error: error.toBody() };
}

/** Returns the number of batches: one per socket, as many as the window allows. */
function batchCount(sockets: number, windowMs: number): number {
  const allowed = Math.floor(windowMs / MIN_BATCH_GAP_MS) + 1;
  return Math.max(1, Math.min(sockets, allowed));
}

/** Returns the sockets of batch `batch` out of `batches`, spread evenly. */
function batchMembers<T>(items: T[], batch: number, batches: number): T[] {
  const start = Math.floor((batch * items.length) / batches);
  const end = Math.floor(((batch + 1) * items.length) / batches);
  return items.slice(start, end);
}

function sleep(ms: number): Promise<void> {
  if (ms <= 0) return Promise.resolve();
  return new Promise((resolve) => setTimeout(resolve, ms));
}
