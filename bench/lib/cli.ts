import { parseArgs, type ParseArgsConfig } from "node:util";
import { DEFAULT_RESULTS_DIR } from "./results.ts";

type Options = NonNullable<ParseArgsConfig["options"]>;

/** Options every scenario script takes. */
const COMMON_OPTIONS = {
  smoke: { type: "boolean", default: false },
  out: { type: "string", default: DEFAULT_RESULTS_DIR },
  help: { type: "boolean", default: false },
} as const satisfies Options;

const COMMON_HELP = `  --smoke        run at a tiny size in a few seconds, to check that the scenario works
  --out DIR      folder for the JSON result (default bench/results)
  --help         print this help`;

interface CommonValues {
  smoke: boolean;
  out: string;
  help: boolean;
}

/** Values of scenario options: booleans, or strings that are absent without a default. */
type OptionValues<T extends Options> = {
  [Name in keyof T]: T[Name] extends { type: "boolean" }
    ? boolean
    : string | undefined;
};

/**
 * Parses the command line of a scenario script: the common options plus
 * `options`. Prints `usage` and exits on --help, and exits with status 2
 * and a message on an unknown option.
 */
export function parseBenchArgs<T extends Options>(usage: string, options: T) {
  let parsed;
  try {
    parsed = parseArgs({
      options: { ...COMMON_OPTIONS, ...options },
      allowPositionals: false,
    });
  } catch (error) {
    console.error(`${(error as Error).message}\n\n${usage}\n${COMMON_HELP}`);
    process.exit(2);
  }
  const values = parsed.values as unknown as CommonValues & OptionValues<T>;
  if (values.help) {
    console.log(`${usage}\n${COMMON_HELP}`);
    process.exit(0);
  }
  return values;
}

/**
 * Returns the option `name` as a whole number of at least `min`, or exits
 * with status 2 and a message naming the option.
 */
export function integerOption(
  value: string | undefined,
  name: string,
  min: number,
): number {
  const number = Number(value);
  if (value === undefined || !Number.isInteger(number) || number < min) {
    console.error(
      `--${name} must be a whole number of at least ${min}, got ${value}`,
    );
    process.exit(2);
  }
  return number;
}

/** Parses a comma-separated list of whole numbers, such as `1000,2000,5000`. */
export function integerListOption(
  value: string | undefined,
  name: string,
  min: number,
): number[] {
  const items = (value ?? "").split(",").filter((item) => item.trim() !== "");
  if (items.length === 0) {
    console.error(`--${name} must list at least one whole number`);
    process.exit(2);
  }
  return items.map((item) => integerOption(item.trim(), name, min));
}
