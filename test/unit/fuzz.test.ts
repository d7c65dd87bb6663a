/**
 * Generated hostile input for every parser an attacker reaches: the request JWT (and its box), the
 * client's token, a key set. Each either succeeds or refuses with an AuthFailure; nothing else
 * escapes, nothing hangs.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createAccount, createCurve } from '@nats-io/nkeys';
import fc from 'fast-check';
import { buildConfig } from '../../src/config.js';
import { AuthFailure } from '../../src/errors.js';
import { IssuerKeys } from '../../src/issuers.js';
import { decodeNatsJwt } from '../../src/nats-jwt.js';
import { RequestVerifier } from '../../src/request.js';
import { TokenVerifier } from '../../src/token.js';
import { XkeyBox } from '../../src/xkey.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';

const RUNS = 500;
const b64 = (s: string) => Buffer.from(s).toString('base64url');

/** JSON values nested and shaped as hostile input is: deep, wide, wrongly typed. */
const json = fc.letrec((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    fc.constant(null),
    fc.boolean(),
    fc.double(),
    fc.integer(),
    fc.string(),
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(fc.constantFrom('iss', 'aud', 'exp', 'iat', 'nbf', 'sub', 'kid', 'alg', 'typ', 'crit', 'enc', 'nats', 'x', '__proto__'), tie('value'), {
      maxKeys: 6,
    }),
  ),
})).value;

/** Strings that look like compact JWTs: segments of JSON, garbage or nothing. */
const segment = fc.oneof(
  json.map((v) => b64(JSON.stringify(v) ?? 'null')),
  fc.string(),
  fc.constant(''),
  fc.base64String().map((s) => s.replace(/=/g, '')),
);
const jwtish = fc.oneof(
  fc.array(segment, { minLength: 1, maxLength: 6 }).map((a) => a.join('.')),
  fc.string(),
  fc.string({ unit: 'binary' }),
);

function onlyAuthFailures(fn: () => unknown): void {
  try {
    fn();
  } catch (err) {
    assert.ok(err instanceof AuthFailure, `escaped: ${String(err)}`);
  }
}

/** `fn` must refuse: a success fails, and so does any rejection other than an AuthFailure. */
async function refusedWithAuthFailure(fn: () => Promise<unknown>): Promise<void> {
  await assert.rejects(fn, (err: unknown) => {
    assert.ok(err instanceof AuthFailure, `escaped: ${String(err)}`);
    return true;
  });
}

describe('fuzzed parsers', () => {
  it('decodeNatsJwt returns a decoded JWT or a reason, never throws', () => {
    // Besides garbage, NATS-shaped JWTs (the right header) with any claims and signatures of any length.
    const natsHeader = b64('{"typ":"JWT","alg":"ed25519-nkey"}');
    const natsShaped = fc
      .tuple(json, fc.oneof(fc.uint8Array({ minLength: 64, maxLength: 64 }), fc.uint8Array({ minLength: 1, maxLength: 80 })))
      .map(([claims, sig]) => `${natsHeader}.${b64(JSON.stringify(claims) ?? 'null')}.${Buffer.from(sig).toString('base64url')}`);
    let decoded = 0;
    fc.assert(
      fc.property(fc.oneof(jwtish, natsShaped), (s) => {
        const d = decodeNatsJwt(s);
        if (typeof d === 'string') {
          assert.ok(d.length > 0, 'an empty reason');
          return;
        }
        decoded++;
        assert.ok(typeof d.claims === 'object' && d.claims !== null && !Array.isArray(d.claims), `claims decoded as ${JSON.stringify(d.claims)}`);
        assert.equal(d.signature.length, 64);
        assert.equal(d.signingInput.toString(), s.slice(0, s.lastIndexOf('.')));
      }),
      { numRuns: RUNS },
    );
    assert.ok(decoded > 0, 'no case decoded: the decoded branch was never checked');
  });

  it('the request verifier refuses any other request with an AuthFailure, with and without xkey', () => {
    const curve = createCurve();
    const plain = new RequestVerifier(undefined);
    const sealed = new RequestVerifier(new XkeyBox(new TextDecoder().decode(curve.getSeed())));
    const server = fakeServer();
    const good = authRequestJwt(server, {});
    const goodBytes = new TextEncoder().encode(good);
    const mutations = fc.oneof(
      jwtish.map((s) => new TextEncoder().encode(s)),
      fc.uint8Array({ maxLength: 512 }),
      // A real request with bytes flipped, cut or appended.
      fc.tuple(fc.nat(good.length - 1), fc.integer({ min: 0, max: 255 })).map(([i, b]) => {
        const bytes = new TextEncoder().encode(good);
        bytes[i] = b;
        return bytes;
      }),
      fc.nat(good.length).map((n) => new TextEncoder().encode(good.slice(0, n))),
      fc.uint8Array({ maxLength: 64 }).map((tail) => new Uint8Array([...new TextEncoder().encode('xkv1'), ...tail])),
    );
    fc.assert(
      fc.property(mutations, fc.option(fc.string(), { nil: undefined }), (data, header) => {
        for (const v of [plain, sealed]) {
          let request: ReturnType<RequestVerifier['verifyMessage']> | undefined;
          onlyAuthFailures(() => {
            request = v.verifyMessage(data, header);
          });
          if (request === undefined) continue;
          // A mutation can leave the request intact (a byte set to its own value, a cut at the
          // very end): only then may it be accepted, in the clear and as the server signed it.
          assert.equal(v, plain, 'a request that is not sealed to our xkey was accepted');
          assert.deepEqual(request, plain.verifyMessage(goodBytes, header), 'an altered request was accepted');
        }
      }),
      { numRuns: RUNS },
    );
  });

  it('the token verifier refuses any other token with an AuthFailure', async () => {
    const issuer = 'https://idp.example.com';
    const config = buildConfig({
      callout: { account: 'AUTH', issuer_seed: new TextDecoder().decode(createAccount().getSeed()) },
      issuers: [{ issuer, audiences: ['nats'], algorithms: ['RS256', 'ES256', 'EdDSA'] }],
      policy: { rules: [{ name: 'r', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
    });
    const keys = new IssuerKeys(config.issuers[0]!, undefined, JSON.stringify({ keys: [] }));
    const verifier = new TokenVerifier([keys], 16384);
    const withIssuer = fc
      .tuple(json, json, fc.string())
      .map(([h, p, s]) => `${b64(JSON.stringify(h) ?? '')}.${b64(JSON.stringify({ ...(typeof p === 'object' && p ? p : {}), iss: issuer }))}.${s}`);
    await fc.assert(
      fc.asyncProperty(fc.oneof(jwtish, withIssuer), async (token) => {
        // The key set is empty: no token can verify.
        await refusedWithAuthFailure(() => verifier.verify(token));
        onlyAuthFailures(() => verifier.issuerOf(token));
      }),
      { numRuns: RUNS },
    );
  });

  it('a key set that is not one is refused when given, and any served set only ever refuses tokens', async () => {
    const issuer = 'https://idp.example.com';
    const config = buildConfig({
      callout: { account: 'AUTH', issuer_seed: new TextDecoder().decode(createAccount().getSeed()) },
      issuers: [{ issuer, audiences: ['nats'] }],
      policy: { rules: [{ name: 'r', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
    }).issuers[0]!;
    const keySet = fc.oneof(
      json,
      fc.array(json, { maxLength: 5 }).map((keys) => ({ keys })),
    );
    const token = `${b64('{"alg":"RS256","kid":"k"}')}.${b64(JSON.stringify({ iss: issuer, aud: 'nats', exp: 9_999_999_999 }))}.${b64('sig')}`;
    await fc.assert(
      fc.asyncProperty(keySet, async (set) => {
        let keys: IssuerKeys;
        try {
          keys = new IssuerKeys(config, undefined, JSON.stringify(set));
        } catch (err) {
          assert.match(String((err as Error).message), /not a JSON Web Key Set/);
          return;
        }
        // The signature is three bytes: whatever the key set holds, the token is refused.
        await refusedWithAuthFailure(() => new TokenVerifier([keys], 16384).verify(token));
      }),
      { numRuns: 300 },
    );
  });
});
