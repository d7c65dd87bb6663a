import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { decode } from '@nats-io/jwt';
import { createAccount } from '@nats-io/nkeys';
import { decodeNatsJwt, encodeNatsJwt } from '../../src/nats-jwt.js';
import { NkeySigner } from '../../src/nkey.js';

describe('nats-jwt', () => {
  const kp = createAccount();
  const signer = new NkeySigner(new TextDecoder().decode(kp.getSeed()));

  it('produces JWTs that @nats-io/jwt verifies, with UTF-8 names intact', () => {
    const jwt = encodeNatsJwt({ iss: signer.publicKey, sub: 'x', name: '山田 太郎 Zoë', iat: 1 }, signer);
    const claims = decode<unknown>(jwt);
    assert.equal(claims.iss, signer.publicKey);
    const payload = JSON.parse(Buffer.from(jwt.split('.')[1]!, 'base64url').toString('utf8'));
    assert.equal(payload.name, '山田 太郎 Zoë');
    assert.match(payload.jti, /^[A-Z2-7]{52}$/);
  });

  it('decodes its own output and exposes the signing input', () => {
    const jwt = encodeNatsJwt({ a: 1 }, signer);
    const d = decodeNatsJwt(jwt);
    assert.ok(typeof d !== 'string');
    assert.equal(d.claims.a, 1);
    assert.equal(d.signature.length, 64);
  });

  it('explains what is wrong with non-NATS JWTs', () => {
    assert.match(decodeNatsJwt('a.b') as string, /3 JWT segments/);
    assert.match(decodeNatsJwt('a!.b.c') as string, /base64url/);
    const rs = `${Buffer.from('{"alg":"RS256"}').toString('base64url')}.${Buffer.from('{}').toString('base64url')}.${Buffer.alloc(64).toString('base64url')}`;
    assert.match(decodeNatsJwt(rs) as string, /unexpected JWT alg "RS256"/);
    const arr = `${Buffer.from('{"alg":"ed25519-nkey"}').toString('base64url')}.${Buffer.from('[1]').toString('base64url')}.${Buffer.alloc(64).toString('base64url')}`;
    assert.match(decodeNatsJwt(arr) as string, /not an object/);
  });
});
