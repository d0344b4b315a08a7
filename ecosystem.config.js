// PM2 process file for the relay: `npm run build`, then
// `pm2 start ecosystem.config.js`.
//
// PM2 require()s this file. In this ES module package that loads it as an
// ES module (Node >= 20.19 can require() one), and PM2 reads its named
// `apps` export, so the file has no `module.exports`.
//
// Every variable the relay reads (see the README's configuration table) is
// passed through from the environment of `pm2 start`. The ones below get
// defaults. Keep AUTH_SECRET out of this file: export it in the shell, or
// set AUTH_PUBLIC_KEY instead.

import { availableParallelism, homedir } from "node:os";
import { join } from "node:path";
import { env } from "node:process";

/** Default of SHUTDOWN_TIMEOUT_MS in server/config.ts, in ms. */
const RELAY_SHUTDOWN_TIMEOUT_MS = 10_000;

const shutdownTimeoutMs =
  Number(env.SHUTDOWN_TIMEOUT_MS) || RELAY_SHUTDOWN_TIMEOUT_MS;

const logDirectory =
  env.RELAY_LOG_DIR || join(env.PM2_HOME || join(homedir(), ".pm2"), "logs");

export const apps = [
  {
    name: "bridge-relay",
    cwd: import.meta.dirname,
    // Compiled JavaScript from `npm run build`, so no TypeScript loader runs
    // in production.
    script: "dist/server/main.js",
    node_args: ["--enable-source-maps"],

    // One PM2 process. The relay forks its own workers (node:cluster) and
    // hands connections to them with sticky sessions, which long-polling
    // needs. PM2's cluster mode would balance requests without stickiness.
    exec_mode: "fork",
    instances: 1,

    env: {
      NODE_ENV: "production",
      PORT: env.PORT || "8080",
      HOST: env.HOST || "0.0.0.0",
      WORKERS: env.WORKERS || String(availableParallelism()),
      // The relay rejects REDIS_URL next to REDIS_CLUSTER_NODES, so the
      // default applies only without a cluster.
      ...(env.REDIS_CLUSTER_NODES
        ? {}
        : { REDIS_URL: env.REDIS_URL || "redis://127.0.0.1:6379" }),
      LOG_FORMAT: env.LOG_FORMAT || "json",
    },

    // On stop, PM2 sends SIGINT (its default kill signal) to the process
    // tree, and SIGKILL after kill_timeout. Each worker drains its
    // connections over DRAIN_WINDOW_MS and exits within SHUTDOWN_TIMEOUT_MS,
    // and the primary kills any worker left 1 s later, so PM2 waits 5 s
    // beyond SHUTDOWN_TIMEOUT_MS.
    //
    // `pm2 reload` of a fork-mode process is a stop followed by a start
    // (PM2 7.0.4), so this machine refuses connections between the old
    // primary closing its port and the new one listening. To replace the workers
    // one at a time without that gap, send the primary SIGUSR2:
    // `pm2 sendSignal SIGUSR2 bridge-relay`. It loads the new code into the
    // workers but keeps the running primary.
    kill_timeout: shutdownTimeoutMs + 5000,

    // The primary sends "ready" once it listens, which is after its first
    // worker is ready. So `pm2 start`, `pm2 reload` and `pm2 restart`
    // return once the relay serves, or after listen_timeout if it never
    // does, as when no worker can reach Redis. PM2 then shows the app
    // online although nothing listens. The relay's log names what it waits for.
    wait_ready: true,
    listen_timeout: 30_000,

    // Restart after a crash with a growing delay: in PM2 7.0.4 it starts at
    // 100 ms, grows 1.5 times per restart up to 15 s, and resets after 30 s
    // of uptime. PM2 gives up after 10 restarts that each ran under 10 s.
    autorestart: true,
    exp_backoff_restart_delay: 100,
    min_uptime: 10_000,
    max_restarts: 10,

    // The relay writes JSON lines (pino) to stdout and fatal start-up
    // errors to stderr. The workers share the primary's stdout and stderr,
    // so these two files hold the output of the whole process tree. They go
    // to PM2's log folder unless RELAY_LOG_DIR names another one.
    out_file: join(logDirectory, "bridge-relay.out.log"),
    error_file: join(logDirectory, "bridge-relay.error.log"),
    merge_logs: true,
  },
];
