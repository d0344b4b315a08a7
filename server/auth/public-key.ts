import { createPublicKey, type KeyObject } from "node:crypto";

export interface PublicKeyChoice {
  key: KeyObject;
  algorithm: "ES256" | "RS256";
}

/** Smallest RSA modulus jose accepts for RS256, in bits. */
const MIN_RSA_BITS = 2048;

/**
 * Parses a PEM public key and picks the one algorithm it verifies: ES256
 * for a P-256 key, RS256 for an RSA key of at least 2048 bits. Throws an
 * Error saying what is wrong with any other key.
 */
export function parsePublicKey(pem: string): PublicKeyChoice {
  if (pem.includes("PRIVATE KEY")) {
    throw new Error(
      "AUTH_PUBLIC_KEY contains a private key: give the public key only",
    );
  }
  let key: KeyObject;
  try {
    key = createPublicKey(pem);
  } catch {
    throw new Error("AUTH_PUBLIC_KEY is not a PEM public key");
  }
  const details = key.asymmetricKeyDetails;
  if (key.asymmetricKeyType === "ec") {
    if (details?.namedCurve !== "prime256v1") {
      throw new Error(
        `AUTH_PUBLIC_KEY must use curve P-256 for ES256, got ${details?.namedCurve}`,
      );
    }
    return { key, algorithm: "ES256" };
  }
  if (key.asymmetricKeyType === "rsa") {
    if ((details?.modulusLength ?? 0) < MIN_RSA_BITS) {
      throw new Error(
        `AUTH_PUBLIC_KEY must be an RSA key of at least ${MIN_RSA_BITS} bits`,
      );
    }
    return { key, algorithm: "RS256" };
  }
  throw new Error(
    `AUTH_PUBLIC_KEY must be an EC P-256 or RSA key, got ${key.asymmetricKeyType}`,
  );
}
