import assert from "node:assert/strict";
import { pino } from "pino";
import { UnsubscribedMarker } from "../server/messaging/unsubscribed-marker.ts";
import type { ConnectionState } from "../server/redis/connection-state.ts";

/** A connection state whose events the test fires. */
class FakeState implements ConnectionState {
  ready = true;
  private readonly reconnected: (() => void)[] = [];
  private readonly reconnecting: (() => void)[] = [];

  isReady(): boolean {
    return this.ready;
  }

  onReconnected(listener: () => void): void {
    this.reconnected.push(listener);
  }

  onReconnecting(listener: () => void): void {
    this.reconnecting.push(listener);
  }

  drop(): void {
    this.ready = false;
    for (const listener of this.reconnecting) listener();
  }

  restore(): void {
    this.ready = true;
    for (const listener of this.reconnected) listener();
  }
}

/** A marker client that records its commands, and fails them while `down`. */
class RecordingClient {
  down = false;
  readonly commands: string[] = [];

  async exists(): Promise<number> {
    return 0;
  }

  async set(key: string): Promise<unknown> {
    this.commands.push(`set ${key}`);
    if (this.down) throw new Error("the client is offline");
    return "OK";
  }

  async del(key: string): Promise<number> {
    this.commands.push(`del ${key}`);
    if (this.down) throw new Error("the client is offline");
    return 1;
  }
}

describe("unsubscribed marker", () => {
  const KEY = "relay:server:server-a:unsubscribed";
  let client: RecordingClient;
  let main: FakeState;
  let subscriber: FakeState;
  let marker: UnsubscribedMarker;

  beforeEach(() => {
    client = new RecordingClient();
    main = new FakeState();
    subscriber = new FakeState();
    marker = new UnsubscribedMarker(
      client,
      "relay",
      "server-a",
      pino({ level: "silent" }),
    );
    marker.watch(main, subscriber);
  });

  afterEach(() => marker.stop());

  it("marks a lost subscriber and clears it on return", () => {
    subscriber.drop();
    subscriber.restore();

    assert.deepEqual(client.commands, [`set ${KEY}`, `del ${KEY}`]);
  });

  it("marks again when main returns first", () => {
    // Both connections drop, so the first write fails.
    client.down = true;
    main.drop();
    subscriber.drop();
    client.down = false;
    main.restore();

    assert.deepEqual(client.commands, [`set ${KEY}`, `set ${KEY}`]);
  });

  it("writes nothing when main returns after the subscriber", () => {
    main.drop();
    main.restore();

    assert.deepEqual(client.commands, []);
  });
});
