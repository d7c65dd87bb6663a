/**
 * Where the mandatory crypto of every authorization runs: libsodium (`sodium-native`, prebuilt
 * binaries in its npm package) when it loads, else node:crypto (Ed25519) and tweetnacl (the xkey
 * box). libsodium verifies and signs Ed25519 about twice as fast as node:crypto here and opens
 * and seals the box about ten times as fast as tweetnacl (bench/README.md); both paths produce
 * the same bytes. OIDC_CALLOUT_CRYPTO=node forces the fallback (tests, comparisons).
 */
import { createRequire } from 'node:module';

/** The parts of sodium-native the service uses. */
export interface Sodium {
  crypto_sign_verify_detached(signature: Uint8Array, message: Uint8Array, publicKey: Uint8Array): boolean;
  crypto_sign_detached(signature: Uint8Array, message: Uint8Array, secretKey: Uint8Array): void;
  crypto_sign_seed_keypair(publicKey: Uint8Array, secretKey: Uint8Array, seed: Uint8Array): void;
  crypto_secretbox_easy(ciphertext: Uint8Array, message: Uint8Array, nonce: Uint8Array, key: Uint8Array): void;
  crypto_secretbox_open_easy(message: Uint8Array, ciphertext: Uint8Array, nonce: Uint8Array, key: Uint8Array): boolean;
}

function load(): { sodium: Sodium | undefined; why: string | undefined } {
  if (process.env.OIDC_CALLOUT_CRYPTO === 'node') return { sodium: undefined, why: 'OIDC_CALLOUT_CRYPTO=node' };
  try {
    return { sodium: createRequire(import.meta.url)('sodium-native') as Sodium, why: undefined };
  } catch (err) {
    return { sodium: undefined, why: `sodium-native did not load: ${(err as Error).message.split('\n')[0]}` };
  }
}

const loaded = load();

/** libsodium, when it loaded. */
export const sodium: Sodium | undefined = loaded.sodium;

/** Which path runs, for the startup log and the `oidc_callout_crypto_info` metric. */
export const CRYPTO_BACKEND: 'libsodium' | 'node:crypto' = sodium ? 'libsodium' : 'node:crypto';

/** Why the fallback runs (undefined with libsodium). */
export const CRYPTO_FALLBACK_REASON: string | undefined = loaded.why;

/** The Ed25519 signature length: libsodium refuses other lengths by throwing, the service by answering false. */
export const SIGNATURE_BYTES = 64;
/** Poly1305 tag of the box. */
export const BOX_MAC_BYTES = 16;
