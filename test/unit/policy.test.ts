import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { claimAt } from '../../src/claims.js';
import { AuthFailure, ConfigError } from '../../src/errors.js';
import { subjectProblem } from '../../src/subject.js';
import { policyOf, TEST_ISSUER as ISS } from '../helpers/policy.js';

const OTHER = 'https://other.example.com';
const ISSUERS = [{ issuer: ISS }, { issuer: OTHER }];

function refused(fn: () => unknown, code: string, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => err instanceof AuthFailure && err.code === code && (!message || message.test(err.message)));
}

describe('policy', () => {
  const rules: Record<string, unknown>[] = [
    {
      name: 'admins',
      issuer: ISS,
      match: { 'realm_access.roles': 'nats-admin' },
      account: 'ADMIN',
      permissions: { pub: { allow: ['>'] }, sub: { allow: ['>'] } },
    },
    {
      name: 'tenants',
      issuer: [ISS, OTHER],
      match: { groups: ['dev', 'ops'], active: true },
      when: [{ claim: 'tenant', present: true }],
      account: 'APP',
      user_name_claim: 'email',
      max_lifetime: '10m',
      permissions: {
        pub: { allow: ['app.{{claims.tenant}}.>', 'user.{{sub}}.out'], deny: ['app.{{claims.tenant}}.admin.>'] },
        sub: { allow: ['_INBOX.{{sub}}.>', 'user.{{sub}}.in'] },
        resp: { max: 1, ttl: '5s' },
      },
    },
    { name: 'readers', issuer: ISS, match: { 'https://example.com/roles': 'reader' }, account: 'APP', permissions: { sub: { allow: ['public.>'] } } },
  ];
  const policy = policyOf(rules, { issuers: ISSUERS });

  it('takes the first matching rule, nested claims by dotted path', () => {
    const g = policy.decide(ISS, { sub: 'alice', realm_access: { roles: ['nats-admin'] }, groups: ['dev'], active: true, tenant: 'x' });
    assert.equal(g.rule, 'admins');
    assert.equal(g.account, 'ADMIN');
  });

  it('renders claim templates, response permissions and lifetime', () => {
    const g = policy.decide(OTHER, { sub: 'bob', email: 'bob@example.com', groups: ['ops'], active: true, tenant: 'acme' });
    assert.equal(g.rule, 'tenants');
    assert.equal(g.name, 'bob@example.com');
    assert.deepEqual(g.pub, { allow: ['app.acme.>', 'user.bob.out'], deny: ['app.acme.admin.>'] });
    assert.deepEqual(g.sub, { allow: ['_INBOX.bob.>', 'user.bob.in'] });
    assert.deepEqual(g.resp, { max: 1, ttl: 5_000_000_000 });
    assert.equal(g.maxLifetimeSeconds, 600);
  });

  it('matches a scalar claim against any of the listed values and a URI-named claim as is', () => {
    assert.equal(policy.decide(ISS, { sub: 'c', groups: 'ops', active: true, tenant: 't' }).rule, 'tenants');
    assert.equal(policy.decide(ISS, { sub: 'c', 'https://example.com/roles': ['reader'] }).rule, 'readers');
  });

  it('denies by default in a direction the rule does not mention', () => {
    const g = policy.decide(ISS, { sub: 'c', 'https://example.com/roles': 'reader' });
    assert.deepEqual(g.pub, { deny: ['>'] });
    assert.deepEqual(g.sub, { allow: ['public.>'] });
  });

  it('refuses when no rule matches, including a rule bound to another issuer', () => {
    refused(() => policy.decide(ISS, { sub: 'x', groups: ['qa'] }), 'POLICY_NO_MATCH');
    refused(() => policy.decide(OTHER, { sub: 'x', realm_access: { roles: ['nats-admin'] } }), 'POLICY_NO_MATCH');
    refused(() => policy.decide(ISS, { sub: 'x', groups: ['dev'], active: 'true', tenant: 't' }), 'POLICY_NO_MATCH');
  });

  it('refuses claim values that would inject subject wildcards or separators', () => {
    for (const tenant of ['a.b', '*', '>', 'a b', 'a\tb', 'a\u0000b', 'x\u200by', 'a'.repeat(129), ['a'], { a: 1 }, 1.5, true]) {
      refused(() => policy.decide(ISS, { sub: 'bob', groups: ['dev'], active: true, tenant }), 'POLICY_CLAIM_UNSAFE', /claim claims.tenant/);
    }
    refused(() => policy.decide(ISS, { sub: 'bob.>', groups: ['dev'], active: true, tenant: 'ok' }), 'POLICY_CLAIM_UNSAFE', /claim sub/);
    // A template claim must be guaranteed by a condition, so a missing one means no match.
    refused(() => policy.decide(ISS, { sub: 'bob', groups: ['dev'], active: true }), 'POLICY_NO_MATCH');
    refused(() => policy.decide(ISS, { sub: 'bob', groups: ['dev'], active: true, tenant: '' }), 'POLICY_NO_MATCH');
  });

  it('refuses claim values that would reach reserved namespaces or are not well-formed text', () => {
    for (const tenant of ['$JS', '$KV', '$SYS', '$', '_INBOX', '\ud800', 'a\udfffb']) {
      refused(() => policy.decide(ISS, { sub: 'bob', groups: ['dev'], active: true, tenant }), 'POLICY_CLAIM_UNSAFE', /claim claims.tenant/);
    }
    assert.deepEqual(policy.decide(ISS, { sub: 'bob', groups: ['dev'], active: true, tenant: '_INBOXES' }).pub.allow, ['app._INBOXES.>', 'user.bob.out']);
  });

  it('closes a direction that has deny entries but nothing allowed (nats-server would open it)', () => {
    const p = policyOf([{ name: 'deny-only', allow_broad: true, account: 'A', permissions: { pub: { deny: ['secret.>'] }, sub: { allow: ['x'] } } }]);
    const g = p.decide(ISS, { sub: 's' });
    assert.deepEqual(g.pub, { deny: ['>'] });
    assert.deepEqual(g.sub, { allow: ['x'] });
    // A rule that allows nothing in either direction is a configuration error, not a useless user.
    assert.throws(
      () => policyOf([{ name: 'none', allow_broad: true, account: 'A', permissions: { pub: { deny: ['x'] }, sub: { allow: [] } } }]),
      /grants nothing/,
    );
  });

  it('accepts unicode and integer claim values as single tokens', () => {
    const g = policy.decide(ISS, { sub: 'ü-1', groups: ['dev'], active: true, tenant: 42 });
    assert.deepEqual(g.pub.allow, ['app.42.>', 'user.ü-1.out']);
  });

  it('cleans the user name and falls back to sub', () => {
    const g = policy.decide(ISS, { sub: 'bob', email: 'a\u0007b', groups: ['dev'], active: true, tenant: 't' });
    assert.equal(g.name, 'ab');
    assert.equal(policy.decide(ISS, { sub: 'bob', groups: ['dev'], active: true, tenant: 't' }).name, 'bob');
  });

  it('refuses invalid subjects and placeholders at load time', () => {
    const bad = (subject: string) => () => policyOf([{ name: 'r', allow_broad: true, account: 'A', permissions: { pub: { allow: [subject] } } }]);
    assert.throws(bad('a..b'), (e: unknown) => e instanceof ConfigError && /policy\.rules\[0\]\.permissions\.pub\.allow\[0\]/.test(e.message));
    assert.throws(bad('a.>.b'), ConfigError);
    assert.throws(bad('a.b*'), ConfigError);
    assert.throws(bad('a.{{claims.x}}*'), /wildcards must be whole tokens/);
    assert.throws(bad('a.{{email}}'), /unknown placeholder/);
    assert.throws(bad('a.{{claims.x}'), /malformed placeholder/);
    assert.throws(bad('a b'), ConfigError);
  });

  it('knows valid subjects', () => {
    assert.equal(subjectProblem('a.*.>'), undefined);
    assert.match(subjectProblem('a.>.b')!, /last token/);
    assert.match(subjectProblem('.a')!, /empty token/);
  });

  it('reads claims whose keys contain dots, as Kubernetes service-account tokens have', () => {
    const k8s = { sub: 'system:serviceaccount:shop:orders', 'kubernetes.io': { namespace: 'shop', serviceaccount: { name: 'orders' } } };
    assert.equal(claimAt(k8s, 'kubernetes.io.namespace'), 'shop');
    assert.equal(claimAt(k8s, 'kubernetes.io.serviceaccount.name'), 'orders');
    assert.throws(() => claimAt({ 'a.b': 1, a: { b: 2 } }, 'a.b'), /names two different claims/, 'two claims on one path refuse');
    assert.equal(claimAt({ 'a.b': 1, a: { c: 2 } }, 'a.b'), 1);
    assert.equal(claimAt({ 'a.b': {}, a: { b: { c: 3 } } }, 'a.b.c'), 3, 'falls back when the longer key leads nowhere');
    const p = policyOf([
      { name: 'ns', match: { 'kubernetes.io.namespace': 'shop' }, account: 'A', permissions: { pub: { allow: ['ns.{{claims.kubernetes.io.namespace}}.>'] } } },
    ]);
    assert.deepEqual(p.decide(ISS, k8s).pub, { allow: ['ns.shop.>'] });
  });

  it('reads claims by path without walking prototypes', () => {
    assert.equal(claimAt({ a: { b: 1 } }, 'a.b'), 1);
    assert.equal(claimAt({ a: 1 }, 'constructor'), undefined);
    assert.equal(claimAt({ a: {} }, 'a.toString'), undefined);
  });

  it('matches scope and scp as space-separated lists (RFC 6749, RFC 9068), nothing else', () => {
    const policy = policyOf([
      { name: 'scoped', match: { scope: 'nats' }, account: 'APP', permissions: { pub: { allow: ['a'] } } },
      { name: 'scp', match: { scp: ['nats:write'] }, account: 'APP', permissions: { pub: { allow: ['b'] } } },
      { name: 'groups', match: { groups: 'a' }, account: 'APP', permissions: { pub: { allow: ['c'] } } },
    ]);
    assert.equal(policy.decide(ISS, { scope: 'openid nats profile' }).rule, 'scoped');
    assert.equal(policy.decide(ISS, { scope: 'nats' }).rule, 'scoped');
    assert.equal(policy.decide(ISS, { scp: 'nats:read nats:write' }).rule, 'scp');
    assert.equal(policy.decide(ISS, { scp: ['nats:write'] }).rule, 'scp');
    // A scope is a whole token: no prefix, substring or other separator matches.
    for (const scope of ['nats-admin', 'natsx openid', 'openid,nats', 'xnats']) {
      assert.throws(() => policy.decide(ISS, { scope }), /no rule matches/);
    }
    // Other claims keep their exact string semantics: "a b" is not the list [a, b].
    assert.throws(() => policy.decide(ISS, { groups: 'a b' }), /no rule matches/);
  });
});
