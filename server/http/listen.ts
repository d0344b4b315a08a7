import { createServer, type Server } from "node:net";

/** Error codes of a failed listen that the user can fix with another PORT or HOST. */
const ADDRESS_ERRORS: Record<string, string> = {
  EADDRINUSE: "is in use",
  EACCES: "needs privileges this process lacks",
  EADDRNOTAVAIL: "is not an address of this machine",
};

/**
 * Error codes of the host name lookup that comes before a listen on a
 * HOST that is not an IP address, with what went wrong and the fix.
 */
const DNS_FAILED = {
  problem: "could not be resolved because the DNS lookup failed",
  fix: "check the DNS server, or set HOST to an IP address of this machine",
};
const LOOKUP_ERRORS: Record<string, { problem: string; fix: string }> = {
  ENOTFOUND: {
    problem: "was not found",
    fix: "set HOST to an IP address of this machine or to a host name that resolves to one",
  },
  EAI_AGAIN: DNS_FAILED,
  EAI_FAIL: DNS_FAILED,
};

/** A listen that failed for a reason the user can fix. */
export class ListenError extends Error {
  constructor(
    message: string,
    readonly code: string,
    readonly port: number,
    readonly host: string,
  ) {
    super(message);
    this.name = "ListenError";
  }
}

/**
 * Returns `error` as a ListenError when its code shows that the address
 * cannot be used, with a message on what to change, and unchanged otherwise.
 */
export function explainListenError(
  error: unknown,
  port: number,
  host: string,
): unknown {
  const code = (error as NodeJS.ErrnoException | null)?.code;
  if (code === undefined) return error;
  const lookup = LOOKUP_ERRORS[code];
  if (lookup !== undefined) {
    return new ListenError(
      // Quoted, so that a space at either end of HOST shows.
      `HOST ${JSON.stringify(host)} ${lookup.problem} (${code}); ${lookup.fix}`,
      code,
      port,
      host,
    );
  }
  if (!(code in ADDRESS_ERRORS)) return error;
  return new ListenError(
    `port ${port} on ${host} ${ADDRESS_ERRORS[code]} (${code}); run with another PORT or HOST`,
    code,
    port,
    host,
  );
}

/** Listens on `port` and `host`, and rejects with a ListenError when the address cannot be used. */
export function listenOn(
  server: Server,
  options: { port: number; host: string; backlog?: number },
): Promise<void> {
  return new Promise((resolve, reject) => {
    const onError = (error: Error): void => {
      reject(explainListenError(error, options.port, options.host));
    };
    server.once("error", onError);
    server.listen(options, () => {
      server.off("error", onError);
      resolve();
    });
  });
}

/**
 * Rejects with a ListenError when nothing could listen on `port` and
 * `host` now. The primary checks this before it starts workers, since it
 * listens only once one is ready. Another process may still take the
 * port in between. Port 0 is probed too, on a port the system picks,
 * because HOST may still not resolve or not be an address of this machine.
 */
export async function checkAddressFree(
  port: number,
  host: string,
): Promise<void> {
  const probe = createServer();
  await listenOn(probe, { port, host });
  await new Promise<void>((resolve) => probe.close(() => resolve()));
}
