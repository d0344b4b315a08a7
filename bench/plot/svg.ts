/**
 * A small line-chart writer for the benchmark plots: plain SVG with the
 * generic sans-serif font, so the files render offline and load nothing.
 */

export interface Series {
  name: string;
  points: [number, number][];
  dashed?: boolean;
}

export interface ChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  logX?: boolean;
  logY?: boolean;
  /** Horizontal reference lines, such as a latency target. */
  thresholds?: { y: number; label: string }[];
}

const WIDTH = 800;
const HEIGHT = 440;
const MARGIN = { top: 48, right: 240, bottom: 56, left: 72 };
/** Colour-blind-safe palette (Okabe and Ito). */
const COLOURS = [
  "#0072B2",
  "#D55E00",
  "#009E73",
  "#CC79A7",
  "#E69F00",
  "#56B4E9",
  "#000000",
];

function escapeXml(text: string): string {
  return text
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;");
}

function formatTick(value: number): string {
  if (value >= 1000) return `${Number((value / 1000).toPrecision(3))}k`;
  return String(Number(value.toPrecision(3)));
}

/** Returns about five round tick values from `min` to the first at or above `max`, on a linear axis. */
function linearTicks(min: number, max: number): number[] {
  const span = max - min || 1;
  const rough = span / 5;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10]
    .map((factor) => factor * magnitude)
    .find((candidate) => candidate >= rough)!;
  const ticks: number[] = [];
  let value = Math.ceil(min / step) * step;
  for (;;) {
    ticks.push(Number(value.toPrecision(12)));
    if (value >= max) return ticks;
    value += step;
  }
}

/** Returns the 1, 2, 5 multiples of powers of ten from `min` to `max`, for a log axis. */
function logTicks(min: number, max: number): number[] {
  const ticks: number[] = [];
  for (
    let exponent = Math.floor(Math.log10(min));
    exponent <= Math.ceil(Math.log10(max));
    exponent += 1
  ) {
    for (const factor of [1, 2, 5]) {
      const value = factor * 10 ** exponent;
      if (value >= min && value <= max) ticks.push(value);
    }
  }
  return ticks;
}

interface Axis {
  min: number;
  max: number;
  log: boolean;
  ticks: number[];
}

function makeAxis(values: number[], log: boolean, includeZero: boolean): Axis {
  const positive = log ? values.filter((value) => value > 0) : values;
  let min = Math.min(...positive);
  let max = Math.max(...positive);
  if (log) {
    min = 10 ** Math.floor(Math.log10(min));
    max = 10 ** Math.ceil(Math.log10(max));
    return { min, max, log, ticks: logTicks(min, max) };
  }
  if (includeZero) min = Math.min(0, min);
  const ticks = linearTicks(min, max);
  return { min, max: Math.max(max, ticks.at(-1)!), log, ticks };
}

function scale(
  axis: Axis,
  value: number,
  start: number,
  length: number,
): number {
  const position = axis.log
    ? (Math.log10(value) - Math.log10(axis.min)) /
      (Math.log10(axis.max) - Math.log10(axis.min))
    : (value - axis.min) / (axis.max - axis.min || 1);
  return start + position * length;
}

/** Returns an SVG document with one line per series. */
export function lineChart(options: ChartOptions): string {
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const points = options.series.flatMap((series) => series.points);
  const xAxis = makeAxis(
    points.map(([x]) => x),
    options.logX ?? false,
    true,
  );
  const thresholdValues = (options.thresholds ?? []).map(
    (threshold) => threshold.y,
  );
  const yAxis = makeAxis(
    [...points.map(([, y]) => y), ...thresholdValues],
    options.logY ?? false,
    true,
  );
  const x = (value: number): number =>
    scale(xAxis, value, MARGIN.left, plotWidth);
  const y = (value: number): number =>
    scale(yAxis, value, MARGIN.top + plotHeight, -plotHeight);
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${WIDTH} ${HEIGHT}" width="${WIDTH}" height="${HEIGHT}" font-family="sans-serif" font-size="12">`,
    `<rect width="${WIDTH}" height="${HEIGHT}" fill="#ffffff"/>`,
    `<text x="${MARGIN.left}" y="28" font-size="15" font-weight="bold">${escapeXml(options.title)}</text>`,
  ];
  for (const tick of xAxis.ticks) {
    const position = x(tick).toFixed(1);
    parts.push(
      `<line x1="${position}" y1="${MARGIN.top}" x2="${position}" y2="${MARGIN.top + plotHeight}" stroke="#e5e5e5"/>`,
      `<text x="${position}" y="${MARGIN.top + plotHeight + 18}" text-anchor="middle">${formatTick(tick)}</text>`,
    );
  }
  for (const tick of yAxis.ticks) {
    const position = y(tick).toFixed(1);
    parts.push(
      `<line x1="${MARGIN.left}" y1="${position}" x2="${MARGIN.left + plotWidth}" y2="${position}" stroke="#e5e5e5"/>`,
      `<text x="${MARGIN.left - 8}" y="${position}" text-anchor="end" dominant-baseline="middle">${formatTick(tick)}</text>`,
    );
  }
  parts.push(
    `<rect x="${MARGIN.left}" y="${MARGIN.top}" width="${plotWidth}" height="${plotHeight}" fill="none" stroke="#333333"/>`,
    `<text x="${MARGIN.left + plotWidth / 2}" y="${HEIGHT - 14}" text-anchor="middle">${escapeXml(options.xLabel)}</text>`,
    `<text transform="translate(18 ${MARGIN.top + plotHeight / 2}) rotate(-90)" text-anchor="middle">${escapeXml(options.yLabel)}</text>`,
  );
  for (const threshold of options.thresholds ?? []) {
    const position = y(threshold.y).toFixed(1);
    parts.push(
      `<line x1="${MARGIN.left}" y1="${position}" x2="${MARGIN.left + plotWidth}" y2="${position}" stroke="#999999" stroke-dasharray="2 3"/>`,
      `<text x="${MARGIN.left + 6}" y="${Number(position) + 14}" fill="#666666">${escapeXml(threshold.label)}</text>`,
    );
  }
  options.series.forEach((series, index) => {
    const colour = COLOURS[index % COLOURS.length]!;
    const visible = series.points.filter(
      ([px, py]) => (!xAxis.log || px > 0) && (!yAxis.log || py > 0),
    );
    const path = visible
      .map(([px, py]) => `${x(px).toFixed(1)},${y(py).toFixed(1)}`)
      .join(" ");
    const dash = series.dashed ? ` stroke-dasharray="6 4"` : "";
    parts.push(
      `<polyline points="${path}" fill="none" stroke="${colour}" stroke-width="2"${dash}/>`,
    );
    for (const [px, py] of visible) {
      parts.push(
        `<circle cx="${x(px).toFixed(1)}" cy="${y(py).toFixed(1)}" r="3" fill="${colour}"/>`,
      );
    }
    const legendY = MARGIN.top + 8 + index * 20;
    const legendX = MARGIN.left + plotWidth + 14;
    parts.push(
      `<line x1="${legendX}" y1="${legendY}" x2="${legendX + 22}" y2="${legendY}" stroke="${colour}" stroke-width="2"${dash}/>`,
      `<text x="${legendX + 28}" y="${legendY}" dominant-baseline="middle">${escapeXml(series.name)}</text>`,
    );
  });
  parts.push("</svg>", "");
  return parts.join("\n");
}
