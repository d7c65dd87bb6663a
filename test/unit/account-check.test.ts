import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { encodeAccount } from '@nats-io/jwt';
import { createAccount, createCurve, createOperator, createUser } from '@nats-io/nkeys';
import { checkCalloutAccount, connectionLimitFindings, readAccountJwt } from '../../src/account-check.js';
import { buildConfig, calloutAccountConnections, workerConnections } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { logConnectionLimit } from '../../src/service-instance.js';
import { LogCapture } from '../helpers/callout-fixture.js';

const seedOf = (kp: { getSeed(): Uint8Array }) => new TextDecoder().decode(kp.getSeed());

describe('callout account check (operator mode)', () => {
  const operator = createOperator();
  const auth = createAccount();
  const app = createAccount();
  const xkey = createCurve();
  const service = createUser();
  const doc = {
    callout: { mode: 'operator', issuer_seed: seedOf(auth), xkey_seed: seedOf(xkey), system_account: createAccount().getPublicKey() },
    accounts: { APP: { public_key: app.getPublicKey(), signing_seed: seedOf(app) } },
    issuers: [{ issuer: 'https://idp.example.com', audiences: ['nats'] }],
    policy: { rules: [{ name: 'r', match: { groups: 'dev' }, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
  };
  const config = buildConfig(doc);
  const jwtOf = (authorization: Record<string, unknown> | undefined, extra: Record<string, unknown> = {}) =>
    encodeAccount('AUTH', auth, { limits: { conn: -1 }, ...(authorization ? { authorization } : {}) }, { signer: operator, ...extra });
  const check = async (authorization: Record<string, unknown> | undefined, opts: { xkey?: string; now?: number; exp?: number } = {}) => {
    const claims = readAccountJwt(await jwtOf(authorization, opts.exp ? { exp: opts.exp } : {}), auth.getPublicKey());
    assert.ok(typeof claims !== 'string', String(claims));
    return checkCalloutAccount(config, claims, {
      serviceUser: service.getPublicKey(),
      xkey: 'xkey' in opts ? opts.xkey : xkey.getPublicKey(),
      nowSeconds: opts.now ?? Math.floor(Date.now() / 1000),
    });
  };
  const good = () => ({ auth_users: [service.getPublicKey()], allowed_accounts: [app.getPublicKey()], xkey: xkey.getPublicKey() });

  it('finds nothing wrong with a matching account JWT', async () => {
    assert.deepEqual(await check(good()), { problems: [], warnings: [] });
    assert.deepEqual(await check({ ...good(), allowed_accounts: ['*'] }), { problems: [], warnings: [] });
  });

  it('reports each mismatch that would refuse logins, naming the key to fix', async () => {
    assert.match((await check(undefined)).problems[0]!, /has no auth callout/);
    assert.match((await check({ ...good(), allowed_accounts: [] })).problems[0]!, /account APP \(A[A-Z2-7]+\) is not in authorization.allowed_accounts/);
    assert.match((await check({ ...good(), auth_users: [createUser().getPublicKey()] })).problems[0]!, /not in authorization.auth_users/);
    assert.match((await check({ ...good(), xkey: createCurve().getPublicKey() })).problems[0]!, /is not the public key of callout.xkey_seed/);
    assert.match((await check(good(), { xkey: undefined })).problems[0]!, /callout.xkey_seed is not set/);
    assert.match((await check(good(), { exp: 1000, now: 2000 })).problems[0]!, /expired/);
  });

  it('warns about users that bypass the callout and about unencrypted requests', async () => {
    const other = createUser().getPublicKey();
    const found = await check({ ...good(), auth_users: [service.getPublicKey(), other] });
    assert.deepEqual(found.problems, []);
    assert.match(found.warnings[0]!, new RegExp(`also lists ${other}`));
    const plain = await check({ auth_users: [service.getPublicKey()], allowed_accounts: [app.getPublicKey()] });
    assert.match(plain.warnings[0]!, /requests and answers travel unencrypted/);
  });

  it('refuses a JWT that is not this account, not signed by an operator, or not an account JWT at all', async () => {
    assert.match(String(readAccountJwt(await jwtOf(good()), app.getPublicKey())), /not .*A/);
    assert.match(String(readAccountJwt('x.y.z', auth.getPublicKey())), /not a NATS JWT/);
    const bySelf = await encodeAccount('AUTH', auth, { authorization: good() });
    assert.match(String(readAccountJwt(bySelf, auth.getPublicKey())), /not an operator key/);
    const [h, p] = (await jwtOf(good())).split('.');
    const forged = `${h}.${p}.${Buffer.alloc(64).toString('base64url')}`;
    assert.match(String(readAccountJwt(forged, auth.getPublicKey())), /signature does not verify/);
  });

  it('logs, before connecting, a callout.account_jwt whose limits.conn cannot hold the lanes, and nothing for one that can', async () => {
    const withJwt = (jwt: string) => buildConfig({ ...structuredClone(doc), callout: { ...doc.callout, account_jwt: jwt } });
    const logged = (jwt: string) => {
      const log = new LogCapture();
      logConnectionLimit(withJwt(jwt), createLogger('debug', log.write));
      return log.records.filter((r) => r.level === 'error' || r.level === 'warn');
    };
    const tight = logged(await encodeAccount('AUTH', auth, { limits: { conn: 1 }, authorization: good() }, { signer: operator }));
    assert.equal(tight.length, 1);
    assert.equal(tight[0]!.msg, 'callout account misconfigured');
    assert.equal(tight[0]!.checked_from, 'callout.account_jwt');
    assert.match(String(tight[0]!.problem), /admits 1 connection \(limits.conn\)/);
    assert.deepEqual(logged(await jwtOf(good())), [], 'an unlimited account: nothing to say');
    assert.deepEqual(logged('not.a.jwt'), [], 'an unreadable JWT is left to the full check once connected');
  });

  it('says when the account connection limit cannot hold this replica, before it connects', async () => {
    const withConn = async (conn: number) => {
      const claims = readAccountJwt(await encodeAccount('AUTH', auth, { limits: { conn }, authorization: good() }, { signer: operator }), auth.getPublicKey());
      assert.ok(typeof claims !== 'string', String(claims));
      return claims;
    };
    // The fixture's config: the default 24 connections, no audit, workers resolved from the cores.
    const need = calloutAccountConnections(config);
    assert.ok(need >= config.nats.connections);
    const tight = connectionLimitFindings(config, await withConn(need - 1));
    assert.match(tight.problems[0]!, new RegExp(`admits ${need - 1} connections \\(limits.conn\\) and this replica opens ${need}`));
    assert.match(tight.problems[0]!, /cannot start/);
    const single = connectionLimitFindings(config, await withConn(need));
    assert.deepEqual(single.problems, []);
    assert.match(single.warnings[0]!, /a second replica/);
    assert.deepEqual(connectionLimitFindings(config, await withConn(2 * need + 1)), { problems: [], warnings: [] });
    assert.deepEqual(connectionLimitFindings(config, await withConn(-1)), { problems: [], warnings: [] });
    // Part of the whole check too.
    const claims = await withConn(need - 1);
    assert.match(
      checkCalloutAccount(config, claims, {
        serviceUser: service.getPublicKey(),
        xkey: xkey.getPublicKey(),
        nowSeconds: Math.floor(Date.now() / 1000),
      }).problems.join('\n'),
      /limits.conn/,
    );
  });
});

describe('callout account connection limit, every shape of limits.conn', () => {
  const operator = createOperator();
  const auth = createAccount();
  const app = createAccount();
  const build = (extra: Record<string, unknown>) =>
    buildConfig({
      callout: { mode: 'operator', issuer_seed: seedOf(auth), system_account: createAccount().getPublicKey() },
      nats: { connections: 4 },
      issuers: [{ issuer: 'https://idp.example.com', audiences: ['nats'] }],
      policy: { rules: [{ name: 'r', match: { groups: 'dev' }, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
      accounts: { APP: { public_key: app.getPublicKey(), signing_seed: seedOf(app) } },
      ...extra,
    });
  const claimsWith = async (limits: Record<string, unknown> | undefined) => {
    const claims = readAccountJwt(await encodeAccount('AUTH', auth, limits === undefined ? {} : { limits }, { signer: operator }), auth.getPublicKey());
    assert.ok(typeof claims !== 'string', String(claims));
    // encodeAccount fills in defaults: put exactly what the test means into the claims.
    const nats = (claims as { nats: Record<string, unknown> }).nats;
    if (limits === undefined) delete nats.limits;
    else nats.limits = limits;
    return claims;
  };
  const one = build({ workers: 1 });

  it('reads a missing conn as 0 (Go leaves a 0 out), so such a JWT admits no connection', async () => {
    assert.match(connectionLimitFindings(one, await claimsWith(undefined)).problems[0]!, /admits 0 connections .* cannot start/);
    assert.match(connectionLimitFindings(one, await claimsWith({ subs: -1 })).problems[0]!, /admits 0 connections/);
  });

  it('takes only -1 as no limit, and refuses other negatives and non-integers', async () => {
    assert.deepEqual(connectionLimitFindings(one, await claimsWith({ conn: -1 })), { problems: [], warnings: [] });
    assert.match(connectionLimitFindings(one, await claimsWith({ conn: -5 })).problems[0]!, /is -5: nats-server admits no connection/);
    // null decodes as 0 in Go, like a missing conn.
    assert.match(connectionLimitFindings(one, await claimsWith({ conn: null })).problems[0]!, /admits 0 connections/);
    for (const bad of ['50', 2.5, { n: 1 }]) {
      assert.match(
        connectionLimitFindings(one, await claimsWith({ conn: bad })).problems[0]!,
        /not an integer: nats-server cannot use this JWT/,
        JSON.stringify(bad),
      );
    }
    const huge = connectionLimitFindings(one, await claimsWith({ conn: 2 ** 32 + 2 }));
    assert.deepEqual(huge.problems, []);
    assert.match(huge.warnings[0]!, /above 2\^31-1/);
  });

  it('counts the lanes over the workers and an audit connection per worker, and tells them apart', async () => {
    const three = build({ workers: 3, nats: { connections: 2 }, audit: {} });
    // 3 workers with 2 connections: one lane each, 3 in all, and 3 audit connections.
    assert.equal(calloutAccountConnections(three), 6);
    const lanesShort = connectionLimitFindings(three, await claimsWith({ conn: 2 }));
    assert.match(lanesShort.problems[0]!, /opens 6: 3 for nats.connections over 3 workers, and 3 for audit: nats-server refuses the rest/);
    assert.match(lanesShort.problems[0]!, /lower nats.connections or workers, or turn audit off/);
    const auditShort = connectionLimitFindings(three, await claimsWith({ conn: 4 }));
    assert.match(auditShort.problems[0]!, /2 audit connections are refused, and those workers drop their audit events/);
    assert.doesNotMatch(auditShort.problems[0]!, /cannot start/);
    assert.match(connectionLimitFindings(three, await claimsWith({ conn: 12 })).warnings[0]!, /oidc-callout revoke/);
    assert.deepEqual(connectionLimitFindings(three, await claimsWith({ conn: 13 })), { problems: [], warnings: [] });
  });

  it('does not throw on a JWT whose sub or iss is not a string', async () => {
    const [h, , sig] = (await encodeAccount('AUTH', auth, {}, { signer: operator })).split('.');
    for (const claims of [
      { sub: { toString: 1 }, iss: 'x', nats: { type: 'account' } },
      { sub: auth.getPublicKey(), iss: { toString: 1 }, nats: { type: 'account' } },
    ]) {
      const jwt = `${h}.${Buffer.from(JSON.stringify(claims)).toString('base64url')}.${sig}`;
      assert.equal(typeof readAccountJwt(jwt, auth.getPublicKey()), 'string');
    }
  });
});

describe('connections of a replica', () => {
  it('shares nats.connections out over the workers exactly, at least one each', () => {
    for (const [total, workers] of [
      [24, 1],
      [24, 3],
      [24, 5],
      [24, 7],
      [48, 8],
      [5, 8],
      [1, 1],
    ] as const) {
      const each = Array.from({ length: workers }, (_, i) => workerConnections(total, workers, i));
      assert.ok(
        each.every((n) => n >= 1),
        `${total} over ${workers}: ${each}`,
      );
      assert.equal(
        each.reduce((a, b) => a + b, 0),
        Math.max(total, workers),
        `${total} over ${workers}: ${each}`,
      );
      assert.ok(Math.max(...each) - Math.min(...each) <= 1, `${total} over ${workers}: ${each}`);
    }
  });
});
