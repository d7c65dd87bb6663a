import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createCurve } from '@nats-io/nkeys';
import { XkeyBox } from '../../src/xkey.js';

const seedOf = (kp: ReturnType<typeof createCurve>) => new TextDecoder().decode(kp.getSeed());

describe('xkey', () => {
  it('opens what @nats-io/nkeys seals and seals what it opens', () => {
    const server = createCurve();
    const ours = createCurve();
    const box = new XkeyBox(seedOf(ours));
    assert.equal(box.publicKey, ours.getPublicKey());
    const sealed = server.seal(new TextEncoder().encode('request'), ours.getPublicKey());
    assert.equal(new TextDecoder().decode(box.open(sealed, server.getPublicKey())!), 'request');
    const reply = box.seal(new TextEncoder().encode('response'), server.getPublicKey());
    assert.equal(new TextDecoder().decode(server.open(reply, ours.getPublicKey())!), 'response');
  });

  it('returns null for tampered boxes, wrong senders and plaintext', () => {
    const server = createCurve();
    const ours = createCurve();
    const box = new XkeyBox(seedOf(ours));
    const sealed = server.seal(new TextEncoder().encode('request'), ours.getPublicKey());
    const tampered = Uint8Array.from(sealed);
    tampered[tampered.length - 1]! ^= 1;
    assert.equal(box.open(tampered, server.getPublicKey()), null);
    assert.equal(box.open(sealed, createCurve().getPublicKey()), null);
    assert.equal(box.open(new TextEncoder().encode('eyJhbGciOi.x.y'), server.getPublicKey()), null);
    assert.equal(box.open(sealed, 'Xnotakey'), null);
    assert.equal(XkeyBox.isSealed(sealed), true);
    assert.equal(XkeyBox.isSealed(new TextEncoder().encode('eyJ')), false);
  });

  it('refuses a non-curve seed', () => {
    assert.throws(() => new XkeyBox('SAAAA'), /curve seed/);
  });
});
