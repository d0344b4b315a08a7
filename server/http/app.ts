import express, { type Express } from "express";
import type { Logger } from "../logger.ts";

export interface HttpDeps {
  /** Resolves when every dependency answers (Redis when configured). */
  checkDependencies: () => Promise<void>;
  isDraining: () => boolean;
  logger: Logger;
}

/** Creates the Express app served beside Socket.IO on the same port. */
export function createHttpApp(deps: HttpDeps): Express {
  const app = express();
  app.disable("x-powered-by");

  app.get("/healthz", (_request, response) => {
    response.json({ status: "ok" });
  });

  app.get("/readyz", async (_request, response) => {
    if (deps.isDraining()) {
      response.status(503).json({ status: "draining" });
      return;
    }
    try {
      await deps.checkDependencies();
      response.json({ status: "ready" });
    } catch (error) {
      deps.logger.warn({ err: error }, "readiness check failed");
      response.status(503).json({ status: "unavailable" });
    }
  });

  return app;
}
