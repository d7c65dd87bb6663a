import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createAccount, createCurve, createServer, createUser, fromPublic } from '@nats-io/nkeys';
import { decodePublicKey, decodeSeed, encodePublicKey, isPublicKey, NkeySigner, publicKeyObject, verifySignature } from '../../src/nkey.js';

const text = (b: Uint8Array) => new TextDecoder().decode(b);

describe('nkey', () => {
  it('derives the same public key from a seed as @nats-io/nkeys', () => {
    const kp = createAccount();
    const signer = new NkeySigner(text(kp.getSeed()), 'account');
    assert.equal(signer.publicKey, kp.getPublicKey());
  });

  it('signs byte-identically to @nats-io/nkeys and verifies natively', () => {
    const kp = createAccount();
    const signer = new NkeySigner(text(kp.getSeed()));
    const data = new TextEncoder().encode('hello');
    const sig = signer.sign(data);
    assert.deepEqual(new Uint8Array(sig), kp.sign(data));
    assert.ok(fromPublic(kp.getPublicKey()).verify(data, sig));
    assert.ok(verifySignature(publicKeyObject(kp.getPublicKey(), 'account'), data, sig));
    assert.equal(verifySignature(publicKeyObject(kp.getPublicKey(), 'account'), new TextEncoder().encode('hellO'), sig), false);
  });

  it('recognises roles and refuses keys with a wrong prefix or checksum', () => {
    const server = createServer().getPublicKey();
    const user = createUser().getPublicKey();
    assert.ok(isPublicKey(server, 'server'));
    assert.ok(isPublicKey(user, 'user'));
    assert.equal(isPublicKey(server, 'user'), false);
    const flipped = user.slice(0, 10) + (user[10] === 'A' ? 'B' : 'A') + user.slice(11);
    assert.equal(isPublicKey(flipped, 'user'), false);
    assert.equal(isPublicKey(`U${'A'.repeat(55)}`, 'user'), false);
    assert.equal(isPublicKey('', 'user'), false);
  });

  it('round-trips public keys and decodes seed roles', () => {
    const curve = createCurve();
    const raw = decodePublicKey(curve.getPublicKey(), 'curve');
    assert.ok(raw);
    assert.equal(encodePublicKey(raw, 'curve'), curve.getPublicKey());
    assert.equal(decodeSeed(text(curve.getSeed()))?.role, 'curve');
    assert.equal(decodeSeed(text(createUser().getSeed()))?.role, 'user');
    assert.equal(decodeSeed('SAnotaseed'), null);
  });

  it('refuses a seed of the wrong role and curve seeds for signing', () => {
    assert.throws(() => new NkeySigner(text(createUser().getSeed()), 'account'), /expected an account seed \(SA\.\.\.\), got a user seed/);
    assert.throws(() => new NkeySigner(text(createCurve().getSeed())), /cannot sign/);
    assert.throws(() => new NkeySigner('SAAAA'), /not a valid nkey seed/);
  });
});
