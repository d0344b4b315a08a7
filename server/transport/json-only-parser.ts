import { Decoder, Encoder } from "socket.io-parser";

/**
 * Socket.IO's packet decoder with binary attachments refused. The stock
 * decoder buffers up to 10 attachments of one packet, each as large as the
 * transport's message limit, before any middleware or handler runs. So a
 * client without a token could make a worker hold about 20 MB per
 * connection. The contract carries JSON only. A packet that announces an
 * attachment fails to decode, and Socket.IO closes the connection.
 */
class JsonOnlyDecoder extends Decoder {
  constructor() {
    super({ maxAttachments: 0 });
  }
}

/** The parser for the `parser` option of the Socket.IO server. */
export const jsonOnlyParser = { Encoder, Decoder: JsonOnlyDecoder };
