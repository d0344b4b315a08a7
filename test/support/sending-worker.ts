// A cluster worker that sends to its primary once the primary has closed
// the IPC channel, and logs JSON lines to stdout. The primary closes the
// channel with `worker.disconnect()`, which leaves this worker running.
import cluster from "node:cluster";
import { pino } from "pino";
import {
  sendToPrimary,
  watchPrimaryErrors,
} from "../../server/cluster/worker-ipc.ts";

const logger = pino({ level: "debug" });
watchPrimaryErrors(logger);

cluster.worker!.once("disconnect", () => {
  // As prom-client 15.1 sends its metrics responses: without a callback.
  process.send!("test:without-callback");
  const sent = sendToPrimary("test:routed", logger);
  logger.info({ connected: process.connected, sent }, "sent after disconnect");
  setTimeout(() => {
    logger.info("still running");
    process.exit(0);
  }, 200);
});
process.send!("test:listening");
