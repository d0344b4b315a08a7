import { RelayClientError, type Light, type LightPatch } from "../src/index.ts";
import { swatchColour } from "./colour.ts";
import { CommandThrottle } from "./command-throttle.ts";
import { element } from "./dom.ts";
import { OptimisticLight, type ControlField } from "./optimistic-light.ts";

/** Range of the colour-temperature slider, in mirek (6500 K to 2000 K). */
export const MIN_SLIDER_MIREK = 153;
export const MAX_SLIDER_MIREK = 500;
/** Slider position for a light whose mirek is null (it is in colour mode). */
const UNSET_MIREK_POSITION = 366;

/** Sends a light command and resolves with the light as the relay stored it. */
export type SetLight = (lightId: string, patch: LightPatch) => Promise<Light>;

interface QueuedChange {
  field: ControlField;
  patch: LightPatch;
  sequence: number;
}

/**
 * A light's card: name, colour swatch, on/off switch and sliders for
 * brightness and colour temperature. A change shows at once and is sent as
 * a command, throttled per field. When the relay rejects the command, the
 * field goes back to the confirmed value and the card shows the error.
 */
export class LightCard {
  readonly element: HTMLElement;
  private readonly state: OptimisticLight;
  private readonly throttle: CommandThrottle<QueuedChange>;
  private readonly name: HTMLElement;
  private readonly swatch: HTMLElement;
  private readonly power: HTMLInputElement;
  private readonly powerText: HTMLElement;
  private readonly brightness: Slider;
  private readonly mirek: Slider;
  private readonly error: HTMLElement;
  private errorMessage: string | undefined;

  constructor(
    bridgeId: string,
    light: Light,
    private readonly setLight: SetLight,
  ) {
    this.state = new OptimisticLight(light);
    this.throttle = new CommandThrottle((_field, change) => this.send(change));
    const idPrefix = `light-${bridgeId}-${light.id}`;

    this.name = element("h3", { attributes: { id: `${idPrefix}-name` } });
    this.swatch = element("span", {
      className: "swatch",
      attributes: { role: "img" },
    });
    this.power = element("input", {
      attributes: { type: "checkbox", role: "switch", id: `${idPrefix}-power` },
    });
    this.powerText = element("span", { className: "switch-text" });
    const powerLabel = element(
      "label",
      { className: "switch", attributes: { for: `${idPrefix}-power` } },
      this.power,
      this.powerText,
    );
    this.brightness = createSlider({
      id: `${idPrefix}-brightness`,
      label: "Brightness",
      control: "brightness",
      min: 1,
      max: 100,
    });
    this.mirek = createSlider({
      id: `${idPrefix}-mirek`,
      label: "Temperature",
      control: "color-temperature",
      min: MIN_SLIDER_MIREK,
      max: MAX_SLIDER_MIREK,
    });
    this.error = element("p", {
      className: "light-error",
      attributes: { role: "alert" },
    });

    this.element = element(
      "article",
      {
        className: "light-card",
        attributes: {
          "data-light-id": light.id,
          "aria-labelledby": `${idPrefix}-name`,
        },
      },
      element(
        "header",
        { className: "light-header" },
        this.swatch,
        this.name,
        powerLabel,
      ),
      this.brightness.container,
      this.mirek.container,
      this.error,
    );
    this.listen();
    this.render();
  }

  get lightId(): string {
    return this.state.confirmed.id;
  }

  /** Key that orders cards: by name, then by ID. */
  get sortKey(): string {
    const light = this.state.confirmed;
    return `${(light.metadata?.name ?? light.id).toLocaleLowerCase()}\u0000${light.id}`;
  }

  /** Adopts the light from a relay event. */
  applyRelay(light: Light): void {
    this.state.applyRelay(light);
    this.render();
  }

  /** Drops commands not sent yet; the card is being removed. */
  dispose(): void {
    this.throttle.cancelAll();
  }

  private listen(): void {
    this.power.addEventListener("change", () => {
      this.change("on", { on: { on: this.power.checked } });
    });
    // `input` fires while dragging and on every key press, `change` only at
    // the end with the same value, so only `input` sends.
    this.brightness.input.addEventListener("input", () => {
      const brightness = this.brightness.input.valueAsNumber;
      this.change("dimming", { dimming: { brightness } });
    });
    this.mirek.input.addEventListener("input", () => {
      const mirek = this.mirek.input.valueAsNumber;
      this.change("color_temperature", { color_temperature: { mirek } });
    });
  }

  private change(field: ControlField, patch: LightPatch): void {
    const sequence = this.state.applyLocal(field, patch);
    this.render();
    this.throttle.push(field, { field, patch, sequence });
  }

  private async send({ field, patch, sequence }: QueuedChange): Promise<void> {
    const updatesAtSend = this.state.updateCount;
    try {
      const light = await this.setLight(this.lightId, patch);
      this.state.acknowledge(field, sequence, light, updatesAtSend);
      this.errorMessage = undefined;
    } catch (error) {
      this.state.reject(field, sequence);
      this.errorMessage = describeCommandError(error);
    }
    this.render();
  }

  private render(): void {
    const light = this.state.view();
    const name = light.metadata?.name ?? light.id;
    this.name.textContent = name;
    this.element.dataset.on = String(light.on.on);
    this.element.setAttribute("aria-busy", String(this.state.isPending()));

    const colour = swatchColour(light);
    this.swatch.style.backgroundColor = colour;
    this.swatch.setAttribute("aria-label", `Colour ${colour}`);
    this.swatch.title = `Colour ${colour}`;
    this.swatch.classList.toggle("is-off", !light.on.on);

    this.power.checked = light.on.on;
    this.power.setAttribute("aria-label", `${name} power`);
    this.powerText.textContent = light.on.on ? "On" : "Off";

    this.renderBrightness(light, name);
    this.renderMirek(light, name);

    this.error.hidden = this.errorMessage === undefined;
    this.error.textContent = this.errorMessage ?? "";
  }

  private renderBrightness(light: Light, name: string): void {
    const { container, input, output } = this.brightness;
    container.hidden = light.dimming === undefined;
    if (light.dimming === undefined) return;
    const percent = Math.round(light.dimming.brightness);
    input.value = String(percent);
    input.setAttribute("aria-label", `${name} brightness`);
    output.textContent = `${percent} %`;
  }

  private renderMirek(light: Light, name: string): void {
    const { container, input, output } = this.mirek;
    container.hidden = light.color_temperature === undefined;
    if (light.color_temperature === undefined) return;
    const { mirek } = light.color_temperature;
    input.setAttribute("aria-label", `${name} colour temperature`);
    if (mirek === null) {
      input.value = String(UNSET_MIREK_POSITION);
      output.textContent = "colour mode";
      return;
    }
    input.value = String(mirek);
    output.textContent = `${mirek} mirek · ${Math.round(1e6 / mirek)} K`;
  }
}

interface Slider {
  container: HTMLElement;
  input: HTMLInputElement;
  output: HTMLOutputElement;
}

interface SliderOptions {
  id: string;
  label: string;
  /** Value of the container's `data-control` attribute. */
  control: string;
  min: number;
  max: number;
}

function createSlider({ id, label, control, min, max }: SliderOptions): Slider {
  const input = element("input", {
    attributes: {
      type: "range",
      id,
      min: String(min),
      max: String(max),
      step: "1",
    },
  });
  const output = element("output", { attributes: { for: id } });
  const container = element(
    "div",
    { className: "slider", attributes: { "data-control": control } },
    element("label", { text: label, attributes: { for: id } }),
    output,
    input,
  );
  return { container, input, output };
}

/** Returns the sentence a card shows for a failed command. */
export function describeCommandError(error: unknown): string {
  if (!(error instanceof RelayClientError)) {
    return `Change failed: ${error instanceof Error ? error.message : String(error)}`;
  }
  if (error.code === "BRIDGE_ERROR" && error.details !== undefined) {
    return `The bridge rejected the change: ${error.details.message} (${error.details.code})`;
  }
  return `Change failed: ${error.message} (${error.code})`;
}
