import assert from "node:assert/strict";
import { generateKeyPairSync, type KeyObject } from "node:crypto";
import { SignJWT, type JWTPayload } from "jose";
import {
  MAX_TOKEN_LENGTH,
  TokenVerifier,
  type VerifierOptions,
} from "../server/auth/verify.ts";
import { RelayError } from "../server/errors.ts";

const SECRET = "test-secret-0123456789abcdefghijklmnopqrstuvwxyz";
const BRIDGE_ID = "001788fffe4f3a2b";
const ISSUER = "https://auth.example.test";
const AUDIENCE = "bridge-relay";

interface KeyPair {
  publicKeyPem: string;
  privateKey: KeyObject;
}

function generatePair(type: "ec" | "rsa"): KeyPair {
  const { publicKey, privateKey } =
    type === "ec"
      ? generateKeyPairSync("ec", { namedCurve: "P-256" })
      : generateKeyPairSync("rsa", { modulusLength: 2048 });
  const publicKeyPem = publicKey.export({ type: "spki", format: "pem" });
  return { publicKeyPem: publicKeyPem.toString(), privateKey };
}

const ecPair = generatePair("ec");
const otherEcPair = generatePair("ec");
const rsaPair = generatePair("rsa");

interface SignOptions {
  alg?: "HS256" | "ES256" | "RS256";
  /** Signing key, by default SECRET for HS256 and the matching test key pair otherwise. */
  key?: KeyObject | Uint8Array;
  /** Expiry (`exp`) in seconds from now. */
  expiresIn?: number;
  /** Start of validity (`nbf`) in seconds from now. */
  notBeforeIn?: number;
  /** Time of issue (`iat`) in seconds from now; 0 by default. */
  issuedIn?: number;
  issuer?: string;
  audience?: string | string[];
}

function nowSeconds(): number {
  return Math.floor(Date.now() / 1000);
}

function defaultKey(alg: "HS256" | "ES256" | "RS256"): KeyObject | Uint8Array {
  if (alg === "ES256") return ecPair.privateKey;
  if (alg === "RS256") return rsaPair.privateKey;
  return new TextEncoder().encode(SECRET);
}

/** Signs `claims`, which may be malformed on purpose (a string `exp`, a numeric `sub`). */
function sign(
  claims: Record<string, unknown>,
  options: SignOptions = {},
): Promise<string> {
  const alg = options.alg ?? "HS256";
  const jwt = new SignJWT(claims as JWTPayload)
    .setProtectedHeader({ alg })
    .setIssuedAt(nowSeconds() + (options.issuedIn ?? 0));
  if (options.expiresIn !== undefined) {
    jwt.setExpirationTime(nowSeconds() + options.expiresIn);
  }
  if (options.notBeforeIn !== undefined) {
    jwt.setNotBefore(nowSeconds() + options.notBeforeIn);
  }
  if (options.issuer !== undefined) jwt.setIssuer(options.issuer);
  if (options.audience !== undefined) jwt.setAudience(options.audience);
  return jwt.sign(options.key ?? defaultKey(alg));
}

function base64url(value: object): string {
  return Buffer.from(JSON.stringify(value)).toString("base64url");
}

/** Builds an unsigned JWS: encoded header, encoded payload and an empty signature. */
function unsignedToken(header: object, claims: object): string {
  return `${base64url(header)}.${base64url(claims)}.`;
}

function verifier(options: Partial<VerifierOptions> = {}): TokenVerifier {
  return new TokenVerifier({
    secret: undefined,
    publicKeyPem: undefined,
    issuer: undefined,
    audience: undefined,
    ...options,
  });
}

/** Verifies `token`, which must fail, and returns the RelayError. */
async function rejection(
  tokenVerifier: TokenVerifier,
  token: unknown,
): Promise<RelayError> {
  try {
    await tokenVerifier.verify(token);
  } catch (error) {
    assert.ok(error instanceof RelayError, `expected RelayError: ${error}`);
    return error;
  }
  assert.fail("expected the token to be rejected");
}

async function assertUnauthorized(
  tokenVerifier: TokenVerifier,
  token: unknown,
): Promise<void> {
  const error = await rejection(tokenVerifier, token);
  assert.equal(error.code, "UNAUTHORIZED");
}

const bridgeClaims = { sub: BRIDGE_ID, role: "bridge" };
const appClaims = {
  sub: "user-1",
  role: "app",
  bridges: [BRIDGE_ID],
  scope: "read control",
};

describe("TokenVerifier", () => {
  describe("HS256 secret", () => {
    const hs256 = verifier({ secret: SECRET });

    it("accepts valid bridge token", async () => {
      const identity = await hs256.verify(await sign(bridgeClaims));
      assert.deepEqual(identity, {
        role: "bridge",
        bridgeId: BRIDGE_ID,
        exp: undefined,
      });
    });

    it("rejects token with wrong secret", async () => {
      const token = await sign(bridgeClaims, {
        key: new TextEncoder().encode(`${SECRET}-other`),
      });
      await assertUnauthorized(hs256, token);
    });

    it("rejects token with altered payload", async () => {
      const token = await sign(bridgeClaims);
      const [header, , signature] = token.split(".");
      const altered = base64url({ ...bridgeClaims, sub: "001788fffe4f3a2c" });
      await assertUnauthorized(hs256, `${header}.${altered}.${signature}`);
    });

    it("rejects ES256 token", async () => {
      await assertUnauthorized(
        hs256,
        await sign(bridgeClaims, { alg: "ES256" }),
      );
    });

    it("rejects RS256 token", async () => {
      await assertUnauthorized(
        hs256,
        await sign(bridgeClaims, { alg: "RS256" }),
      );
    });
  });

  describe("public keys", () => {
    it("accepts ES256 with EC key", async () => {
      const es256 = verifier({ publicKeyPem: ecPair.publicKeyPem });
      const identity = await es256.verify(
        await sign(bridgeClaims, { alg: "ES256" }),
      );
      assert.equal(identity.role, "bridge");
    });

    it("accepts RS256 with RSA key", async () => {
      const rs256 = verifier({ publicKeyPem: rsaPair.publicKeyPem });
      const identity = await rs256.verify(
        await sign(bridgeClaims, { alg: "RS256" }),
      );
      assert.equal(identity.role, "bridge");
    });

    it("rejects ES256 from other key", async () => {
      const es256 = verifier({ publicKeyPem: ecPair.publicKeyPem });
      const token = await sign(bridgeClaims, {
        alg: "ES256",
        key: otherEcPair.privateKey,
      });
      await assertUnauthorized(es256, token);
    });

    it("rejects RS256 with EC key", async () => {
      const es256 = verifier({ publicKeyPem: ecPair.publicKeyPem });
      await assertUnauthorized(
        es256,
        await sign(bridgeClaims, { alg: "RS256" }),
      );
    });

    it("rejects ES256 with RSA key", async () => {
      const rs256 = verifier({ publicKeyPem: rsaPair.publicKeyPem });
      await assertUnauthorized(
        rs256,
        await sign(bridgeClaims, { alg: "ES256" }),
      );
    });

    it("rejects HS256 token without secret", async () => {
      const es256 = verifier({ publicKeyPem: ecPair.publicKeyPem });
      await assertUnauthorized(es256, await sign(bridgeClaims));
    });

    it("requires secret or public key", () => {
      assert.throws(() => verifier(), /AUTH_SECRET or AUTH_PUBLIC_KEY/);
    });

    it("rejects Ed25519 public key", () => {
      const { publicKey } = generateKeyPairSync("ed25519");
      const publicKeyPem = publicKey
        .export({ type: "spki", format: "pem" })
        .toString();
      assert.throws(() => verifier({ publicKeyPem }), /AUTH_PUBLIC_KEY/);
    });

    it("rejects P-384 public key", () => {
      const { publicKey } = generateKeyPairSync("ec", { namedCurve: "P-384" });
      const publicKeyPem = publicKey
        .export({ type: "spki", format: "pem" })
        .toString();
      assert.throws(
        () => verifier({ publicKeyPem }),
        /AUTH_PUBLIC_KEY/,
        "a P-384 key can never verify an ES256 token, so it must fail at start",
      );
    });
  });

  describe("secret and key together", () => {
    const ecAndSecret = verifier({
      secret: SECRET,
      publicKeyPem: ecPair.publicKeyPem,
    });
    const rsaAndSecret = verifier({
      secret: SECRET,
      publicKeyPem: rsaPair.publicKeyPem,
    });

    it("accepts HS256 and ES256 tokens", async () => {
      const fromSecret = await ecAndSecret.verify(await sign(bridgeClaims));
      assert.equal(fromSecret.role, "bridge");
      const fromKey = await ecAndSecret.verify(
        await sign(bridgeClaims, { alg: "ES256" }),
      );
      assert.equal(fromKey.role, "bridge");
    });

    it("accepts HS256 and RS256 tokens", async () => {
      const fromSecret = await rsaAndSecret.verify(await sign(bridgeClaims));
      assert.equal(fromSecret.role, "bridge");
      const fromKey = await rsaAndSecret.verify(
        await sign(bridgeClaims, { alg: "RS256" }),
      );
      assert.equal(fromKey.role, "bridge");
    });

    const confusionCases: [string, TokenVerifier, string][] = [
      ["EC key with secret", ecAndSecret, ecPair.publicKeyPem],
      ["RSA key with secret", rsaAndSecret, rsaPair.publicKeyPem],
      [
        "EC key alone",
        verifier({ publicKeyPem: ecPair.publicKeyPem }),
        ecPair.publicKeyPem,
      ],
      [
        "RSA key alone",
        verifier({ publicKeyPem: rsaPair.publicKeyPem }),
        rsaPair.publicKeyPem,
      ],
    ];
    for (const [label, tokenVerifier, pem] of confusionCases) {
      it(`rejects PEM-as-HMAC token, ${label}`, async () => {
        const encoder = new TextEncoder();
        const variants = [pem, pem.trim(), pem.replace(/\n/g, "\r\n")];
        for (const variant of variants) {
          const token = await sign(bridgeClaims, {
            key: encoder.encode(variant),
          });
          await assertUnauthorized(tokenVerifier, token);
        }
      });
    }
  });

  describe("alg none", () => {
    const headers = [
      { alg: "none" },
      { alg: "none", typ: "JWT" },
      { alg: "None" },
      { alg: "NONE" },
    ];
    const verifiers: [string, TokenVerifier][] = [
      ["secret", verifier({ secret: SECRET })],
      ["EC key", verifier({ publicKeyPem: ecPair.publicKeyPem })],
      [
        "secret and key",
        verifier({ secret: SECRET, publicKeyPem: rsaPair.publicKeyPem }),
      ],
    ];
    for (const [label, tokenVerifier] of verifiers) {
      it(`rejects unsigned token with ${label}`, async () => {
        for (const header of headers) {
          await assertUnauthorized(
            tokenVerifier,
            unsignedToken(header, bridgeClaims),
          );
        }
      });
    }

    it("rejects HS256 with empty signature", async () => {
      const token = unsignedToken({ alg: "HS256" }, bridgeClaims);
      await assertUnauthorized(verifier({ secret: SECRET }), token);
    });
  });

  describe("issuer and audience", () => {
    const issuerAudienceVerifier = verifier({
      secret: SECRET,
      issuer: ISSUER,
      audience: AUDIENCE,
    });

    it("accepts configured issuer and audience", async () => {
      const token = await sign(bridgeClaims, {
        issuer: ISSUER,
        audience: AUDIENCE,
      });
      const identity = await issuerAudienceVerifier.verify(token);
      assert.equal(identity.role, "bridge");
    });

    it("accepts audience among several", async () => {
      const token = await sign(bridgeClaims, {
        issuer: ISSUER,
        audience: ["other", AUDIENCE],
      });
      const identity = await issuerAudienceVerifier.verify(token);
      assert.equal(identity.role, "bridge");
    });

    const rejected: [string, SignOptions][] = [
      ["wrong issuer", { issuer: "https://evil.test", audience: AUDIENCE }],
      ["missing issuer", { audience: AUDIENCE }],
      ["wrong audience", { issuer: ISSUER, audience: "other" }],
      ["missing audience", { issuer: ISSUER }],
    ];
    for (const [label, options] of rejected) {
      it(`rejects token with ${label}`, async () => {
        await assertUnauthorized(
          issuerAudienceVerifier,
          await sign(bridgeClaims, options),
        );
      });
    }

    it("ignores iss and aud unconfigured", async () => {
      const plainVerifier = verifier({ secret: SECRET });
      const token = await sign(bridgeClaims, {
        issuer: "https://anyone.test",
        audience: "anything",
      });
      const identity = await plainVerifier.verify(token);
      assert.equal(identity.role, "bridge");
    });
  });

  describe("expiry", () => {
    const hs256 = verifier({ secret: SECRET });

    it("accepts token without exp", async () => {
      const identity = await hs256.verify(await sign(appClaims));
      assert.equal(identity.exp, undefined);
    });

    it("reports exp of valid token", async () => {
      const token = await sign(appClaims, { expiresIn: 3600 });
      const identity = await hs256.verify(token);
      const expected = nowSeconds() + 3600;
      assert.ok(identity.exp !== undefined);
      assert.ok(Math.abs(identity.exp - expected) <= 2);
    });

    it("accepts exp 30 s ago", async () => {
      const token = await sign(bridgeClaims, { expiresIn: -30 });
      const identity = await hs256.verify(token);
      assert.equal(identity.role, "bridge");
    });

    it("rejects exp 120 s ago", async () => {
      const token = await sign(bridgeClaims, { expiresIn: -120 });
      const error = await rejection(hs256, token);
      assert.equal(error.code, "UNAUTHORIZED");
      assert.match(error.message, /expired/);
    });

    it("rejects nbf 120 s ahead", async () => {
      const token = await sign(bridgeClaims, { notBeforeIn: 120 });
      await assertUnauthorized(hs256, token);
    });

    it("accepts iat 30 s ahead", async () => {
      const token = await sign(bridgeClaims, { issuedIn: 30 });
      const identity = await hs256.verify(token);
      assert.equal(identity.role, "bridge");
    });

    it("rejects iat 120 s ahead", async () => {
      const token = await sign(bridgeClaims, { issuedIn: 120 });
      const error = await rejection(hs256, token);
      assert.equal(error.code, "UNAUTHORIZED");
      assert.match(error.message, /invalid token claim iat/);
    });

    it("rejects non-numeric exp", async () => {
      const token = await sign({ ...bridgeClaims, exp: "tomorrow" });
      await assertUnauthorized(hs256, token);
    });
  });

  describe("bridge claims", () => {
    const hs256 = verifier({ secret: SECRET });

    it("lowercases uppercase bridge sub", async () => {
      const token = await sign({ sub: "001788FFFE4F3A2B", role: "bridge" });
      const identity = await hs256.verify(token);
      assert.equal(identity.role, "bridge");
      assert.equal(
        identity.role === "bridge" ? identity.bridgeId : undefined,
        BRIDGE_ID,
      );
    });

    const badSubjects: [string, unknown][] = [
      ["non-hex digit", "001788fffe4f3a2g"],
      ["15 digits", "001788fffe4f3a2"],
      ["17 digits", "001788fffe4f3a2b0"],
      ["colon separators", "00:17:88:ff:fe:4f:3a:2b"],
      ["surrounding spaces", ` ${BRIDGE_ID} `],
      ["number", 1234567890123456],
      ["user name", "user-1"],
      ["missing sub", undefined],
    ];
    for (const [label, sub] of badSubjects) {
      it(`rejects bridge sub: ${label}`, async () => {
        await assertUnauthorized(hs256, await sign({ sub, role: "bridge" }));
      });
    }
  });

  describe("app claims", () => {
    const hs256 = verifier({ secret: SECRET });

    it("returns app identity with grants", async () => {
      const token = await sign({
        ...appClaims,
        bridges: ["001788FFFE4F3A2B", "00178800000000ff"],
      });
      const identity = await hs256.verify(token);
      assert.deepEqual(identity, {
        role: "app",
        userId: "user-1",
        bridges: new Set([BRIDGE_ID, "00178800000000ff"]),
        scopes: new Set(["read", "control"]),
        exp: undefined,
      });
    });

    const badBridgeEntries: [string, unknown][] = [
      ["non-hex entry", [BRIDGE_ID, "001788fffe4f3a2g"]],
      ["short entry", ["001788fffe4f3a2"]],
      ["numeric entry", [1234567890123456]],
      ["null entry", [null]],
      ["string claim", BRIDGE_ID],
      ["object claim", { [BRIDGE_ID]: true }],
    ];
    for (const [label, bridges] of badBridgeEntries) {
      it(`rejects bridges with ${label}`, async () => {
        await assertUnauthorized(hs256, await sign({ ...appClaims, bridges }));
      });
    }

    it("grants no bridge without claim", async () => {
      const { bridges: _bridges, ...claims } = appClaims;
      const identity = await hs256.verify(await sign(claims));
      assert.equal(identity.role, "app");
      assert.equal(
        identity.role === "app" ? identity.bridges.size : undefined,
        0,
      );
    });

    it("grants no scope without claim", async () => {
      const { scope: _scope, ...claims } = appClaims;
      const identity = await hs256.verify(await sign(claims));
      assert.equal(identity.role, "app");
      assert.equal(
        identity.role === "app" ? identity.scopes.size : undefined,
        0,
      );
    });

    it("splits scope on repeated spaces", async () => {
      const token = await sign({ ...appClaims, scope: " read  control " });
      const identity = await hs256.verify(token);
      assert.deepEqual(
        identity.role === "app" ? identity.scopes : undefined,
        new Set(["read", "control"]),
      );
    });

    it("rejects non-string scope", async () => {
      const token = await sign({ ...appClaims, scope: ["read", "control"] });
      await assertUnauthorized(hs256, token);
    });

    it("rejects app token without sub", async () => {
      const { sub: _sub, ...claims } = appClaims;
      await assertUnauthorized(hs256, await sign(claims));
    });
  });

  describe("role and token shape", () => {
    const hs256 = verifier({ secret: SECRET });

    const badRoles: [string, unknown][] = [
      ["unknown role", "admin"],
      ["capitalised role", "Bridge"],
      ["numeric role", 1],
      ["missing role", undefined],
    ];
    for (const [label, role] of badRoles) {
      it(`rejects token with ${label}`, async () => {
        await assertUnauthorized(hs256, await sign({ ...bridgeClaims, role }));
      });
    }

    const badTokens: [string, unknown][] = [
      ["undefined token", undefined],
      ["empty token", ""],
      ["numeric token", 42],
      ["object token", { token: "x" }],
      ["two-part token", "abc.def"],
      ["garbage token", "not.a.jwt"],
      ["oversized token", "a".repeat(MAX_TOKEN_LENGTH + 1)],
    ];
    for (const [label, token] of badTokens) {
      it(`rejects ${label}`, async () => {
        await assertUnauthorized(hs256, token);
      });
    }
  });
});
