import { createHash } from "node:crypto";
import type { LightPatch } from "../../client-sdk/src/protocol.ts";
import { RelayError } from "../errors.ts";
import { canonicalPatch } from "../state/lights.ts";

/** The parts of a command that its `commandId` names. */
export interface IdentifiedCommand {
  bridgeId: string;
  commandId: string;
  lightId: string;
  change: LightPatch;
}

/**
 * Returns the fingerprint of a command: the SHA-256, in base64url, of its
 * light ID and its change in canonical JSON. Two commands have the same
 * fingerprint when they set the same fields of the same light to the
 * same values, in whatever key order they were sent.
 */
export function commandFingerprint(command: IdentifiedCommand): string {
  const canonical = JSON.stringify([
    command.lightId,
    canonicalPatch(command.change),
  ]);
  return createHash("sha256").update(canonical).digest("base64url");
}

/**
 * Raises `INVALID_PAYLOAD` when `command` reuses the `commandId` of another
 * command, whose fingerprint is `firstFingerprint`. A repeat of the same
 * command passes, and so does an answer without a fingerprint, which an
 * older relay stored.
 */
export function rejectReusedCommandId(
  command: IdentifiedCommand,
  firstFingerprint: string | undefined,
): void {
  if (firstFingerprint === undefined) return;
  if (commandFingerprint(command) === firstFingerprint) return;
  throw reusedCommandIdError(command);
}

/** Returns true when `repeat` is the same command as `first`: the same light and an equal change. */
export function isSameCommand(
  first: IdentifiedCommand,
  repeat: IdentifiedCommand,
): boolean {
  return commandFingerprint(first) === commandFingerprint(repeat);
}

/** Builds the `INVALID_PAYLOAD` error of a `commandId` that another command on the bridge already used. */
export function reusedCommandIdError(command: IdentifiedCommand): RelayError {
  return new RelayError(
    "INVALID_PAYLOAD",
    `invalid commandId: ${JSON.stringify(command.commandId)} was already used for another command on bridge ${command.bridgeId} (another light or another change); send each different command with a new commandId`,
  );
}
