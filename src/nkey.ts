import { createPrivateKey, createPublicKey, sign, verify, type KeyObject } from 'node:crypto';
import { SIGNATURE_BYTES, sodium } from './crypto-backend.js';

/**
 * NATS nkeys on node:crypto. `@nats-io/nkeys` signs with tweetnacl in pure JS, two orders of
 * magnitude slower than native Ed25519; on the callout path every connection costs two
 * signatures and one verification, so those run here on KeyObjects built once.
 */

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
const LOOKUP = new Int8Array(128).fill(-1);
for (let i = 0; i < ALPHABET.length; i++) LOOKUP[ALPHABET.charCodeAt(i)] = i;

/** One-byte public prefixes (already shifted), as nats-io/nkeys defines them. */
export const PREFIX = { seed: 18 << 3, operator: 14 << 3, server: 13 << 3, cluster: 2 << 3, account: 0, user: 20 << 3, curve: 23 << 3 } as const;
export type KeyRole = Exclude<keyof typeof PREFIX, 'seed'>;
const ROLE_LETTER: Record<KeyRole, string> = { operator: 'O', server: 'N', cluster: 'C', account: 'A', user: 'U', curve: 'X' };

function base32Decode(s: string): Uint8Array | null {
  const out = new Uint8Array(Math.floor((s.length * 5) / 8));
  let bits = 0;
  let value = 0;
  let n = 0;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    const v = c < 128 ? LOOKUP[c]! : -1;
    if (v < 0) return null;
    value = (value << 5) | v;
    bits += 5;
    if (bits >= 8) {
      out[n++] = (value >>> (bits - 8)) & 0xff;
      bits -= 8;
    }
  }
  return out;
}

function crc16(data: Uint8Array): number {
  // CRC-16/XMODEM, the checksum nkeys appends.
  let crc = 0;
  for (let i = 0; i < data.length; i++) {
    crc ^= data[i]! << 8;
    for (let b = 0; b < 8; b++) crc = crc & 0x8000 ? ((crc << 1) ^ 0x1021) & 0xffff : (crc << 1) & 0xffff;
  }
  return crc;
}

function checked(encoded: string): Uint8Array | null {
  const raw = base32Decode(encoded);
  if (!raw || raw.length < 3) return null;
  const body = raw.subarray(0, raw.length - 2);
  const sum = raw[raw.length - 2]! | (raw[raw.length - 1]! << 8);
  return crc16(body) === sum ? body : null;
}

/** The raw 32 bytes of a public nkey of the given role, or null if it is not one. */
export function decodePublicKey(key: string, role: KeyRole): Uint8Array | null {
  if (typeof key !== 'string' || key.length !== 56 || key[0] !== ROLE_LETTER[role]) return null;
  const body = checked(key);
  if (body?.length !== 33 || body[0] !== PREFIX[role]) return null;
  return body.subarray(1);
}

/** True when `key` is a well-formed public nkey of the role (checksum included). */
export function isPublicKey(key: string, role: KeyRole): boolean {
  return decodePublicKey(key, role) !== null;
}

/** Decodes a seed (`S` + role letter) into its role and raw 32-byte private seed. */
export function decodeSeed(seed: string): { role: KeyRole; raw: Uint8Array } | null {
  if (typeof seed !== 'string' || seed.length !== 58 || seed[0] !== 'S') return null;
  const body = checked(seed);
  if (body?.length !== 34) return null;
  // Two prefix bytes pack the seed marker and the role into 10 bits.
  if ((body[0]! & 0xf8) !== PREFIX.seed) return null;
  const rolePrefix = ((body[0]! & 7) << 5) | ((body[1]! & 0xf8) >> 3);
  const role = (Object.keys(ROLE_LETTER) as KeyRole[]).find((r) => PREFIX[r] === rolePrefix);
  return role ? { role, raw: body.subarray(2) } : null;
}

/** Encodes raw bytes as unpadded RFC 4648 base32 (nkeys and the NATS `jti` use it). */
export function base32Encode(data: Uint8Array): string {
  let out = '';
  let bits = 0;
  let value = 0;
  for (let i = 0; i < data.length; i++) {
    value = (value << 8) | data[i]!;
    bits += 8;
    while (bits >= 5) {
      out += ALPHABET[(value >>> (bits - 5)) & 31];
      bits -= 5;
    }
  }
  if (bits > 0) out += ALPHABET[(value << (5 - bits)) & 31];
  return out;
}

/** Encodes a raw 32-byte public key as an nkey of the role. */
export function encodePublicKey(raw: Uint8Array, role: KeyRole): string {
  const body = new Uint8Array(35);
  body[0] = PREFIX[role];
  body.set(raw, 1);
  const sum = crc16(body.subarray(0, 33));
  body[33] = sum & 0xff;
  body[34] = sum >> 8;
  return base32Encode(body);
}

const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex');
const SPKI_ED25519 = Buffer.from('302a300506032b6570032100', 'hex');

/** A native Ed25519 verifier for a public nkey; throws if the key is not of the role. */
export function publicKeyObject(key: string, role: KeyRole): KeyObject {
  const raw = decodePublicKey(key, role);
  if (!raw) throw new Error(`not a valid ${role} public key`);
  return createPublicKey({ key: Buffer.concat([SPKI_ED25519, raw]), format: 'der', type: 'spki' });
}

/** The raw 32 bytes of each public key verified with libsodium, taken from its KeyObject once. */
const rawKeys = new WeakMap<KeyObject, Uint8Array>();

function rawPublicKey(key: KeyObject): Uint8Array {
  let raw = rawKeys.get(key);
  if (!raw) {
    raw = key.export({ format: 'der', type: 'spki' }).subarray(SPKI_ED25519.length);
    rawKeys.set(key, raw);
  }
  return raw;
}

/** Verifies an Ed25519 signature natively (libsodium, else node:crypto). */
export function verifySignature(key: KeyObject, data: Uint8Array, signature: Uint8Array): boolean {
  if (sodium) return signature.length === SIGNATURE_BYTES && sodium.crypto_sign_verify_detached(signature, data, rawPublicKey(key));
  return verify(null, data, key, signature);
}

/** Holds an nkey seed as a native private key; the seed string itself is not kept. */
export class NkeySigner {
  readonly publicKey: string;
  readonly role: KeyRole;
  readonly #key: KeyObject;
  /** libsodium's secret key (seed and public key, 64 bytes), when libsodium signs. */
  readonly #sodiumKey: Uint8Array | undefined;

  constructor(seed: string, expectedRole?: KeyRole) {
    const decoded = decodeSeed(seed.trim());
    if (!decoded) throw new Error('not a valid nkey seed');
    if (expectedRole && decoded.role !== expectedRole) {
      const article = (w: string) => (/^[aeio]/.test(w) ? 'an' : 'a');
      throw new Error(
        `expected ${article(expectedRole)} ${expectedRole} seed (S${ROLE_LETTER[expectedRole]}...), got ${article(decoded.role)} ${decoded.role} seed`,
      );
    }
    if (decoded.role === 'curve') throw new Error('a curve (xkey) seed cannot sign');
    this.role = decoded.role;
    this.#key = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, decoded.raw]), format: 'der', type: 'pkcs8' });
    const spki = createPublicKey(this.#key).export({ format: 'der', type: 'spki' });
    this.publicKey = encodePublicKey(spki.subarray(SPKI_ED25519.length), decoded.role);
    if (sodium) {
      const pk = Buffer.alloc(32);
      this.#sodiumKey = Buffer.alloc(64);
      sodium.crypto_sign_seed_keypair(pk, this.#sodiumKey, decoded.raw);
    }
  }

  sign(data: Uint8Array): Buffer {
    if (!this.#sodiumKey) return sign(null, data, this.#key);
    const signature = Buffer.allocUnsafe(SIGNATURE_BYTES);
    sodium!.crypto_sign_detached(signature, data, this.#sodiumKey);
    return signature;
  }
}
