/**
 * Colour of a light for its swatch: CIE 1931 xy chromaticity (or a colour
 * temperature) plus the Hue brightness, converted to an sRGB colour that a
 * browser paints.
 *
 * The steps follow the "xy to color" part of the Philips Hue application
 * design note "RGB to xy Color conversion" (repository
 * PhilipsHue/PhilipsHueSDK-iOS-OSX, file
 * ApplicationDesignNotes/RGB to xy Color conversion.md). A point that lies
 * outside the gamut triangle moves to the closest point on it. Then x, y
 * and Y give XYZ, a matrix turns XYZ into linear RGB, and the reverse gamma
 * (the sRGB transfer function) encodes it. Two choices differ from the
 * note:
 *
 * - The note's matrix is for a wide-gamut RGB space with a D50 white. A
 *   browser paints sRGB, so this module uses the sRGB triangle and Bruce
 *   Lindbloom's XYZ-to-linear-sRGB matrix for the D65 white, as quoted in
 *   https://coderapp.vercel.app/answer/66374377 (a copy of a Stack Overflow
 *   answer that compares the published sRGB matrices).
 * - The note sets Y to the brightness, which puts a component above 1 for
 *   most colours. This module takes the brightest sRGB colour of the
 *   chromaticity and scales it linearly by the brightness, so 100 % is
 *   always the full colour and 0 % is black.
 */

import type { Light } from "../src/protocol.ts";

/** A point of the CIE 1931 xy chromaticity diagram. */
export interface XyPoint {
  x: number;
  y: number;
}

/** An sRGB colour with 8-bit components, 0 to 255 each. */
export interface Rgb {
  red: number;
  green: number;
  blue: number;
}

/** Corners of a gamut triangle in xy. */
export interface Gamut {
  red: XyPoint;
  green: XyPoint;
  blue: XyPoint;
}

/** The sRGB primaries (ITU-R BT.709), the gamut a browser can paint. */
export const SRGB_GAMUT: Readonly<Gamut> = {
  red: { x: 0.64, y: 0.33 },
  green: { x: 0.3, y: 0.6 },
  blue: { x: 0.15, y: 0.06 },
};

/** XYZ (D65 white) to linear sRGB, rows red, green, blue; source in the header. */
const XYZ_TO_LINEAR_SRGB = [
  [3.2404542, -1.5371385, -0.4985314],
  [-0.969266, 1.8760108, 0.041556],
  [0.0556434, -0.2040259, 1.0572252],
] as const;

/** Colour temperature range, in kelvin, of the Planckian locus fit below. */
const MIN_KELVIN = 1667;
const MAX_KELVIN = 25_000;

/**
 * Returns `point` when it lies inside `gamut` (edges included), else the
 * closest point on the triangle's edges.
 */
export function clipToGamut(
  point: XyPoint,
  gamut: Gamut = SRGB_GAMUT,
): XyPoint {
  const { red, green, blue } = gamut;
  if (isInsideTriangle(point, red, green, blue)) return point;
  const candidates = [
    closestPointOnSegment(point, red, green),
    closestPointOnSegment(point, green, blue),
    closestPointOnSegment(point, blue, red),
  ];
  let best = candidates[0]!;
  for (const candidate of candidates) {
    if (distanceSquared(point, candidate) < distanceSquared(point, best)) {
      best = candidate;
    }
  }
  return best;
}

/**
 * Converts a chromaticity and a brightness in percent (0 to 100, clamped)
 * to sRGB. Points outside the sRGB triangle are first moved onto it.
 */
export function xyToSrgb(point: XyPoint, brightnessPercent: number): Rgb {
  const { x, y } = clipToGamut(point);
  // Y = 1 here: the brightness is applied after normalising, see the header.
  const X = x / y;
  const Z = (1 - x - y) / y;
  // Rounding in the matrix leaves tiny negatives at the triangle's edges.
  const linear = XYZ_TO_LINEAR_SRGB.map((row) =>
    Math.max(0, row[0] * X + row[1] + row[2] * Z),
  );
  const peak = Math.max(...linear);
  const brightness = Math.min(1, Math.max(0, brightnessPercent / 100));
  const scale = peak > 0 ? brightness / peak : 0;
  const [red, green, blue] = linear.map((value) =>
    Math.round(encodeSrgb(value * scale) * 255),
  ) as [number, number, number];
  return { red, green, blue };
}

/**
 * Returns the chromaticity of a black body at `1e6 / mirek` kelvin, with the
 * temperature clamped to 1667-25000 K, the range of the fit. The fit is the
 * cubic spline of Kim et al. (US patent 7,024,034 B2), with the coefficients
 * as listed at https://scrapbox.io/0b5vr/%E9%BB%92%E4%BD%93%E8%BB%8C%E8%B7%A1
 * (a note on the Planckian locus).
 */
export function mirekToXy(mirek: number): XyPoint {
  const kelvin = Math.min(MAX_KELVIN, Math.max(MIN_KELVIN, 1e6 / mirek));
  const t = 1000 / kelvin;
  const x =
    t > 0.25
      ? -0.2661239 * t ** 3 - 0.2343589 * t ** 2 + 0.8776956 * t + 0.17991
      : -3.0258469 * t ** 3 + 2.1070379 * t ** 2 + 0.2226347 * t + 0.24039;
  let y: number;
  if (t > 0.45) {
    y = -1.1063814 * x ** 3 - 1.3481102 * x ** 2 + 2.18555832 * x - 0.20219683;
  } else if (t > 0.25) {
    y = -0.9549476 * x ** 3 - 1.37418593 * x ** 2 + 2.09137015 * x - 0.16748867;
  } else {
    y = 3.081758 * x ** 3 - 5.8733867 * x ** 2 + 3.75112997 * x - 0.37001483;
  }
  return { x, y };
}

/** Returns the colour as a CSS hex string such as `#ff8800`. */
export function toHex({ red, green, blue }: Rgb): string {
  const hex = (value: number) => value.toString(16).padStart(2, "0");
  return `#${hex(red)}${hex(green)}${hex(blue)}`;
}

/** Applies the sRGB transfer function (step 5 of the note): linear light to the encoded value, 0 to 1. */
function encodeSrgb(linear: number): number {
  const value = Math.min(1, Math.max(0, linear));
  return value <= 0.0031308
    ? 12.92 * value
    : 1.055 * value ** (1 / 2.4) - 0.055;
}

function cross(origin: XyPoint, a: XyPoint, b: XyPoint): number {
  return (
    (a.x - origin.x) * (b.y - origin.y) - (a.y - origin.y) * (b.x - origin.x)
  );
}

function isInsideTriangle(
  point: XyPoint,
  a: XyPoint,
  b: XyPoint,
  c: XyPoint,
): boolean {
  const first = cross(a, b, point);
  const second = cross(b, c, point);
  const third = cross(c, a, point);
  const hasNegative = first < 0 || second < 0 || third < 0;
  const hasPositive = first > 0 || second > 0 || third > 0;
  return !(hasNegative && hasPositive);
}

function closestPointOnSegment(
  point: XyPoint,
  start: XyPoint,
  end: XyPoint,
): XyPoint {
  const dx = end.x - start.x;
  const dy = end.y - start.y;
  const along =
    ((point.x - start.x) * dx + (point.y - start.y) * dy) / (dx * dx + dy * dy);
  const t = Math.min(1, Math.max(0, along));
  return { x: start.x + t * dx, y: start.y + t * dy };
}

function distanceSquared(a: XyPoint, b: XyPoint): number {
  return (a.x - b.x) ** 2 + (a.y - b.y) ** 2;
}

/** Colour temperature shown for a light that reports neither colour nor temperature: 2700 K. */
const WARM_WHITE_MIREK = 370;

/**
 * Returns the CSS colour of a light's swatch. A light in colour-temperature
 * mode (a non-null mirek) shows its temperature, else its xy colour, else a
 * warm white, each at the light's brightness (100 % when it has none).
 */
export function swatchColour(light: Light): string {
  const brightness = light.dimming?.brightness ?? 100;
  const mirek = light.color_temperature?.mirek;
  let point: XyPoint;
  if (typeof mirek === "number") point = mirekToXy(mirek);
  else if (light.color !== undefined) point = light.color.xy;
  else point = mirekToXy(WARM_WHITE_MIREK);
  return toHex(xyToSrgb(point, brightness));
}
