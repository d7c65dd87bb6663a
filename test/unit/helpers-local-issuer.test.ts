/**
 * Checks that the local issuer's tokens verify (or fail) the way the edge-case tests assume.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createLocalJWKSet, createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { fakeJwe, hs256WithSecret, startLocalIssuer, unsignedToken } from '../helpers/local-issuer.js';

for (const alg of ['RS256', 'ES256', 'EdDSA'] as const) {
  test(`local issuer ${alg}: discovery, JWKS and signed tokens verify`, async () => {
    await using issuer = await startLocalIssuer({ alg, path: '/realms/test' });
    assert.match(issuer.issuer, /^http:\/\/127\.0\.0\.1:\d+\/realms\/test$/);
    const discovery = (await (await fetch(issuer.discoveryUrl)).json()) as { issuer: string; jwks_uri: string };
    assert.equal(discovery.issuer, issuer.issuer);
    assert.equal(discovery.jwks_uri, issuer.jwksUri);
    assert.equal(issuer.discoveryFetches, 1);

    const token = await issuer.sign({ sub: 'alice', aud: 'urn:nats' });
    assert.deepEqual(decodeProtectedHeader(token), { alg, typ: 'at+jwt', kid: issuer.kid });
    const { payload } = await jwtVerify(token, createRemoteJWKSet(new URL(issuer.jwksUri)), {
      issuer: issuer.issuer,
      audience: 'urn:nats',
      typ: 'at+jwt',
    });
    assert.equal(payload.sub, 'alice');
    assert.equal(payload.exp! - payload.iat!, 300);
    assert.equal(issuer.jwksFetches, 1);
  });
}

test('local issuer: rotation, unknown keys and header overrides', async () => {
  await using issuer = await startLocalIssuer();
  const before = await issuer.sign({ sub: 'a' });
  const oldKid = issuer.kid;

  await issuer.rotate({ keepOld: true });
  assert.notEqual(issuer.kid, oldKid);
  assert.deepEqual(
    issuer.jwks().keys.map((key) => key.kid),
    [issuer.kid, oldKid],
  );
  await jwtVerify(before, createLocalJWKSet(issuer.jwks()));

  await issuer.rotate();
  assert.equal(issuer.jwks().keys.length, 1);
  await assert.rejects(jwtVerify(before, createLocalJWKSet(issuer.jwks())), { code: 'ERR_JWKS_NO_MATCHING_KEY' });
  await jwtVerify(await issuer.sign({ sub: 'a' }), createLocalJWKSet(issuer.jwks()));

  // A key outside the JWKS, under the published kid: the signature must not verify.
  const forged = await issuer.sign({ sub: 'a' }, { key: 'unknown', kid: issuer.kid });
  await assert.rejects(jwtVerify(forged, createLocalJWKSet(issuer.jwks())), { code: 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' });
  const unknownKid = decodeProtectedHeader(await issuer.sign({}, { key: 'unknown' })).kid;
  assert.ok(unknownKid && unknownKid !== issuer.kid);

  const odd = await issuer.sign({ exp: undefined }, { kid: null, typ: null, alg: 'PS256', header: { jku: 'http://127.0.0.1:1/x' } });
  assert.deepEqual(decodeProtectedHeader(odd), { alg: 'PS256', jku: 'http://127.0.0.1:1/x' });
  assert.equal('exp' in JSON.parse(Buffer.from(odd.split('.')[1]!, 'base64url').toString()), false);
});

test('local issuer: faults and discovery overrides', async () => {
  await using issuer = await startLocalIssuer();
  issuer.faults.jwks = { status: 503 };
  assert.equal((await fetch(issuer.jwksUri)).status, 503);
  delete issuer.faults.jwks;
  assert.equal((await fetch(issuer.jwksUri)).status, 200);
  assert.equal(issuer.jwksFetches, 2);

  issuer.faults.discovery = { delayMs: 1_000 };
  await assert.rejects(fetch(issuer.discoveryUrl, { signal: AbortSignal.timeout(50) }));
  issuer.faults = {};
  issuer.discoveryOverrides = { issuer: 'http://127.0.0.1:1', jwks_uri: undefined };
  const doc = (await (await fetch(issuer.discoveryUrl)).json()) as Record<string, unknown>;
  assert.equal(doc['issuer'], 'http://127.0.0.1:1');
  assert.equal('jwks_uri' in doc, false);
});

test('hostile token builders produce the expected shapes', async () => {
  await using issuer = await startLocalIssuer();
  const none = unsignedToken({ sub: 'a' });
  assert.equal(decodeProtectedHeader(none).alg, 'none');
  assert.ok(none.endsWith('.'));

  // Key confusion: the HMAC "secret" is the public key the service knows.
  const confused = hs256WithSecret({ sub: 'a', iss: issuer.issuer }, issuer.publicKeyPem(), { kid: issuer.kid });
  assert.deepEqual(decodeProtectedHeader(confused), { alg: 'HS256', typ: 'at+jwt', kid: issuer.kid });
  await assert.rejects(jwtVerify(confused, createLocalJWKSet(issuer.jwks())));
  const secret = new TextEncoder().encode(issuer.publicKeyPem());
  await jwtVerify(confused, secret); // really an HS256 token over that secret

  assert.equal(fakeJwe().split('.').length, 5);
});
