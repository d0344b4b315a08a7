/**
 * Builds the dashboard into dist/dashboard/: main.ts bundled with the
 * client SDK into one minified ES module with a source map, plus the
 * static files. The relay serves that folder at `/`. Fails when a
 * Node-only module gets into the bundle.
 *
 *   node --import tsx client-sdk/dashboard/build.ts
 */
import { build } from "esbuild";
import { copyFile, mkdir } from "node:fs/promises";
import { join } from "node:path";
import process from "node:process";
import { fileURLToPath, pathToFileURL } from "node:url";

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const SOURCE_DIR = "client-sdk/dashboard";
/** Output folder, relative to the repository root. */
export const DASHBOARD_OUT_DIR = "dist/dashboard";
/** Files copied as they are. */
const STATIC_FILES = ["index.html", "styles.css", "favicon.svg"];

/** Bundle inputs that only work in Node. */
const NODE_ONLY_INPUTS = [
  /(^|\/)node_modules\/ws\//,
  /(^|\/)node_modules\/debug\/src\/node\.js$/,
  /\.node\.js$/,
  /^node:/,
];

export interface DashboardBuild {
  /** Absolute path of the output folder. */
  outDir: string;
  /** Size of main.js in bytes. */
  bundleBytes: number;
}

/** Bundles and copies the dashboard; throws when the bundle has Node-only inputs. */
export async function buildDashboard(): Promise<DashboardBuild> {
  const outDir = join(ROOT, DASHBOARD_OUT_DIR);
  const outfile = `${DASHBOARD_OUT_DIR}/main.js`;
  await mkdir(outDir, { recursive: true });
  const result = await build({
    absWorkingDir: ROOT,
    entryPoints: [`${SOURCE_DIR}/main.ts`],
    outfile,
    bundle: true,
    format: "esm",
    platform: "browser",
    target: "es2020",
    minify: true,
    sourcemap: true,
    metafile: true,
    logLevel: "warning",
  });
  const nodeOnly = Object.keys(result.metafile.inputs).filter((input) =>
    NODE_ONLY_INPUTS.some((pattern) => pattern.test(input)),
  );
  if (nodeOnly.length > 0) {
    throw new Error(
      `dashboard bundle ${outfile} contains Node-only modules:\n  ${nodeOnly.join("\n  ")}`,
    );
  }
  for (const file of STATIC_FILES) {
    await copyFile(join(ROOT, SOURCE_DIR, file), join(outDir, file));
  }
  return { outDir, bundleBytes: result.metafile.outputs[outfile]?.bytes ?? 0 };
}

const runDirectly =
  process.argv[1] !== undefined &&
  import.meta.url === pathToFileURL(process.argv[1]).href;
if (runDirectly) {
  try {
    const { bundleBytes } = await buildDashboard();
    process.stdout.write(
      `built ${DASHBOARD_OUT_DIR}/ (main.js ${Math.round(bundleBytes / 1024)} KiB)\n`,
    );
  } catch (error) {
    process.stderr.write(
      `${error instanceof Error ? error.message : String(error)}\n`,
    );
    process.exitCode = 1;
  }
}
