/**
 * Prints a signed relay JWT to stdout, and nothing else there, so scripts
 * can capture it:
 *
 *   npm run token -- bridge <bridgeId> [--expires-in 30d]
 *   npm run token -- app <userId> --bridges <id>,<id> --scope "read control" [--expires-in 1h]
 */
import process from "node:process";
import { parseArgs } from "node:util";
import { ConfigError, loadConfig } from "../config.ts";
import { resolveSecret, secretFileWarning } from "../auth/secret.ts";
import {
  signAppToken,
  signBridgeToken,
  type TokenIssuerOptions,
} from "../auth/token-signing.ts";

const USAGE = `Usage:
  npm run token -- bridge <bridgeId> [--expires-in 30d]
  npm run token -- app <userId> --bridges <id>,<id> --scope "read control" [--expires-in 1h]

Prints a relay JWT signed with HS256 to stdout.

Options:
  --expires-in <span>  lifetime from now, such as 90s, 15m, 1h or 30d, or
                       "none" for a token without exp
                       (default: 30d for bridge, 1h for app)
  --bridges <ids>      app only: comma-separated bridge IDs the token grants,
                       16 hexadecimal digits each
  --scope <scopes>     app only: "read", "control" or "read control"
  -h, --help           print this help

The secret is AUTH_SECRET or, outside production, the development secret
file (AUTH_SECRET_FILE, default .data/auth-secret) that the relay also
reads; the file is created when missing and never replaced. AUTH_ISSUER and AUTH_AUDIENCE,
when set, become the iss and aud claims.`;

const DEFAULT_EXPIRY = { bridge: "30d", app: "1h" } as const;

/** A command-line mistake; the tool prints it with a pointer to --help. */
class UsageError extends Error {}

interface ParsedCommand {
  role: "bridge" | "app";
  subject: string;
  expiresIn: string | undefined;
  bridges: string[];
  scope: string;
}

function parseCommand(argv: string[]): ParsedCommand | "help" {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      "expires-in": { type: "string" },
      bridges: { type: "string" },
      scope: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) return "help";
  const [role, subject, ...extra] = positionals;
  if (role !== "bridge" && role !== "app") {
    throw new UsageError(
      `invalid token kind ${JSON.stringify(role ?? "")}: expected bridge or app`,
    );
  }
  if (subject === undefined || subject === "") {
    throw new UsageError(
      `missing ${role === "bridge" ? "bridge ID" : "user ID"}`,
    );
  }
  if (extra.length > 0) {
    throw new UsageError(`unexpected argument ${JSON.stringify(extra[0])}`);
  }
  const expiry = values["expires-in"] ?? DEFAULT_EXPIRY[role];
  return {
    role,
    subject,
    expiresIn: expiry === "none" ? undefined : expiry,
    bridges: parseBridgeList(role, values.bridges),
    scope: parseScope(role, values.scope),
  };
}

function parseBridgeList(role: string, value: string | undefined): string[] {
  if (role === "bridge") {
    if (value !== undefined)
      throw new UsageError("--bridges is for app tokens only");
    return [];
  }
  const ids = (value ?? "")
    .split(",")
    .map((id) => id.trim())
    .filter(Boolean);
  if (ids.length === 0) {
    throw new UsageError("missing --bridges: give at least one bridge ID");
  }
  return ids;
}

function parseScope(role: string, value: string | undefined): string {
  if (role === "bridge") {
    if (value !== undefined)
      throw new UsageError("--scope is for app tokens only");
    return "";
  }
  if (value === undefined) {
    throw new UsageError(
      'missing --scope: give "read", "control" or "read control"',
    );
  }
  return value;
}

function loadSigningSecret(): { secret: string; issuer: TokenIssuerOptions } {
  const config = loadConfig();
  const resolved = resolveSecret(config);
  if (resolved.secret === undefined) {
    throw new ConfigError(
      "no HS256 secret available: the relay is configured with AUTH_PUBLIC_KEY and no AUTH_SECRET; " +
        "sign tokens with the matching private key instead",
    );
  }
  if (resolved.generated) {
    console.error(`created development secret in ${resolved.file}`);
  }
  const warning = secretFileWarning(resolved);
  if (warning !== undefined) console.error(warning);
  const { issuer, audience } = config.auth;
  return { secret: resolved.secret, issuer: { issuer, audience } };
}

async function run(argv: string[]): Promise<number> {
  let command: ParsedCommand | "help";
  try {
    command = parseCommand(argv);
  } catch (error) {
    console.error(`${(error as Error).message}\nRun with --help for usage.`);
    return 2;
  }
  if (command === "help") {
    console.log(USAGE);
    return 0;
  }
  try {
    const { secret, issuer } = loadSigningSecret();
    const token =
      command.role === "bridge"
        ? await signBridgeToken(secret, command.subject, {
            ...issuer,
            expiresIn: command.expiresIn,
          })
        : await signAppToken(
            secret,
            command.subject,
            {
              bridges: command.bridges,
              scope: command.scope,
              expiresIn: command.expiresIn,
            },
            issuer,
          );
    process.stdout.write(`${token}\n`);
    return 0;
  } catch (error) {
    if (error instanceof TypeError) {
      console.error(`${error.message}\nRun with --help for usage.`);
      return 2;
    }
    if (error instanceof ConfigError) {
      console.error(error.message);
      return 1;
    }
    throw error;
  }
}

process.exitCode = await run(process.argv.slice(2));
