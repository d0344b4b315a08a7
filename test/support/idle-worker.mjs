/* global setInterval */
// A cluster worker that does nothing until the primary kills it. Plain
// JavaScript, so that it runs without tsx and the esbuild process tsx starts.
setInterval(() => undefined, 60_000);
