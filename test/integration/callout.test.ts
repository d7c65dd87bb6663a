/**
 * The whole path as a NATS client sees it: a real nats-server with auth_callout, the callout
 * service, and OIDC tokens from local issuers. Runs for every fetched nats-server version, with
 * the callout traffic encrypted (xkey) and in the clear.
 *
 * A refusal only ever reaches the client as "Authorization Violation", so every refusal test
 * also checks the decision code the service logged for it.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, it } from 'node:test';
import { errors as natsErrors, tokenAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { fakeJwe, hs256WithSecret, startLocalIssuer, unsignedToken, type LocalIssuer } from '../helpers/local-issuer.js';
import {
  connectClient,
  expectAuthorizationViolation,
  startCalloutFixture,
  userInfo,
  watchErrors,
  within,
  type CalloutFixture,
  type UserInfo,
} from '../helpers/callout-fixture.js';

const binaries = await natsServerBinaries();

const AUDIENCE = 'nats';
const NAME = 'Zoë 山田';
const MAX_BYTES = 8192;

/**
 * An issuer whose single key can be replaced under the SAME kid (some IdPs do this). The local
 * issuer helper always gives a new key a new kid, so this one is made here.
 */
/** USER.INFO permissions with every subject list sorted. */
function sortedPermissions(p: UserInfo['permissions']): unknown {
  const sorted = (d?: { allow?: string[]; deny?: string[] }) =>
    d && { ...(d.allow ? { allow: [...d.allow].sort() } : {}), ...(d.deny ? { deny: [...d.deny].sort() } : {}) };
  return p && { ...p, publish: sorted(p.publish), subscribe: sorted(p.subscribe) };
}

for (const { version, path } of binaries) {
  for (const xkey of [true, false]) {
    describe(`nats-server ${version}, callout ${xkey ? 'encrypted (xkey)' : 'in the clear'}`, () => {
      let fx: CalloutFixture;
      /** Most tests. */
      let main: LocalIssuer;
      /** Only the unknown-kid flood: its JWKS must not have been loaded before. */
      let flood: LocalIssuer;
      /** Only the rotation test. */
      let rotating: LocalIssuer;
      let sameKid: LocalIssuer;

      before(async () => {
        [main, flood, rotating, sameKid] = await Promise.all([startLocalIssuer(), startLocalIssuer(), startLocalIssuer(), startLocalIssuer()]);
        const everyIssuer = () => [main.issuer, flood.issuer, rotating.issuer, sameKid.issuer];
        const issuer = (iss: string, extra: Record<string, unknown> = {}) => ({ issuer: iss, audiences: [AUDIENCE], allow_insecure_http: true, ...extra });
        fx = await startCalloutFixture({
          bin: path,
          xkey,
          issuers: [
            issuer(main.issuer, { jwks_uri: main.jwksUri, jwks_cooldown: '30s' }),
            issuer(flood.issuer, { jwks_uri: flood.jwksUri, jwks_cooldown: '30s' }),
            // Short cooldowns: these tests wait for the cooldown to pass before the refetch.
            issuer(rotating.issuer, { jwks_cooldown: '1s' }),
            issuer(sameKid.issuer, { jwks_uri: sameKid.jwksUri, jwks_cooldown: '1s' }),
          ],
          rules: [
            {
              name: 'short-lived',
              issuer: everyIssuer(),
              match: { purpose: 'short' },
              account: 'APP',
              max_lifetime: '3s',
              permissions: { pub: { allow: ['$SYS.REQ.USER.INFO'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } },
            },
            {
              name: 'developers',
              issuer: everyIssuer(),
              match: { groups: 'dev' },
              when: [{ claim: 'tenant', present: true }],
              account: 'APP',
              user_name_claim: 'name',
              permissions: {
                pub: { allow: ['app.{{claims.tenant}}.>', 'user.{{sub}}.>', '$SYS.REQ.USER.INFO'], deny: ['app.{{claims.tenant}}.secret'] },
                sub: { allow: ['_INBOX.{{sub}}.>', 'app.{{claims.tenant}}.>', 'user.{{sub}}.>'], deny: ['app.{{claims.tenant}}.admin.>'] },
                resp: { max: 1, ttl: '1m' },
              },
            },
          ],
          token: { fields: ['auth_token', 'pass'], max_bytes: MAX_BYTES },
        });
      });

      after(async () => {
        await fx?.stop();
        await Promise.all([main?.stop(), flood?.stop(), rotating?.stop(), sameKid?.stop()]);
      });

      const devClaims = (extra: Record<string, unknown> = {}) => ({ sub: 'user-1', aud: AUDIENCE, groups: ['dev'], tenant: 'acme', name: NAME, ...extra });

      /** Every credential a client presented: none may ever show up in the service log. */
      const presented: string[] = [];
      const remember = (opts: Parameters<typeof connectClient>[1] = {}): void => {
        for (const v of [opts.token, opts.pass]) if (typeof v === 'string') presented.push(v);
      };

      /** Connects with `opts`, runs `body`, always closes. */
      async function withClient<T>(opts: Parameters<typeof connectClient>[1], body: (nc: NatsConnection) => Promise<T>): Promise<T> {
        remember(opts);
        const nc = await connectClient(fx.url, opts);
        try {
          return await body(nc);
        } finally {
          await nc.close();
        }
      }

      /** Asserts the client is refused and the service logged `code` for it. */
      async function expectRefused(opts: Parameters<typeof connectClient>[1], code: string): Promise<void> {
        remember(opts);
        const mark = fx.log.mark();
        await expectAuthorizationViolation(fx.url, opts);
        const decision = await fx.log.nextDecision(mark);
        assert.equal(decision.result, 'reject');
        assert.equal(decision.code, code, `logged ${JSON.stringify(decision)}`);
      }

      /** Waits until the service may refetch `issuer`'s JWKS again (its cooldown has passed). */
      async function cooldownOver(issuer: string): Promise<void> {
        const keys = fx.service.issuers.find((i) => i.config.issuer === issuer);
        assert.ok(keys, `issuer ${issuer} not configured`);
        const deadline = Date.now() + 10_000;
        while (keys.coolingDown) {
          assert.ok(Date.now() < deadline, 'JWKS cooldown did not end');
          await sleep(50);
        }
      }

      it('lets a valid token in as the user named by its claim, in account APP, with exactly the rendered rule permissions', async () => {
        const mark = fx.log.mark();
        const info = await withClient({ token: await main.sign(devClaims()) }, userInfo);
        assert.equal(info.account, 'APP');
        assert.equal(info.user, NAME);
        // nats-server lists subjects from its own sets: compare them as sets.
        assert.deepEqual(sortedPermissions(info.permissions), {
          publish: { allow: ['$SYS.REQ.USER.INFO', 'app.acme.>', 'user.user-1.>'], deny: ['app.acme.secret'] },
          subscribe: { allow: ['_INBOX.user-1.>', 'app.acme.>', 'user.user-1.>'], deny: ['app.acme.admin.>'] },
          responses: { max: 1, ttl: 60_000_000_000 },
        });
        const decision = await fx.log.nextDecision(mark);
        assert.equal(decision.result, 'allow');
        assert.equal(decision.rule, 'developers');
        assert.equal(decision.subject, 'user-1');
      });

      it('delivers a message on a subject the grant allows in both directions', async () => {
        await withClient({ token: await main.sign(devClaims()) }, async (nc) => {
          const sub = nc.subscribe('app.acme.chat', { max: 1 });
          await nc.flush();
          nc.publish('app.acme.chat', 'hello');
          const got = await within(
            (async () => {
              for await (const m of sub) return m.string();
              return undefined;
            })(),
            5000,
            'the message on app.acme.chat',
          );
          assert.equal(got, 'hello');
        });
      });

      it('reports a permission violation for a publish outside the grant, and for one on a denied subject', async () => {
        await withClient({ token: await main.sign(devClaims()) }, async (nc) => {
          const errs = watchErrors(nc);
          nc.publish('app.other.x', 'no');
          nc.publish('app.acme.secret', 'no');
          await nc.flush();
          for (const subject of ['app.other.x', 'app.acme.secret']) {
            const err = await errs.waitFor((e) => e instanceof natsErrors.PermissionViolationError && e.subject === subject);
            assert.equal((err as InstanceType<typeof natsErrors.PermissionViolationError>).operation, 'publish');
          }
          // A violation does not end the connection: allowed traffic still flows.
          assert.equal(nc.isClosed(), false);
          await userInfo(nc);
        });
      });

      it('reports a permission violation for a subscription outside the grant, and for one on a denied subject', async () => {
        await withClient({ token: await main.sign(devClaims()) }, async (nc) => {
          const errs = watchErrors(nc);
          const outside = nc.subscribe('other.x');
          const denied = nc.subscribe('app.acme.admin.users');
          await nc.flush();
          for (const sub of [outside, denied]) {
            const closed = await within(sub.closed, 5000, `subscription ${sub.getSubject()} to be closed`);
            assert.ok(closed instanceof natsErrors.PermissionViolationError, `subscription closed with ${String(closed)}`);
            assert.equal(closed.operation, 'subscription');
            assert.equal(closed.subject, sub.getSubject());
          }
          assert.equal(errs.errors.filter((e) => e instanceof natsErrors.PermissionViolationError).length, 2);
        });
      });

      it('accepts the token in the password of a user/password login when token.fields includes pass', async () => {
        const info = await withClient({ user: 'anything', pass: await main.sign(devClaims()) }, userInfo);
        assert.equal(info.account, 'APP');
        assert.equal(info.user, NAME);
      });

      it('refuses the token in the password when token.fields does not include pass (TOKEN_MISSING)', async () => {
        const original = fx.service;
        fx.runner.swap(fx.newService({ ...fx.doc, token: { fields: ['auth_token'], max_bytes: MAX_BYTES } }));
        try {
          await expectRefused({ user: 'anything', pass: await main.sign(devClaims()) }, 'TOKEN_MISSING');
          // The same service still takes the token from the token field.
          await withClient({ token: await main.sign(devClaims()) }, userInfo);
        } finally {
          fx.runner.swap(original);
        }
      });

      describe('refuses, logging the reason', () => {
        const now = () => Math.floor(Date.now() / 1000);
        const cases: [string, string, () => Promise<Parameters<typeof connectClient>[1]>][] = [
          ['a client without a token', 'TOKEN_MISSING', async () => ({})],
          ['an expired token', 'TOKEN_EXPIRED', async () => ({ token: await main.sign(devClaims({ iat: now() - 7200, exp: now() - 3600 })) })],
          ['a token that is not valid yet (nbf)', 'TOKEN_NOT_YET_VALID', async () => ({ token: await main.sign(devClaims({ nbf: now() + 3600 })) })],
          ['a token for another audience', 'TOKEN_AUDIENCE_INVALID', async () => ({ token: await main.sign(devClaims({ aud: 'someone-else' })) })],
          ['a token from an unknown issuer', 'TOKEN_ISSUER_UNKNOWN', async () => ({ token: await main.sign(devClaims({ iss: 'https://idp.example.com' })) })],
          [
            'an unsigned token (alg none)',
            'TOKEN_ALG_NOT_ALLOWED',
            async () => ({ token: unsignedToken({ iss: main.issuer, exp: now() + 300, ...devClaims() }) }),
          ],
          [
            "an HS256 token keyed with the issuer's RSA public key",
            'TOKEN_ALG_NOT_ALLOWED',
            async () => ({
              token: hs256WithSecret({ iss: main.issuer, iat: now(), exp: now() + 300, ...devClaims() }, main.publicKeyPem(), { kid: main.kid }),
            }),
          ],
          [
            'a token signed by a key the issuer does not publish',
            'TOKEN_KEY_UNKNOWN',
            async () => ({ token: await main.sign(devClaims(), { key: 'unknown' }) }),
          ],
          ['an encrypted token (JWE)', 'TOKEN_ENCRYPTED', async () => ({ token: fakeJwe() })],
          [
            `a token larger than token.max_bytes (${MAX_BYTES})`,
            'TOKEN_TOO_LARGE',
            async () => {
              const token = await main.sign(devClaims({ padding: 'x'.repeat(10_000) }));
              assert.ok(token.length > MAX_BYTES && token.length < 65536);
              return { token };
            },
          ],
          ['a claim that would put a wildcard into a subject', 'POLICY_CLAIM_UNSAFE', async () => ({ token: await main.sign(devClaims({ tenant: 'a.>' })) })],
          ['a token no rule matches', 'POLICY_NO_MATCH', async () => ({ token: await main.sign(devClaims({ groups: ['ops'] })) })],
        ];
        for (const [what, code, opts] of cases) {
          it(`${what} (${code})`, async () => expectRefused(await opts(), code));
        }
      });

      it('closes the connection with "User Authentication Expired" when the user JWT expires (rule max_lifetime, token exp)', async () => {
        const clients = [
          // Capped by the rule's max_lifetime (3s) although the token lives 5 minutes.
          await main.sign(devClaims({ purpose: 'short' })),
          // Capped by the token's own exp.
          await main.sign(devClaims({ sub: 'user-2', exp: Math.floor(Date.now() / 1000) + 3 })),
        ].map(async (token) => {
          presented.push(token);
          const nc = await connectClient(fx.url, { token });
          try {
            const info = await userInfo(nc);
            assert.ok(info.expires !== undefined && info.expires > 0, `USER.INFO shows no expiry: ${JSON.stringify(info)}`);
            const exp = Date.now() + info.expires / 1e6;
            const statuses: string[] = [];
            void (async () => {
              for await (const s of nc.status()) statuses.push(s.type === 'error' ? `error: ${s.error.message}` : s.type);
            })();
            const closedWith = await within(nc.closed(), 15_000, 'the server to close the expired connection');
            const closedAt = Date.now();
            // Not before the JWT's expiry (1 s slack: JWT times are whole seconds).
            assert.ok(closedAt >= exp - 1000, `closed ${exp - closedAt} ms before the user JWT expired`);
            assert.ok(closedWith instanceof Error, `closed without an error (statuses: ${statuses.join(', ')})`);
            assert.match(closedWith.message, /user authentication expired/i);
          } finally {
            await nc.close();
          }
        });
        await Promise.all(clients);
      });

      it('refuses a flood of tokens with 50 unknown kids with at most one JWKS fetch', async () => {
        const before = flood.jwksFetches;
        const mark = fx.log.mark();
        const tokens = await Promise.all(
          Array.from({ length: 50 }, () => flood.sign({ ...devClaims() }, { kid: `unknown-${randomBytes(8).toString('hex')}` })),
        );
        presented.push(...tokens);
        await Promise.all(tokens.map((token) => expectAuthorizationViolation(fx.url, { token })));
        const decisions = fx.log.decisions(mark);
        assert.equal(decisions.length, 50);
        assert.deepEqual(new Set(decisions.map((d) => d.code)), new Set(['TOKEN_KEY_UNKNOWN']));
        assert.ok(flood.jwksFetches - before <= 1, `${flood.jwksFetches - before} JWKS fetches`);
      });

      it('follows a key rotation at the issuer without a restart, refetching the JWKS once', async () => {
        await withClient({ token: await rotating.sign(devClaims()) }, userInfo);
        const oldKid = rotating.kid;
        await rotating.rotate({ keepOld: false });
        assert.notEqual(rotating.kid, oldKid);
        await cooldownOver(rotating.issuer);
        const before = rotating.jwksFetches;
        const info = await withClient({ token: await rotating.sign(devClaims()) }, userInfo);
        assert.equal(info.account, 'APP');
        assert.equal(rotating.jwksFetches - before, 1);
        // The withdrawn key no longer lets anyone in (a fresh token: no cached decision).
        await expectRefused({ token: await rotating.sign(devClaims({ jti: 'after-rotation' }), { key: 'previous' }) }, 'TOKEN_KEY_UNKNOWN');
        assert.equal(rotating.jwksFetches - before, 1);
      });

      it('follows a key replaced under the same kid, reloading once off cooldown', async () => {
        await withClient({ token: await sameKid.sign(devClaims()) }, userInfo);
        await sameKid.rotate({ reuseKid: true });
        await cooldownOver(sameKid.issuer);
        const before = sameKid.jwksFetches;
        const info = await withClient({ token: await sameKid.sign(devClaims()) }, userInfo);
        assert.equal(info.user, NAME);
        assert.equal(sameKid.jwksFetches - before, 1);
      });

      it('uses the token function on every connect, so a refused client can come back with a good token', async () => {
        let token = 'not-a-jwt';
        await expectRefused({ authenticator: tokenAuthenticator(() => token) }, 'TOKEN_MALFORMED');
        token = await main.sign(devClaims());
        const info = await withClient({ authenticator: tokenAuthenticator(() => token), inboxPrefix: '_INBOX.user-1' }, userInfo);
        assert.equal(info.user, NAME);
      });

      it('never writes a token, a seed or its password to its log', () => {
        const text = fx.log.records.map((r) => JSON.stringify(r)).join('\n');
        assert.ok(fx.log.decisions().length > 50 && presented.length > 50, 'the other tests should have run first');
        const secrets = [fx.doc.callout.issuer_seed, fx.doc.callout.xkey_seed, fx.password, ...presented.filter((t) => t.length >= 20)];
        for (const secret of secrets) {
          if (secret === undefined) continue;
          // Any 40-character piece of a token or seed would already be a leak.
          const probe = String(secret).slice(-40);
          assert.ok(!text.includes(probe), `the service log contains ${probe.slice(0, 12)}...`);
        }
      });
    });
  }
}
