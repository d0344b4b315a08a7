import express, { type Express } from "express";
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { pino } from "pino";
import {
  SRGB_GAMUT,
  clipToGamut,
  mirekToXy,
  swatchColour,
  toHex,
  xyToSrgb,
  type Rgb,
} from "../client-sdk/dashboard/colour.ts";
import {
  CommandThrottle,
  type ThrottleClock,
} from "../client-sdk/dashboard/command-throttle.ts";
import { compareSortKeys } from "../client-sdk/dashboard/name-order.ts";
import { tokenGrantsControl } from "../client-sdk/dashboard/token-scope.ts";
import { describeCommandError } from "../client-sdk/dashboard/light-card.ts";
import { OptimisticLight } from "../client-sdk/dashboard/optimistic-light.ts";
import { formatRelativeTime } from "../client-sdk/dashboard/relative-time.ts";
import {
  TOKEN_STORAGE_KEY,
  clearToken,
  isTokenShaped,
  readStoredToken,
  takeTokenFromFragment,
  type TokenEnvironment,
} from "../client-sdk/dashboard/token-store.ts";
import { RelayClientError, type Light } from "../client-sdk/src/index.ts";
import { serveDashboard } from "../server/http/app.ts";

/** Asserts each component of `actual` is within `tolerance` of `expected`. */
function assertRgb(actual: Rgb, expected: Rgb, tolerance = 1): void {
  for (const channel of ["red", "green", "blue"] as const) {
    assert.ok(
      Math.abs(actual[channel] - expected[channel]) <= tolerance,
      `${channel} is ${actual[channel]}, expected ${expected[channel]} ± ${tolerance}`,
    );
  }
}

describe("dashboard colour conversion", () => {
  it("maps the D65 white point to white", () => {
    assertRgb(xyToSrgb({ x: 0.3127, y: 0.329 }, 100), {
      red: 255,
      green: 255,
      blue: 255,
    });
  });

  it("maps the sRGB primaries to pure channels", () => {
    assertRgb(xyToSrgb(SRGB_GAMUT.red, 100), { red: 255, green: 0, blue: 0 });
    assertRgb(xyToSrgb(SRGB_GAMUT.green, 100), { red: 0, green: 255, blue: 0 });
    assertRgb(xyToSrgb(SRGB_GAMUT.blue, 100), { red: 0, green: 0, blue: 255 });
  });

  it("applies brightness in linear light", () => {
    // Half the linear light of white encodes to 0.7354 with the sRGB curve.
    const half = xyToSrgb({ x: 0.3127, y: 0.329 }, 50);
    assertRgb(half, { red: 188, green: 188, blue: 188 });
    assert.deepEqual(xyToSrgb({ x: 0.3127, y: 0.329 }, 0), {
      red: 0,
      green: 0,
      blue: 0,
    });
  });

  it("clamps brightness outside 0 to 100", () => {
    assert.deepEqual(
      xyToSrgb({ x: 0.4, y: 0.4 }, 250),
      xyToSrgb({ x: 0.4, y: 0.4 }, 100),
    );
    assert.deepEqual(xyToSrgb({ x: 0.4, y: 0.4 }, -5), {
      red: 0,
      green: 0,
      blue: 0,
    });
  });

  it("keeps a point inside the gamut", () => {
    const inside = { x: 0.35, y: 0.35 };
    assert.deepEqual(clipToGamut(inside), inside);
  });

  it("clips a point beyond an edge", () => {
    // Hue gamut C's deep blue lies below the sRGB blue-red edge.
    const clipped = clipToGamut({ x: 0.1532, y: 0.0476 });
    assert.ok(
      clipped.y >= 0.06 - 1e-9,
      `y ${clipped.y} is on or above the edge`,
    );
    const rgb = xyToSrgb({ x: 0.1532, y: 0.0476 }, 100);
    assert.ok(rgb.blue > 200, `blue ${rgb.blue} dominates`);
    assert.ok(rgb.red < 60, `red ${rgb.red} stays low`);
  });

  it("clips a point beyond a corner", () => {
    assert.deepEqual(clipToGamut({ x: 0.72, y: 0.28 }), SRGB_GAMUT.red);
  });

  it("keeps every component in range", () => {
    const points = [
      { x: 0.7, y: 0.3 },
      { x: 0.17, y: 0.7 },
      { x: 0.08, y: 0.15 },
      { x: 0.5974, y: 0.36 },
      { x: 0.01, y: 0.01 },
    ];
    for (const point of points) {
      for (const brightness of [1, 37.5, 100]) {
        const rgb = xyToSrgb(point, brightness);
        for (const value of Object.values(rgb)) {
          assert.ok(
            Number.isInteger(value) && value >= 0 && value <= 255,
            `${JSON.stringify(point)} at ${brightness} % gave ${JSON.stringify(rgb)}`,
          );
        }
      }
    }
  });

  it("follows the Planckian locus", () => {
    // Black-body chromaticities: 6500 K (about D65) and 2856 K (CIE illuminant A).
    const cases = [
      { mirek: 1e6 / 6500, x: 0.3135, y: 0.3237 },
      { mirek: 1e6 / 2856, x: 0.4476, y: 0.4074 },
    ];
    for (const { mirek, x, y } of cases) {
      const point = mirekToXy(mirek);
      assert.ok(
        Math.abs(point.x - x) < 0.002,
        `x ${point.x} for ${mirek} mirek`,
      );
      assert.ok(
        Math.abs(point.y - y) < 0.002,
        `y ${point.y} for ${mirek} mirek`,
      );
    }
  });

  it("clamps mirek outside the fit", () => {
    assert.deepEqual(mirekToXy(10), mirekToXy(40));
    assert.deepEqual(mirekToXy(5000), mirekToXy(1e6 / 1667));
  });

  it("formats hex colours", () => {
    assert.equal(toHex({ red: 255, green: 8, blue: 0 }), "#ff0800");
  });

  it("picks the swatch source by mode", () => {
    const base: Light = { id: "a", type: "light", on: { on: true } };
    const colour = swatchColour({
      ...base,
      color: { xy: SRGB_GAMUT.red },
      color_temperature: { mirek: null },
    });
    assert.equal(colour, "#ff0000");
    const warm = swatchColour({
      ...base,
      color: { xy: SRGB_GAMUT.blue },
      color_temperature: { mirek: 500 },
    });
    const [red, , blue] = [1, 3, 5].map((at) =>
      Number.parseInt(warm.slice(at, at + 2), 16),
    );
    assert.ok(red! > blue!, `a 2000 K light is warm, got ${warm}`);
    assert.equal(
      swatchColour({ ...base, dimming: { brightness: 0 } }),
      "#000000",
    );
  });
});

/** A clock whose time moves only when advance() is called. */
class FakeClock implements ThrottleClock {
  private time = 0;
  private timers: { at: number; callback: () => void; id: number }[] = [];
  private nextId = 1;

  now(): number {
    return this.time;
  }

  setTimeout(callback: () => void, delayMs: number): unknown {
    const id = this.nextId++;
    this.timers.push({ at: this.time + delayMs, callback, id });
    return id;
  }

  clearTimeout(handle: unknown): void {
    this.timers = this.timers.filter((timer) => timer.id !== handle);
  }

  /** Moves time forward by `ms`, running due timers and the promise callbacks they start. */
  async advance(ms: number): Promise<void> {
    const end = this.time + ms;
    for (;;) {
      await flushPromises();
      const due = this.timers
        .filter((timer) => timer.at <= end)
        .sort((a, b) => a.at - b.at)[0];
      if (due === undefined) break;
      this.timers = this.timers.filter((timer) => timer !== due);
      this.time = due.at;
      due.callback();
    }
    this.time = end;
    await flushPromises();
  }
}

async function flushPromises(): Promise<void> {
  for (let round = 0; round < 5; round += 1) await Promise.resolve();
}

interface SentValue {
  key: string;
  value: number;
  at: number;
}

/** Returns a throttle on a fake clock whose sends record themselves and resolve at once. */
function recordingThrottle(clock: FakeClock): {
  throttle: CommandThrottle<number>;
  sent: SentValue[];
} {
  const sent: SentValue[] = [];
  const throttle = new CommandThrottle<number>(
    async (key, value) => {
      sent.push({ key, value, at: clock.now() });
    },
    { intervalMs: 100, clock },
  );
  return { throttle, sent };
}

describe("dashboard command throttle", () => {
  it("sends the first value at once", async () => {
    const clock = new FakeClock();
    const { throttle, sent } = recordingThrottle(clock);
    throttle.push("a", 1);
    await flushPromises();
    assert.deepEqual(sent, [{ key: "a", value: 1, at: 0 }]);
  });

  it("sends only the newest value of a window", async () => {
    const clock = new FakeClock();
    const { throttle, sent } = recordingThrottle(clock);
    throttle.push("a", 1);
    await clock.advance(10);
    throttle.push("a", 2);
    throttle.push("a", 3);
    await clock.advance(200);
    assert.deepEqual(sent, [
      { key: "a", value: 1, at: 0 },
      { key: "a", value: 3, at: 100 },
    ]);
  });

  it("limits a drag to ten sends a second", async () => {
    const clock = new FakeClock();
    const { throttle, sent } = recordingThrottle(clock);
    // A slider dragged for 2 s fires `input` about every 16 ms (60 Hz).
    for (let value = 0; value <= 120; value += 1) {
      throttle.push("a", value);
      await clock.advance(16);
    }
    await clock.advance(1000);
    const dragMs = 121 * 16;
    assert.ok(
      sent.length <= Math.ceil(dragMs / 100) + 1,
      `${sent.length} sends in ${dragMs} ms`,
    );
    for (let index = 1; index < sent.length; index += 1) {
      const gap = sent[index]!.at - sent[index - 1]!.at;
      assert.ok(
        gap >= 100,
        `sends ${index - 1} and ${index} are ${gap} ms apart`,
      );
    }
    assert.equal(sent.at(-1)?.value, 120, "the last value is sent last");
  });

  it("throttles keys independently", async () => {
    const clock = new FakeClock();
    const { throttle, sent } = recordingThrottle(clock);
    throttle.push("light-1", 1);
    throttle.push("light-2", 7);
    await flushPromises();
    assert.deepEqual(
      sent.map(({ key, value }) => `${key}=${value}`),
      ["light-1=1", "light-2=7"],
    );
  });

  it("waits for the send in flight", async () => {
    const clock = new FakeClock();
    const sent: number[] = [];
    const releases: (() => void)[] = [];
    const throttle = new CommandThrottle<number>(
      (_key, value) =>
        new Promise<void>((resolve) => {
          sent.push(value);
          releases.push(resolve);
        }),
      { intervalMs: 100, clock },
    );
    throttle.push("a", 1);
    throttle.push("a", 2);
    await clock.advance(500);
    assert.deepEqual(sent, [1], "no second send while the first is in flight");
    releases[0]!();
    await clock.advance(0);
    assert.deepEqual(
      sent,
      [1, 2],
      "the newest value follows once the first settles",
    );
  });

  it("goes on after a failed send", async () => {
    const clock = new FakeClock();
    const sent: number[] = [];
    const throttle = new CommandThrottle<number>(
      async (_key, value) => {
        sent.push(value);
        if (value === 1) throw new Error("relay rejected it");
      },
      { intervalMs: 100, clock },
    );
    throttle.push("a", 1);
    await clock.advance(10);
    throttle.push("a", 2);
    await clock.advance(200);
    assert.deepEqual(sent, [1, 2]);
  });

  it("drops unsent values on cancel", async () => {
    const clock = new FakeClock();
    const { throttle, sent } = recordingThrottle(clock);
    throttle.push("a", 1);
    await clock.advance(10);
    throttle.push("a", 2);
    throttle.cancelAll();
    await clock.advance(500);
    assert.deepEqual(
      sent.map(({ value }) => value),
      [1],
    );
  });

  it("works on real timers", async () => {
    const sent: { value: number; at: number }[] = [];
    const throttle = new CommandThrottle<number>(
      async (_key, value) => {
        sent.push({ value, at: Date.now() });
      },
      { intervalMs: 50 },
    );
    for (let value = 1; value <= 10; value += 1) {
      throttle.push("a", value);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    await new Promise((resolve) => setTimeout(resolve, 150));
    assert.ok(sent.length < 10, `${sent.length} sends for 10 values`);
    assert.equal(sent.at(-1)?.value, 10);
  });
});

describe("dashboard optimistic light", () => {
  const light = (on: boolean, brightness = 50): Light => ({
    id: "a",
    type: "light",
    on: { on },
    dimming: { brightness },
  });

  it("shows a local change at once", () => {
    const state = new OptimisticLight(light(false));
    state.applyLocal("on", { on: { on: true } });
    assert.equal(state.view().on.on, true);
    assert.equal(state.confirmed.on.on, false);
    assert.equal(state.isPending("on"), true);
  });

  it("adopts the answer without events", () => {
    const state = new OptimisticLight(light(false));
    const sequence = state.applyLocal("on", { on: { on: true } });
    const sentAt = state.updateCount;
    state.acknowledge("on", sequence, light(true, 37), sentAt);
    assert.deepEqual(state.view(), light(true, 37));
    assert.equal(state.isPending(), false);
  });

  it("prefers an event over a late answer", () => {
    const state = new OptimisticLight(light(false));
    const sequence = state.applyLocal("on", { on: { on: true } });
    const sentAt = state.updateCount;
    // Our write's event, then a wall switch's newer one, then our late acknowledgement.
    state.applyRelay(light(true));
    state.applyRelay(light(false, 80));
    state.acknowledge("on", sequence, light(true), sentAt);
    assert.deepEqual(state.view(), light(false, 80));
  });

  it("rolls back a rejected change", () => {
    const state = new OptimisticLight(light(false));
    const sequence = state.applyLocal("on", { on: { on: true } });
    assert.equal(state.reject("on", sequence), true);
    assert.equal(state.view().on.on, false);
  });

  it("keeps a newer change after a rejection", () => {
    const state = new OptimisticLight(light(false));
    const first = state.applyLocal("dimming", { dimming: { brightness: 10 } });
    state.applyLocal("dimming", { dimming: { brightness: 20 } });
    assert.equal(state.reject("dimming", first), false);
    assert.equal(state.view().dimming?.brightness, 20);
  });

  it("lays a pending change over events", () => {
    const state = new OptimisticLight(light(false, 50));
    state.applyLocal("dimming", { dimming: { brightness: 90 } });
    state.applyRelay(light(true, 50));
    assert.equal(
      state.view().dimming?.brightness,
      90,
      "the slider does not jump back",
    );
    assert.equal(state.view().on.on, true, "other fields follow the event");
  });
});

describe("dashboard command errors", () => {
  it("names the bridge's rejection", () => {
    const error = new RelayClientError(
      "BRIDGE_ERROR",
      "bridge 001788fffe000000 refused the command: light is unreachable",
      {
        details: { code: "LIGHT_UNREACHABLE", message: "light is unreachable" },
      },
    );
    assert.equal(
      describeCommandError(error),
      "The bridge rejected the change: light is unreachable (LIGHT_UNREACHABLE)",
    );
  });

  it("names other relay errors", () => {
    const error = new RelayClientError(
      "BRIDGE_OFFLINE",
      "bridge 001788fffe000000 is offline",
    );
    assert.equal(
      describeCommandError(error),
      "Change failed: bridge 001788fffe000000 is offline (BRIDGE_OFFLINE)",
    );
  });
});

/** Returns a token environment backed by plain objects, recording replaceState calls. */
function tokenEnvironment(hash: string): TokenEnvironment & {
  urls: string[];
  stored: Map<string, string>;
} {
  const stored = new Map<string, string>();
  const urls: string[] = [];
  return {
    urls,
    stored,
    location: { hash, pathname: "/", search: "?view=grid" },
    history: {
      state: null,
      replaceState: (
        _state: unknown,
        _title: string,
        url?: string | URL | null,
      ) => {
        urls.push(String(url));
      },
    },
    storage: {
      getItem: (key) => stored.get(key) ?? null,
      setItem: (key, value) => void stored.set(key, value),
      removeItem: (key) => void stored.delete(key),
    },
  };
}

describe("dashboard token store", () => {
  it("moves a fragment token into storage", () => {
    const env = tokenEnvironment("#token=aaa.bbb.ccc");
    assert.equal(takeTokenFromFragment(env), "aaa.bbb.ccc");
    assert.equal(env.stored.get(TOKEN_STORAGE_KEY), "aaa.bbb.ccc");
    assert.deepEqual(
      env.urls,
      ["/?view=grid"],
      "the address bar loses the fragment",
    );
  });

  it("keeps other fragment parameters", () => {
    const env = tokenEnvironment("#token=aaa.bbb.ccc&bridge=001788fffe000000");
    takeTokenFromFragment(env);
    assert.deepEqual(env.urls, ["/?view=grid#bridge=001788fffe000000"]);
  });

  it("ignores a fragment without a token", () => {
    const env = tokenEnvironment("#section-2");
    assert.equal(takeTokenFromFragment(env), null);
    assert.deepEqual(env.urls, [], "the address bar is left alone");
    assert.equal(env.stored.size, 0);
  });

  it("removes an empty token", () => {
    const env = tokenEnvironment("#token=");
    assert.equal(takeTokenFromFragment(env), null);
    assert.deepEqual(env.urls, ["/?view=grid"]);
    assert.equal(env.stored.size, 0);
  });

  it("reads and clears the stored token", () => {
    const env = tokenEnvironment("");
    assert.equal(readStoredToken(env), null);
    env.stored.set(TOKEN_STORAGE_KEY, "aaa.bbb.ccc");
    assert.equal(readStoredToken(env), "aaa.bbb.ccc");
    clearToken(env.storage);
    assert.equal(readStoredToken(env), null);
  });

  it("checks the token shape", () => {
    assert.equal(isTokenShaped("eyJh.eyJz.c2ln"), true);
    assert.equal(isTokenShaped("not a token"), false);
    assert.equal(isTokenShaped("eyJh.eyJz."), false);
  });
});

describe("dashboard relative time", () => {
  const now = Date.parse("2026-12-04T12:00:00Z");

  it("formats past times", () => {
    assert.equal(
      formatRelativeTime("2026-12-04T11:59:55Z", now, "en"),
      "just now",
    );
    assert.equal(
      formatRelativeTime("2026-12-04T11:59:30Z", now, "en"),
      "30 seconds ago",
    );
    assert.equal(
      formatRelativeTime("2026-12-04T11:55:00Z", now, "en"),
      "5 minutes ago",
    );
    assert.equal(
      formatRelativeTime("2026-12-04T09:00:00Z", now, "en"),
      "3 hours ago",
    );
    assert.equal(
      formatRelativeTime("2026-12-03T12:00:00Z", now, "en"),
      "yesterday",
    );
  });

  it("returns an invalid time unchanged", () => {
    assert.equal(formatRelativeTime("soon", now, "en"), "soon");
  });
});

/** Starts `app` on a free loopback port and returns its origin and a stop function. */
async function listen(
  app: Express,
): Promise<{ origin: string; stop: () => Promise<void> }> {
  const server = createServer(app);
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  return {
    origin: `http://127.0.0.1:${port}`,
    stop: () => new Promise((resolve) => server.close(() => resolve())),
  };
}

describe("dashboard static serving", () => {
  let folder: string;

  beforeEach(async () => {
    folder = await mkdtemp(join(tmpdir(), "relay-dashboard-"));
  });
  afterEach(async () => {
    await rm(folder, { recursive: true, force: true });
  });

  it("explains a missing build", async () => {
    const app = express();
    serveDashboard(app, folder, pino({ level: "silent" }));
    const server = await listen(app);
    try {
      const response = await fetch(`${server.origin}/`);
      assert.equal(response.status, 404);
      assert.match(await response.text(), /npm run build/);
    } finally {
      await server.stop();
    }
  });

  it("serves a build made after the start", async () => {
    const app = express();
    serveDashboard(app, folder, pino({ level: "silent" }));
    const server = await listen(app);
    try {
      await writeFile(join(folder, "index.html"), "<h1>dashboard</h1>");
      const response = await fetch(`${server.origin}/`);
      assert.equal(response.status, 200);
      assert.equal(await response.text(), "<h1>dashboard</h1>");
    } finally {
      await server.stop();
    }
  });
});

describe("dashboard token scope", () => {
  const tokenWith = (claims: object): string =>
    `e30.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.sig`;

  it("grants control with the scope", () => {
    assert.equal(
      tokenGrantsControl(tokenWith({ scope: "read control" })),
      true,
    );
  });

  it("denies control without the scope", () => {
    assert.equal(tokenGrantsControl(tokenWith({ scope: "read" })), false);
    assert.equal(tokenGrantsControl(tokenWith({})), false);
    assert.equal(
      tokenGrantsControl(tokenWith({ scope: "readcontrol" })),
      false,
    );
  });

  it("denies control for a malformed token", () => {
    assert.equal(tokenGrantsControl("not-a-jwt"), false);
    assert.equal(tokenGrantsControl("a.%%%.c"), false);
  });
});

describe("dashboard light order", () => {
  it("sorts numbers in names numerically", () => {
    const names = ["lamp 10", "lamp 2", "lamp 1", "hall"];
    assert.deepEqual(names.sort(compareSortKeys), [
      "hall",
      "lamp 1",
      "lamp 2",
      "lamp 10",
    ]);
  });
});
