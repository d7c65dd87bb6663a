import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { claimValues, scalarEquals } from '../../src/claims.js';
import { addressIn, compileCondition, type ConnectionFacts, type MatchContext, networkList } from '../../src/conditions.js';
import { AuthFailure, ConfigError } from '../../src/errors.js';
import { globMatches } from '../../src/glob.js';
import type { ConditionInput } from '../../src/policy-schema.js';

const NONE: ConnectionFacts = { type: undefined, host: undefined };

function holds(
  condition: ConditionInput,
  claims: Record<string, unknown>,
  options: { delimiters?: Record<string, string>; connection?: ConnectionFacts } = {},
): boolean {
  const ctx: MatchContext = { claims, delimiters: new Map(Object.entries(options.delimiters ?? {})), connection: options.connection ?? NONE };
  const c = compileCondition(condition, 'c');
  const result = c.test(ctx);
  // The trace must agree with the test: it reports a failure exactly when the test fails.
  assert.equal(c.trace(ctx) === undefined, result, `trace disagrees for ${c.text}`);
  return result;
}

describe('conditions', () => {
  const table: [string, ConditionInput, Record<string, unknown>, boolean][] = [
    // equals: scalar, array, any-of, exact types
    ['equals a scalar', { claim: 'team', equals: 'ops' }, { team: 'ops' }, true],
    ['equals is exact', { claim: 'team', equals: 'ops' }, { team: 'Ops' }, false],
    ['equals any of', { claim: 'team', equals: ['dev', 'ops'] }, { team: 'ops' }, true],
    ['equals an array element', { claim: 'groups', equals: 'ops' }, { groups: ['dev', 'ops'] }, true],
    ['equals no array element', { claim: 'groups', equals: 'qa' }, { groups: ['dev', 'ops'] }, false],
    ['equals skips null elements', { claim: 'groups', equals: 'ops' }, { groups: [null, 'dev'] }, false],
    ['a missing claim equals nothing', { claim: 'team', equals: 'ops' }, {}, false],
    ['a null claim equals nothing', { claim: 'team', equals: 'ops' }, { team: null }, false],
    ['booleans equal booleans', { claim: 'email_verified', equals: true }, { email_verified: true }, true],
    ['the string "true" is not true', { claim: 'email_verified', equals: true }, { email_verified: 'true' }, false],
    ['an integer equals its decimal string', { claim: 'repository_id', equals: 123456 }, { repository_id: '123456' }, true],
    ['a decimal string equals the integer', { claim: 'repository_id', equals: '123456' }, { repository_id: 123456 }, true],
    ['no other numeric spelling', { claim: 'repository_id', equals: 123456 }, { repository_id: '0123456' }, false],
    ['a float claim never equals', { claim: 'n', equals: 1 }, { n: 1.0000001 }, false],
    ['an unsafe integer claim never equals', { claim: 'n', equals: '9007199254740992' }, { n: 2 ** 53 }, false],
    // glob
    ['glob star', { claim: 'email', glob: '*@example.com' }, { email: 'ann@example.com' }, true],
    ['glob is whole-value', { claim: 'email', glob: '*@example.com' }, { email: 'ann@example.com.evil' }, false],
    ['glob question mark', { claim: 'env', glob: 'prod-?' }, { env: 'prod-1' }, true],
    ['glob question mark is one character', { claim: 'env', glob: 'prod-?' }, { env: 'prod-12' }, false],
    ['glob over array elements', { claim: 'groups', glob: '/nats/*' }, { groups: ['/other', '/nats/writers'] }, true],
    ['glob of integers as text', { claim: 'id', glob: '12*' }, { id: 1234 }, true],
    // regex (RE2, anchored)
    ['regex matches the whole value', { claim: 'sub', regex: 'repo:acme/[a-z-]+:ref:refs/heads/main' }, { sub: 'repo:acme/orders:ref:refs/heads/main' }, true],
    ['regex is anchored at the end', { claim: 'sub', regex: 'repo:acme/.*' }, { sub: 'xrepo:acme/a' }, false],
    ['regex is anchored even with alternation', { claim: 'sub', regex: 'a|b' }, { sub: 'ab' }, false],
    ['regex with flags', { claim: 'sub', regex: '(?i)ADMIN' }, { sub: 'admin' }, true],
    ['regex any of', { claim: 'sub', regex: ['x', 'y+'] }, { sub: 'yyy' }, true],
    // present / absent
    ['present', { claim: 'tenant', present: true }, { tenant: 'a' }, true],
    ['an empty string is not present', { claim: 'tenant', present: true }, { tenant: '' }, false],
    ['an empty list is not present', { claim: 'tenant', present: true }, { tenant: [] }, false],
    ['null is not present', { claim: 'tenant', present: true }, { tenant: null }, false],
    ['an object is present', { claim: 'realm_access', present: true }, { realm_access: { roles: [] } }, true],
    ['absent', { claim: 'act', present: false }, {}, true],
    ['absent fails when present', { claim: 'act', present: false }, { act: { sub: 'x' } }, false],
    // combinations
    [
      'all',
      {
        all: [
          { claim: 'a', equals: 1 },
          { claim: 'b', equals: 2 },
        ],
      },
      { a: 1, b: 2 },
      true,
    ],
    [
      'all fails on one',
      {
        all: [
          { claim: 'a', equals: 1 },
          { claim: 'b', equals: 2 },
        ],
      },
      { a: 1, b: 3 },
      false,
    ],
    [
      'any',
      {
        any: [
          { claim: 'a', equals: 1 },
          { claim: 'b', equals: 2 },
        ],
      },
      { a: 0, b: 2 },
      true,
    ],
    [
      'any fails on none',
      {
        any: [
          { claim: 'a', equals: 1 },
          { claim: 'b', equals: 2 },
        ],
      },
      { a: 0, b: 0 },
      false,
    ],
    ['not', { not: { claim: 'groups', equals: 'banned' } }, { groups: ['dev'] }, true],
    ['not fails', { not: { claim: 'groups', equals: 'banned' } }, { groups: ['dev', 'banned'] }, false],
    ['nested', { any: [{ all: [{ claim: 'a', equals: 1 }, { not: { claim: 'b', present: true } }] }, { claim: 'c', equals: 3 }] }, { a: 1 }, true],
    // dotted paths
    ['dotted path', { claim: 'realm_access.roles', equals: 'nats-admin' }, { realm_access: { roles: ['nats-admin'] } }, true],
    ['a key with dots', { claim: 'kubernetes.io.namespace', equals: 'shop' }, { 'kubernetes.io': { namespace: 'shop' } }, true],
    ['no prototype lookups', { claim: 'constructor', present: true }, {}, false],
  ];
  for (const [name, condition, claims, expected] of table) {
    it(name, () => assert.equal(holds(condition, claims), expected));
  }

  it('reads scope and configured claims as delimited lists, others as one string', () => {
    const d = { scope: ' ', groups: ',' };
    assert.equal(holds({ claim: 'scope', equals: 'nats' }, { scope: 'openid nats' }, { delimiters: d }), true);
    assert.equal(holds({ claim: 'groups', equals: 'b' }, { groups: 'a, b ,c' }, { delimiters: d }), true);
    assert.equal(holds({ claim: 'groups', equals: 'a, b' }, { groups: 'a, b' }, { delimiters: d }), false);
    assert.equal(holds({ claim: 'groups', equals: 'a, b' }, { groups: 'a, b' }), true);
    assert.equal(holds({ claim: 'groups', present: true }, { groups: ' , ' }, { delimiters: d }), true, 'present reads the raw value');
    assert.deepEqual(claimValues('a,,b, ', ','), ['a', 'b']);
  });

  it('refuses values it cannot compare rather than reading them as "no such value" (not() would grant)', () => {
    const shape = (e: unknown) => e instanceof AuthFailure && e.code === 'POLICY_CLAIM_SHAPE';
    assert.throws(() => holds({ not: { claim: 'groups', equals: 'banned' } }, { groups: [['banned']] }), shape);
    assert.throws(() => holds({ not: { claim: 'groups', equals: 'banned' } }, { groups: { banned: true } }), shape);
    assert.throws(() => holds({ claim: 'groups', equals: 'ops' }, { groups: ['ops', { a: 1 }] }), shape);
    assert.throws(() => holds({ not: { claim: 'role', glob: 'guest*' } }, { role: true }), shape);
    assert.throws(() => holds({ claim: 'n', regex: '1.*' }, { n: 1.5 }), shape);
  });

  it('refuses a claim path that names two claims (a flat dotted key beside the nested one)', () => {
    assert.throws(
      () => holds({ claim: 'realm_access.roles', equals: 'admin' }, { realm_access: { roles: ['user'] }, 'realm_access.roles': ['admin'] }),
      (e: unknown) => e instanceof AuthFailure && e.code === 'POLICY_CLAIM_AMBIGUOUS',
    );
  });

  it('never lets not() hold on a connection fact the request does not carry', () => {
    const notGuest = { not: { source_network: '192.168.100.0/24' } };
    assert.equal(holds(notGuest, {}, { connection: { type: 'STANDARD', host: '10.0.0.1' } }), true);
    assert.equal(holds(notGuest, {}, { connection: { type: 'STANDARD', host: 'pipe' } }), false);
    assert.equal(holds(notGuest, {}), false);
    assert.equal(holds({ not: { connection_type: 'LEAFNODE' } }, {}), false);
    assert.equal(holds({ not: { any: [{ connection_type: 'LEAFNODE' }, { claim: 'a', equals: 1 }] } }, {}), false);
  });

  it('refuses a value too long to match rather than letting not() grant it', () => {
    const long = 'x'.repeat(1025);
    assert.throws(
      () => holds({ not: { claim: 'sub', glob: 'admin-*' } }, { sub: long }),
      (e: unknown) => e instanceof AuthFailure && e.code === 'POLICY_CLAIM_TOO_LONG',
    );
    assert.throws(() => holds({ claim: 'sub', regex: 'a.*' }, { sub: ['ok', long] }), /longer than 1024/);
    assert.equal(holds({ claim: 'sub', glob: 'x*' }, { sub: 'x'.repeat(1024) }), true);
  });

  it('matches the connection type and the client network', () => {
    assert.equal(holds({ connection_type: 'WEBSOCKET' }, {}, { connection: { type: 'WEBSOCKET', host: undefined } }), true);
    assert.equal(holds({ connection_type: ['STANDARD'] }, {}, { connection: { type: 'WEBSOCKET', host: undefined } }), false);
    assert.equal(holds({ connection_type: 'STANDARD' }, {}), false, 'an unknown type matches nothing');
    const lan = { source_network: ['10.0.0.0/8', '2001:db8::/32'] };
    assert.equal(holds(lan, {}, { connection: { type: undefined, host: '10.1.2.3' } }), true);
    assert.equal(holds(lan, {}, { connection: { type: undefined, host: '11.1.2.3' } }), false);
    assert.equal(holds(lan, {}, { connection: { type: undefined, host: '2001:db8::7' } }), true);
    assert.equal(holds(lan, {}, { connection: { type: undefined, host: '::ffff:10.9.9.9' } }), true, 'IPv4-mapped');
    assert.equal(holds(lan, {}, { connection: { type: undefined, host: 'not-an-ip' } }), false);
    assert.equal(holds(lan, {}), false);
    assert.equal(addressIn(networkList(['192.0.2.7'], 'x'), '192.0.2.7'), true, 'a single address');
  });

  it('refuses malformed conditions at load time, naming the key', () => {
    const bad: [ConditionInput, RegExp][] = [
      [{ claim: 'a' }, /exactly one of equals, glob, regex, present/],
      [{ claim: 'a', equals: 1, glob: 'x' }, /exactly one of/],
      [{ all: [{ claim: 'a', equals: 1 }], any: [{ claim: 'b', equals: 1 }] }, /a condition is one of/],
      [{}, /a condition is one of/],
      [{ claim: 'a', equals: 1.5 }, /not a safe integer/],
      [{ claim: 'a', equals: [1, 2 ** 60] }, /c\.equals\[1\]: .* not a safe integer/],
      [{ claim: 'a', regex: '(a' }, /invalid regular expression/],
      [{ claim: 'a', regex: '(?=a)' }, /invalid regular expression/],
      [{ claim: 'a', regex: 'a'.repeat(257) }, /at most 256/],
      [{ claim: 'a', glob: 'a'.repeat(257) }, /at most 256/],
      [{ source_network: '10.0.0.0/33' }, /not an IP network/],
      [{ source_network: ['10.0.0.0/8', 'example.com'] }, /source_network\[1\]: "example.com" is not an IP network/],
      [{ not: { claim: 'x' } }, /c\.not: a claim condition/],
    ];
    for (const [condition, message] of bad) {
      assert.throws(
        () => compileCondition(condition, 'c'),
        (e: unknown) => e instanceof ConfigError && message.test(e.message),
        JSON.stringify(condition),
      );
    }
  });

  it('globs in linear-bounded time on hostile patterns', () => {
    const value = 'a'.repeat(1024);
    assert.equal(globMatches('*a*a*a*a*a*a*a*a*b', value), false);
    assert.equal(globMatches('*a*a*a*a*a*a*a*a*a', value), true);
    assert.equal(globMatches('', ''), true);
    assert.equal(globMatches('**', ''), true);
    assert.equal(globMatches('?', ''), false);
    assert.equal(globMatches('ü?', 'üß'), true, 'characters, not UTF-16 units');
  });

  it('compares scalars without surprising conversions', () => {
    assert.equal(scalarEquals(1, '1'), true);
    assert.equal(scalarEquals(1, true), false);
    assert.equal(scalarEquals('1', 1.0), true);
    assert.equal(scalarEquals(0, ''), false);
    assert.equal(scalarEquals(0.5, 0.5), false, 'numbers in conditions are safe integers');
  });
});
