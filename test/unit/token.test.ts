import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import { buildConfig, type IssuerConfig } from '../../src/config.js';
import { AuthFailure } from '../../src/errors.js';
import { IssuerKeys } from '../../src/issuers.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { TokenVerifier } from '../../src/token.js';
import { fakeJwe, hs256WithSecret, startLocalIssuer, unsignedToken, type LocalIssuer } from '../helpers/local-issuer.js';

const SEED = new TextDecoder().decode(createAccount().getSeed());

function issuerConfig(issuer: string, extra: Record<string, unknown> = {}): IssuerConfig {
  return buildConfig({
    nats: {},
    callout: { account: 'AUTH', issuer_seed: SEED },
    issuers: [{ issuer, audiences: ['nats'], allow_insecure_http: true, ...extra }],
    policy: { rules: [{ name: 'r', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
  }).issuers[0]!;
}

async function refused(p: Promise<unknown>, code: string): Promise<AuthFailure> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof AuthFailure, `expected AuthFailure, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    return err;
  }
  assert.fail(`expected ${code}, but the token was accepted`);
}

const now = () => Math.floor(Date.now() / 1000);

/**
 * A loopback HTTP server answering every request with `body(n, url)` as JSON, where n counts
 * requests; `undefined` destroys the connection instead (a reset keep-alive socket).
 */
async function jsonServer(body: (n: number, url: string) => unknown): Promise<{ url: string; readonly requests: number } & AsyncDisposable> {
  let requests = 0;
  let url = '';
  const server = createServer((req, res) => {
    const value = body(++requests, url);
    if (value === undefined) return void req.socket.destroy();
    res.setHeader('content-type', 'application/json');
    res.end(JSON.stringify(value));
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    get requests() {
      return requests;
    },
    async [Symbol.asyncDispose]() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

describe('token verification', () => {
  let idp: LocalIssuer;
  let keys: IssuerKeys;
  let verifier: TokenVerifier;
  const claims = () => ({ sub: 'alice', aud: 'nats', exp: now() + 300 });

  before(async () => {
    idp = await startLocalIssuer();
    keys = new IssuerKeys(issuerConfig(idp.issuer, { token_types: ['at+jwt'], jwks_cooldown: '30s' }));
    verifier = new TokenVerifier([keys], 4096);
  });
  after(() => idp.stop());

  it('verifies a good token, discovering the JWKS once', async () => {
    const v = await verifier.verify(await idp.sign(claims()));
    assert.equal(v.claims.sub, 'alice');
    assert.equal(v.issuer.issuer, idp.issuer);
    assert.equal(idp.discoveryFetches, 1);
    await verifier.verify(await idp.sign(claims()));
    assert.equal(idp.discoveryFetches, 1);
    assert.equal(idp.jwksFetches, 1);
  });

  it('accepts application/at+jwt as at+jwt and refuses other types', async () => {
    await verifier.verify(await idp.sign(claims(), { typ: 'application/AT+JWT' }));
    await refused(verifier.verify(await idp.sign(claims(), { typ: 'JWT' })), 'TOKEN_TYPE_INVALID');
    await refused(verifier.verify(await idp.sign(claims(), { typ: null })), 'TOKEN_TYPE_INVALID');
  });

  it('refuses expired, not-yet-valid and future-issued tokens beyond the leeway', async () => {
    await refused(verifier.verify(await idp.sign({ ...claims(), exp: now() - 120 })), 'TOKEN_EXPIRED');
    await verifier.verify(await idp.sign({ ...claims(), exp: now() - 30 }));
    await refused(verifier.verify(await idp.sign({ ...claims(), nbf: now() + 120 })), 'TOKEN_NOT_YET_VALID');
    await refused(verifier.verify(await idp.sign({ ...claims(), iat: now() + 120 })), 'TOKEN_NOT_YET_VALID');
  });

  it('reports a fractional exp as whole seconds (nats-server reads user JWT exp as an integer)', async () => {
    const exp = now() + 100.75;
    assert.equal((await verifier.verify(await idp.sign({ ...claims(), exp }))).exp, Math.floor(exp));
  });

  it('refuses a token without exp unless the issuer allows it', async () => {
    await refused(verifier.verify(await idp.sign({ sub: 'a', aud: 'nats', exp: undefined })), 'TOKEN_EXP_MISSING');
    const lenient = new TokenVerifier([new IssuerKeys(issuerConfig(idp.issuer, { allow_missing_exp: true }))], 4096);
    const v = await lenient.verify(await idp.sign({ sub: 'a', aud: 'nats', exp: undefined }));
    assert.equal(v.exp, undefined);
  });

  it('refuses a wrong audience and an unknown issuer', async () => {
    await refused(verifier.verify(await idp.sign({ ...claims(), aud: ['other', 'x'] })), 'TOKEN_AUDIENCE_INVALID');
    await refused(verifier.verify(await idp.sign({ ...claims(), iss: 'https://evil.example.com' })), 'TOKEN_ISSUER_UNKNOWN');
    await refused(verifier.verify(await idp.sign({ ...claims(), iss: `${idp.issuer}/` })), 'TOKEN_ISSUER_UNKNOWN');
    await refused(verifier.verify(await idp.sign({ ...claims(), iss: undefined })), 'TOKEN_ISSUER_UNKNOWN');
  });

  it('refuses alg none and HS256 signed with the public key, before fetching anything', async () => {
    const fetches = idp.jwksFetches;
    await refused(verifier.verify(unsignedToken({ ...claims(), iss: idp.issuer })), 'TOKEN_ALG_NOT_ALLOWED');
    await refused(verifier.verify(hs256WithSecret({ ...claims(), iss: idp.issuer }, idp.publicKeyPem(), { kid: idp.kid })), 'TOKEN_ALG_NOT_ALLOWED');
    await refused(verifier.verify(await idp.sign(claims(), { alg: 'PS256' })), 'TOKEN_ALG_NOT_ALLOWED');
    assert.equal(idp.jwksFetches, fetches);
  });

  it('refuses JWE, oversized and malformed tokens before parsing claims', async () => {
    await refused(verifier.verify(fakeJwe()), 'TOKEN_ENCRYPTED');
    await refused(verifier.verify(await idp.sign({ ...claims(), pad: 'x'.repeat(5000) })), 'TOKEN_TOO_LARGE');
    await refused(verifier.verify('abc'), 'TOKEN_MALFORMED');
    await refused(verifier.verify('a.b.c'), 'TOKEN_MALFORMED');
    await refused(verifier.verify(`${Buffer.from('{"alg":"RS256"}').toString('base64url')}.${Buffer.from('[]').toString('base64url')}.x`), 'TOKEN_MALFORMED');
    const enc = `${Buffer.from('{"alg":"RSA-OAEP","enc":"A256GCM"}').toString('base64url')}.e30.x`;
    await refused(verifier.verify(enc), 'TOKEN_ENCRYPTED');
  });

  it('refuses a token whose signature does not verify', async () => {
    const t = await idp.sign(claims());
    const [h, p] = t.split('.');
    const other = (await idp.sign({ ...claims(), sub: 'mallory' })).split('.')[1];
    await refused(verifier.verify(`${h}.${other}.${t.split('.')[2]}`), 'TOKEN_SIGNATURE_INVALID');
    assert.ok(p);
  });

  it('refuses critical header extensions, a non-base64url signature and mistyped claims', async () => {
    await refused(verifier.verify(await idp.sign(claims(), { header: { crit: ['exp'] } })), 'TOKEN_MALFORMED');
    const t = await idp.sign(claims());
    await refused(verifier.verify(`${t.slice(0, t.lastIndexOf('.'))}.%%%`), 'TOKEN_MALFORMED');
    await refused(verifier.verify(`${t.slice(0, t.lastIndexOf('.'))}.`), 'TOKEN_MALFORMED');
    await refused(verifier.verify(await idp.sign({ ...claims(), exp: String(now() + 300) })), 'TOKEN_CLAIMS_INVALID');
    await refused(verifier.verify(await idp.sign({ ...claims(), nbf: 'soon' })), 'TOKEN_CLAIMS_INVALID');
    await refused(verifier.verify(await idp.sign({ ...claims(), sub: 42 })), 'TOKEN_CLAIMS_INVALID');
    await refused(verifier.verify(await idp.sign({ ...claims(), aud: undefined })), 'TOKEN_AUDIENCE_INVALID');
    await refused(verifier.verify(await idp.sign({ ...claims(), aud: [1, 2] })), 'TOKEN_AUDIENCE_INVALID');
    assert.equal((await verifier.verify(await idp.sign({ ...claims(), aud: ['x', 'nats'] }))).claims.sub, 'alice');
  });

  it('refetches the JWKS at most once per cooldown under a flood of unknown kids', async () => {
    const before = idp.jwksFetches;
    const tokens = await Promise.all(Array.from({ length: 50 }, (_, i) => idp.sign(claims(), { key: 'unknown', kid: `flood-${i}` })));
    const results = await Promise.allSettled(tokens.map((t) => verifier.verify(t)));
    for (const r of results) {
      assert.equal(r.status, 'rejected');
      assert.equal((r.reason as AuthFailure).code, 'TOKEN_KEY_UNKNOWN');
      assert.match((r.reason as AuthFailure).message, /no key with kid "flood-\d+" and alg "RS256" in the JWKS of http/);
    }
    assert.ok(idp.jwksFetches - before <= 1, `JWKS fetched ${idp.jwksFetches - before} times`);
  });
});

describe('key rotation', () => {
  it('follows a rotation to a new kid without a restart', async () => {
    await using idp = await startLocalIssuer();
    const verifier = new TokenVerifier([new IssuerKeys(issuerConfig(idp.issuer, { jwks_cooldown: '0s' }))], 4096);
    await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60 }));
    await idp.rotate();
    const v = await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60, sub: 'after' }));
    assert.equal(v.claims.sub, 'after');
    assert.equal(idp.jwksFetches, 2);
  });

  it('reloads once when a key was replaced under the same kid, off cooldown only', async () => {
    await using idp = await startLocalIssuer();
    const keys = new IssuerKeys(issuerConfig(idp.issuer, { jwks_cooldown: '0s' }));
    const verifier = new TokenVerifier([keys], 4096);
    await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60 }));
    await idp.rotate({ reuseKid: true });
    await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60 }));
    assert.equal(idp.jwksFetches, 2);

    await using cooling = await startLocalIssuer();
    const strict = new TokenVerifier([new IssuerKeys(issuerConfig(cooling.issuer, { jwks_cooldown: '1h' }))], 4096);
    await strict.verify(await cooling.sign({ aud: 'nats', exp: now() + 60 }));
    await cooling.rotate({ reuseKid: true });
    await refused(strict.verify(await cooling.sign({ aud: 'nats', exp: now() + 60 })), 'TOKEN_SIGNATURE_INVALID');
    assert.equal(cooling.jwksFetches, 1);
  });

  it('tries every key published under one kid (a graceful rotation that kept the kid)', async () => {
    await using idp = await startLocalIssuer();
    const verifier = new TokenVerifier([new IssuerKeys(issuerConfig(idp.issuer, { jwks_cooldown: '1h' }))], 4096);
    await idp.rotate({ keepOld: true, reuseKid: true });
    assert.equal(idp.jwks().keys.length, 2);
    await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60, sub: 'new' }));
    await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60, sub: 'old' }, { key: 'previous' }));
    assert.equal(idp.jwksFetches, 1);
  });

  it('verifies ES256 and EdDSA issuers when allowed', async () => {
    for (const alg of ['ES256', 'EdDSA'] as const) {
      await using idp = await startLocalIssuer({ alg });
      const verifier = new TokenVerifier([new IssuerKeys(issuerConfig(idp.issuer, { algorithms: [alg] }))], 4096);
      assert.equal((await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60, sub: alg }))).claims.sub, alg);
    }
  });
});

describe('issuer availability', () => {
  it('refuses with ISSUER_UNAVAILABLE when discovery fails, and does not retry within the cooldown', async () => {
    await using idp = await startLocalIssuer();
    idp.faults.discovery = { status: 500 };
    const keys = new IssuerKeys(issuerConfig(idp.issuer, { jwks_cooldown: '1h' }));
    const verifier = new TokenVerifier([keys], 4096);
    const token = await idp.sign({ aud: 'nats', exp: now() + 60 });
    await refused(verifier.verify(token), 'ISSUER_UNAVAILABLE');
    await refused(verifier.verify(token), 'ISSUER_UNAVAILABLE');
    assert.equal(idp.discoveryFetches, 1);
    assert.match(keys.status().lastError ?? '', /discovery/);
  });

  it('refuses with ISSUER_UNAVAILABLE when the JWKS cannot be fetched', async () => {
    await using idp = await startLocalIssuer();
    idp.faults.jwks = { status: 503 };
    const keys = new IssuerKeys(issuerConfig(idp.issuer, { jwks_uri: idp.jwksUri }));
    await refused(new TokenVerifier([keys], 4096).verify(await idp.sign({ aud: 'nats', exp: now() + 60 })), 'ISSUER_UNAVAILABLE');
    assert.equal(keys.status().keysLoaded, false);
    await refused(keys.load(), 'ISSUER_UNAVAILABLE');
  });

  it('retries discovery once at once when the connection is reset', async () => {
    await using idp = await startLocalIssuer();
    // The first connection dies like a keep-alive socket the IdP has just closed.
    await using flaky = await jsonServer((n, url) => (n === 1 ? undefined : { issuer: url, jwks_uri: idp.jwksUri }));
    const verifier = new TokenVerifier([new IssuerKeys(issuerConfig(flaky.url))], 4096);
    assert.equal((await verifier.verify(await idp.sign({ iss: flaky.url, aud: 'nats', exp: now() + 60, sub: 'ok' }))).claims.sub, 'ok');
    assert.equal(flaky.requests, 2);
  });

  it('retries a JWKS fetch once at once when the connection is reset', async () => {
    await using idp = await startLocalIssuer();
    await using flaky = await jsonServer((n) => (n === 1 ? undefined : idp.jwks()));
    const verifier = new TokenVerifier([new IssuerKeys(issuerConfig(idp.issuer, { jwks_uri: `${flaky.url}/jwks` }))], 4096);
    assert.equal((await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60, sub: 'ok' }))).claims.sub, 'ok');
    assert.equal(flaky.requests, 2);
  });

  it('skips an unusable key that shares the kid of a good one', async () => {
    await using idp = await startLocalIssuer();
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 }).publicKey.export({ format: 'jwk' });
    await using jwks = await jsonServer(() => ({ keys: [{ ...weak, kid: idp.kid, alg: 'RS256', use: 'sig' }, ...idp.jwks().keys] }));
    const verifier = new TokenVerifier([new IssuerKeys(issuerConfig(idp.issuer, { jwks_uri: `${jwks.url}/jwks` }))], 4096);
    assert.equal((await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60, sub: 'good' }))).claims.sub, 'good');
  });

  it('asks a failing IdP again only once per cooldown, even under a flood of unknown kids', async () => {
    await using idp = await startLocalIssuer();
    idp.faults.jwks = { status: 500 };
    const keys = new IssuerKeys(issuerConfig(idp.issuer, { jwks_uri: idp.jwksUri, jwks_cooldown: '1h' }));
    const verifier = new TokenVerifier([keys], 4096);
    for (let i = 0; i < 20; i++) {
      await refused(verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60 }, { key: 'unknown', kid: `k${i}` })), 'ISSUER_UNAVAILABLE');
    }
    assert.equal(idp.jwksFetches, 1);
  });

  it('keeps serving the last good keys while the IdP fails, up to jwks_max_stale, then fails closed', async () => {
    await using idp = await startLocalIssuer();
    // The key store's clock, moved by the test: no waiting for real.
    const clock = new FakeClock();
    const keys = new IssuerKeys(
      issuerConfig(idp.issuer, { jwks_uri: idp.jwksUri, jwks_cache_max_age: '1m', jwks_cooldown: '0s', jwks_max_stale: '1h' }),
      undefined,
      undefined,
      clock,
    );
    const verifier = new TokenVerifier([keys], 4096);
    await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60 }));
    idp.faults.jwks = { status: 503 };
    clock.advance(61_000);
    // The keys are past jwks_cache_max_age; the refetch (in the background) fails; the last good set still verifies.
    assert.equal((await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60, sub: 'stale-ok' }))).claims.sub, 'stale-ok');
    await keys.settled();
    assert.match(keys.status().lastError ?? '', /HTTP 503/);
    assert.equal(keys.status().keysLoaded, true);
    const fetches = idp.jwksFetches;
    clock.advance(3_600_000);
    await refused(verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60 })), 'ISSUER_UNAVAILABLE');
    assert.equal(keys.status().keysLoaded, false);
    assert.ok(idp.jwksFetches > fetches, 'the IdP was asked again before failing closed');
    // The IdP recovers: the next token refetches and verifies.
    idp.faults.jwks = undefined;
    assert.equal((await verifier.verify(await idp.sign({ aud: 'nats', exp: now() + 60, sub: 'back' }))).claims.sub, 'back');
    assert.equal(keys.status().keysLoaded, true);
  });

  it('does not count a 200 response that is not a key set as loaded keys', async () => {
    await using idp = await startLocalIssuer();
    idp.faults.jwks = { status: 200, body: '{"keys":"nope"}' };
    const keys = new IssuerKeys(issuerConfig(idp.issuer, { jwks_uri: idp.jwksUri }));
    await refused(keys.load(), 'ISSUER_UNAVAILABLE');
    assert.equal(keys.status().keysLoaded, false);
    assert.match(keys.status().lastError ?? '', /not a JSON Web Key Set/);
  });

  it('refuses a discovery document that names another issuer', async () => {
    await using idp = await startLocalIssuer();
    idp.discoveryOverrides = { issuer: 'https://evil.example.com' };
    await refused(
      new TokenVerifier([new IssuerKeys(issuerConfig(idp.issuer))], 4096).verify(await idp.sign({ aud: 'nats', exp: now() + 60 })),
      'ISSUER_UNAVAILABLE',
    );
  });
});

describe('readiness of an issuer', () => {
  it('holds usable keys through a quiet time, and loses them once the IdP fails while the set is older than jwks_max_stale', async () => {
    await using idp = await startLocalIssuer();
    const clock = new FakeClock();
    const keys = new IssuerKeys(issuerConfig(idp.issuer, { jwks_uri: idp.jwksUri, jwks_cooldown: '0s', jwks_max_stale: '1h' }), undefined, undefined, clock);
    assert.equal(keys.status().keysLoaded, false, 'nothing fetched yet');
    await keys.load();
    assert.equal(keys.status().keysLoaded, true);
    // Three hours without a login: no fetch was needed, the IdP never failed.
    clock.advance(3 * 3_600_000);
    assert.equal(keys.status().keysLoaded, true);
    // Now the IdP fails: the set is older than jwks_max_stale, so it is no longer usable.
    idp.faults.jwks = { status: 503 };
    await keys.load().catch(() => undefined);
    assert.match(keys.status().lastError ?? '', /HTTP 503/);
    assert.equal(keys.status().keysLoaded, false);
    // The IdP recovers: a fresh set is usable again.
    idp.faults.jwks = undefined;
    await keys.load();
    assert.equal(keys.status().keysLoaded, true);
  });
});
