/**
 * Accounts whose users are signed with a scoped signing key: nats-server applies the scope's
 * template and refuses a user JWT carrying permissions or limits of its own.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createAccount, createUser } from '@nats-io/nkeys';
import { buildConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { explainOutput } from '../../src/explain-output.js';
import { userClaims } from '../../src/user-jwt.js';

const seedOf = (kp: { getSeed(): Uint8Array }) => new TextDecoder().decode(kp.getSeed());
const issuer = 'https://idp.example.com';

function operatorDoc(rules: Record<string, unknown>[], scopedSeed = seedOf(createAccount())) {
  const app = createAccount();
  const tenant = createAccount();
  return {
    doc: {
      callout: { mode: 'operator', issuer_seed: seedOf(createAccount()), system_account: createAccount().getPublicKey() },
      accounts: {
        APP: { public_key: app.getPublicKey(), signing_seed: seedOf(app) },
        TENANT: { public_key: tenant.getPublicKey(), signing_seed: scopedSeed, scoped: true },
      },
      issuers: [{ issuer, audiences: ['nats'] }],
      policy: { rules },
    },
    tenant,
  };
}

function configError(doc: unknown, path: string, message: RegExp): void {
  assert.throws(
    () => buildConfig(doc, {}, '/nonexistent'),
    (e: unknown) => e instanceof ConfigError && e.path === path && message.test(e.message),
    `${path} ${message}`,
  );
}

describe('scoped signing keys', () => {
  it('refuses a rule that sets permissions, times or proxy_required for a scoped account', () => {
    const grants = { name: 'r', match: { groups: 'dev' }, account: 'TENANT', permissions: { pub: { allow: ['x'] } } };
    configError(operatorDoc([grants]).doc, 'policy.rules[0]', /signing key is scoped.*remove roles, roles_from and permissions/);
    const roles = { name: 'r', match: { groups: 'dev' }, account: 'TENANT', roles_from: { claim: 'groups', map: { dev: 'reader' } } };
    const withRoles = operatorDoc([roles]).doc;
    (withRoles.policy as Record<string, unknown>).roles = { reader: { sub: { allow: ['x'] } } };
    configError(withRoles, 'policy.rules[0]', /signing key is scoped/);
    const times = { name: 'r', match: { groups: 'dev' }, account: 'TENANT', times: [{ start: '08:00:00', end: '18:00:00' }] };
    configError(operatorDoc([times]).doc, 'policy.rules[0].times', /carries no limits/);
  });

  it('renders tag templates per user, refusing a claim value that would widen a scope template', () => {
    const { doc } = operatorDoc([
      { name: 'tenant', match: { groups: 'dev' }, account: 'TENANT', tags: ['tenant:{{claims.tenant}}'], when: [{ claim: 'tenant', present: true }] },
    ]);
    const config = buildConfig(doc, {}, '/nonexistent');
    assert.deepEqual(config.policy.decide(issuer, { sub: 'a', groups: ['dev'], tenant: 'acme' }).tags, ['tenant:acme']);
    for (const hostile of ['*', '>', 'a.b', 'a,b', 'x y', '']) {
      assert.throws(
        () => config.policy.decide(issuer, { sub: 'a', groups: ['dev'], tenant: hostile }),
        (e: unknown) => (e as { code?: string }).code === 'POLICY_CLAIM_UNSAFE' || (e as { code?: string }).code === 'POLICY_NO_MATCH',
        JSON.stringify(hostile),
      );
    }
    // A tag claim no condition guarantees is a configuration error, as in subject templates.
    const { doc: unguarded } = operatorDoc([{ name: 'tenant', match: { groups: 'dev' }, account: 'TENANT', tags: ['tenant:{{claims.tenant}}'] }]);
    configError(unguarded, 'policy.rules[0]', /its tags use claims.tenant, which no condition of the rule guarantees/);
  });

  it("refuses a user name that a scope's {{name()}} would turn into a wildcard or extra tokens", () => {
    const { doc } = operatorDoc([{ name: 'tenant', match: { groups: 'dev' }, account: 'TENANT' }]);
    const config = buildConfig(doc, {}, '/nonexistent');
    assert.equal(config.policy.decide(issuer, { sub: 'alice-42', groups: ['dev'] }).name, 'alice-42');
    for (const sub of ['*', '>', 'a.b', 'alice@example.com', 'x y', '$SYS', '_INBOX']) {
      assert.throws(
        () => config.policy.decide(issuer, { sub, groups: ['dev'] }),
        (e: unknown) => (e as { code?: string }).code === 'POLICY_CLAIM_UNSAFE' && /user name \(sub\)/.test((e as Error).message),
        sub,
      );
    }
    // An unscoped account's users keep any name: nothing renders it into a subject.
    const { doc: plain } = operatorDoc([{ name: 'app', match: { groups: 'dev' }, account: 'APP', permissions: { sub: { allow: ['x'] } } }]);
    assert.equal(buildConfig(plain, {}, '/nonexistent').policy.decide(issuer, { sub: 'a.b', groups: ['dev'] }).name, 'a.b');
  });

  it('refuses an account table mixing scoped and unscoped accounts', () => {
    const table = {
      name: 'r',
      match: { groups: 'dev' },
      account: { claim: 'tenant', map: { a: 'APP', t: 'TENANT' } },
      permissions: { pub: { allow: ['x'] } },
    };
    configError(operatorDoc([table]).doc, 'policy.rules[0].account', /mixes accounts with scoped signing keys \(TENANT\) and without \(APP\)/);
  });

  it("refuses scoped: true on the account's identity key, which has no scope", () => {
    const { doc, tenant } = operatorDoc([{ name: 'r', match: { groups: 'dev' }, account: 'TENANT' }]);
    (doc.accounts.TENANT as Record<string, unknown>).signing_seed = seedOf(tenant);
    configError(doc, 'accounts.TENANT.scoped', /identity key, which has no scope/);
  });

  it('accepts a scoped rule that grants nothing of its own, and signs a user JWT with no permissions or limits', () => {
    const scopedKey = createAccount();
    const { doc, tenant } = operatorDoc(
      [
        {
          name: 'tenant',
          match: { groups: 'dev' },
          account: 'TENANT',
          tags: ['plan:gold', 'tenant:{{claims.tenant}}'],
          when: [{ claim: 'tenant', present: true }],
          connection_types: ['STANDARD'],
        },
      ],
      seedOf(scopedKey),
    );
    const config = buildConfig(doc, {}, '/nonexistent');
    const grant = config.policy.decide(issuer, { sub: 'alice', groups: ['dev'], tenant: 'acme' });
    assert.equal(grant.account, 'TENANT');
    const signer = config.keys.accounts.forAccount('TENANT')!;
    assert.equal(signer.scoped, true);
    const user = createUser().getPublicKey();
    const claims = userClaims(grant, user, signer, 1_000, 2_000);
    assert.equal(claims.iss, scopedKey.getPublicKey());
    assert.equal(claims.name, 'alice');
    // Exactly what ValidateScopedSigner accepts: no pub, sub, resp, limits, src, times or connection types.
    assert.deepEqual(claims.nats, { tags: ['plan:gold', 'tenant:acme'], issuer_account: tenant.getPublicKey(), type: 'user', version: 2 });
    // explain says where the permissions come from instead of printing the empty grant.
    const out = explainOutput(
      { decision: 'allow', grant, expires: 2_000, userJwt: claims } as unknown as Parameters<typeof explainOutput>[0],
      undefined,
      1_000_000,
    );
    assert.match(String(out.permissions), /from the scope of TENANT's signing key/);
    // An unscoped account of the same configuration keeps its rule's permissions.
    const appGrant = { ...grant, account: 'APP', pub: { allow: ['x'] } };
    const app = userClaims(appGrant, user, config.keys.accounts.forAccount('APP')!, 1_000, 2_000).nats as Record<string, unknown>;
    assert.deepEqual(app.pub, { allow: ['x'] });
    assert.equal(app.subs, -1);
  });
});
