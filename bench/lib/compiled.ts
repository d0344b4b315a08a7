/**
 * The benchmarks run the relay and the bare Socket.IO baseline as compiled
 * JavaScript, as production does (see ecosystem.config.js). Under the tsx
 * loader each named closure that the code creates per request also gets a
 * `__name` call, which a profile of the relay showed on its command path.
 */
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";
import { ROOT } from "./results.ts";

/** Folders whose TypeScript `tsconfig.build.json` compiles into dist/. */
const SOURCE_DIRS = [
  "server",
  "client-sdk/src",
  "client-sdk/simulator",
  "bench/baselines",
];

/** Entry of the compiled relay, relative to the repository root. */
export const COMPILED_RELAY = join("dist", "server", "main.js");
/** The compiled bare Socket.IO baseline. */
export const COMPILED_BARE = join(
  "dist",
  "bench",
  "baselines",
  "bare-socketio.js",
);

let checked = false;

/** Compiles the sources with `tsc` when dist/ is missing or older than any of them. */
export function ensureCompiled(): void {
  if (checked) return;
  const builtAt = modifiedAt(join(ROOT, COMPILED_BARE));
  const newest = Math.max(
    modifiedAt(join(ROOT, "tsconfig.build.json")),
    ...SOURCE_DIRS.map((dir) => newestSource(join(ROOT, dir))),
  );
  if (builtAt < newest || modifiedAt(join(ROOT, COMPILED_RELAY)) < newest) {
    console.error("compiling the relay and the baseline into dist/");
    const tsc = join(ROOT, "node_modules", "typescript", "bin", "tsc");
    const result = spawnSync(
      process.execPath,
      [tsc, "-p", "tsconfig.build.json"],
      { cwd: ROOT, stdio: "inherit" },
    );
    if (result.status !== 0) {
      throw new Error(
        `tsc -p tsconfig.build.json failed with ${result.status}`,
      );
    }
  }
  checked = true;
}

/** Returns the modification time of `path` in ms, or 0 when it is missing. */
function modifiedAt(path: string): number {
  try {
    return statSync(path).mtimeMs;
  } catch {
    return 0;
  }
}

/** Returns the newest modification time of the `.ts` files under `dir`. */
function newestSource(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) newest = Math.max(newest, newestSource(path));
    else if (entry.name.endsWith(".ts")) {
      newest = Math.max(newest, modifiedAt(path));
    }
  }
  return newest;
}
