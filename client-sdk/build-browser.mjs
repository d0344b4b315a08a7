/**
 * Bundles the client SDK for browsers: one minified ES module with a source
 * map at dist/browser/relay-sdk.js. Fails when a Node-only module gets into
 * the bundle, such as the `ws` package or the Node builds of `debug` and
 * engine.io-client, which the browser field of their packages replaces.
 */
import { build } from "esbuild";
import { relative } from "node:path";
import process from "node:process";
import { URL, fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const outfile = "dist/browser/relay-sdk.js";

/** Bundle inputs that only work in Node. */
const NODE_ONLY_INPUTS = [
  /(^|\/)node_modules\/ws\//,
  /(^|\/)node_modules\/debug\/src\/node\.js$/,
  /\.node\.js$/,
  /^node:/,
];

const result = await build({
  absWorkingDir: root,
  entryPoints: ["client-sdk/src/index.ts"],
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
  process.stderr.write(
    `browser bundle ${outfile} contains Node-only modules:\n  ${nodeOnly.join("\n  ")}\n`,
  );
  process.exit(1);
}

const bytes = result.metafile.outputs[outfile]?.bytes ?? 0;
process.stdout.write(
  `built ${relative(process.cwd(), `${root}${outfile}`) || outfile} (${Math.round(bytes / 1024)} KiB)\n`,
);
