import { Decoder, Encoder, type Packet } from "socket.io-parser";
import { MAX_TOKEN_LENGTH } from "../auth/verify.ts";

/**
 * Longest CONNECT packet accepted, in characters: a token of the longest
 * accepted length, with room for the namespace and the JSON around it.
 */
export const MAX_CONNECT_PACKET_LENGTH = MAX_TOKEN_LENGTH + 4096;

/** Socket.IO's packet type digit of CONNECT. */
const CONNECT_TYPE = "0";

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
 * A CONNECT packet carries only the namespace and the token, so one longer
 * than `MAX_CONNECT_PACKET_LENGTH` is refused before it is parsed. A
 * refused handshake leaves the connection open, so a client without a
 * token could otherwise have a worker parse 2 MB of JSON again and again.
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
      throw new Error(
        `CONNECT packet of ${packet.length} characters is over the limit of ${MAX_CONNECT_PACKET_LENGTH}`,
      );
    }
    super.add(packet);
  }
}

function rejectUnsafeAckId(packet: Packet): void {
  if (packet.id === undefined || Number.isSafeInteger(packet.id)) return;
  throw new Error(
    `invalid acknowledgement ID ${packet.id}: expected an integer up to ${Number.MAX_SAFE_INTEGER}`,
  );
}

/** The parser for the `parser` option of the Socket.IO server. */
export const jsonOnlyParser = { Encoder, Decoder: JsonOnlyDecoder };
