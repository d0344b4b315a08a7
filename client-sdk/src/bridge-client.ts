import createDebug from "debug";
import pLimit from "p-limit";
import { backoffDelay, type BackoffOptions } from "./backoff.ts";
import {
  RelayConnection,
  type ConnectionState,
  type RetryEvent,
  type StateChangeEvent,
} from "./connection.ts";
import { RelayClientError, toRelayClientError } from "./errors.ts";
import {
  BRIDGE_NAMESPACE,
  type AckSuccess,
  type BridgeToRelayEvents,
  type ErrorCode,
  type Light,
  type LightChange,
  type LightSetCommand,
  type ReasonPayload,
  type RelayToBridgeEvents,
  type ServerInfo,
  type VersionData,
} from "./protocol.ts";
import { RecentAnswers } from "./recent-answers.ts";
import { TypedEmitter } from "./typed-emitter.ts";

const debug = createDebug("relay-sdk:bridge");

/** Longest error message the relay accepts in a bridge's answer. */
const MAX_ANSWER_MESSAGE_LENGTH = 500;

/**
 * Maximum state reports sent and not yet acknowledged. The relay rejects
 * a bridge's requests past 64 not yet acknowledged with `RATE_LIMITED`,
 * so this leaves room for a snapshot and other requests.
 */
export const REPORTS_IN_FLIGHT = 32;

/** Snapshot failures that would fail again if retried with the same state. */
const FINAL_SNAPSHOT_CODES: ReadonlySet<ErrorCode> = new Set<ErrorCode>([
  "INVALID_PAYLOAD",
  "PAYLOAD_TOO_LARGE",
  "FORBIDDEN",
]);

/**
 * A bridge's answer to `light:set`: its light after the change, or a failure
 * with a code of the bridge's own (any string, such as `HANDLER_FAILED`),
 * which the relay passes on to the app in `error.details`.
 */
export type BridgeCommandAnswer =
  | AckSuccess<{ light: Light }>
  | { ok: false; error: { code: string; message: string } };

/** Cause of a snapshot: a (re)connect or the relay's `state:resync`. */
export type SnapshotTrigger = "connect" | "resync";

export interface BridgeClientOptions {
  /** Origin of the relay, e.g. `https://relay.example.com`; the client adds `/bridge`. */
  url: string;
  /** JWT with `role: "bridge"` and the bridge ID as `sub`. */
  token: string;
  /** Returns every light of the bridge; called before each snapshot. */
  getLights: () => Light[] | Promise<Light[]>;
  /**
   * Applies a `light:set` command and returns the answer. An exception is
   * answered as `{ ok: false, error: { code: "HANDLER_FAILED", message } }`.
   * Called once per `commandId`, because the relay can send a command
   * again. A repeat within 60 s of the answer, for the latest 1,000
   * commands, gets the first answer without a second call.
   */
  onCommand: (
    command: LightSetCommand,
  ) => Promise<BridgeCommandAnswer> | BridgeCommandAnswer;
  /**
   * Bounds of the reconnect delay (exponential backoff with full jitter).
   * @default { minDelayMs: 1000, maxDelayMs: 30000 }
   */
  reconnect?: BackoffOptions;
  /**
   * Milliseconds to wait for the relay to acknowledge a request.
   * @default 10000
   */
  ackTimeoutMs?: number;
}

/** Payload of the `synced` event: the relay accepted a snapshot. */
export interface SyncedEvent {
  version: number;
  trigger: SnapshotTrigger;
}

/** Payload of the `error` event: a background operation failed. */
export interface BridgeClientErrorEvent {
  operation: "state:snapshot";
  error: RelayClientError;
}

export interface BridgeClientEvents {
  /** The connection state changed. */
  state: (event: StateChangeEvent) => void;
  /** A reconnect attempt was scheduled. */
  retry: (event: RetryEvent) => void;
  /** A newer connection of the same bridge took over; the client has stopped. */
  replaced: (event: ReasonPayload) => void;
  /** The relay acknowledged a snapshot. */
  synced: (event: SyncedEvent) => void;
  /** A snapshot failed; the client retries unless the relay rejected its content. */
  error: (event: BridgeClientErrorEvent) => void;
}

/** `RelayToBridgeEvents` with the bridge's own error codes allowed in answers. */
type BridgeListenEvents = Omit<RelayToBridgeEvents, "light:set"> & {
  "light:set": (
    command: LightSetCommand,
    ack: (answer: BridgeCommandAnswer) => void,
  ) => void;
};

/**
 * The bridge side of the relay: keeps one connection to the `/bridge`
 * namespace, sends the full light state after every (re)connect and on
 * `state:resync`, answers `light:set` commands and reports local changes.
 *
 * @example
 * const client = new BridgeClient({
 *   url: "https://relay.example.com",
 *   token,
 *   getLights: () => hub.lights(),
 *   onCommand: async ({ lightId, change }) => ({
 *     ok: true,
 *     data: { light: await hub.apply(lightId, change) },
 *   }),
 * });
 * client.on("state", ({ state }) => console.log(state));
 * await client.connect();
 * await client.reportChanges([{ id: lightId, on: { on: false } }]);
 */
export class BridgeClient extends TypedEmitter<BridgeClientEvents> {
  private readonly options: BridgeClientOptions;
  private readonly connection: RelayConnection<
    BridgeListenEvents,
    BridgeToRelayEvents
  >;
  private readonly ackTimeoutMs: number;
  /** Answers by `commandId`, for commands the relay sends again. */
  private readonly commandAnswers = new RecentAnswers<BridgeCommandAnswer>();
  private snapshotInFlight: Promise<void> | undefined;
  private readonly reportSlots = pLimit(REPORTS_IN_FLIGHT);
  private snapshotRetryTimer: ReturnType<typeof setTimeout> | undefined;

  constructor(options: BridgeClientOptions) {
    super();
    this.options = options;
    this.ackTimeoutMs = options.ackTimeoutMs ?? 10_000;
    this.connection = new RelayConnection({
      url: options.url,
      namespace: BRIDGE_NAMESPACE,
      token: options.token,
      transports: ["websocket"],
      reconnect: options.reconnect,
    });
    this.connection.on("state", (event) => this.onStateChange(event));
    this.connection.on("retry", (event) => this.emit("retry", event));
    this.listenToRelay();
  }

  /** Current connection state. */
  get state(): ConnectionState {
    return this.connection.state;
  }

  /**
   * Starts connecting. Resolves once connected; rejects with a
   * RelayClientError when the client becomes `unauthorized`, `replaced` or
   * `closed` first. Network failures do not reject: the client keeps retrying.
   */
  connect(): Promise<void> {
    return this.connection.open();
  }

  /**
   * Sends `state:changed` and resolves with the bridge's new version. Waits
   * for a snapshot in flight first, so the relay has every light. At most
   * REPORTS_IN_FLIGHT reports wait for the relay at once, and later calls
   * are sent in call order as earlier ones are acknowledged. Rejects
   * with a RelayClientError, `UNAVAILABLE` while disconnected; the next
   * snapshot then carries the change, since `getLights` returns it.
   */
  reportChanges(changes: LightChange[]): Promise<VersionData> {
    return this.reportSlots(async () => {
      await this.snapshotInFlight;
      return this.connection.request(
        "state:changed",
        { lights: changes },
        this.ackTimeoutMs,
      );
    });
  }

  /** Returns the identity of the relay process serving this connection. */
  serverInfo(): Promise<ServerInfo> {
    return this.connection.request("relay:info", {}, this.ackTimeoutMs);
  }

  /**
   * Disconnects for good: no reconnect, requests in flight reject, and the
   * remembered command answers are forgotten.
   */
  close(): void {
    this.stopSnapshotRetry();
    this.commandAnswers.clear();
    this.connection.close("closed");
  }

  private listenToRelay(): void {
    this.connection.listen("light:set", (command, ack) => {
      void this.answerCommand(command, ack);
    });
    this.connection.listen("state:resync", ({ reason }) => {
      debug("relay requested a snapshot: %s", reason);
      this.sendSnapshot("resync", 1);
    });
    this.connection.listen("session:replaced", ({ reason }) => {
      debug("session replaced: %s", reason);
      const error = new RelayClientError("UNAVAILABLE", `replaced: ${reason}`);
      this.stopSnapshotRetry();
      this.commandAnswers.clear();
      this.connection.close("replaced", error);
      this.emit("replaced", { reason });
    });
  }

  private onStateChange(event: StateChangeEvent): void {
    if (event.state === "connected") this.sendSnapshot("connect", 1);
    else this.stopSnapshotRetry();
    this.emit("state", event);
  }

  /**
   * Acknowledges `command` with the answer of its `commandId`. The handler
   * runs only for the first arrival of an ID, and a repeat gets the same
   * answer.
   */
  private async answerCommand(
    command: LightSetCommand,
    ack: (answer: BridgeCommandAnswer) => void,
  ): Promise<void> {
    debug("light:set %s for light %s", command.commandId, command.lightId);
    let repeated = true;
    const answer = await this.commandAnswers.run(command.commandId, () => {
      repeated = false;
      return this.runCommand(command);
    });
    if (repeated) {
      debug("light:set %s repeated, answering as before", command.commandId);
    }
    ack(answer);
  }

  /** Calls `onCommand`, turning an exception into a `HANDLER_FAILED` answer. */
  private async runCommand(
    command: LightSetCommand,
  ): Promise<BridgeCommandAnswer> {
    try {
      return await this.options.onCommand(command);
    } catch (error) {
      debug("command handler failed for %s: %O", command.commandId, error);
      const text = error instanceof Error ? error.message : String(error);
      const message = text.slice(0, MAX_ANSWER_MESSAGE_LENGTH) || "failed";
      return { ok: false, error: { code: "HANDLER_FAILED", message } };
    }
  }

  /** Starts a snapshot round; `reportChanges` waits for it. */
  private sendSnapshot(trigger: SnapshotTrigger, attempt: number): void {
    this.stopSnapshotRetry();
    const round = this.snapshotRound(trigger, attempt);
    this.snapshotInFlight = round;
    void round.finally(() => {
      if (this.snapshotInFlight === round) this.snapshotInFlight = undefined;
    });
  }

  private async snapshotRound(
    trigger: SnapshotTrigger,
    attempt: number,
  ): Promise<void> {
    try {
      const lights = await this.options.getLights();
      const { version } = await this.connection.request(
        "state:snapshot",
        { lights },
        this.ackTimeoutMs,
      );
      debug(
        "snapshot of %d lights accepted at version %d",
        lights.length,
        version,
      );
      this.emit("synced", { version, trigger });
    } catch (error) {
      this.onSnapshotFailed(toRelayClientError(error), trigger, attempt);
    }
  }

  /** Retries while connected, unless the relay rejected the content. */
  private onSnapshotFailed(
    error: RelayClientError,
    trigger: SnapshotTrigger,
    attempt: number,
  ): void {
    // After a disconnect the next connect sends a snapshot anyway.
    if (!this.connection.connected) return;
    this.emit("error", { operation: "state:snapshot", error });
    if (FINAL_SNAPSHOT_CODES.has(error.code)) {
      debug("snapshot rejected: %s %s", error.code, error.message);
      return;
    }
    const backoff = this.connection.backoffOptions;
    const delayMs = Math.max(
      error.retryAfterMs ?? 0,
      backoffDelay(attempt, backoff),
    );
    debug(
      "snapshot failed (%s), retry in %d ms",
      error.code,
      Math.round(delayMs),
    );
    this.snapshotRetryTimer = setTimeout(
      () => this.sendSnapshot(trigger, attempt + 1),
      delayMs,
    );
  }

  private stopSnapshotRetry(): void {
    clearTimeout(this.snapshotRetryTimer);
    this.snapshotRetryTimer = undefined;
  }
}
