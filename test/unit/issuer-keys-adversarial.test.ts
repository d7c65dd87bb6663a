/**
 * Adversarial probes of the issuer key store (src/issuers.ts) and how token.ts / service.ts use
 * it. The attacker controls tokens (not the IdP) unless a test says otherwise; some tests also
 * play a broken or hostile network path between the service and the IdP. Each test states the
 * behaviour a defender needs; a failing test is a weakness still open.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { constants, generateKeyPairSync, type KeyObject, randomBytes, sign as cryptoSign } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, before, describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import { exportJWK, type JWK } from 'jose';
import { buildConfig } from '../../src/config.js';
import type { AuthFailure } from '../../src/errors.js';
import { IssuerKeys } from '../../src/issuers.js';
import { createLogger } from '../../src/log.js';
import { encodePublicKey } from '../../src/nkey.js';
import { CalloutService } from '../../src/service.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { advanceUntilSettled, FakeClock, until } from '../helpers/fake-clock.js';
import { hs256WithSecret, type LocalIssuer, startLocalIssuer, unsignedToken } from '../helpers/local-issuer.js';

const SEED = new TextDecoder().decode(createAccount().getSeed());
const enc = new TextEncoder();
const userNkey = () => encodePublicKey(randomBytes(32), 'user');
const sec = (clock: FakeClock) => Math.floor(clock.now() / 1000);
const b64json = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');

type Log = Record<string, unknown>;

/** Every promise rejection nobody handled while this file runs: each one could kill the process. */
const unhandled: unknown[] = [];
const onUnhandled = (reason: unknown) => unhandled.push(reason);
process.on('unhandledRejection', onUnhandled);

/** A CalloutService on a FakeClock over `issuers` (raw issuer config entries), with connect/explain. */
function makeService(issuers: Record<string, unknown>[], clock: FakeClock, opts: { maxInFlight?: number; baseDir?: string } = {}) {
  const lines: Log[] = [];
  const config = buildConfig(
    {
      callout: { account: 'AUTH', issuer_seed: SEED, ...(opts.maxInFlight ? { max_in_flight: opts.maxInFlight } : {}) },
      issuers: issuers.map((i) => ({ audiences: ['nats'], allow_insecure_http: true, ...i })),
      policy: {
        rules: [{ name: 'all', issuer: issuers.map((i) => String(i.issuer)), allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }],
      },
    },
    {},
    opts.baseDir ?? process.cwd(),
  );
  const service = new CalloutService(
    config,
    createLogger('debug', (l) => lines.push(JSON.parse(l) as Log)),
    { clock },
  );
  const server = fakeServer();
  /** One NATS connect presenting `token`: the decision logged for it. */
  const connect = async (token: string): Promise<Log> => {
    const from = lines.length;
    const nkey = userNkey();
    const request = authRequestJwt(server, { userNkey: nkey, now: sec(clock), connectOpts: { auth_token: token } });
    await service.handle(enc.encode(request), undefined);
    // Concurrent connects log in any order: this request's decision is the one naming its user key.
    return lines.slice(from).find((l) => l.msg === 'authorization' && l.user_nkey === nkey)!;
  };
  /** The decision for `token` without NATS: 'allow' or the refusal code. */
  const decide = async (token: string): Promise<string> => {
    const e = await service.explain(token);
    return e.decision === 'allow' ? 'allow' : e.failure.code;
  };
  return { service, connect, decide, lines };
}

/** A token of `idp` whose times follow the fake clock (the service judges exp/iat by it). */
const tokenOf = (idp: LocalIssuer, clock: FakeClock, claims: Record<string, unknown> = {}, opts: Parameters<LocalIssuer['sign']>[1] = {}) =>
  idp.sign({ sub: 'alice', aud: 'nats', iat: sec(clock), exp: sec(clock) + 6 * 3600, ...claims }, opts);

/** A loopback HTTP server whose answers the test swaps by setting `handler`; counts requests. */
interface HostileServer extends AsyncDisposable {
  readonly url: string;
  readonly requests: number;
  handler: (req: IncomingMessage, res: ServerResponse) => void;
}

async function hostileServer(): Promise<HostileServer> {
  let requests = 0;
  const state: { handler: HostileServer['handler'] } = { handler: (_req, res) => void res.writeHead(404).end() };
  const server: Server = createServer((req, res) => {
    requests++;
    state.handler(req, res);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url,
    get requests() {
      return requests;
    },
    get handler() {
      return state.handler;
    },
    set handler(h) {
      state.handler = h;
    },
    async [Symbol.asyncDispose]() {
      server.closeAllConnections();
      await new Promise((r) => server.close(r));
    },
  };
}

const json = (body: unknown) => (_req: IncomingMessage, res: ServerResponse) =>
  void res.writeHead(200, { 'content-type': 'application/json' }).end(typeof body === 'string' ? body : JSON.stringify(body));

/** Signs a compact JWS with any header, as an attacker (or a test) would. */
function rawToken(
  header: Record<string, unknown>,
  claims: Record<string, unknown>,
  key: KeyObject,
  how: 'rsa' | 'pss' | 'ec' | 'ed',
  digest = 'sha256',
): string {
  const input = Buffer.from(`${b64json(header)}.${b64json(claims)}`);
  const sig =
    how === 'rsa'
      ? cryptoSign(digest, input, key)
      : how === 'pss'
        ? cryptoSign(digest, input, { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: 32 })
        : how === 'ec'
          ? cryptoSign(digest, input, { key, dsaEncoding: 'ieee-p1363' })
          : cryptoSign(null, input, key);
  return `${input.toString()}.${sig.toString('base64url')}`;
}

describe('refetch storms: an attacker who controls only tokens', () => {
  let idp: LocalIssuer;
  before(async () => {
    idp = await startLocalIssuer();
  });
  after(() => idp.stop());

  it('cannot make the service ask the IdP for keys more than once per jwks_cooldown, however it varies kid, alg, header or signature', async () => {
    const clock = new FakeClock();
    const { service, connect } = makeService(
      [
        {
          issuer: idp.issuer,
          jwks_uri: idp.jwksUri,
          algorithms: ['RS256', 'RS384', 'PS256', 'ES256', 'EdDSA'],
          jwks_cooldown: '30s',
          jwks_cache_max_age: '10m',
        },
      ],
      clock,
    );
    await service.issuers[0]!.load();
    const good = await tokenOf(idp, clock);
    const [h, p, s] = good.split('.') as [string, string, string];
    let n = 0;
    // Every junk token is new (no join, no cache hit) and reaches the key store.
    const junk = async (): Promise<string> => {
      const i = n++;
      const claims = { sub: `junk-${i}`, aud: 'nats', iat: sec(clock), exp: sec(clock) + 3600 };
      switch (i % 10) {
        case 0:
          return idp.sign(claims, { key: 'unknown', kid: `rotated-${i}` });
        case 1:
          return idp.sign(claims, { key: 'unknown', kid: idp.kid }); // the real kid, a signature of another key
        case 2:
          return idp.sign(claims, { key: 'unknown', kid: idp.kid, alg: 'PS256' }); // the real kid under another allowed alg
        case 3:
          return idp.sign(claims, { key: 'unknown', kid: idp.kid, alg: 'RS384' });
        case 4:
          return `${b64json({ alg: 'ES256', kid: idp.kid, typ: 'at+jwt' })}.${b64json(claims)}.${randomBytes(64).toString('base64url')}`;
        case 5:
          return idp.sign(claims, { key: 'unknown', kid: null }); // no kid at all
        case 6:
          return idp.sign(claims, { key: 'unknown', header: { kid: [idp.kid, i] } }); // a kid that is not a string
        case 7:
          return `${b64json({ alg: 'EdDSA', kid: `__proto__${i}`, typ: 'at+jwt' })}.${b64json(claims)}.${randomBytes(64).toString('base64url')}`;
        case 8: {
          // The real token with a different (canonical) signature each time.
          const bytes = Buffer.from(s, 'base64url');
          bytes[i % bytes.length] ^= 1 + (i % 250);
          return `${h}.${p}.${bytes.toString('base64url')}`;
        }
        default:
          return idp.sign(claims, { key: 'unknown', kid: `${'k'.repeat(2000)}${i}` });
      }
    };
    clock.advance(31_000); // the cooldown of the initial load is over: one refetch may be spent
    const before = idp.jwksFetches;
    for (let round = 0; round < 100; round++) {
      const d = await connect(await junk());
      assert.notEqual(d.result, 'allow', JSON.stringify(d));
      clock.advance(250); // 25 s of junk: still inside one cooldown
    }
    assert.ok(idp.jwksFetches - before <= 1, `100 junk tokens within one cooldown made ${idp.jwksFetches - before} JWKS fetches`);
    // The next cooldown: again at most one.
    clock.advance(30_000);
    for (let round = 0; round < 50; round++) {
      await connect(await junk());
      clock.advance(200);
    }
    assert.ok(idp.jwksFetches - before <= 2, `150 junk tokens over two cooldowns made ${idp.jwksFetches - before} JWKS fetches`);
    // The good token still gets in: nothing the junk did cost the real keys.
    assert.equal((await connect(await tokenOf(idp, clock, { sub: 'real' }))).result, 'allow');
  });

  it('refuses HS256 key confusion, alg none and an embedded or remote key (jwk, jku, x5u) before any key lookup or fetch', async () => {
    const clock = new FakeClock();
    await using remote = await hostileServer();
    const attacker = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const attackerJwk = { ...(await exportJWK(attacker.publicKey)), kid: 'evil', alg: 'RS256', use: 'sig' };
    remote.handler = json({ keys: [attackerJwk] });
    // The IdP (hostile here) even publishes a symmetric key under the real kid: the classic confusion set-up.
    const pem = idp.publicKeyPem();
    await using jwks = await hostileServer();
    jwks.handler = json({
      keys: [...idp.jwks().keys, { kty: 'oct', kid: idp.kid, k: Buffer.from(pem).toString('base64url') }, { kty: 'oct', kid: 'hmac', k: 'c2VjcmV0' }],
    });
    const { service, decide } = makeService([{ issuer: idp.issuer, jwks_uri: `${jwks.url}/jwks`, jwks_cooldown: '0s' }], clock);
    await service.issuers[0]!.load();
    const claims = { iss: idp.issuer, sub: 'mallory', aud: 'nats', iat: sec(clock), exp: sec(clock) + 3600 };
    const attempts: [string, string][] = [
      ['HS256 with the PEM public key as secret', hs256WithSecret(claims, pem, { kid: idp.kid })],
      ['HS256 with the published oct key', hs256WithSecret(claims, 'secret', { kid: 'hmac' })],
      ['alg none', unsignedToken(claims)],
      ['alg None', unsignedToken(claims, { alg: 'None', kid: idp.kid })],
      ['alg RS256 with an empty signature', `${b64json({ alg: 'RS256', kid: idp.kid })}.${b64json(claims)}.`],
      ['alg as a list', rawToken({ alg: ['RS256'], kid: idp.kid }, claims, attacker.privateKey, 'rsa')],
      ['embedded jwk', rawToken({ alg: 'RS256', kid: idp.kid, jwk: attackerJwk }, claims, attacker.privateKey, 'rsa')],
      ['jku', rawToken({ alg: 'RS256', kid: 'evil', jku: `${remote.url}/jwks` }, claims, attacker.privateKey, 'rsa')],
      ['x5u', rawToken({ alg: 'RS256', kid: 'evil', x5u: `${remote.url}/cert` }, claims, attacker.privateKey, 'rsa')],
    ];
    for (const [what, token] of attempts) assert.notEqual(await decide(token), 'allow', what);
    assert.equal(remote.requests, 0, 'a URL named by a token header was fetched');
    // The alg-level refusals happen before the key store is touched (no fetch, even with a zero cooldown).
    const fetchesBefore = jwks.requests;
    for (const [what, token] of attempts.slice(0, 6)) {
      const code = await decide(token);
      assert.ok(['TOKEN_ALG_NOT_ALLOWED', 'TOKEN_MALFORMED'].includes(code), `${what}: ${code}`);
    }
    assert.equal(jwks.requests, fetchesBefore, 'HS256/none tokens made the service fetch keys');
    // And no configuration can allow them.
    for (const alg of ['HS256', 'none', 'HS512']) {
      assert.throws(
        () =>
          buildConfig({
            callout: { account: 'AUTH', issuer_seed: SEED },
            issuers: [{ issuer: idp.issuer, audiences: ['a'], algorithms: [alg], allow_insecure_http: true }],
            policy: { rules: [{ name: 'r', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
          }),
        alg,
      );
    }
  });
});

describe('key selection: keys the IdP publishes that must not verify tokens', () => {
  it('refuses tokens signed by keys published with the wrong use, key_ops, alg, kty or curve, or under 2048 bits, cleanly (no INTERNAL)', async () => {
    await using idp = await startLocalIssuer();
    await using jwks = await hostileServer();
    const clock = new FakeClock();
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const p384 = generateKeyPairSync('ec', { namedCurve: 'P-384' });
    const p256 = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const x25519 = generateKeyPairSync('x25519');
    const ed = generateKeyPairSync('ed25519');
    const jwk = async (k: KeyObject, extra: Record<string, unknown>) => ({ ...(await exportJWK(k)), ...extra }) as JWK;
    jwks.handler = json({
      keys: [
        ...idp.jwks().keys,
        await jwk(rsa.publicKey, { kid: 'enc', use: 'enc' }),
        await jwk(rsa.publicKey, { kid: 'ops', key_ops: ['encrypt'] }),
        await jwk(rsa.publicKey, { kid: 'rs512', alg: 'RS512' }),
        await jwk(weak.publicKey, { kid: 'weak', alg: 'RS256', use: 'sig' }),
        await jwk(p384.publicKey, { kid: 'curve' }), // no alg: only the curve tells it is not ES256
        await jwk(p384.publicKey, { kid: 'curve-lie', alg: 'ES256' }),
        await jwk(p256.publicKey, { kid: 'ec-for-rsa', alg: 'RS256' }),
        await jwk(x25519.publicKey, { kid: 'ecdh' }),
        await jwk(ed.publicKey, { kid: 'ed-as-es', alg: 'ES256' }),
        { kty: 'RSA', kid: 'broken', n: '!!not-base64!!', e: 'AQAB', alg: 'RS256' },
        { kty: 'RSA', kid: 'no-e', n: (await exportJWK(rsa.publicKey)).n, alg: 'RS256' },
      ],
    });
    const { service, decide } = makeService(
      [{ issuer: idp.issuer, jwks_uri: `${jwks.url}/jwks`, algorithms: ['RS256', 'PS256', 'ES256', 'EdDSA'], jwks_cooldown: '1h' }],
      clock,
    );
    await service.issuers[0]!.load();
    const claims = { iss: idp.issuer, sub: 'mallory', aud: 'nats', iat: sec(clock), exp: sec(clock) + 3600 };
    const attempts: [string, string][] = [
      ['use enc', rawToken({ alg: 'RS256', kid: 'enc' }, claims, rsa.privateKey, 'rsa')],
      ['key_ops encrypt', rawToken({ alg: 'RS256', kid: 'ops' }, claims, rsa.privateKey, 'rsa')],
      ['RS512 key used for RS256', rawToken({ alg: 'RS256', kid: 'rs512' }, claims, rsa.privateKey, 'rsa')],
      ['RS512 key used for PS256', rawToken({ alg: 'PS256', kid: 'rs512' }, claims, rsa.privateKey, 'pss')],
      ['1024-bit RSA', rawToken({ alg: 'RS256', kid: 'weak' }, claims, weak.privateKey, 'rsa')],
      ['P-384 key for ES256', rawToken({ alg: 'ES256', kid: 'curve' }, claims, p384.privateKey, 'ec')],
      ['P-384 key labelled ES256', rawToken({ alg: 'ES256', kid: 'curve-lie' }, claims, p384.privateKey, 'ec')],
      ['EC key labelled RS256', rawToken({ alg: 'ES256', kid: 'ec-for-rsa' }, claims, p256.privateKey, 'ec')],
      ['X25519 key for EdDSA', `${b64json({ alg: 'EdDSA', kid: 'ecdh' })}.${b64json(claims)}.${randomBytes(64).toString('base64url')}`],
      ['Ed25519 key labelled ES256', rawToken({ alg: 'ES256', kid: 'ed-as-es' }, claims, p256.privateKey, 'ec')],
      ['malformed RSA key', rawToken({ alg: 'RS256', kid: 'broken' }, claims, rsa.privateKey, 'rsa')],
      ['RSA key without e', rawToken({ alg: 'RS256', kid: 'no-e' }, claims, rsa.privateKey, 'rsa')],
    ];
    const codes: Record<string, string> = {};
    for (const [what, token] of attempts) codes[what] = await decide(token);
    for (const [what] of attempts) assert.notEqual(codes[what], 'allow', `${what} was accepted: ${JSON.stringify(codes)}`);
    // A key the IdP got wrong is the IdP's problem, not "an unexpected error inside the service":
    // INTERNAL pages the service's operators for a fault they cannot fix.
    const internal = Object.entries(codes).filter(([, c]) => c === 'INTERNAL');
    assert.deepEqual(internal, [], `refused as INTERNAL: ${JSON.stringify(codes)}`);
    // The real key of the same set still works.
    assert.equal(await decide(await tokenOf(idp, clock)), 'allow');
  });
});

describe('good keys survive bad answers', () => {
  let idp: LocalIssuer;
  before(async () => {
    idp = await startLocalIssuer();
  });
  after(() => idp.stop());

  it('keeps verifying with the last good key set when a refresh answers an error, garbage, an oversized body, a gzip bomb, a login page or nothing in time', async () => {
    await using jwks = await hostileServer();
    const good = idp.jwks();
    jwks.handler = json(good);
    const clock = new FakeClock();
    const { service, connect } = makeService(
      [{ issuer: idp.issuer, jwks_uri: `${jwks.url}/jwks`, jwks_cache_max_age: '1m', jwks_cooldown: '1s', jwks_max_stale: '1h', http_timeout: '300ms' }],
      clock,
    );
    const keys = service.issuers[0]!;
    await keys.load();
    const bomb = gzipSync(Buffer.concat([Buffer.from('{"keys":[],"pad":"'), Buffer.alloc(32 * 1024 * 1024, 0x20), Buffer.from('"}')]));
    const answers: [string, HostileServer['handler']][] = [
      ['HTTP 500', (_q, r) => void r.writeHead(500).end('oops')],
      ['200 not JSON', json('<<garbage')],
      ['200 keys not a list', json({ keys: 'x' })],
      ['200 keys of numbers', json({ keys: [1, 2] })],
      ['200 a list', json([good])],
      ['200 with 101 keys', json({ keys: Array.from({ length: 101 }, (_, i) => ({ ...good.keys[0], kid: `k${i}` })) })],
      [
        '2 MiB chunked',
        (_q, r) => {
          r.writeHead(200, { 'content-type': 'application/json' });
          r.write('{"keys":[],"pad":"');
          r.write('x'.repeat(2 * 1024 * 1024));
          r.end('"}');
        },
      ],
      ['content-length 5 GiB', (_q, r) => void r.writeHead(200, { 'content-type': 'application/json', 'content-length': String(5 * 1024 ** 3) }).end()],
      ['gzip bomb (32 MiB inflated)', (_q, r) => void r.writeHead(200, { 'content-type': 'application/json', 'content-encoding': 'gzip' }).end(bomb)],
      ['an HTML login page', (_q, r) => void r.writeHead(200, { 'content-type': 'text/html' }).end('<html>Sign in</html>')],
      ['a redirect to a 404', (_q, r) => void r.writeHead(302, { location: `${jwks.url}/nowhere` }).end()],
      ['no answer in time', () => undefined],
      [
        'headers, then a body that never ends',
        (_q, r) => {
          r.writeHead(200, { 'content-type': 'application/json' });
          r.write('{"keys":[');
          const t = setInterval(() => r.write(' '), 20);
          r.on('close', () => clearInterval(t));
        },
      ],
    ];
    for (const [what, handler] of answers) {
      clock.advance(61_000); // past jwks_cache_max_age: the next token refreshes
      jwks.handler = handler;
      const asked = jwks.requests;
      const started = Date.now();
      const d = await connect(await tokenOf(idp, clock, { sub: `user-${what}` }));
      // The held set answers at once; the refresh runs in the background.
      await keys.settled();
      assert.ok(jwks.requests > asked, `${what}: no refresh was attempted`);
      assert.equal(d.result, 'allow', `${what}: ${JSON.stringify(d)}`);
      assert.ok(Date.now() - started < 5_000, `${what}: the refresh took ${Date.now() - started} ms (http_timeout 300ms)`);
      assert.equal(keys.status().keysLoaded, true, `${what}: readiness lost the keys`);
      assert.ok(keys.status().lastError, `${what}: the failure was not recorded`);
      if (what.startsWith('gzip')) assert.match(keys.status().lastError!, /more than 1048576/);
    }
    assert.deepEqual(unhandled, []);
  });

  it('treats a 200 key set without one key usable for the allowed algorithms as a failed fetch, keeping the last good set', async () => {
    await using jwks = await hostileServer();
    const good = idp.jwks();
    const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const weak = generateKeyPairSync('rsa', { modulusLength: 1024 });
    const unusable: [string, unknown][] = [
      ['no keys', { keys: [] }],
      ['only a symmetric key', { keys: [{ kty: 'oct', kid: idp.kid, k: 'c2VjcmV0' }] }],
      ['only an encryption key', { keys: [{ ...(await exportJWK(rsa.publicKey)), kid: idp.kid, use: 'enc' }] }],
      ['only an EC key for an RS256-only issuer', { keys: [{ ...(await exportJWK(ec.publicKey)), kid: idp.kid }] }],
      ['only a 1024-bit key', { keys: [{ ...(await exportJWK(weak.publicKey)), kid: idp.kid, alg: 'RS256' }] }],
    ];
    const results: string[] = [];
    for (const [what, body] of unusable) {
      jwks.handler = json(good);
      const clock = new FakeClock();
      const { service, connect } = makeService([{ issuer: idp.issuer, jwks_uri: `${jwks.url}/jwks`, jwks_cache_max_age: '1m', jwks_cooldown: '1s' }], clock);
      await service.issuers[0]!.load();
      clock.advance(61_000);
      // A misconfigured realm, a CDN placeholder, a half-finished key rollover: 200, but nothing to verify with.
      jwks.handler = json(body);
      const d = await connect(await tokenOf(idp, clock));
      if (d.result !== 'allow') results.push(`${what}: a valid token was refused ${d.code} (${String(d.reason)})`);
    }
    assert.deepEqual(results, [], 'an unusable key set replaced the good one');
  });

  it('does not report keys loaded (readiness) for a key set that holds no usable signing key', async () => {
    await using jwks = await hostileServer();
    const lying: string[] = [];
    for (const [what, body] of [
      ['no keys', { keys: [] }],
      ['only a symmetric key', { keys: [{ kty: 'oct', kid: 'k', k: 'c2VjcmV0' }] }],
      ['only an encryption key', { keys: [{ ...idp.jwks().keys[0], use: 'enc' }] }],
    ] as const) {
      jwks.handler = json(body);
      const keys = new IssuerKeys(
        buildConfig({
          callout: { account: 'AUTH', issuer_seed: SEED },
          issuers: [{ issuer: idp.issuer, audiences: ['nats'], jwks_uri: `${jwks.url}/jwks`, allow_insecure_http: true }],
          policy: { rules: [{ name: 'r', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
        }).issuers[0]!,
      );
      const loaded = await keys.load().then(
        () => 'ok',
        (e: AuthFailure) => e.code,
      );
      if (loaded === 'ok' && keys.status().keysLoaded) lying.push(`${what}: load() succeeded and keysLoaded is true`);
    }
    assert.deepEqual(lying, [], 'readiness reports keys no token can ever verify against');
  });
});

describe('slow IdP answers', () => {
  it('gives up on a discovery document that trickles forever within http_timeout', async () => {
    await using idp = await hostileServer();
    idp.handler = (_q, r) => {
      r.writeHead(200, { 'content-type': 'application/json' });
      r.write(`{"issuer":"${idp.url}","jwks_uri":"${idp.url}/jwks","pad":"`);
      const t = setInterval(() => r.write('x'), 20);
      r.on('close', () => clearInterval(t));
    };
    const keys = new IssuerKeys(
      buildConfig({
        callout: { account: 'AUTH', issuer_seed: SEED },
        issuers: [{ issuer: idp.url, audiences: ['nats'], allow_insecure_http: true, http_timeout: '300ms' }],
        policy: { rules: [{ name: 'r', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
      }).issuers[0]!,
    );
    const started = Date.now();
    const limit = new Promise<string>((r) => setTimeout(() => r('still loading after 5 s'), 5_000).unref());
    const outcome = await Promise.race([
      keys.load().then(
        () => 'loaded',
        (e: AuthFailure) => e.code,
      ),
      limit,
    ]);
    assert.equal(outcome, 'ISSUER_UNAVAILABLE', `after ${Date.now() - started} ms`);
    assert.equal(keys.fetching, false, 'a fetch is still counted as under way: unknown kids would be refused forever');
  });
});

describe('starvation while a key set refresh hangs', () => {
  it('does not hold a valid token whose kid it has on a hanging refresh of keys past jwks_cache_max_age (well within jwks_max_stale)', async () => {
    const idp = await startLocalIssuer();
    const clock = new FakeClock();
    const { service, connect } = makeService(
      [{ issuer: idp.issuer, jwks_uri: idp.jwksUri, jwks_cache_max_age: '1m', jwks_cooldown: '1s', jwks_max_stale: '1h', http_timeout: '60s' }],
      clock,
    );
    try {
      await service.issuers[0]!.load();
      clock.advance(61_000);
      idp.faults.jwks = { delayMs: 60_000 };
      const started = clock.monotonic();
      const d = await advanceUntilSettled(clock, connect(await tokenOf(idp, clock, { sub: 'real-user' })), 100, 10_000);
      // Observed: REQUEST_EXPIRED (abort): the login waits on the IdP until nats-server gives up,
      // although the key it needs is held and may be used for another 59 minutes.
      assert.equal(d.result, 'allow', `${JSON.stringify(d)} after ${clock.monotonic() - started} ms on the service clock`);
    } finally {
      idp.faults.jwks = undefined;
      await idp.stop();
    }
  });

  it("answers a valid token from the keys it holds while their refresh (past jwks_cache_max_age) hangs, and junk under the real kid cannot fill the issuer's budget meanwhile", async () => {
    const idp = await startLocalIssuer();
    const other = await startLocalIssuer();
    const clock = new FakeClock();
    const issuer = (i: LocalIssuer) => ({ issuer: i.issuer, jwks_uri: i.jwksUri, jwks_cache_max_age: '1m', jwks_cooldown: '1s', http_timeout: '60s' });
    const { service, connect } = makeService([issuer(idp), issuer(other)], clock, { maxInFlight: 4 });
    try {
      await Promise.all(service.issuers.map((k) => k.load()));
      clock.advance(61_000); // both sets are past jwks_cache_max_age now
      await connect(await tokenOf(other, clock, { sub: 'warm-other' })); // the other issuer refreshes fine
      // The IdP now hangs (overloaded, a network partition): its refresh waits up to http_timeout.
      idp.faults.jwks = { delayMs: 60_000 };
      const junk = await Promise.all(Array.from({ length: 8 }, (_, i) => tokenOf(idp, clock, { sub: `junk-${i}` }, { key: 'unknown', kid: idp.kid })));
      const flood = junk.map((t) => connect(t));
      await until(() => service.issuers[0]!.fetching, 'the refresh is under way');
      // Another issuer's users are untouched.
      const otherUser = await connect(await tokenOf(other, clock, { sub: 'other-user' }));
      assert.equal(otherUser.result, 'allow', JSON.stringify(otherUser));
      // A valid token of the hanging issuer, whose kid the held (stale, well within jwks_max_stale) set has.
      const legit = connect(await tokenOf(idp, clock, { sub: 'real-user' }));
      const d = await advanceUntilSettled(clock, legit, 250, 10_000);
      await advanceUntilSettled(clock, Promise.all(flood), 500);
      // Observed: OVERLOADED (the junk holds every slot waiting on the refresh) or REQUEST_EXPIRED
      // (the valid token itself waits on the refresh): every login of the issuer stalls for up to
      // http_timeout at each jwks_cache_max_age whenever the IdP is slow.
      assert.equal(d.result, 'allow', JSON.stringify(d));
    } finally {
      idp.faults.jwks = undefined;
      await Promise.all([idp.stop(), other.stop()]);
    }
  });
});

describe('clock steps: key freshness on the wall clock', () => {
  let idp: LocalIssuer;
  before(async () => {
    idp = await startLocalIssuer();
  });
  after(() => idp.stop());

  it('does not stretch jwks_cooldown when the wall clock steps back (NTP): a rotated key is fetched once the cooldown has passed', async () => {
    const clock = new FakeClock();
    const { service, decide } = makeService([{ issuer: idp.issuer, jwks_uri: idp.jwksUri, jwks_cooldown: '30s' }], clock);
    await service.issuers[0]!.load();
    clock.stepWall(-3_600_000); // the host's clock is corrected back by an hour
    clock.advance(31_000); // 31 s really pass: the cooldown is over
    await idp.rotate({ keepOld: true });
    const before = idp.jwksFetches;
    // Observed: TOKEN_KEY_UNKNOWN and no fetch: the cooldown is measured on the wall clock, so it
    // lasts the hour the clock stepped back plus 30 s; every user of the new key is locked out.
    const code = await decide(await tokenOf(idp, clock, { sub: 'new-key' }));
    assert.equal(code, 'allow', `refused ${code}; JWKS fetches since: ${idp.jwksFetches - before}`);
  });

  it('refetches keys older than jwks_cache_max_age even after the wall clock stepped back, so a key the IdP withdrew stops verifying', async () => {
    const clock = new FakeClock();
    const { service, decide } = makeService([{ issuer: idp.issuer, jwks_uri: idp.jwksUri, jwks_cache_max_age: '10m', jwks_cooldown: '30s' }], clock);
    await service.issuers[0]!.load();
    clock.stepWall(-86_400_000); // a day back (a VM restored from a snapshot, a bad NTP source)
    // The IdP withdraws its (compromised) key: an abrupt rotation.
    await idp.rotate();
    clock.advance(11 * 60_000); // 11 minutes really pass: past jwks_cache_max_age
    const before = idp.jwksFetches;
    // Observed: 'allow' and no fetch: the set looks fetched "in the future", is never stale, and the
    // withdrawn key keeps verifying for a day. The first token past the max age is answered from
    // the held set while the refresh runs in the background; once it is done the key is gone.
    await decide(await tokenOf(idp, clock, { sub: 'first-after-max-age' }));
    await service.issuers[0]!.settled();
    const code = await decide(await tokenOf(idp, clock, { sub: 'stolen-key' }, { key: 'previous' }));
    assert.notEqual(code, 'allow', `the withdrawn key still verifies; JWKS fetches since: ${idp.jwksFetches - before}`);
  });
});

describe('transport: redirects and plain http behind https', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oc-keys-'));
  const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  let https: HttpsServer;
  let issuer = '';
  let real: LocalIssuer;
  let evil: LocalIssuer;
  let plain: HostileServer;
  const state: { handler: (req: IncomingMessage, res: ServerResponse) => void } = { handler: (_q, r) => void r.writeHead(404).end() };

  before(async () => {
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=test private CA');
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'idp.key', '-out', 'idp.csr', '-subj', '/CN=127.0.0.1');
    writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
    openssl('x509', '-req', '-in', 'idp.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'idp.pem', '-days', '2', '-extfile', 'san.ext');
    https = createHttpsServer({ key: readFileSync(join(dir, 'idp.key')), cert: readFileSync(join(dir, 'idp.pem')) }, (req, res) => state.handler(req, res));
    await new Promise<void>((r) => https.listen(0, '127.0.0.1', r));
    issuer = `https://127.0.0.1:${(https.address() as AddressInfo).port}`;
    [real, evil, plain] = await Promise.all([startLocalIssuer(), startLocalIssuer(), hostileServer()]);
    // Whoever sits on the plain-http path serves their own keys.
    plain.handler = json(evil.jwks());
  });
  after(async () => {
    https.closeAllConnections();
    await new Promise((r) => https.close(r));
    await Promise.all([real.stop(), evil.stop(), plain[Symbol.asyncDispose]()]);
  });

  const discovery = (jwksUri: string) => ({ issuer, jwks_uri: jwksUri, subject_types_supported: ['public'], response_types_supported: ['code'] });
  const serve = (routes: Record<string, (req: IncomingMessage, res: ServerResponse) => void>) => {
    state.handler = (req, res) => (routes[req.url ?? ''] ?? ((_q: IncomingMessage, r: ServerResponse) => void r.writeHead(404).end()))(req, res);
  };
  const service = (clock: FakeClock, extra: Record<string, unknown> = {}) =>
    makeService([{ issuer, ca_file: 'ca.pem', allow_insecure_http: false, ...extra }], clock, { baseDir: dir });
  const evilToken = (clock: FakeClock) => evil.sign({ iss: issuer, sub: 'mallory', aud: 'nats', iat: sec(clock), exp: sec(clock) + 3600 });
  const realToken = (clock: FakeClock) => real.sign({ iss: issuer, sub: 'alice', aud: 'nats', iat: sec(clock), exp: sec(clock) + 3600 });

  it('verifies through https with ca_file (the fixture works)', async () => {
    serve({ '/.well-known/openid-configuration': json(discovery(`${issuer}/jwks`)), '/jwks': json(real.jwks()) });
    const clock = new FakeClock();
    const { decide } = service(clock);
    assert.equal(await decide(await realToken(clock)), 'allow');
  });

  it('refuses a discovered jwks_uri on plain http or another scheme when https is required', async () => {
    for (const uri of [`${plain.url}/jwks`, `data:application/json,${encodeURIComponent(JSON.stringify(evil.jwks()))}`, 'file:///etc/passwd']) {
      serve({ '/.well-known/openid-configuration': json(discovery(uri)) });
      const clock = new FakeClock();
      const { service: svc, decide } = service(clock);
      const asked = plain.requests;
      assert.equal(await decide(await evilToken(clock)), 'ISSUER_UNAVAILABLE', uri.slice(0, 40));
      assert.equal(plain.requests, asked, `${uri.slice(0, 40)} was fetched`);
      assert.equal(svc.issuers[0]!.status().keysLoaded, false);
    }
  });

  it('does not follow a redirect of the discovery document to plain http', async () => {
    serve({ '/.well-known/openid-configuration': (_q, r) => void r.writeHead(302, { location: `${plain.url}/.well-known/openid-configuration` }).end() });
    const clock = new FakeClock();
    const { decide } = service(clock);
    const asked = plain.requests;
    assert.notEqual(await decide(await evilToken(clock)), 'allow');
    assert.equal(plain.requests, asked, 'the redirect to http was followed');
  });

  it('does not follow a redirect of the https key set to plain http (and load keys served there)', async () => {
    // https jwks_uri (configured or discovered) answers 302 -> http://...: a downgrade the
    // https-only check never sees, after which anyone on the plain-http path chooses the keys.
    serve({
      '/.well-known/openid-configuration': json(discovery(`${issuer}/jwks`)),
      '/jwks': (_q, r) => void r.writeHead(302, { location: `${plain.url}/jwks` }).end(),
    });
    const results: string[] = [];
    for (const extra of [{}, { jwks_uri: `${issuer}/jwks` }]) {
      const clock = new FakeClock();
      const { service: svc, decide } = service(clock, extra);
      const asked = plain.requests;
      const code = await decide(await evilToken(clock));
      // Observed: 'allow': fetch follows the redirect to http and the keys served there sign users in.
      if (code === 'allow' || plain.requests > asked || svc.issuers[0]!.status().keysLoaded) {
        results.push(
          `${'jwks_uri' in extra ? 'configured' : 'discovered'} jwks_uri: token ${code}, plain-http requests ${plain.requests - asked}, keysLoaded ${svc.issuers[0]!.status().keysLoaded}`,
        );
      }
    }
    assert.deepEqual(results, [], 'an https key set redirected to http was used');
  });
});

describe('no escaped rejections', () => {
  it('left no promise rejection unhandled across this file (each would crash a process run with --unhandled-rejections=throw, the default)', () => {
    process.off('unhandledRejection', onUnhandled);
    assert.deepEqual(
      unhandled.map((e) => String(e)),
      [],
    );
  });
});
