import type {
  LightSetAnswer,
  LightSetCommand,
} from "../../client-sdk/src/protocol.ts";
import { RelayError, toErrorBody } from "../errors.ts";
import type { Logger } from "../logger.ts";
import {
  bridgeRefusalAnswerSchema,
  bridgeSuccessAnswerSchema,
  lightSchema,
} from "../protocol/schemas.ts";
import { describeFirstIssue } from "../protocol/validate.ts";
import { canonicalLight } from "../state/lights.ts";
import type { StateStore, StoredCommandAnswer } from "../state/store.ts";
import {
  awaitsResyncSnapshot,
  type BridgeSession,
  type BridgeSessions,
} from "./bridge-sessions.ts";
import type { CommandAnswer, RoutedCommand } from "./command-router.ts";
import { setInputFirstTimeout } from "./input-first-timeout.ts";
import { FencedWrite, type StateWriter } from "./state-writer.ts";
import { UnansweredCommands } from "./unanswered-commands.ts";
import {
  commandFingerprint,
  isSameCommand,
  rejectReusedCommandId,
  reusedCommandIdError,
} from "./command-fingerprint.ts";

/** How long a bridge's answer is remembered for a repeated `commandId`, in ms. */
export const COMMAND_ANSWER_TTL_MS = 60_000;

/**
 * How long after its timeout a command's answer is still read, in ms: the
 * longest stop of this process after which a bridge's answer that arrived
 * in time is applied. The worker watchdog kills a worker silent for 30 s
 * at its default settings.
 */
const ANSWER_STALL_GRACE_MS = 30_000;

/** Converts a remembered answer into the acknowledgement an app receives. */
export function answerFromStored(
  bridgeId: string,
  stored: StoredCommandAnswer,
): CommandAnswer {
  if (stored.ok) return { ok: true, data: { light: stored.light } };
  const message =
    stored.details.code === "INVALID_ANSWER"
      ? `bridge ${bridgeId} sent an invalid answer: ${stored.details.message}`
      : `bridge ${bridgeId} refused the command: ${stored.details.message}`;
  return {
    ok: false,
    error: { code: "BRIDGE_ERROR", message, details: stored.details },
  };
}

/**
 * Executes commands on the process that holds the bridge: sends `light:set`
 * to the bridge socket, checks its answer, applies the answered light as a
 * state change, and remembers the answer under its `commandId`. A repeat
 * of a command still in flight waits for the same answer.
 */
export class CommandExecutor {
  private readonly inFlight = new Map<string, RunningCommand>();
  /**
   * Commands that timed out while their bridge may still answer, by key,
   * until the late answer is applied or its wait ends.
   */
  private readonly awaitingLate = new Map<
    string,
    { command: RoutedCommand; timer: NodeJS.Timeout }
  >();
  private readonly unanswered: UnansweredCommands;

  constructor(
    private readonly sessions: BridgeSessions,
    private readonly store: StateStore,
    private readonly writer: StateWriter,
    private readonly timeoutMs: number,
    private readonly logger: Logger,
    maxUnansweredPerBridge: number,
    /** Reports false while the store is unreachable, so that no cached copy is trusted. */
    private readonly storeReady: () => boolean = () => true,
  ) {
    this.unanswered = new UnansweredCommands(maxUnansweredPerBridge);
  }

  execute = (command: RoutedCommand): Promise<CommandAnswer> => {
    const key = commandKey(command);
    const running = this.inFlight.get(key);
    if (running !== undefined) return joinRunning(running, command);
    // The bridge may still apply the timed-out command, so another command
    // under its ID would reach a bridge that takes it for a duplicate.
    const late = this.awaitingLate.get(key)?.command;
    if (late !== undefined && !isSameCommand(late, command))
      return reusedCommandIdAnswer(command);
    const answer = this.run(command).catch((error: unknown) => {
      if (!(error instanceof RelayError)) {
        this.logger.error(
          {
            err: error,
            bridgeId: command.bridgeId,
            commandId: command.commandId,
          },
          "command failed",
        );
      }
      return { ok: false as const, error: toErrorBody(error) };
    });
    this.inFlight.set(key, { command, answer });
    void answer.finally(() => this.inFlight.delete(key));
    return answer;
  };

  private async run(command: RoutedCommand): Promise<CommandAnswer> {
    const timeoutMs = this.timeLeft(command);
    const idempotent = command.idempotent ?? true;
    const remembered = idempotent
      ? await this.store.getCommandAnswer(command.bridgeId, command.commandId)
      : null;
    if (remembered !== null) {
      rejectReusedCommandId(command, remembered.fingerprint);
      return answerFromStored(command.bridgeId, remembered);
    }
    const session = this.sessions.get(command.bridgeId);
    if (session === undefined) throw this.noSessionError(command.bridgeId);
    await this.checkLight(session, command.lightId);
    const stored = this.sendToBridge(
      session,
      {
        commandId: command.commandId,
        lightId: command.lightId,
        change: command.change,
      },
      timeoutMs,
      (raw) => this.interpret(session, command, raw),
      (late) => void this.applyLateAnswer(command, late),
    );
    let answer: StoredCommandAnswer;
    try {
      answer = await stored;
    } catch (error) {
      if (error instanceof RelayError && error.code === "TIMEOUT")
        this.awaitLateAnswer(command);
      throw error;
    }
    return this.settleAnswer(command, answer);
  }

  /**
   * Records a command that timed out while its bridge may still answer,
   * for as long as Socket.IO waits for that answer, so that another
   * command under its ID is rejected meanwhile.
   */
  private awaitLateAnswer(command: RoutedCommand): void {
    if (!(command.idempotent ?? true)) return;
    const key = commandKey(command);
    clearTimeout(this.awaitingLate.get(key)?.timer);
    const timer = setTimeout(
      () => this.stopAwaitingLate(command),
      ANSWER_STALL_GRACE_MS,
    );
    timer.unref();
    this.awaitingLate.set(key, { command, timer });
  }

  private stopAwaitingLate(command: RoutedCommand): void {
    const key = commandKey(command);
    const entry = this.awaitingLate.get(key);
    if (entry?.command !== command) return;
    clearTimeout(entry.timer);
    this.awaitingLate.delete(key);
  }

  /**
   * Returns the error for a command to a bridge without a session here. A
   * restored claim that this process holds for another relay to take over
   * names a bridge that may be connected there, so that is `UNAVAILABLE`.
   */
  private noSessionError(bridgeId: string): RelayError {
    if (this.sessions.holdsRestoredClaim(bridgeId)) {
      return new RelayError(
        "UNAVAILABLE",
        `bridge ${bridgeId} may be connected to another relay that has not claimed it again since Redis data was replaced; retry`,
      );
    }
    return new RelayError("BRIDGE_OFFLINE", `bridge ${bridgeId} is offline`);
  }

  /** Remembers the stored answer for repeats of the command, and returns it. */
  private async settleAnswer(
    command: RoutedCommand,
    stored: StoredCommandAnswer,
  ): Promise<CommandAnswer> {
    if (command.idempotent ?? true) await this.remember(command, stored);
    return answerFromStored(command.bridgeId, stored);
  }

  /**
   * Finishes an answer that came after the command's timeout. The app was
   * told `TIMEOUT`, but the bridge did apply the command, so its light is
   * stored and broadcast, and a repeat of the command gets the answer.
   */
  private async applyLateAnswer(
    command: RoutedCommand,
    stored: Promise<StoredCommandAnswer>,
  ): Promise<void> {
    const ids = { bridgeId: command.bridgeId, commandId: command.commandId };
    try {
      const answer = await this.settleAnswer(command, await stored);
      this.logger.info(
        { ...ids, ok: answer.ok },
        "applied a bridge's answer that came after its command's timeout",
      );
    } catch (error) {
      this.logger.warn(
        { err: error, ...ids },
        "could not apply a bridge's answer that came after its command's timeout",
      );
    } finally {
      this.stopAwaitingLate(command);
    }
  }

  /**
   * Returns true when this process has the bridge's connection, the store
   * is reachable, and this process's copy of the bridge's lights contains
   * the light, so that a command to it needs no store read first.
   */
  knowsLight(bridgeId: string, lightId: string): boolean {
    const session = this.sessions.get(bridgeId);
    return session !== undefined && this.knowsSessionLight(session, lightId);
  }

  private knowsSessionLight(session: BridgeSession, lightId: string): boolean {
    return this.storeReady() && this.writer.knowsLight(session, lightId);
  }

  /**
   * Raises `NOT_FOUND` unless the bridge has the light. This process's
   * copy of the bridge's lights usually decides it without a store read.
   * It runs after the session check, because `BRIDGE_OFFLINE` comes first
   * in the contract's order. While the store is unreachable the read
   * fails, so no command reaches a bridge whose answer could not be stored.
   * The read is not cached, so the answer's write reads the light again
   * and notices a store that lost its data meanwhile. A light missing
   * while the bridge resends its lights after Redis lost them is
   * `UNAVAILABLE`, since the bridge may have it.
   */
  private async checkLight(
    session: BridgeSession,
    lightId: string,
  ): Promise<void> {
    if (this.knowsSessionLight(session, lightId)) return;
    const stored = await this.store.getLights(session.bridgeId, [lightId]);
    if ((stored.lights[0] ?? null) !== null) return;
    if (awaitsResyncSnapshot(session)) {
      throw new RelayError(
        "UNAVAILABLE",
        `light ${JSON.stringify(lightId)} of bridge ${session.bridgeId} is not known yet: Redis lost the bridge's lights and the relay is waiting for the bridge to send them again; retry in a moment`,
      );
    }
    throw new RelayError(
      "NOT_FOUND",
      `light ${JSON.stringify(lightId)} not found on bridge ${session.bridgeId}`,
    );
  }

  /**
   * Stores the bridge's answer for repeats of the command, with the
   * command's fingerprint, which tells a repeat from another command
   * under the same `commandId`. A failure is logged and leaves the answer
   * standing: the bridge has answered, and a repeat then reaches the
   * bridge again.
   */
  private async remember(
    command: RoutedCommand,
    stored: StoredCommandAnswer,
  ): Promise<void> {
    try {
      await this.store.putCommandAnswer(
        command.bridgeId,
        command.commandId,
        { ...stored, fingerprint: commandFingerprint(command) },
        COMMAND_ANSWER_TTL_MS,
      );
    } catch (error) {
      this.logger.warn(
        {
          err: error,
          bridgeId: command.bridgeId,
          commandId: command.commandId,
        },
        "could not remember a command's answer for its repeats",
      );
    }
  }

  /**
   * Returns the time the bridge has to answer: the command timeout, or less
   * when the origin stops waiting sooner. The router drops a command that
   * arrives after its deadline; one whose deadline passed since then gets
   * `TIMEOUT` here, so the bridge never applies a command that its app saw
   * fail.
   */
  private timeLeft(command: RoutedCommand): number {
    if (command.deadline === undefined) return this.timeoutMs;
    const leftMs = command.deadline - Date.now();
    if (leftMs > 0) return Math.min(this.timeoutMs, leftMs);
    throw new RelayError(
      "TIMEOUT",
      `command for bridge ${command.bridgeId} reached its deadline before the bridge`,
    );
  }

  /**
   * Sends `command` to the bridge, waits `timeoutMs` for its answer, and
   * resolves with what `interpret` makes of it. The timeout reads waiting
   * input first, so an answer that came in time while this process was
   * stopped still counts. Socket.IO's own ack timeout,
   * ANSWER_STALL_GRACE_MS longer, frees the callback of a bridge that never
   * answers. An answer that comes between the two is interpreted too, and
   * goes to `onLate`.
   */
  private sendToBridge<T>(
    session: BridgeSession,
    command: LightSetCommand,
    timeoutMs: number,
    interpret: (answer: unknown) => Promise<T>,
    onLate: (interpreted: Promise<T>) => void,
  ): Promise<T> {
    const { socket, bridgeId } = session;
    // Not `socket.disconnected`: a socket whose handshake is still being
    // completed reads as disconnected, and Socket.IO delivers a command
    // sent to it once the handshake ends.
    if (socket.conn.readyState !== "open") {
      throw new RelayError("BRIDGE_OFFLINE", `bridge ${bridgeId} disconnected`);
    }
    return new Promise((resolve, reject) => {
      let settled = false;
      const settle = (
        error: RelayError | null,
        interpreted?: Promise<T>,
      ): void => {
        settled = true;
        cancelTimeout();
        sent.stopWaiting();
        if (error === null) resolve(interpreted as Promise<T>);
        else reject(error);
      };
      const callbackMs = timeoutMs + ANSWER_STALL_GRACE_MS;
      const sent = this.unanswered.admit(socket, bridgeId, callbackMs, settle);
      const cancelTimeout = setInputFirstTimeout(() => {
        settle(
          new RelayError(
            "TIMEOUT",
            `bridge ${bridgeId} did not answer within ${timeoutMs} ms`,
          ),
        );
      }, timeoutMs);
      socket
        .timeout(callbackMs)
        .emit(
          "light:set",
          command,
          (error: Error | null, answer: LightSetAnswer) => {
            sent.acknowledged();
            if (error !== null) return;
            // Socket.IO runs an acknowledgement one tick before the listeners
            // of an event read with it, which it dispatches a tick later
            // when every socket middleware calls next() at once, as the
            // drain's does. Interpreting the answer a tick later too queues
            // its write in the order the bridge sent it, among its
            // snapshots and changes. An asynchronous socket middleware
            // would break that order.
            const interpreted = new Promise<T>((done) =>
              process.nextTick(() => done(interpret(answer))),
            );
            if (settled) onLate(interpreted);
            else settle(null, interpreted);
          },
        );
    });
  }

  /** Turns the bridge's raw answer into what is remembered and returned. */
  private async interpret(
    session: BridgeSession,
    command: RoutedCommand,
    raw: unknown,
  ): Promise<StoredCommandAnswer> {
    const ok = (raw as { ok?: unknown } | null)?.ok;
    if (ok === false) {
      const refusal = bridgeRefusalAnswerSchema.safeParse(raw);
      if (!refusal.success)
        return invalidAnswer(describeFirstIssue(refusal.error));
      return { ok: false, details: refusal.data.error };
    }
    const parsed = bridgeSuccessAnswerSchema.safeParse(raw);
    if (!parsed.success) {
      const reason =
        ok === true
          ? describeFirstIssue(parsed.error)
          : "invalid ok: must be true or false";
      return invalidAnswer(reason);
    }
    const light = parsed.data.data.light;
    if (light.id !== command.lightId) {
      return invalidAnswer(
        `answer names light ${JSON.stringify(light.id)} instead of ${JSON.stringify(command.lightId)}`,
      );
    }
    try {
      const result = await this.writer.applyChanges(session, [light]);
      const stored = result.lights[0];
      if (stored === undefined)
        throw new Error("state writer returned no light");
      return { ok: true, light: stored };
    } catch (error) {
      return await this.answerUnstored(session, command, light, error);
    }
  }

  /**
   * Answers a command whose light could not be stored after the bridge
   * applied it. A write fenced by a newer connection of the bridge answers
   * `ok` with the bridge's light: that connection's snapshot stores it,
   * and an error would report an applied command as failed. A light that
   * the bridge's stored state no longer has (a snapshot removed it while
   * the command was out) is `NOT_FOUND`, as a repeat would be. Any other
   * failure stays `UNAVAILABLE`, since the answer's light must be the
   * stored one, with a message that the bridge applied the command.
   * Sending it again is safe: a change replaces the fields it carries.
   */
  private async answerUnstored(
    session: BridgeSession,
    command: RoutedCommand,
    answered: unknown,
    error: unknown,
  ): Promise<StoredCommandAnswer> {
    if (!(error instanceof RelayError)) throw error;
    const ids = { bridgeId: session.bridgeId, commandId: command.commandId };
    const whole = lightSchema.safeParse(answered);
    if (error instanceof FencedWrite && whole.success) {
      this.logger.info(
        ids,
        "a newer connection of the bridge fenced the light of an applied command, answering with the bridge's light",
      );
      return { ok: true, light: canonicalLight(whole.data) };
    }
    if (error.code === "NOT_FOUND" && (await this.stateHasVersion(session))) {
      this.logger.info(
        { ...ids, lightId: command.lightId },
        "the bridge answered a command for a light its stored state no longer has",
      );
      throw new RelayError(
        "NOT_FOUND",
        `bridge ${session.bridgeId} answered for light ${JSON.stringify(command.lightId)}, which its last snapshot removed`,
      );
    }
    this.logger.warn(
      { err: error, ...ids },
      "could not store the light of a command the bridge applied",
    );
    throw new RelayError(
      "UNAVAILABLE",
      `bridge ${session.bridgeId} applied the command, but the relay could not store its light (${error.message}); sending it again is safe`,
    );
  }

  /**
   * Returns true when the store contains a state for the bridge. After Redis
   * lost its data, a light reads as unknown at version 0 until the
   * bridge's next snapshot, and a repeat of the command can then succeed.
   */
  private async stateHasVersion(session: BridgeSession): Promise<boolean> {
    try {
      const { version } = await this.store.getLights(session.bridgeId, []);
      return version > 0;
    } catch {
      return false;
    }
  }
}

/** A command in flight and the promise of its answer, which repeats of it join. */
export interface RunningCommand {
  command: RoutedCommand;
  answer: Promise<CommandAnswer>;
}

/** Returns the key of a command: its bridge and its `commandId`. */
export function commandKey(command: RoutedCommand): string {
  return `${command.bridgeId}\n${command.commandId}`;
}

/**
 * Returns the answer of `running` for a repeat of its command, and an
 * `INVALID_PAYLOAD` answer for another command under the same `commandId`.
 */
export function joinRunning(
  running: RunningCommand,
  command: RoutedCommand,
): Promise<CommandAnswer> {
  if (isSameCommand(running.command, command)) return running.answer;
  return reusedCommandIdAnswer(command);
}

/** Returns the `INVALID_PAYLOAD` answer of a command that reuses another command's `commandId`. */
function reusedCommandIdAnswer(command: RoutedCommand): Promise<CommandAnswer> {
  const error = reusedCommandIdError(command);
  return Promise.resolve({ ok: false, error: toErrorBody(error) });
}

function invalidAnswer(message: string): StoredCommandAnswer {
  return { ok: false, details: { code: "INVALID_ANSWER", message } };
}
