import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { fileURLToPath } from "node:url";
import {
  chromium,
  type Browser,
  type BrowserContext,
  type Locator,
  type Page,
} from "playwright-core";
import { buildDashboard } from "../client-sdk/dashboard/build.ts";
import {
  loadFixtureLights,
  trimLight,
} from "../client-sdk/simulator/simulated-bridge.ts";
import {
  BridgeClient,
  type BridgeCommandAnswer,
  type Light,
  type LightChange,
  type LightSetCommand,
  type SyncedEvent,
} from "../client-sdk/src/index.ts";
import { randomBridgeId } from "./support/clients.ts";
import { appToken, bridgeToken } from "./support/tokens.ts";
import { deploy, type Deployment } from "./support/variants.ts";

/** Debian's Chromium; the tests drive it with playwright-core and never download a browser. */
const CHROMIUM_PATH = "/usr/bin/chromium";
/**
 * Flags for a headless Chromium on a machine without outside network:
 * without the background-networking ones, Chromium keeps trying to reach
 * Google's services. Playwright adds a fresh temporary profile itself.
 */
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];
const SCREENSHOT_PATH = fileURLToPath(
  new URL("../docs/dashboard.png", import.meta.url),
);
/** Maximum time from a bridge's report to the page showing it, in ms. */
const MAX_LIVE_LATENCY_MS = 500;
const FAST_RECONNECT = { minDelayMs: 100, maxDelayMs: 1000 };

interface TestBridgeOptions {
  /** Milliseconds the bridge waits before it answers a command. */
  answerDelayMs?: number;
  /** Changes the light the bridge answers with, as firmware may. */
  adjustAnswer?: (light: Light) => Light;
}

/** A bridge in the test process whose lights live in a map, recording every command. */
class TestBridge {
  readonly lights: Map<string, Light>;
  readonly commands: { command: LightSetCommand; at: number }[] = [];
  readonly client: BridgeClient;
  /** The error the bridge answers the next command with, instead of applying it. */
  rejectNext: { code: string; message: string } | undefined;

  constructor(
    readonly bridgeId: string,
    url: string,
    token: string,
    lights: Light[],
    private readonly options: TestBridgeOptions = {},
  ) {
    this.lights = new Map(lights.map((light) => [light.id, light]));
    this.client = new BridgeClient({
      url,
      token,
      reconnect: FAST_RECONNECT,
      getLights: () => [...this.lights.values()],
      onCommand: (command) => this.answer(command),
    });
  }

  /** Reports `changes` as a wall switch would, after applying them locally. */
  report(changes: LightChange[]): Promise<{ version: number }> {
    for (const change of changes) {
      const light = this.lights.get(change.id)!;
      this.lights.set(change.id, { ...light, ...change });
    }
    return this.client.reportChanges(changes);
  }

  private async answer(command: LightSetCommand): Promise<BridgeCommandAnswer> {
    this.commands.push({ command, at: Date.now() });
    if (this.options.answerDelayMs !== undefined) {
      await new Promise((resolve) =>
        setTimeout(resolve, this.options.answerDelayMs),
      );
    }
    const rejection = this.rejectNext;
    if (rejection !== undefined) {
      this.rejectNext = undefined;
      return { ok: false, error: rejection };
    }
    const current = this.lights.get(command.lightId);
    if (current === undefined) {
      return {
        ok: false,
        error: { code: "UNKNOWN_LIGHT", message: command.lightId },
      };
    }
    let next: Light = { ...current, ...command.change };
    next = this.options.adjustAnswer?.(next) ?? next;
    this.lights.set(next.id, next);
    return { ok: true, data: { light: next } };
  }
}

/** Returns two small lights, one on and one off, one of them with a colour temperature. */
function simpleLights(): Light[] {
  return [
    {
      id: "desk",
      type: "light",
      metadata: { name: "Desk" },
      on: { on: true },
      dimming: { brightness: 50 },
      color_temperature: { mirek: 300 },
    },
    {
      id: "hall",
      type: "light",
      metadata: { name: "Hall" },
      on: { on: false },
      dimming: { brightness: 20 },
    },
  ];
}

/** Returns the eight lights of the real Hue CLIP v2 dump, as the relay stores them. */
function fixtureLights(): Light[] {
  return loadFixtureLights().map(trimLight);
}

/** Retries `check` until it stops throwing, then returns its result; rethrows its last error after `timeoutMs`. */
async function eventually<T>(
  check: () => Promise<T> | T,
  timeoutMs = 10_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await check();
    } catch (error) {
      if (Date.now() > deadline) throw error;
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1
    ? sorted[middle]!
    : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

describe("dashboard in Chromium", function () {
  this.timeout(90_000);
  let deployment: Deployment;
  let url: string;
  let browser: Browser;
  let context: BrowserContext | undefined;
  let bridges: TestBridge[] = [];
  let consoleErrors: string[] = [];

  before(async function () {
    if (!existsSync(CHROMIUM_PATH)) {
      if (process.env.CI) {
        throw new Error(
          `${CHROMIUM_PATH} is missing: CI must run the dashboard tests, and .ci/run installs Debian's chromium`,
        );
      }
      console.log(
        `      skipping the dashboard's Chromium tests: ${CHROMIUM_PATH} is missing ` +
          "(install it with `apt-get install chromium`)",
      );
      this.skip();
    }
    await buildDashboard();
    deployment = await deploy(1, 2);
    url = deployment.relays[0]!.url;
    browser = await chromium.launch({
      executablePath: CHROMIUM_PATH,
      headless: true,
      args: CHROMIUM_ARGS,
    });
  });

  after(async () => {
    await browser?.close();
    await deployment?.stop();
  });

  afterEach(async () => {
    for (const bridge of bridges) bridge.client.close();
    bridges = [];
    await context?.close();
    context = undefined;
    consoleErrors = [];
  });

  /** Connects a test bridge and waits until the relay has its first snapshot. */
  async function startBridge(
    lights: Light[],
    options: TestBridgeOptions = {},
    bridgeId = randomBridgeId(),
  ): Promise<TestBridge> {
    const bridge = new TestBridge(
      bridgeId,
      url,
      await bridgeToken(bridgeId),
      lights,
      options,
    );
    bridges.push(bridge);
    const synced = new Promise<SyncedEvent>((resolve) =>
      bridge.client.once("synced", resolve),
    );
    await bridge.client.connect();
    await synced;
    return bridge;
  }

  /** Opens the dashboard with a token for `bridgeIds` and waits until it shows every light. */
  async function openDashboard(
    bridgeIds: string[],
    viewport = { width: 1280, height: 900 },
    scope = "read control",
  ): Promise<Page> {
    context = await browser.newContext({ viewport });
    const page = await context.newPage();
    page.on("console", (message) => {
      if (message.type() === "error") consoleErrors.push(message.text());
    });
    page.on("pageerror", (error) => consoleErrors.push(error.message));
    await page.addInitScript(() => {
      window.__RELAY_DASHBOARD_DEBUG__ = true;
    });
    const token = await appToken("dashboard-user", bridgeIds, scope);
    await page.goto(`${url}/#token=${token}`);
    await bannerState(page, "live");
    for (const bridge of bridges.filter((entry) =>
      bridgeIds.includes(entry.bridgeId),
    )) {
      await lightCard(page, bridge.bridgeId, [...bridge.lights.keys()].at(-1)!)
        .first()
        .waitFor();
    }
    return page;
  }

  function bridgeCard(page: Page, bridgeId: string): Locator {
    return page.locator(`[data-bridge-id="${bridgeId}"]`);
  }

  function lightCard(page: Page, bridgeId: string, lightId: string): Locator {
    return bridgeCard(page, bridgeId).locator(`[data-light-id="${lightId}"]`);
  }

  function brightnessText(card: Locator): Promise<string | null> {
    return card.locator('[data-control="brightness"] output').textContent();
  }

  async function bannerState(
    page: Page,
    state: string,
    timeoutMs = 15_000,
  ): Promise<void> {
    await page
      .locator(`#connection-banner[data-state="${state}"]`)
      .waitFor({ timeout: timeoutMs });
  }

  it("shows every bridge and light", async () => {
    const hue = await startBridge(fixtureLights());
    const small = await startBridge(simpleLights());
    const page = await openDashboard([hue.bridgeId, small.bridgeId]);

    assert.equal(await page.locator("[data-bridge-id]").count(), 2);
    for (const bridge of [hue, small]) {
      const card = bridgeCard(page, bridge.bridgeId);
      assert.equal(await card.locator(".presence").textContent(), "Online");
      assert.equal(
        await card.locator("[data-light-id]").count(),
        bridge.lights.size,
        `bridge ${bridge.bridgeId} shows all its lights`,
      );
      for (const light of bridge.lights.values()) {
        const lightElement = card.locator(`[data-light-id="${light.id}"]`);
        assert.equal(
          await lightElement.locator("h3").textContent(),
          light.metadata?.name,
        );
        assert.equal(
          await lightElement.getByRole("switch").isChecked(),
          light.on.on,
          `${light.metadata?.name} power`,
        );
        if (light.dimming !== undefined) {
          assert.equal(
            await brightnessText(lightElement),
            `${Math.round(light.dimming.brightness)} %`,
          );
        }
        assert.equal(
          await lightElement
            .locator('[data-control="color-temperature"]')
            .isVisible(),
          light.color_temperature !== undefined,
          `${light.metadata?.name} has a colour-temperature slider when it has color_temperature`,
        );
      }
    }
    assert.deepEqual(consoleErrors, [], "no script or policy errors");
  });

  it("keeps the token out of the URL", async () => {
    const bridge = await startBridge(simpleLights());
    const page = await openDashboard([bridge.bridgeId]);
    assert.doesNotMatch(page.url(), /token/, "the fragment was removed");
    const stored = await page.evaluate(() =>
      sessionStorage.getItem("relay-dashboard:token"),
    );
    assert.match(stored ?? "", /^[\w-]+\.[\w-]+\.[\w-]+$/);
    assert.deepEqual(await context!.cookies(), [], "no cookie was set");

    await page.reload();
    await bannerState(page, "live");
    await lightCard(page, bridge.bridgeId, "desk").waitFor();
  });

  it("serves security headers", async () => {
    const response = await fetch(`${url}/`);
    assert.equal(response.status, 200);
    assert.match(response.headers.get("content-type") ?? "", /text\/html/);
    const policy = response.headers.get("content-security-policy") ?? "";
    assert.match(policy, /script-src 'self'/);
    assert.match(policy, /connect-src 'self'/);
    assert.match(policy, /default-src 'none'/);
    assert.equal(response.headers.get("referrer-policy"), "no-referrer");
    assert.equal(response.headers.get("x-content-type-options"), "nosniff");
    const health = await fetch(`${url}/healthz`);
    assert.deepEqual(await health.json(), { status: "ok" });
  });

  it("connects over a websocket under the policy", async () => {
    const bridge = await startBridge(simpleLights());
    context = await browser.newContext();
    const page = await context.newPage();
    const sockets: string[] = [];
    page.on("websocket", (socket) => sockets.push(socket.url()));
    page.on("console", (message) => {
      if (message.type() === "error") consoleErrors.push(message.text());
    });
    await page.goto(`${url}/#token=${await appToken("u", [bridge.bridgeId])}`);
    await bannerState(page, "live");
    await eventually(() =>
      assert.ok(
        sockets.some((socket) => socket.includes("/socket.io/")),
        `a websocket opened, saw ${JSON.stringify(sockets)}`,
      ),
    );
    assert.deepEqual(consoleErrors, [], "the policy blocked nothing");
  });

  it("toggles a light through the bridge", async () => {
    const bridge = await startBridge(simpleLights(), {
      answerDelayMs: 300,
      // This firmware restores a brightness of its own when a light turns on.
      adjustAnswer: (light) =>
        light.on.on ? { ...light, dimming: { brightness: 37 } } : light,
    });
    const page = await openDashboard([bridge.bridgeId]);
    const card = lightCard(page, bridge.bridgeId, "hall");
    const power = card.getByRole("switch");
    assert.equal(await power.isChecked(), false);

    await power.focus();
    await page.keyboard.press("Space");
    assert.equal(await power.isChecked(), true, "the switch moved at once");
    assert.equal(await card.getAttribute("aria-busy"), "true");

    await eventually(() =>
      assert.deepEqual(
        bridge.commands.map(({ command }) => command.change),
        [{ on: { on: true } }],
      ),
    );
    await eventually(async () => {
      assert.equal(await brightnessText(card), "37 %", "the bridge's answer");
      assert.equal(await card.getAttribute("aria-busy"), "false");
    });
    assert.equal(await power.isChecked(), true);
    assert.equal(await card.locator(".light-error").isVisible(), false);
  });

  it("shows bridge changes within 500 ms", async () => {
    const bridge = await startBridge(simpleLights());
    const page = await openDashboard([bridge.bridgeId]);
    const latencies: number[] = [];
    for (const brightness of [11, 22, 33, 44, 55, 66, 77]) {
      await page.evaluate(
        ([bridgeId, expected]) => {
          const output = document.querySelector(
            `[data-bridge-id="${bridgeId}"] [data-light-id="desk"] [data-control="brightness"] output`,
          )!;
          // No named functions in here: tsx would wrap them in a helper
          // that does not exist in the page.
          const seen = new Promise<number>((resolve) => {
            new MutationObserver((_records, observer) => {
              if (output.textContent !== expected) return;
              observer.disconnect();
              resolve(Date.now());
            }).observe(output, {
              childList: true,
              characterData: true,
              subtree: true,
            });
          });
          (window as unknown as { seenAt: Promise<number> }).seenAt = seen;
        },
        [bridge.bridgeId, `${brightness} %`] as const,
      );
      const startedAt = Date.now();
      await bridge.report([{ id: "desk", dimming: { brightness } }]);
      const seenAt = await page.evaluate(
        () => (window as unknown as { seenAt: Promise<number> }).seenAt,
      );
      latencies.push(seenAt - startedAt);
    }
    console.log(
      `      bridge report to page: median ${median(latencies)} ms, ` +
        `max ${Math.max(...latencies)} ms over ${latencies.length} changes`,
    );
    for (const latency of latencies) {
      assert.ok(
        latency < MAX_LIVE_LATENCY_MS,
        `a change took ${latency} ms to appear (all: ${latencies.join(", ")})`,
      );
    }
  });

  it("shows an offline bridge", async () => {
    const bridge = await startBridge(simpleLights());
    const page = await openDashboard([bridge.bridgeId]);
    const card = bridgeCard(page, bridge.bridgeId);
    const closedAt = Date.now();
    bridge.client.close();

    await eventually(async () =>
      assert.equal(await card.locator(".presence").textContent(), "Offline"),
    );
    const time = card.locator(".last-seen time");
    const datetime = (await time.getAttribute("datetime")) ?? "";
    assert.equal(await time.getAttribute("title"), datetime);
    assert.ok(
      Math.abs(Date.parse(datetime) - closedAt) < 5000,
      `last seen ${datetime} is the disconnection time`,
    );
    assert.match(
      (await card.locator(".last-seen").textContent()) ?? "",
      /^last seen (just now|\d+ seconds? ago)$/,
    );
    assert.equal(
      await lightCard(page, bridge.bridgeId, "desk")
        .getByRole("switch")
        .isDisabled(),
      true,
      "an offline bridge's controls are disabled",
    );
  });

  it("recovers after its worker dies", async () => {
    const relay = deployment.relays[0]!;
    const first = await startBridge(simpleLights());
    const second = await startBridge(simpleLights());
    const page = await openDashboard([first.bridgeId, second.bridgeId]);
    const { serverId } = await page.evaluate(() =>
      window.relayDashboardDebug!.serverInfo(),
    );
    const worker = relay.workers().find((entry) => entry.serverId === serverId);
    assert.ok(worker, `the page's worker ${serverId} is known`);

    process.kill(worker.pid, "SIGKILL");
    await bannerState(page, "reconnecting", 5000);
    // Change state while the page is away, through a bridge that kept its
    // connection, or after one that lost it has reconnected.
    const survivors = await Promise.all(
      [first, second].map(async (bridge) => ({
        bridge,
        serverId: await bridge.client.serverInfo().catch(() => undefined),
      })),
    );
    const target =
      survivors.find((entry) => entry.serverId?.serverId !== serverId)
        ?.bridge ?? first;
    await eventually(() =>
      assert.equal(target.client.state, "connected", "the bridge reconnected"),
    );
    await eventually(() =>
      target.report([
        { id: "desk", on: { on: false }, dimming: { brightness: 5 } },
      ]),
    );
    assert.equal(
      await page.locator("#connection-banner").getAttribute("data-state"),
      "reconnecting",
      "the change happened while the page was disconnected",
    );

    await bannerState(page, "live");
    const card = lightCard(page, target.bridgeId, "desk");
    await eventually(async () => {
      assert.equal(await brightnessText(card), "5 %");
      assert.equal(await card.getByRole("switch").isChecked(), false);
    });
    const after = await page.evaluate(() =>
      window.relayDashboardDebug!.serverInfo(),
    );
    assert.notEqual(
      after.serverId,
      serverId,
      "the page moved to a live worker",
    );
  });

  it("rolls back a rejected command", async () => {
    const bridge = await startBridge(simpleLights(), { answerDelayMs: 300 });
    const page = await openDashboard([bridge.bridgeId]);
    const card = lightCard(page, bridge.bridgeId, "desk");
    const power = card.getByRole("switch");
    bridge.rejectNext = {
      code: "LIGHT_UNREACHABLE",
      message: "light is unreachable",
    };

    await power.click();
    assert.equal(await power.isChecked(), false, "the switch moved at once");
    await eventually(async () => {
      assert.equal(await power.isChecked(), true, "the switch went back");
      assert.equal(
        await card.locator(".light-error").textContent(),
        "The bridge rejected the change: light is unreachable (LIGHT_UNREACHABLE)",
      );
    });
    assert.equal(bridge.lights.get("desk")?.on.on, true);
  });

  it("disables controls without control scope", async () => {
    const bridge = await startBridge(simpleLights());
    const page = await openDashboard(
      [bridge.bridgeId],
      { width: 1280, height: 900 },
      "read",
    );
    const card = lightCard(page, bridge.bridgeId, "desk");
    assert.equal(await card.getByRole("switch").isDisabled(), true);
    assert.match(
      (await bridgeCard(page, bridge.bridgeId)
        .locator(".bridge-status")
        .textContent()) ?? "",
      /lacks the control scope/,
    );
  });

  it("throttles a slider drag", async () => {
    const bridge = await startBridge(simpleLights());
    const page = await openDashboard([bridge.bridgeId]);
    const card = lightCard(page, bridge.bridgeId, "hall");
    const slider = card.locator('[data-control="brightness"] input');
    const initial = bridge.lights.get("hall")!.dimming!.brightness;
    const presses = 60;
    await slider.focus();
    // About 20 ms per step, so the drag lasts over a second.
    for (let press = 0; press < presses; press += 1) {
      await page.keyboard.press("ArrowRight");
      await page.waitForTimeout(15);
    }

    await eventually(() =>
      assert.deepEqual(bridge.lights.get("hall")?.dimming, {
        brightness: initial + presses,
      }),
    );
    const sent = bridge.commands.map(
      ({ command }) => command.change.dimming?.brightness,
    );
    assert.equal(
      sent.at(-1),
      initial + presses,
      "the last value was sent last",
    );
    assert.ok(
      sent.length < presses,
      `${sent.length} commands for ${presses} steps`,
    );

    // The page spaces sends 100 ms apart; arrival times add network jitter,
    // so the rate is checked over the whole drag, not per gap.
    const spanMs = bridge.commands.at(-1)!.at - bridge.commands[0]!.at;
    const perSecond = ((sent.length - 1) * 1000) / spanMs;
    assert.ok(spanMs >= 500, `the commands spread over ${spanMs} ms`);
    assert.ok(
      perSecond <= 12,
      `${sent.length} commands in ${spanMs} ms is ${perSecond.toFixed(1)} per second`,
    );
    assert.equal(await brightnessText(card), `${initial + presses} %`);
  });

  it("fits a phone screen", async () => {
    const bridge = await startBridge(fixtureLights());
    const page = await openDashboard([bridge.bridgeId], {
      width: 390,
      height: 844,
    });
    const layout = await page.evaluate(() => {
      const grid = document.querySelector(".light-grid")!;
      return {
        columns: getComputedStyle(grid).gridTemplateColumns.split(" ").length,
        scrollWidth: document.documentElement.scrollWidth,
      };
    });
    assert.equal(layout.columns, 1, "one column of light cards");
    assert.ok(
      layout.scrollWidth <= 390,
      `page is ${layout.scrollWidth} px wide`,
    );
  });

  it("signs out and forgets the token", async () => {
    const bridge = await startBridge(simpleLights());
    const page = await openDashboard([bridge.bridgeId]);
    await page.getByRole("button", { name: "Sign out" }).click();
    await bannerState(page, "signed-out");
    assert.equal(await page.locator("#sign-in").isVisible(), true);
    assert.equal(await page.locator("[data-bridge-id]").count(), 0);
    assert.equal(
      await page.evaluate(() =>
        sessionStorage.getItem("relay-dashboard:token"),
      ),
      null,
    );

    await page
      .getByLabel("App token")
      .fill(await appToken("u", [bridge.bridgeId]));
    await page.getByRole("button", { name: "Sign in" }).click();
    await bannerState(page, "live");
    await lightCard(page, bridge.bridgeId, "hall").waitFor();
  });

  it("signs out on a rejected token", async () => {
    context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${url}/#token=aaaa.bbbb.cccc`);
    await bannerState(page, "signed-out");
    assert.match(
      (await page.locator("#connection-banner").textContent()) ?? "",
      /rejected the token/,
    );
    assert.equal(await page.locator("#sign-in").isVisible(), true);
    assert.equal(
      await page.evaluate(() =>
        sessionStorage.getItem("relay-dashboard:token"),
      ),
      null,
    );
  });

  it("renders several lights for the screenshot", async () => {
    const hue = await startBridge(fixtureLights(), {}, "001788fffe4f3a2b");
    const small = await startBridge(simpleLights(), {}, "001788fffe9c01d7");
    const page = await openDashboard([hue.bridgeId, small.bridgeId], {
      width: 1200,
      height: 800,
    });
    small.client.close();
    await eventually(async () =>
      assert.equal(
        await bridgeCard(page, small.bridgeId)
          .locator(".presence")
          .textContent(),
        "Offline",
      ),
    );
    const image = await page.screenshot({ fullPage: true });
    assert.ok(image.length > 10_000, `screenshot has ${image.length} bytes`);
    if (process.env.UPDATE_SCREENSHOT === "1") {
      await writeFile(SCREENSHOT_PATH, image);
      console.log(`      wrote ${SCREENSHOT_PATH}`);
    }
  });
});
