import { Decoder, Encoder, PacketType, type Packet } from "socket.io-parser";
import { MAX_TOKEN_LENGTH } from "../auth/verify.ts";

/**
 * Longest CONNECT packet accepted, in characters: a token of the longest
 * accepted length, with room for the namespace and the JSON around it.
 */
export const MAX_CONNECT_PACKET_LENGTH = MAX_TOKEN_LENGTH + 4096;

/** Socket.IO's packet type digit of CONNECT. */
const CONNECT_TYPE = "0";

/**
 * Maximum length of the namespace read from the start of an oversized
 * CONNECT packet, in characters. The relay serves only short names, and
 * Socket.IO rejects a CONNECT to a namespace the relay does not serve.
 */
const MAX_NAMESPACE_LENGTH = 256;

/**
 * Key of the handshake auth that the decoder puts in place of an oversized
 * CONNECT packet's payload. Its value is the packet's length in characters.
 * It is a symbol, so no client can send it in JSON.
 */
const OVERSIZED_CONNECT = Symbol("oversized CONNECT packet length");

/**
 * Socket.IO's packet decoder with binary attachments refused. The stock
 * decoder buffers up to 10 attachments of one packet, each as large as the
 * transport's message limit, before any middleware or handler runs. So a
 * client without a token could make a worker hold about 20 MB per
 * connection. The contract carries JSON only. A packet that announces an
 * attachment fails to decode, and Socket.IO closes the connection.
 *
 * A packet's acknowledgement ID must be a safe integer. The stock decoder
 * reads any run of digits as a number, and acknowledged a packet with the ID
 * 99999999999999999999999 as `1e+23`.
 *
 * A CONNECT packet carries only the namespace and the token, so the JSON
 * of one longer than `MAX_CONNECT_PACKET_LENGTH` is never parsed. A
 * rejected handshake leaves the connection open, so a client without a
 * token could otherwise have a worker parse 2 MB of JSON again and again.
 * The decoder passes on a CONNECT for the same namespace whose auth
 * carries only the packet's length, and the handshake middleware rejects
 * it (see `oversizedConnectLength`), so the client gets `connect_error`.
 */
class JsonOnlyDecoder extends Decoder {
  constructor() {
    super({ maxAttachments: 0 });
    // Registered before Socket.IO's own listener, so the throw reaches the
    // caller of `add`, which closes the connection.
    this.on("decoded", rejectUnsafeAckId);
  }

  override add(packet: unknown): void {
    if (
      typeof packet === "string" &&
      packet.startsWith(CONNECT_TYPE) &&
      packet.length > MAX_CONNECT_PACKET_LENGTH
    ) {
      this.emitReserved("decoded", oversizedConnect(packet));
      return;
    }
    super.add(packet);
  }
}

/**
 * Builds the CONNECT packet that replaces `packet`, which is over
 * `MAX_CONNECT_PACKET_LENGTH`, without parsing its payload. The namespace
 * is read as socket.io-parser 4.2 reads it: from a leading `/` up to the
 * first comma, or `/` when the packet starts with no `/`. Throws, so
 * Socket.IO closes the connection, when no comma ends the namespace within
 * `MAX_NAMESPACE_LENGTH` characters.
 */
function oversizedConnect(packet: string): Packet {
  let nsp = "/";
  if (packet.charAt(1) === "/") {
    // Only the prefix is searched, so a packet without a comma is not read
    // to its end.
    const end = packet.slice(0, MAX_NAMESPACE_LENGTH + 2).indexOf(",");
    if (end === -1) {
      throw new Error(
        `CONNECT packet of ${packet.length} characters is over the limit of ${MAX_CONNECT_PACKET_LENGTH}, and its namespace is longer than ${MAX_NAMESPACE_LENGTH} characters`,
      );
    }
    nsp = packet.slice(1, end);
  }
  return {
    type: PacketType.CONNECT,
    nsp,
    data: { [OVERSIZED_CONNECT]: packet.length },
  };
}

/**
 * Returns the length in characters of the oversized CONNECT packet whose
 * payload `auth` replaces, or undefined when `auth` came from a packet within
 * `MAX_CONNECT_PACKET_LENGTH`.
 */
export function oversizedConnectLength(auth: unknown): number | undefined {
  if (typeof auth !== "object" || auth === null) return undefined;
  const length = (auth as { [OVERSIZED_CONNECT]?: unknown })[OVERSIZED_CONNECT];
  return typeof length === "number" ? length : undefined;
}

function rejectUnsafeAckId(packet: Packet): void {
  if (packet.id === undefined || Number.isSafeInteger(packet.id)) return;
  throw new Error(
    `invalid acknowledgement ID ${packet.id}: expected an integer up to ${Number.MAX_SAFE_INTEGER}`,
  );
}

/** The parser for the `parser` option of the Socket.IO server. */
export const jsonOnlyParser = { Encoder, Decoder: JsonOnlyDecoder };
