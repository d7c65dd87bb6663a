import { randomFillSync } from 'node:crypto';
import nacl from 'tweetnacl';
import { BOX_MAC_BYTES, sodium } from './crypto-backend.js';
import { decodePublicKey, decodeSeed, encodePublicKey } from './nkey.js';

/**
 * The xkey (curve25519) box nats-server uses to encrypt callout traffic: `xkv1` + 24-byte nonce
 * + NaCl box. A server's xkey lives as long as the server process, so the X25519 shared key is
 * computed once per server and kept (a full box costs ~10x more than the symmetric part).
 */

const VERSION = Buffer.from('xkv1');
const NONCE_LEN = 24;
const MAX_SERVERS = 1024;
/** Nonces drawn from the system's random source in batches: one draw per 256 seals. */
const NONCE_BATCH = 256;
let nonces = Buffer.alloc(0);
let nonceAt = 0;

/**
 * A fresh random nonce. One call to node's randomBytes costs 5 µs alone and 25 µs per seal in a
 * profile under load (a trip into OpenSSL's generator), as much as the rest of the seal; a
 * batch of 256 costs about what one call does.
 * Nonces are public, so holding the next few in memory reveals nothing.
 */
function nextNonce(): Buffer {
  if (nonceAt + NONCE_LEN > nonces.length) {
    nonces = randomFillSync(Buffer.allocUnsafe(NONCE_LEN * NONCE_BATCH));
    nonceAt = 0;
  }
  const nonce = nonces.subarray(nonceAt, nonceAt + NONCE_LEN);
  nonceAt += NONCE_LEN;
  return nonce;
}

export class XkeyBox {
  readonly publicKey: string;
  readonly #secret: Uint8Array;
  readonly #shared = new Map<string, Uint8Array>();

  constructor(seed: string) {
    const decoded = decodeSeed(seed.trim());
    if (decoded?.role !== 'curve') throw new Error('expected a curve seed (SX...)');
    this.#secret = Uint8Array.from(decoded.raw);
    this.publicKey = encodePublicKey(nacl.scalarMult.base(this.#secret), 'curve');
  }

  /** True when the payload carries the xkv1 marker (an encrypted request). */
  static isSealed(data: Uint8Array): boolean {
    return data.length > VERSION.length + NONCE_LEN && Buffer.from(data.buffer, data.byteOffset, 4).equals(VERSION);
  }

  /** Opens a box from `senderXkey`; null when it does not authenticate. */
  open(data: Uint8Array, senderXkey: string): Uint8Array | null {
    const shared = this.#sharedKey(senderXkey);
    if (!shared || !XkeyBox.isSealed(data)) return null;
    const nonce = data.subarray(VERSION.length, VERSION.length + NONCE_LEN);
    const box = data.subarray(VERSION.length + NONCE_LEN);
    if (!sodium) return nacl.box.open.after(box, nonce, shared);
    // The box with a precomputed key is the secretbox under that key (NaCl's crypto_box_afternm).
    if (box.length < BOX_MAC_BYTES) return null;
    const opened = Buffer.allocUnsafe(box.length - BOX_MAC_BYTES);
    return sodium.crypto_secretbox_open_easy(opened, box, nonce, shared) ? opened : null;
  }

  /** Seals `data` to `recipientXkey`; throws if the key is not a valid public xkey. */
  seal(data: Uint8Array, recipientXkey: string): Buffer {
    const shared = this.#sharedKey(recipientXkey);
    if (!shared) throw new Error('not a valid public xkey');
    const nonce = nextNonce();
    if (!sodium) return Buffer.concat([VERSION, nonce, nacl.box.after(data, nonce, shared)]);
    const out = Buffer.allocUnsafe(VERSION.length + NONCE_LEN + data.length + BOX_MAC_BYTES);
    VERSION.copy(out, 0);
    nonce.copy(out, VERSION.length);
    sodium.crypto_secretbox_easy(out.subarray(VERSION.length + NONCE_LEN), data, nonce, shared);
    return out;
  }

  #sharedKey(peer: string): Uint8Array | null {
    let shared = this.#shared.get(peer);
    if (shared) return shared;
    const raw = decodePublicKey(peer, 'curve');
    if (!raw) return null;
    shared = nacl.box.before(raw, this.#secret);
    // Bounded: a stream of forged keys must not grow memory; real servers are few.
    if (this.#shared.size >= MAX_SERVERS) this.#shared.delete(this.#shared.keys().next().value!);
    this.#shared.set(peer, shared);
    return shared;
  }
}
