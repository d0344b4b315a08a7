/**
 * Preloaded into the servers under test by the idle-memory scenario
 * (through NODE_OPTIONS=--import). When HEAP_PROBE_DIR is set, each
 * process listens on the Unix socket <HEAP_PROBE_DIR>/<pid>.sock and, for
 * each connection, runs a full garbage collection and responds with its
 * heap in use, the heap V8 has reserved, and its RSS, as JSON. Garbage then no longer counts, which RSS cannot
 * show. Plain JavaScript, so that it loads before any TypeScript loader.
 */
import { createServer } from "node:net";
import { join } from "node:path";
import { setFlagsFromString } from "node:v8";
import { runInNewContext } from "node:vm";
import process from "node:process";

const dir = process.env.HEAP_PROBE_DIR;
if (dir) {
  setFlagsFromString("--expose-gc");
  const collectGarbage = runInNewContext("gc");
  const server = createServer((socket) => {
    collectGarbage();
    collectGarbage();
    const { heapUsed, heapTotal, rss, external, arrayBuffers } =
      process.memoryUsage();
    socket.end(
      JSON.stringify({
        pid: process.pid,
        heapUsed,
        heapTotal,
        rss,
        external,
        arrayBuffers,
      }),
    );
  });
  server.listen(join(dir, `${process.pid}.sock`));
  server.unref();
}
