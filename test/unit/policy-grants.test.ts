import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { ConnectionFacts } from '../../src/conditions.js';
import { AuthFailure, ConfigError } from '../../src/errors.js';
import { admitConnection, type Grant } from '../../src/policy.js';
import { SubjectTemplate, shortHash } from '../../src/subject-template.js';
import { policyOf, TEST_ISSUER as ISS } from '../helpers/policy.js';

function refused(fn: () => unknown, code: string, message?: RegExp): void {
  assert.throws(fn, (err: unknown) => err instanceof AuthFailure && err.code === code && (!message || message.test(err.message)), code);
}

const roles = {
  reader: { sub: { allow: ['orders.>'] } },
  writer: { pub: { allow: ['orders.>'], deny: ['orders.audit.>'] }, resp: { max: 1, ttl: '5s' } },
  auditor: { sub: { allow: ['orders.audit.>'] }, pub: { deny: ['orders.audit.>'] }, resp: { max: 3, ttl: '1s' } },
  inbox: { sub: { allow: ['_INBOX.{{sub}}.>'] } },
};

describe('policy grants', () => {
  const policy = policyOf(
    [
      {
        name: 'mapped',
        account: 'APP',
        roles: ['inbox'],
        roles_from: { claim: 'groups', map: { '/nats/writers': 'writer', '/nats/readers': 'reader', '/nats/audit': ['reader', 'auditor'] } },
        allow_broad: true,
        when: [{ claim: 'groups', glob: '/nats/*' }],
      },
      { name: 'fallback', match: { groups: '/guests' }, account: 'APP', roles: ['inbox'], permissions: { sub: { allow: ['public.>'] } } },
    ],
    { roles },
  );

  it('grants the union of fixed roles and roles mapped from a claim', () => {
    const g = policy.decide(ISS, { sub: 'ann', groups: ['/nats/writers', '/nats/audit', '/other'] });
    assert.equal(g.rule, 'mapped');
    assert.deepEqual(g.roles, ['inbox', 'writer', 'reader', 'auditor']);
    assert.deepEqual(g.pub, { allow: ['orders.>'], deny: ['orders.audit.>'] });
    assert.deepEqual(g.sub, { allow: ['_INBOX.ann.>', 'orders.>', 'orders.audit.>'] });
    assert.deepEqual(g.resp, { max: 3, ttl: 5_000_000_000 }, 'the most any role allows');
  });

  it('falls through when no claim value maps to a role and the rule grants nothing else', () => {
    // `mapped` grants the inbox role itself, so it matches; a rule with roles only from the claim falls through.
    const p = policyOf(
      [
        { name: 'mapped', allow_broad: true, account: 'APP', roles_from: { claim: 'groups', map: { w: 'writer' } } },
        { name: 'rest', allow_broad: true, account: 'APP', roles: ['reader'] },
      ],
      { roles },
    );
    assert.equal(p.decide(ISS, { sub: 'x', groups: ['w'] }).rule, 'mapped');
    assert.equal(p.decide(ISS, { sub: 'x', groups: ['q'] }).rule, 'rest');
    assert.equal(p.decide(ISS, { sub: 'x' }).rule, 'rest');
    const trace = p.explain(ISS, { sub: 'x', groups: ['q'] }).trace;
    assert.deepEqual(trace, [
      { rule: 'mapped', outcome: 'no_role', claim: 'groups', saw: ['q'] },
      { rule: 'rest', outcome: 'matched' },
    ]);
  });

  it('reads multi-valued claims an issuer writes as delimited strings', () => {
    const p = policyOf([{ name: 'r', match: { groups: 'ops' }, account: 'APP', roles: ['reader'] }], {
      roles,
      issuers: [{ issuer: ISS, claim_delimiters: { groups: ',' } }],
    });
    assert.equal(p.decide(ISS, { sub: 'x', groups: 'dev,ops' }).rule, 'r');
    refused(() => p.decide(ISS, { sub: 'x', groups: 'devops' }), 'POLICY_NO_MATCH');
    // scope stays space-separated by default.
    const s = policyOf([{ name: 's', match: { scope: 'nats' }, account: 'APP', roles: ['reader'] }], { roles });
    assert.equal(s.decide(ISS, { sub: 'x', scope: 'openid nats' }).rule, 's');
  });

  it('chooses the account from a claim through its table, refusing anything else', () => {
    const p = policyOf([{ name: 't', account: { claim: 'tenant', map: { acme: 'ACME', 42: 'GLOBEX' } }, roles: ['reader'] }], { roles });
    assert.equal(p.decide(ISS, { sub: 'x', tenant: 'acme' }).account, 'ACME');
    assert.equal(p.decide(ISS, { sub: 'x', tenant: 42 }).account, 'GLOBEX');
    assert.equal(p.decide(ISS, { sub: 'x', tenant: ['acme'] }).account, 'ACME');
    for (const tenant of ['initech', 'ACME', ['acme', 'globex'], [], true, 42.5, undefined, '__proto__', 'toString']) {
      refused(() => p.decide(ISS, { sub: 'x', tenant }), 'POLICY_ACCOUNT_UNMAPPED');
    }
    refused(() => p.decide(ISS, { sub: 'x', tenant: { acme: 1 } }), 'POLICY_CLAIM_SHAPE');
    refused(() => p.decide(ISS, { sub: 'x', tenant: ['acme', ['globex']] }), 'POLICY_CLAIM_SHAPE');
  });

  it('checks the issuer required claims before any rule', () => {
    const p = policyOf([{ name: 'ci', allow_broad: true, account: 'APP', roles: ['reader'] }], {
      roles,
      issuers: [{ issuer: ISS, required_claims: { repository_owner_id: '1234', event_name: ['push', 'workflow_dispatch'] } }],
    });
    assert.equal(p.decide(ISS, { sub: 'x', repository_owner_id: '1234', event_name: 'push' }).rule, 'ci');
    refused(() => p.decide(ISS, { sub: 'x', repository_owner_id: '9999', event_name: 'push' }), 'POLICY_REQUIRED_CLAIMS', /repository_owner_id equals "1234"/);
    const e = p.explain(ISS, { sub: 'x', repository_owner_id: 1234, event_name: 'pull_request' });
    assert.deepEqual(e.required, { condition: 'event_name equals "push" or "workflow_dispatch"', saw: 'pull_request' });
    assert.deepEqual(e.trace, [{ rule: 'ci', outcome: 'not_tried' }]);
  });

  it('puts connection types, networks, times and tags into the grant', () => {
    const p = policyOf(
      [
        { name: 'default', match: { g: 1 }, account: 'APP', roles: ['r'] },
        {
          name: 'edge',
          match: { g: 2 },
          account: 'APP',
          roles: ['r'],
          connection_types: ['LEAFNODE', 'LEAFNODE'],
          source_networks: ['10.0.0.0/8'],
          times: [{ start: '08:00:00', end: '18:00:00' }],
          times_location: 'Europe/Berlin',
          tags: ['team:ops'],
        },
      ],
      { roles: { r: roles.reader } },
    );
    const d = p.decide(ISS, { sub: 'x', g: 1 });
    assert.deepEqual(d.connectionTypes, ['STANDARD', 'WEBSOCKET'], 'no leaf nodes or MQTT by default');
    assert.equal(d.sourceNetworks, undefined);
    const e = p.decide(ISS, { sub: 'x', g: 2 });
    assert.deepEqual(e.connectionTypes, ['LEAFNODE']);
    assert.deepEqual(e.sourceNetworks, ['10.0.0.0/8']);
    assert.deepEqual(e.times, [{ start: '08:00:00', end: '18:00:00' }]);
    assert.equal(e.timesLocation, 'Europe/Berlin');
    assert.deepEqual(e.tags, ['team:ops']);
    assert.equal(p.usesConnection, false);
  });

  it('matches on the connection and says so', () => {
    const p = policyOf([
      { name: 'ws', match: { g: 1 }, when: [{ connection_type: 'WEBSOCKET' }], account: 'APP', permissions: { sub: { allow: ['ws.>'] } } },
      { name: 'lan', match: { g: 1 }, when: [{ source_network: '10.0.0.0/8' }], account: 'APP', permissions: { sub: { allow: ['lan.>'] } } },
    ]);
    assert.equal(p.usesConnection, true);
    assert.equal(p.decide(ISS, { g: 1 }, { type: 'WEBSOCKET', host: '192.0.2.1' }).rule, 'ws');
    assert.equal(p.decide(ISS, { g: 1 }, { type: 'STANDARD', host: '10.0.0.1' }).rule, 'lan');
    refused(() => p.decide(ISS, { g: 1 }, { type: 'STANDARD', host: '192.0.2.1' }), 'POLICY_NO_MATCH');
    refused(() => p.decide(ISS, { g: 1 }), 'POLICY_NO_MATCH');
    const trace = p.explain(ISS, { g: 1 }, { type: 'STANDARD', host: '192.0.2.1' }).trace;
    assert.deepEqual(trace, [
      { rule: 'ws', outcome: 'failed', failed: { condition: 'connection type is WEBSOCKET', saw: 'STANDARD' } },
      { rule: 'lan', outcome: 'failed', failed: { condition: 'client address in 10.0.0.0/8', saw: '192.0.2.1' } },
    ]);
  });

  it('traces every rule: skipped issuers, the first failed condition with what it saw, not tried after the match', () => {
    const CI = 'https://ci.example.com';
    const p = policyOf(
      [
        { name: 'ci', issuer: CI, allow_broad: true, account: 'APP', roles: ['r'] },
        { name: 'admins', issuer: ISS, match: { 'realm_access.roles': 'admin', email_verified: true }, account: 'APP', roles: ['r'] },
        { name: 'devs', issuer: ISS, match: { groups: 'dev' }, account: 'APP', roles: ['r'] },
        { name: 'ops', issuer: ISS, match: { groups: 'ops' }, account: 'APP', roles: ['r'] },
      ],
      { roles: { r: roles.reader }, issuers: [{ issuer: ISS }, { issuer: CI }] },
    );
    const e = p.explain(ISS, { realm_access: { roles: ['admin'] }, email_verified: 'yes', groups: ['dev'] });
    assert.deepEqual(e.trace, [
      { rule: 'ci', outcome: 'other_issuer' },
      { rule: 'admins', outcome: 'failed', failed: { condition: 'email_verified equals true', saw: 'yes' } },
      { rule: 'devs', outcome: 'matched' },
      { rule: 'ops', outcome: 'not_tried' },
    ]);
    assert.ok('grant' in e.result && e.result.grant.rule === 'devs');
    const none = p.explain(ISS, { groups: ['qa'] });
    assert.ok('failure' in none.result && none.result.failure.code === 'POLICY_NO_MATCH');
    assert.equal(none.trace.length, 4);
  });
});

describe('subject templates', () => {
  const render = (subject: string, claims: Record<string, unknown>) => SubjectTemplate.compile(subject, 't').render(claims, 'r');

  it('applies lower and hash, left to right', () => {
    assert.equal(render('mail.{{ claims.email | lower }}', { email: 'Ann@Example' }), 'mail.ann@example');
    refused(() => render('mail.{{ claims.email | lower }}', { email: 'Ann@Example.COM' }), 'POLICY_CLAIM_UNSAFE', /not a single plain subject token/);
    assert.equal(render('mail.{{claims.email|hash}}', { email: 'ann.lee@example.com' }), `mail.${shortHash('ann.lee@example.com')}`);
    assert.equal(render('m.{{ claims.email | lower | hash }}', { email: 'ANN.LEE@example.com' }), `m.${shortHash('ann.lee@example.com')}`);
    assert.match(shortHash('x'), /^[a-z2-7]{16}$/);
    assert.notEqual(shortHash('a'), shortHash('b'));
    // Known answer: the first 80 bits of SHA-256("abc") = ba7816bf8f01cfea4141, base32.
    assert.equal(shortHash('abc'), 'xj4bnp4pahh6uqkb');
  });

  it('checks every rendered token that holds inserted text, not only each value', () => {
    const t = '{{claims.a}}{{claims.b}}.x';
    assert.equal(render(t, { a: 'or', b: 'ders' }), 'orders.x');
    for (const [a, b] of [
      ['_IN', 'BOX'],
      ['_R', '_'],
      ['_G', 'R_'],
    ]) {
      refused(() => render(t, { a, b }), 'POLICY_CLAIM_UNSAFE', /reserved or not plain/);
    }
    refused(() => render('x.{{claims.a}}{{claims.b}}', { a: '_IN', b: 'BOX' }), 'POLICY_CLAIM_UNSAFE');
    refused(() => render('{{claims.a}}', { a: '$JS' }), 'POLICY_CLAIM_UNSAFE', /reserved namespace/);
    refused(() => render('a.{{claims.a | lower}}', { a: 'X.Y' }), 'POLICY_CLAIM_UNSAFE', /not a single plain subject token/);
    // Hashing makes any value a plain token, also one with dots.
    assert.equal(render('a.{{claims.a | hash}}', { a: 'x.y.>' }), `a.${shortHash('x.y.>')}`);
    refused(() => render('a.{{claims.a | hash}}', { a: ['x'] }), 'POLICY_CLAIM_UNSAFE', /is a list/);
    refused(() => render('a.{{claims.a | hash}}', { a: 'x'.repeat(4097) }), 'POLICY_CLAIM_UNSAFE', /longer than 4096/);
    // A static prefix in the token is part of what is checked.
    assert.equal(render('t-{{claims.a}}.>', { a: 'acme' }), 't-acme.>');
    // Only whole reserved tokens are reserved: `_INBOXES` is an ordinary token.
    assert.equal(render('_INBOX{{claims.a}}.>', { a: 'ES' }), '_INBOXES.>');
    refused(() => render('{{claims.a}}.>', { a: '_R_' }), 'POLICY_CLAIM_UNSAFE');
    refused(() => render('x.{{claims.a}}', { a: '_GR_' }), 'POLICY_CLAIM_UNSAFE');
  });

  it('refuses unknown placeholders and functions at load time', () => {
    assert.throws(
      () => SubjectTemplate.compile('a.{{claims.x | upper}}', 'p'),
      (e: unknown) => e instanceof ConfigError && /unknown template function "upper"/.test(e.message),
    );
    assert.throws(() => SubjectTemplate.compile('a.{{email}}', 'p'), /unknown placeholder/);
    assert.throws(() => SubjectTemplate.compile('a.{{claims.x}}*', 'p'), /wildcards must be whole tokens/);
    assert.throws(() => SubjectTemplate.compile('a.{{ }}', 'p'), /unknown placeholder/);
    assert.equal(SubjectTemplate.compile('a.{{claims.k8s.io.ns}}.>', 'p').shape, 'a.{{k8s:io:ns}}.>');
  });
});

describe('connections a grant admits', () => {
  const p = policyOf([
    { name: 'default', match: { g: 1 }, account: 'APP', permissions: { sub: { allow: ['x'] } } },
    {
      name: 'lan-ws',
      match: { g: 2 },
      account: 'APP',
      permissions: { sub: { allow: ['x'] } },
      connection_types: ['WEBSOCKET'],
      source_networks: ['10.0.0.0/8', '192.0.2.7'],
    },
  ]);
  const refusedConnection = (g: Grant, type: ConnectionFacts['type'], host: string | undefined) =>
    refused(() => admitConnection(g, { type, host }), 'POLICY_CONNECTION_REFUSED');

  it('admits the default types from anywhere, never leaf nodes, MQTT or an unknown type', () => {
    const g = p.decide(ISS, { g: 1 });
    admitConnection(g, { type: 'STANDARD', host: '198.51.100.1' });
    admitConnection(g, { type: 'WEBSOCKET', host: undefined });
    for (const type of ['LEAFNODE', 'MQTT', undefined] as const) refusedConnection(g, type, '127.0.0.1');
  });

  it('admits only the listed types from the listed networks, a bare address as one host', () => {
    const g = p.decide(ISS, { g: 2 });
    assert.deepEqual(g.sourceNetworks, ['10.0.0.0/8', '192.0.2.7/32']);
    admitConnection(g, { type: 'WEBSOCKET', host: '10.1.2.3' });
    admitConnection(g, { type: 'WEBSOCKET', host: '192.0.2.7' });
    admitConnection(g, { type: 'WEBSOCKET', host: '::ffff:10.0.0.9' });
    refusedConnection(g, 'STANDARD', '10.1.2.3');
    refusedConnection(g, 'WEBSOCKET', '192.0.2.8');
    refusedConnection(g, 'WEBSOCKET', undefined);
    refusedConnection(g, 'WEBSOCKET', 'pipe');
  });
});
