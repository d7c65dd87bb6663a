/**
 * Input an attacker controls: token spellings, key sets an IdP (or someone in its path) serves,
 * requests a rogue publisher sends. Each must end in a clean refusal, bounded in work and memory.
 */
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import { exportJWK } from 'jose';
import { buildConfig } from '../../src/config.js';
import { AuthFailure, ConfigError } from '../../src/errors.js';
import { IssuerKeys } from '../../src/issuers.js';
import { createLogger } from '../../src/log.js';
import { CalloutService } from '../../src/service.js';
import { TokenVerifier } from '../../src/token.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';

const SEED = new TextDecoder().decode(createAccount().getSeed());
const now = () => Math.floor(Date.now() / 1000);

function doc(issuer: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  return {
    callout: { account: 'AUTH', issuer_seed: SEED },
    issuers: [{ issuer, audiences: ['nats'], allow_insecure_http: true, ...extra }],
    policy: { rules: [{ name: 'r', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
  };
}

async function code(p: Promise<unknown>): Promise<string> {
  try {
    await p;
    return 'accepted';
  } catch (err) {
    assert.ok(err instanceof AuthFailure, `not an AuthFailure: ${String(err)}`);
    return err.code;
  }
}

describe('hostile input', () => {
  let idp: LocalIssuer;
  before(async () => {
    idp = await startLocalIssuer();
  });
  after(() => idp.stop());

  const verifier = (extra: Record<string, unknown> = {}) =>
    new TokenVerifier([new IssuerKeys(buildConfig(doc(idp.issuer, { jwks_uri: idp.jwksUri, ...extra })).issuers[0]!)], 1 << 20);

  it('accepts only the canonical spelling of a signature (one token, one cache entry)', async () => {
    const v = verifier();
    const token = await idp.sign({ sub: 'a', aud: 'nats' });
    assert.equal(await code(v.verify(token)), 'accepted');
    const [h, p, s] = token.split('.') as [string, string, string];
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    // An RS256 signature is 256 bytes: its last base64url character carries 4 unused bits.
    const variants = [...alphabet]
      .map((c) => `${s.slice(0, -1)}${c}`)
      .filter((sig) => sig !== s && Buffer.from(sig, 'base64url').equals(Buffer.from(s, 'base64url')));
    assert.ok(variants.length > 0, 'the signature has non-canonical spellings');
    for (const sig of variants) assert.equal(await code(v.verify(`${h}.${p}.${sig}`)), 'TOKEN_MALFORMED');
  });

  it('refuses a deeply nested header or claims cleanly', async () => {
    const v = verifier();
    const token = await idp.sign({ sub: 'a', aud: 'nats' });
    const [h, p, s] = token.split('.') as [string, string, string];
    const deep = `${'['.repeat(50_000)}${']'.repeat(50_000)}`;
    const nest = (segment: string) => Buffer.from(`${Buffer.from(segment, 'base64url').toString().slice(0, -1)},"x":${deep}}`).toString('base64url');
    assert.equal(await code(v.verify(`${nest(h)}.${p}.${s}`)), 'TOKEN_SIGNATURE_INVALID');
    assert.equal(await code(v.verify(`${h}.${nest(p)}.${s}`)), 'TOKEN_SIGNATURE_INVALID');
  });

  it('refuses a key set over 1 MiB or with more than 100 keys, without holding it', async () => {
    const big = { keys: [...idp.jwks().keys, { kty: 'oct', k: 'x'.repeat(1 << 20) }] };
    idp.faults.jwks = { status: 200, body: JSON.stringify(big) };
    try {
      const keys = new IssuerKeys(buildConfig(doc(idp.issuer, { jwks_uri: idp.jwksUri })).issuers[0]!);
      assert.equal(await code(keys.load()), 'ISSUER_UNAVAILABLE');
      assert.match(keys.status().lastError ?? '', /more than 1048576/);
      const many = { keys: Array.from({ length: 101 }, (_, i) => ({ ...idp.jwks().keys[0], kid: `k${i}` })) };
      idp.faults.jwks = { status: 200, body: JSON.stringify(many) };
      const again = new IssuerKeys(buildConfig(doc(idp.issuer, { jwks_uri: idp.jwksUri })).issuers[0]!);
      assert.equal(await code(again.load()), 'ISSUER_UNAVAILABLE');
      assert.match(again.status().lastError ?? '', /101 keys, more than 100/);
    } finally {
      idp.faults.jwks = undefined;
    }
  });

  it('tries at most 4 keys under one kid, so a crowded key set cannot multiply the work of a forged token', async () => {
    const kid = idp.kid;
    const decoys = await Promise.all(
      Array.from({ length: 6 }, async () => ({
        ...(await exportJWK(generateKeyPairSync('rsa', { modulusLength: 2048 }).publicKey)),
        kid,
        alg: 'RS256',
        use: 'sig',
      })),
    );
    const real = idp.jwks().keys.find((k) => k.kid === kid)!;
    const token = await idp.sign({ sub: 'a', aud: 'nats' });
    try {
      idp.faults.jwks = { status: 200, body: JSON.stringify({ keys: [decoys[0], real, ...decoys.slice(1)] }) };
      assert.equal(await code(verifier().verify(token)), 'accepted', 'the second key of a kid is tried');
      idp.faults.jwks = { status: 200, body: JSON.stringify({ keys: [...decoys, real] }) };
      assert.equal(await code(verifier().verify(token)), 'TOKEN_SIGNATURE_INVALID', 'the seventh is not');
    } finally {
      idp.faults.jwks = undefined;
    }
  });

  it('bounds the key cooldown and how long stale keys are used', () => {
    const error = (extra: Record<string, unknown>, path: string) =>
      assert.throws(
        () => buildConfig(doc(idp.issuer, extra)),
        (e: unknown) => e instanceof ConfigError && e.path === path && /must be at most/.test(e.message),
      );
    error({ jwks_cooldown: '2h' }, 'issuers[0].jwks_cooldown');
    error({ jwks_max_stale: '30d' }, 'issuers[0].jwks_max_stale');
    buildConfig(doc(idp.issuer, { jwks_cooldown: '1h', jwks_max_stale: '7d' }));
  });

  it('refuses a request without exp (nats-server always sets it)', async () => {
    const lines: Record<string, unknown>[] = [];
    const service = new CalloutService(
      buildConfig(doc(idp.issuer, { jwks_uri: idp.jwksUri })),
      createLogger('debug', (l) => lines.push(JSON.parse(l))),
    );
    const server = fakeServer();
    const token = await idp.sign({ sub: 'a', aud: 'nats', exp: now() + 60 });
    const request = authRequestJwt(server, {
      connectOpts: { auth_token: token },
      edit: (c) => {
        delete c.exp;
      },
    });
    assert.equal(await service.handle(new TextEncoder().encode(request), undefined), undefined);
    const d = lines.filter((l) => l.msg === 'authorization').at(-1)!;
    assert.equal(d.code, 'REQUEST_CLAIMS_INVALID');
    assert.match(String(d.reason), /no numeric exp/);
  });

  it("keeps the decision line of a rogue publisher's request short, whatever alg, aud or version it claims", async () => {
    const raw: string[] = [];
    const service = new CalloutService(
      buildConfig(doc(idp.issuer, { jwks_uri: idp.jwksUri })),
      createLogger('debug', (l) => raw.push(l)),
    );
    const server = fakeServer();
    const big = 'x'.repeat(100_000);
    const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
    const requests = [
      // Malformed: refused when opened (on arrival, or when picked from a backlog).
      `${b64({ typ: 'JWT', alg: big })}.${b64({})}.${Buffer.alloc(64).toString('base64url')}`,
      // Signed by the server key it names (anyone can make one): refused once verified.
      authRequestJwt(server, { edit: (c) => (c.aud = big) }),
      authRequestJwt(server, { edit: (c) => (c.nats.version = big) }),
    ];
    for (const request of requests) {
      const from = raw.length;
      assert.equal(await service.handle(new TextEncoder().encode(request), undefined), undefined);
      const line = raw.slice(from).find((l) => JSON.parse(l).msg === 'authorization') ?? '';
      assert.ok(line.length < 2_000, `a decision line of ${line.length} characters: ${line.slice(0, 200)}`);
    }
  });
});
