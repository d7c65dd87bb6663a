import { constants, KeyObject, verify, type webcrypto } from 'node:crypto';

type CryptoKey = webcrypto.CryptoKey;

/**
 * Synchronous JWS signature verification on node:crypto. jose verifies through WebCrypto, an
 * async hop on the libuv threadpool that costs several times the CPU of `crypto.verify`; on a
 * cache miss (every client after a restart or reload) that difference is paid per connection.
 * jose still resolves and imports the key (JWKS cache, kid selection, key type bound to the alg);
 * this only checks the key it returned fits the algorithm and runs the verification.
 */

interface AlgorithmSpec {
  /** WebCrypto algorithm name the imported key must carry. */
  readonly keyAlgorithm: string;
  readonly digest: string | null;
  readonly namedCurve?: string;
  readonly pss?: boolean;
  readonly ieeeP1363?: boolean;
}

const SPECS: Readonly<Record<string, AlgorithmSpec>> = {
  RS256: { keyAlgorithm: 'RSASSA-PKCS1-v1_5', digest: 'sha256' },
  RS384: { keyAlgorithm: 'RSASSA-PKCS1-v1_5', digest: 'sha384' },
  RS512: { keyAlgorithm: 'RSASSA-PKCS1-v1_5', digest: 'sha512' },
  PS256: { keyAlgorithm: 'RSA-PSS', digest: 'sha256', pss: true },
  PS384: { keyAlgorithm: 'RSA-PSS', digest: 'sha384', pss: true },
  PS512: { keyAlgorithm: 'RSA-PSS', digest: 'sha512', pss: true },
  ES256: { keyAlgorithm: 'ECDSA', digest: 'sha256', namedCurve: 'P-256', ieeeP1363: true },
  ES384: { keyAlgorithm: 'ECDSA', digest: 'sha384', namedCurve: 'P-384', ieeeP1363: true },
  ES512: { keyAlgorithm: 'ECDSA', digest: 'sha512', namedCurve: 'P-521', ieeeP1363: true },
  EdDSA: { keyAlgorithm: 'Ed25519', digest: null },
  Ed25519: { keyAlgorithm: 'Ed25519', digest: null },
};

const DIGEST_BYTES: Readonly<Record<string, number>> = { sha256: 32, sha384: 48, sha512: 64 };
const MIN_RSA_BITS = 2048;

/** jose keeps one CryptoKey per imported JWK, so converting once per key is enough. */
const keyObjects = new WeakMap<CryptoKey, KeyObject>();

/**
 * Why `key` must not be used for `alg`, or undefined when it fits. jose already selects and
 * imports keys for the header's alg (kty, crv, JWK alg); this re-checks that binding and adds
 * what WebCrypto would check at verify time and we bypass: the minimum RSA size.
 */
export function keyProblem(alg: string, key: CryptoKey): string | undefined {
  const spec = SPECS[alg];
  if (!spec) return `unsupported alg ${alg}`;
  const a = key.algorithm as { name: string; namedCurve?: string; modulusLength?: number; hash?: { name: string } };
  if (a.name !== spec.keyAlgorithm) return `key is ${a.name}, ${alg} needs ${spec.keyAlgorithm}`;
  if (spec.namedCurve && a.namedCurve !== spec.namedCurve) return `key curve is ${a.namedCurve}, ${alg} needs ${spec.namedCurve}`;
  if (a.modulusLength !== undefined && a.modulusLength < MIN_RSA_BITS) return `RSA key has ${a.modulusLength} bits, at least ${MIN_RSA_BITS} are required`;
  return undefined;
}

/** Verifies a JWS signature with a key jose resolved; call keyProblem() first. */
export function verifyJws(alg: string, key: CryptoKey, signingInput: Buffer, signature: Buffer): boolean {
  const spec = SPECS[alg];
  if (!spec) return false;
  let keyObject = keyObjects.get(key);
  if (!keyObject) {
    keyObject = KeyObject.from(key);
    keyObjects.set(key, keyObject);
  }
  if (spec.pss) {
    const saltLength = DIGEST_BYTES[spec.digest!]!;
    return verify(spec.digest, signingInput, { key: keyObject, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength }, signature);
  }
  if (spec.ieeeP1363) return verify(spec.digest, signingInput, { key: keyObject, dsaEncoding: 'ieee-p1363' }, signature);
  return verify(spec.digest, signingInput, keyObject, signature);
}
