/**
 * Client SDK of the bridge relay: `BridgeClient` for bridge firmware,
 * `AppClient` for apps, and the wire contract's types and helpers.
 */

export {
  AppClient,
  type AppClientErrorEvent,
  type AppClientEvents,
  type AppClientOptions,
  type ResyncedEvent,
  type SetLightOptions,
} from "./app-client.ts";
export {
  BridgeClient,
  type BridgeClientErrorEvent,
  type BridgeClientEvents,
  type BridgeClientOptions,
  type BridgeCommandAnswer,
  type SnapshotTrigger,
  type SyncedEvent,
} from "./bridge-client.ts";
export {
  DEFAULT_BACKOFF,
  backoffDelay,
  type BackoffOptions,
} from "./backoff.ts";
export {
  isFinalState,
  type ConnectionState,
  type FinalState,
  type RetryEvent,
  type StateChangeEvent,
  type TransportName,
} from "./connection.ts";
export {
  RelayClientError,
  isErrorCode,
  type RelayClientErrorCode,
  type RelayClientErrorOptions,
} from "./errors.ts";
export * from "./protocol.ts";
