/** Engine.IO 4's separator of the packets in one long-polling body. */
export const PACKET_SEPARATOR = "\x1e";

/**
 * An Engine.IO long-polling session driven by hand, so that a test chooses
 * which packets go together in one request body.
 */
export class RawPollingSession {
  private constructor(
    private readonly endpoint: string,
    readonly sid: string,
  ) {}

  /** Opens a session at the relay at `url` and reads its open packet. */
  static async open(url: string): Promise<RawPollingSession> {
    const base = `${url}/socket.io/?EIO=4&transport=polling`;
    const response = await fetch(base);
    const body = await response.text();
    if (!body.startsWith("0")) {
      throw new Error(`expected an Engine.IO open packet, got ${body}`);
    }
    const { sid } = JSON.parse(body.slice(1)) as { sid: string };
    return new RawPollingSession(`${base}&sid=${sid}`, sid);
  }

  /** Sends `packets` in one request body. */
  async post(...packets: string[]): Promise<void> {
    const response = await fetch(this.endpoint, {
      method: "POST",
      body: packets.join(PACKET_SEPARATOR),
      headers: { "content-type": "text/plain;charset=UTF-8" },
    });
    const text = await response.text();
    if (response.status !== 200) {
      throw new Error(`POST answered ${response.status}: ${text}`);
    }
  }

  /** Polls once and returns the packets the relay sent. */
  async poll(): Promise<string[]> {
    const response = await fetch(this.endpoint);
    return (await response.text()).split(PACKET_SEPARATOR);
  }

  /** Polls until a packet matches `match`, and returns it. */
  async next(match: (packet: string) => boolean): Promise<string> {
    for (;;) {
      const found = (await this.poll()).find(match);
      if (found !== undefined) return found;
    }
  }
}
