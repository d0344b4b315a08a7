/**
 * The benchmarks run the relay and the bare Socket.IO baseline as compiled
 * JavaScript, as production does (see ecosystem.config.js). Under the tsx
 * loader each named closure that the code creates per request also gets a
 * `__name` call, which a profile of the relay showed on its command path.
 */
import { spawnSync } from "node:child_process";
import { createHash, type Hash } from "node:crypto";
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { join, relative, sep } from "node:path";
import {
  describeOwner,
  removeStaleLock,
  sleepPollInterval,
  tryLock,
  unlock,
} from "./build-lock.ts";
import { ROOT } from "./results.ts";

/** Folders whose TypeScript `tsconfig.build.json` compiles into dist/. */
const SOURCE_DIRS = [
  "server",
  "client-sdk/src",
  "client-sdk/simulator",
  "bench/baselines",
];

/** Files besides the sources whose content changes what `tsc` emits. */
const CONFIG_FILES = [
  "tsconfig.json",
  "tsconfig.build.json",
  "package.json",
  "package-lock.json",
];

/** Folder that `tsconfig.build.json` compiles into, relative to the project root. */
const OUT_DIR = "dist";
/** Fingerprint of the last successful build, under OUT_DIR. */
export const FINGERPRINT_FILE = ".bench-build-fingerprint.json";
/** Lock directory under OUT_DIR that a process holds while it builds. */
export const LOCK_DIR = ".bench-build-lock";

/** Entry of the compiled relay, relative to the repository root. */
export const COMPILED_RELAY = join("dist", "server", "main.js");
/** The compiled bare Socket.IO baseline. */
export const COMPILED_BARE = join(
  "dist",
  "bench",
  "baselines",
  "bare-socketio.js",
);

/** A TypeScript project that `tsc -p tsconfig.build.json` compiles into dist/. */
export interface BuildProject {
  /** Folder holding the tsconfig files, package.json and the sources. */
  root: string;
  /** Source folders relative to `root`, each emitted to the same path under dist/. */
  sourceDirs: string[];
}

/** The relay and the baseline in this repository. */
const RELAY_PROJECT: BuildProject = { root: ROOT, sourceDirs: SOURCE_DIRS };

/** The tsc of this repository's node_modules, which compiles every project. */
const TSC = join(ROOT, "node_modules", "typescript", "bin", "tsc");

let checked = false;

/**
 * Compiles the relay and the baseline into dist/ unless the last build's
 * fingerprint still matches. Checks once per process.
 */
export function ensureCompiled(): void {
  if (checked) return;
  compileIfChanged(RELAY_PROJECT);
  checked = true;
}

/**
 * Runs `tsc -p tsconfig.build.json` in `project.root` when its fingerprint
 * differs from the one that the last successful build stored, or when none
 * is stored. Only one process builds at a time, and the others wait for its
 * lock and then check the fingerprint again. Returns true when it ran tsc.
 */
export function compileIfChanged(project: BuildProject): boolean {
  const outDir = join(project.root, OUT_DIR);
  const lock = join(outDir, LOCK_DIR);
  let waiting = false;
  for (;;) {
    if (isUpToDate(project)) return false;
    mkdirSync(outDir, { recursive: true });
    if (tryLock(lock)) {
      try {
        // Another process may have finished a build since the check above.
        if (isUpToDate(project)) return false;
        build(project);
        return true;
      } finally {
        unlock(lock);
      }
    }
    if (removeStaleLock(lock)) continue;
    if (!waiting) {
      console.error(
        `waiting for the build into ${outDir} (${describeOwner(lock)})`,
      );
      waiting = true;
    }
    sleepPollInterval();
  }
}

/** Empties the output folders, runs tsc, then stores the fingerprint of the result. */
function build(project: BuildProject): void {
  const outDir = join(project.root, OUT_DIR);
  rmSync(join(outDir, FINGERPRINT_FILE), { force: true });
  // tsc leaves the output of deleted sources in place, so the folders that
  // it writes start empty. The browser SDK and dashboard builds write
  // dist/browser and dist/dashboard, which stay.
  for (const dir of project.sourceDirs) {
    rmSync(join(outDir, dir), { recursive: true, force: true });
  }
  const tsconfig = join(project.root, "tsconfig.build.json");
  console.error(`compiling ${tsconfig} into ${outDir}`);
  const result = spawnSync(
    process.execPath,
    [TSC, "-p", "tsconfig.build.json"],
    { cwd: project.root, stdio: "inherit" },
  );
  if (result.status !== 0) {
    const reason = result.error?.message ?? `exit status ${result.status}`;
    throw new Error(
      `tsc -p tsconfig.build.json failed in ${project.root}: ${reason}`,
    );
  }
  writeFileSync(
    join(outDir, FINGERPRINT_FILE),
    JSON.stringify(fingerprint(project), null, 2) + "\n",
  );
}

/** Hashes of what a build read and of what it wrote. */
interface Fingerprint {
  inputs: string;
  outputs: string;
}

function isUpToDate(project: BuildProject): boolean {
  let stored: Fingerprint;
  try {
    const path = join(project.root, OUT_DIR, FINGERPRINT_FILE);
    stored = JSON.parse(readFileSync(path, "utf8")) as Fingerprint;
  } catch {
    return false;
  }
  const current = fingerprint(project);
  return stored.inputs === current.inputs && stored.outputs === current.outputs;
}

/**
 * Computes two SHA-256 hashes. The inputs hash covers the Node and
 * TypeScript versions, the config files and every file under the source
 * folders, each by path and content. The outputs hash covers every file
 * in the output folders.
 */
function fingerprint(project: BuildProject): Fingerprint {
  const inputs = createHash("sha256");
  inputs.update(`node ${process.version}\0typescript ${typescriptVersion()}\0`);
  for (const file of CONFIG_FILES) {
    hashFile(inputs, project.root, join(project.root, file));
  }
  for (const dir of project.sourceDirs) {
    hashTree(inputs, project.root, join(project.root, dir));
  }
  const outputs = createHash("sha256");
  for (const dir of project.sourceDirs) {
    hashTree(outputs, project.root, join(project.root, OUT_DIR, dir));
  }
  return { inputs: inputs.digest("hex"), outputs: outputs.digest("hex") };
}

function typescriptVersion(): string {
  const manifest = join(ROOT, "node_modules", "typescript", "package.json");
  return (JSON.parse(readFileSync(manifest, "utf8")) as { version: string })
    .version;
}

/** Adds every file under `dir`, in sorted order, to `hash`. A missing folder adds nothing. */
function hashTree(hash: Hash, root: string, dir: string): void {
  if (!existsSync(dir)) return;
  const entries = readdirSync(dir, { withFileTypes: true });
  // Names in one folder are unique, so no two entries compare equal.
  entries.sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const entry of entries) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) hashTree(hash, root, path);
    else hashFile(hash, root, path);
  }
}

/** Adds the path of `path` relative to `root` and its content, or a mark that it is missing. */
function hashFile(hash: Hash, root: string, path: string): void {
  const name = relative(root, path).split(sep).join("/");
  let content: Buffer;
  try {
    content = readFileSync(path);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
    hash.update(`${name}\0missing\0`);
    return;
  }
  // The length keeps one file's end from reading as the next file's name.
  hash.update(`${name}\0${content.length}\0`);
  hash.update(content);
}
