/**
 * libsodium and its fallback (node:crypto for Ed25519, tweetnacl for the xkey box) give the same
 * bytes and accept each other's output: the service signs and seals with one, a child process
 * forced onto the other (OIDC_CALLOUT_CRYPTO=node) checks and answers.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { CRYPTO_BACKEND, CRYPTO_FALLBACK_REASON } from '../../src/crypto-backend.js';
import { NkeySigner, publicKeyObject, verifySignature } from '../../src/nkey.js';
import { XkeyBox } from '../../src/xkey.js';

const SRC = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src');
const seedOf = (kp: { getSeed(): Uint8Array }) => new TextDecoder().decode(kp.getSeed());

/** Runs `script` (an ES module body) on the fallback path; its stdout, parsed. */
function onFallback(script: string, input: Record<string, string>): Record<string, unknown> {
  const out = execFileSync(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, OIDC_CALLOUT_CRYPTO: 'node', INPUT: JSON.stringify(input), SRC },
    encoding: 'utf8',
  });
  return JSON.parse(out) as Record<string, unknown>;
}

describe('crypto backends', () => {
  it('runs libsodium here (sodium-native ships prebuilt binaries), and says so', () => {
    assert.equal(CRYPTO_BACKEND, 'libsodium', CRYPTO_FALLBACK_REASON);
  });

  it('signs the same Ed25519 bytes on both paths, and each verifies the other', () => {
    const account = createAccount();
    const signer = new NkeySigner(seedOf(account));
    const message = Buffer.from('{"a": "payload to sign", "n": 42}');
    const signature = signer.sign(message);
    const other = onFallback(
      `const { NkeySigner, publicKeyObject, verifySignature } = await import(process.env.SRC + '/nkey.js');
       const { CRYPTO_BACKEND } = await import(process.env.SRC + '/crypto-backend.js');
       const i = JSON.parse(process.env.INPUT);
       const m = Buffer.from(i.message, 'base64');
       const key = publicKeyObject(i.publicKey, 'account');
       const bad = Buffer.from(i.signature, 'base64'); bad[0] ^= 1;
       process.stdout.write(JSON.stringify({
         backend: CRYPTO_BACKEND,
         signature: new NkeySigner(i.seed).sign(m).toString('base64'),
         verifies: verifySignature(key, m, Buffer.from(i.signature, 'base64')),
         forgedVerifies: verifySignature(key, m, bad),
       }));`,
      { seed: seedOf(account), publicKey: signer.publicKey, message: message.toString('base64'), signature: signature.toString('base64') },
    );
    assert.equal(other.backend, 'node:crypto');
    assert.equal(other.signature, signature.toString('base64'), 'Ed25519 is deterministic: the same signature');
    assert.equal(other.verifies, true);
    assert.equal(other.forgedVerifies, false);
    const key = publicKeyObject(signer.publicKey, 'account');
    assert.equal(verifySignature(key, message, Buffer.from(other.signature as string, 'base64')), true);
    assert.equal(verifySignature(key, message, signature.subarray(0, 63)), false, 'a short signature is refused, not thrown');
    assert.equal(verifySignature(key, Buffer.from('other'), signature), false);
  });

  it('opens on one path what the other sealed, and refuses a tampered or truncated box', () => {
    const service = createCurve();
    const server = createCurve();
    const box = new XkeyBox(seedOf(service));
    const request = Buffer.from('{"type":"authorization_request"}');
    const other = onFallback(
      `const { XkeyBox } = await import(process.env.SRC + '/xkey.js');
       const i = JSON.parse(process.env.INPUT);
       const server = new XkeyBox(i.serverSeed);
       const opened = server.open(Buffer.from(i.sealed, 'base64'), i.servicePublic);
       process.stdout.write(JSON.stringify({
         opened: opened && Buffer.from(opened).toString(),
         reply: server.seal(Buffer.from('{"type":"authorization_response"}'), i.servicePublic).toString('base64'),
       }));`,
      { serverSeed: seedOf(server), servicePublic: box.publicKey, sealed: box.seal(request, server.getPublicKey()).toString('base64') },
    );
    assert.equal(other.opened, request.toString());
    const reply = Buffer.from(other.reply as string, 'base64');
    assert.equal(Buffer.from(box.open(reply, server.getPublicKey())!).toString(), '{"type":"authorization_response"}');
    const tampered = Buffer.from(reply);
    tampered[tampered.length - 1]! ^= 1;
    assert.equal(box.open(tampered, server.getPublicKey()), null);
    assert.equal(box.open(reply.subarray(0, 4 + 24 + 15), server.getPublicKey()), null, 'shorter than the tag');
  });
});
