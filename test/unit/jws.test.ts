import assert from 'node:assert/strict';
import { constants, KeyObject, sign, webcrypto } from 'node:crypto';
import { describe, it } from 'node:test';
import { keyProblem, verifyJws } from '../../src/jws.js';

const { subtle } = webcrypto;
type Pair = webcrypto.CryptoKeyPair;

async function pair(alg: string, extra: Record<string, unknown> = {}): Promise<Pair> {
  const params: Record<string, Record<string, unknown>> = {
    RS256: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' },
    RS512: { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-512' },
    PS256: { name: 'RSA-PSS', hash: 'SHA-256' },
    ES256: { name: 'ECDSA', namedCurve: 'P-256' },
    ES384: { name: 'ECDSA', namedCurve: 'P-384' },
    EdDSA: { name: 'Ed25519' },
  };
  const p = params[alg]!;
  const rsa = p.name!.toString().startsWith('RS') ? { modulusLength: 2048, publicExponent: new Uint8Array([1, 0, 1]) } : {};
  return (await subtle.generateKey({ ...p, ...rsa, ...extra } as never, true, ['sign', 'verify'])) as Pair;
}

/** Signs as an issuer would: JWS encodings (PSS salt = digest size, ECDSA as r||s). */
function jwsSign(alg: string, key: webcrypto.CryptoKey, input: Buffer): Buffer {
  const ko = KeyObject.from(key);
  if (alg === 'EdDSA') return sign(null, input, ko);
  const digest = `sha${alg.slice(2)}`;
  if (alg.startsWith('PS')) return sign(digest, input, { key: ko, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: Number(alg.slice(2)) / 8 });
  if (alg.startsWith('ES')) return sign(digest, input, { key: ko, dsaEncoding: 'ieee-p1363' });
  return sign(digest, input, ko);
}

describe('native JWS verification', () => {
  const input = Buffer.from('header.payload');

  for (const alg of ['RS256', 'RS512', 'PS256', 'ES256', 'ES384', 'EdDSA']) {
    it(`verifies ${alg} and refuses a tampered input`, async () => {
      const { privateKey, publicKey } = await pair(alg);
      assert.equal(keyProblem(alg, publicKey), undefined);
      const sig = jwsSign(alg, privateKey, input);
      assert.equal(verifyJws(alg, publicKey, input, sig), true);
      assert.equal(verifyJws(alg, publicKey, Buffer.from('header.payloaD'), sig), false);
    });
  }

  it('refuses keys that do not fit the algorithm', async () => {
    assert.match(keyProblem('ES256', (await pair('ES384')).publicKey)!, /curve is P-384/);
    assert.match(keyProblem('PS256', (await pair('RS256')).publicKey)!, /needs RSA-PSS/);
    assert.match(keyProblem('ES256', (await pair('EdDSA')).publicKey)!, /needs ECDSA/);
    assert.match(keyProblem('HS256', (await pair('RS256')).publicKey)!, /unsupported alg/);
    const weak = (await pair('RS256', { modulusLength: 1024 })).publicKey;
    assert.match(keyProblem('RS256', weak)!, /1024 bits, at least 2048/);
  });
});
