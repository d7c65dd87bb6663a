/**
 * What-if: the three mandatory crypto steps of every callout (Ed25519 verify of the request,
 * two Ed25519 signatures, the xkey box both ways) with libsodium (`sodium-native`, a native
 * addon shipping prebuilt binaries) next to what src/ uses today (node:crypto on OpenSSL 3.0,
 * tweetnacl). Not part of `npm run bench`: sodium-native is not a project dependency.
 *
 *   npm install --prefix /tmp/alt sodium-native
 *   ALT_MODULES=/tmp/alt/node_modules node dist/bench/alternatives.js
 */
import assert from 'node:assert/strict';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { createAccount, createCurve } from '@nats-io/nkeys';
import nacl from 'tweetnacl';
import { decodeNatsJwt, type DecodedNatsJwt } from '../src/nats-jwt.js';
import { decodePublicKey, decodeSeed, NkeySigner, publicKeyObject, verifySignature } from '../src/nkey.js';
import { XkeyBox } from '../src/xkey.js';
import { authRequestJwt, fakeServer, sealRequest } from '../test/helpers/auth-request.js';
import { measureSync, microTable, type BenchResult } from './lib.js';

interface Sodium {
  crypto_sign_verify_detached(sig: Buffer, msg: Buffer, pk: Buffer): boolean;
  crypto_sign_detached(sig: Buffer, msg: Buffer, sk: Buffer): void;
  crypto_sign_seed_keypair(pk: Buffer, sk: Buffer, seed: Buffer): void;
  crypto_secretbox_open_easy(out: Buffer, box: Buffer, nonce: Buffer, key: Buffer): boolean;
  crypto_secretbox_easy(out: Buffer, msg: Buffer, nonce: Buffer, key: Buffer): void;
}

function loadSodium(): Sodium | undefined {
  const dir = process.env['ALT_MODULES'] ?? join(process.cwd(), 'node_modules');
  try {
    return createRequire(join(dir, 'noop.js'))('sodium-native') as Sodium;
  } catch {
    return undefined;
  }
}

function main(): void {
  const sodium = loadSodium();
  if (!sodium) {
    process.stderr.write('sodium-native not found: npm install --prefix /tmp/alt sodium-native, then ALT_MODULES=/tmp/alt/node_modules\n');
    process.exit(2);
  }
  const m = { minMs: Number(process.env['MICRO_MS'] ?? 1000) };
  const results: BenchResult[] = [];
  const server = fakeServer();
  const now = Math.floor(Date.now() / 1000);
  const curve = createCurve();
  const box = new XkeyBox(new TextDecoder().decode(curve.getSeed()));
  const serverXkey = server.curve.getPublicKey();

  // A request of real size (the token makes most of it) and the two parts to sign.
  const token = 'e'.repeat(880);
  const requestJwt = authRequestJwt(server, { now, xkey: true, connectOpts: { auth_token: token } });
  const d = decodeNatsJwt(requestJwt) as DecodedNatsJwt;
  const input = Buffer.from(d.signingInput);
  const sig = Buffer.from(d.signature);
  const key = publicKeyObject(server.id, 'server');
  const rawPub = Buffer.from(key.export({ format: 'der', type: 'spki' }).subarray(12));
  results.push(measureSync(`node:crypto Ed25519 verify (${input.length} B)`, () => verifySignature(key, input, sig), m));
  assert.ok(sodium.crypto_sign_verify_detached(sig, input, rawPub));
  results.push(measureSync(`sodium-native Ed25519 verify (${input.length} B)`, () => sodium.crypto_sign_verify_detached(sig, input, rawPub), m));

  const account = createAccount();
  const seed = new TextDecoder().decode(account.getSeed());
  const signer = new NkeySigner(seed, 'account');
  const pk = Buffer.alloc(32);
  const sk = Buffer.alloc(64);
  sodium.crypto_sign_seed_keypair(pk, sk, Buffer.from(decodeSeed(seed)!.raw));
  const msg = Buffer.alloc(900, 97);
  const out = Buffer.alloc(64);
  sodium.crypto_sign_detached(out, msg, sk);
  assert.ok(out.equals(signer.sign(msg)), 'libsodium and OpenSSL Ed25519 signatures are identical');
  results.push(measureSync('node:crypto Ed25519 sign (900 B)', () => signer.sign(msg), m));
  results.push(measureSync('sodium-native Ed25519 sign (900 B)', () => sodium.crypto_sign_detached(out, msg, sk), m));

  const sealed = Buffer.from(sealRequest(server, requestJwt, box.publicKey));
  const opened = box.open(sealed, serverXkey);
  assert.ok(opened);
  results.push(measureSync(`tweetnacl xkey open (${sealed.length} B)`, () => box.open(sealed, serverXkey), m));
  // The same box with libsodium: shared key = crypto_box_beforenm(server xkey, our secret).
  // (computed once per server, with tweetnacl: sodium-native has no crypto_box_beforenm)
  const shared = Buffer.from(nacl.box.before(decodePublicKey(serverXkey, 'curve')!, decodeSeed(new TextDecoder().decode(curve.getSeed()))!.raw));
  const nonce = sealed.subarray(4, 28);
  const cipher = sealed.subarray(28);
  const plain = Buffer.alloc(cipher.length - 16);
  assert.ok(sodium.crypto_secretbox_open_easy(plain, cipher, nonce, shared) && plain.equals(Buffer.from(opened)));
  results.push(measureSync(`sodium-native xkey open (${sealed.length} B)`, () => sodium.crypto_secretbox_open_easy(plain, cipher, nonce, shared), m));
  const response = Buffer.alloc(1700, 97);
  const boxed = Buffer.alloc(response.length + 16);
  results.push(measureSync(`tweetnacl xkey seal (${response.length} B)`, () => box.seal(response, serverXkey), m));
  results.push(measureSync(`sodium-native xkey seal (${response.length} B)`, () => sodium.crypto_secretbox_easy(boxed, response, nonce, shared), m));
  process.stdout.write(`${microTable(results)}\n`);
}

main();
