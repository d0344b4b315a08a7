import { randomUUID } from "node:crypto";
import type {
  BridgePresence,
  BridgeState,
  Light,
  LightPatch,
} from "../../client-sdk/src/protocol.ts";
import type { AppIdentity } from "../auth/identity.ts";
import { RelayError } from "../errors.ts";
import { observeCommand } from "../metrics/relay-metrics.ts";
import type { StateStore } from "../state/store.ts";
import { answerFromStored } from "./command-executor.ts";
import { rejectReusedCommandId } from "./command-fingerprint.ts";
import {
  NoReceiverError,
  type CommandRouter,
  type RoutedCommand,
} from "./command-router.ts";

/** How long a command that no process received is sent again, in ms. */
const NO_RECEIVER_RETRY_MS = 2000;
/** Time between those attempts, in ms. */
const NO_RECEIVER_RETRY_GAP_MS = 100;

export type Scope = "read" | "control";

type Answer = Awaited<ReturnType<CommandRouter["send"]>>;

export interface SetLightRequest {
  bridgeId: string;
  lightId: string;
  change: LightPatch;
  commandId?: string | undefined;
}

/** Throws `FORBIDDEN` unless the token grants `scope` (and `bridgeId`, when given). */
export function authorize(
  identity: AppIdentity,
  scope: Scope,
  bridgeId?: string,
): void {
  if (!identity.scopes.has(scope)) {
    throw new RelayError("FORBIDDEN", `token lacks the ${scope} scope`);
  }
  if (bridgeId !== undefined && !identity.bridges.has(bridgeId)) {
    throw new RelayError(
      "FORBIDDEN",
      `token does not grant bridge ${bridgeId}`,
    );
  }
}

/** Bridges held by this process, whose checks need no store read. */
export interface LocalBridges {
  serverId: string;
  /**
   * Returns true when this process has the bridge's connection, its store is
   * reachable, and its copy of the bridge's state contains the light.
   * NOTE: this trusts the local session without reading presence. In the
   * moments after another server takes the bridge over, before this one
   * closes the old socket, a command goes to the old socket and its state
   * write is fenced (`UNAVAILABLE`).
   */
  knowsLight(bridgeId: string, lightId: string): boolean;
}

/**
 * Tells whether a bridge that has no record in the store may still be
 * connected, because Redis lost its data and the relay processes are
 * claiming their bridges again.
 */
export interface NoClaimExplanation {
  isOpen(): Promise<boolean>;
}

/** Explanations of a bridge that reads offline but may be connected. */
export interface OfflineExplanations {
  /** The window after Redis lost its data. Absent in a single process. */
  dataLoss?: NoClaimExplanation;
  /**
   * Tells whether process `serverId` runs but has lost the subscription on
   * which it receives commands, so that its bridges may be connected.
   * Absent in a single process.
   */
  isUnsubscribed?: (serverId: string) => Promise<boolean>;
}

/**
 * Operations that apps request, shared by every transport. Callers have
 * validated the payload and checked grants and rate limits. These check
 * the bridge's presence and route a command to the bridge's process. That
 * process then checks that the light exists, in the contract's order.
 */
export class AppService {
  constructor(
    private readonly store: StateStore,
    private readonly router: CommandRouter,
    private readonly local?: LocalBridges,
    private readonly offline: OfflineExplanations = {},
  ) {}

  async listBridges(identity: AppIdentity): Promise<BridgePresence[]> {
    const records = await this.store.getPresence([...identity.bridges].sort());
    return records.map((record) => ({
      bridgeId: record.bridgeId,
      online: record.connection !== null,
      lastSeen: record.lastSeen,
      epoch: record.epoch,
    }));
  }

  async getBridge(bridgeId: string): Promise<BridgeState> {
    const record = await this.store.getState(bridgeId);
    return {
      bridgeId,
      online: record.connection !== null,
      lastSeen: record.lastSeen,
      epoch: record.epoch,
      version: record.version,
      lights: record.lights,
    };
  }

  /** Sends a command to the bridge, recording its outcome and duration in the metrics. */
  setLight(request: SetLightRequest): Promise<Light> {
    return observeCommand(() => this.sendCommand(request));
  }

  private async sendCommand(request: SetLightRequest): Promise<Light> {
    const { bridgeId, lightId } = request;
    const { commandId } = request;
    if (commandId !== undefined) {
      const remembered = await this.store.getCommandAnswer(bridgeId, commandId);
      if (remembered !== null) {
        rejectReusedCommandId(
          { bridgeId, lightId, change: request.change, commandId },
          remembered.fingerprint,
        );
        return unwrap(answerFromStored(bridgeId, remembered));
      }
    }
    const command: RoutedCommand = {
      bridgeId,
      lightId,
      change: request.change,
      commandId: request.commandId ?? randomUUID(),
      idempotent: request.commandId !== undefined,
    };
    // The process with the bridge's connection checks that the light
    // exists. A command it runs itself needs no resend on a move.
    if (this.local?.knowsLight(bridgeId, lightId) === true) {
      return unwrap(await this.router.send(this.local.serverId, command));
    }
    const serverId = await this.findServer(bridgeId);
    return unwrap(await this.route(serverId, command));
  }

  /**
   * Sends `command` to `serverId`. While no process receives it, looks up
   * the bridge's server again and resends, for up to NO_RECEIVER_RETRY_MS:
   * a crashed worker's bridges reconnect to another one. Only a single
   * Redis server reports that no process received a command (see
   * ServerBus.countsReceivers); on Redis Cluster, `sendFollowingMoves`
   * resends only to a new server of the bridge.
   */
  private async route(
    serverId: string,
    command: RoutedCommand,
  ): Promise<Answer> {
    const retryUntil = performance.now() + NO_RECEIVER_RETRY_MS;
    const moves: Moves = { tried: new Set(), done: false, retryUntil };
    let target = serverId;
    try {
      for (;;) {
        try {
          return await this.sendFollowingMoves(target, command, moves);
        } catch (error) {
          const retry =
            error instanceof NoReceiverError && performance.now() < retryUntil;
          if (!retry) throw await this.explainNoReceiver(error, target);
        }
        await sleep(NO_RECEIVER_RETRY_GAP_MS);
        target = await this.findServer(command.bridgeId);
      }
    } finally {
      moves.done = true;
    }
  }

  /**
   * Returns `error`, or `UNAVAILABLE` in its place when no process received
   * the command because `serverId` runs without its subscription, as while
   * its subscriber reconnects to Redis after its main connection did. The
   * bridge may then be connected there.
   */
  private async explainNoReceiver(
    error: unknown,
    serverId: string,
  ): Promise<unknown> {
    if (!(error instanceof NoReceiverError)) return error;
    if ((await this.offline.isUnsubscribed?.(serverId)) !== true) return error;
    return new RelayError(
      "UNAVAILABLE",
      `bridge ${error.bridgeId}'s server ${serverId} is reconnecting to Redis and cannot receive commands; retry`,
    );
  }

  /**
   * Sends `command` to `serverId`. On Redis Cluster a count of no receiver
   * may hide a delivery, so the reply is awaited. Meanwhile the bridge's
   * presence is read again. Once it names a server not tried yet (a
   * crashed worker's bridge reconnected elsewhere), the command goes there
   * too. The result is the first `ok`, else the resent command's answer. A
   * bridge that got both applies the same change twice, which leaves the
   * same light.
   */
  private async sendFollowingMoves(
    serverId: string,
    command: RoutedCommand,
    moves: Moves,
  ): Promise<Answer> {
    moves.tried.add(serverId);
    let counted: () => void = () => undefined;
    const uncounted = new Promise<undefined>((resolve) => {
      counted = () => resolve(undefined);
    });
    const answer = this.router.send(serverId, command, () => counted());
    const first = await Promise.race([answer, uncounted]);
    if (first !== undefined) return first;
    const moved = await Promise.race([
      answer.then(
        () => null,
        () => null,
      ),
      this.waitForMove(command.bridgeId, answer, moves),
    ]);
    if (moved === null) return answer;
    return firstOk(answer, this.sendFollowingMoves(moved, command, moves));
  }

  /**
   * Reads the bridge's presence every NO_RECEIVER_RETRY_GAP_MS until it
   * names a server not in `moves.tried`, and returns that server. Returns
   * null once `answer` settles, the command is answered, or
   * `moves.retryUntil` passes.
   */
  private async waitForMove(
    bridgeId: string,
    answer: Promise<Answer>,
    moves: Moves,
  ): Promise<string | null> {
    let answered = false;
    const onSettled = (): void => {
      answered = true;
    };
    void answer.then(onSettled, onSettled);
    while (performance.now() < moves.retryUntil) {
      await sleep(NO_RECEIVER_RETRY_GAP_MS);
      if (answered || moves.done) return null;
      // A failed read (Redis Cluster failing over) counts as no move.
      const current = await this.findServer(bridgeId).catch(() => null);
      if (current !== null && !moves.tried.has(current)) return current;
    }
    return null;
  }

  /**
   * Returns the ID of the server with the bridge's connection. Raises
   * `BRIDGE_OFFLINE` when none has it, or `UNAVAILABLE` when the bridge
   * has no record at all while the window after a loss of Redis data is
   * open: its server may not have claimed it again yet.
   */
  private async findServer(bridgeId: string): Promise<string> {
    const [presence] = await this.store.getPresence([bridgeId]);
    const connection = presence?.connection ?? null;
    if (connection !== null) return connection.serverId;
    // A bridge claimed since the data loss, that then disconnected, has
    // its lastSeen recorded, so it is offline for certain.
    const unrecorded =
      presence === undefined ||
      (presence.epoch === 0 && presence.lastSeen === null);
    if (unrecorded && (await this.offline.dataLoss?.isOpen()) === true) {
      throw new RelayError(
        "UNAVAILABLE",
        `bridge ${bridgeId} has no connection recorded because Redis lost its data, and the relay is still restoring its bridges' connections; retry in a few seconds`,
      );
    }
    throw new RelayError("BRIDGE_OFFLINE", `bridge ${bridgeId} is offline`);
  }
}

/** The servers a command went to, and when to stop following its bridge. */
interface Moves {
  tried: Set<string>;
  /** Set once the command has its result, which ends every presence read loop. */
  done: boolean;
  retryUntil: number;
}

/**
 * Resolves with the first `ok` of two answers to one command. Without
 * one, it waits for both and resolves with the resent command's answer,
 * or the original's when the resend failed.
 */
function firstOk(
  original: Promise<Answer>,
  resent: Promise<Answer>,
): Promise<Answer> {
  const outcomes = [original, resent].map((answer) =>
    answer.then(
      (value) => ({ value }),
      (error: unknown) => ({ error }),
    ),
  );
  return new Promise((resolve, reject) => {
    for (const outcome of outcomes) {
      void outcome.then((settled) => {
        if ("value" in settled && settled.value.ok) resolve(settled.value);
      });
    }
    void Promise.all(outcomes).then(([first, second]) => {
      if (second !== undefined && "value" in second) resolve(second.value);
      else if (first !== undefined && "value" in first) resolve(first.value);
      else reject(second?.error ?? first?.error);
    });
  });
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function unwrap(answer: Answer): Light {
  if (answer.ok) return answer.data.light;
  const { code, message, ...rest } = answer.error;
  throw new RelayError(code, message, rest);
}
