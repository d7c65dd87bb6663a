import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RE2JS } from 're2js';
import type { ConnectionFacts } from '../../src/conditions.js';
import { AuthFailure } from '../../src/errors.js';
import type { Policy } from '../../src/policy.js';
import { policyOf, TEST_ISSUER as ISS } from '../helpers/policy.js';

/**
 * The rule index against trying every rule in turn (`indexed: false`), on hand-picked tokens
 * and policies aimed at the places the two could part: UTF-16 tries against code-point globs,
 * equality keys, delimited and dotted claims, the per-decision values memo, `any`/`all`/`not`
 * nesting, fixed prefixes of regular expressions and roles_from tables. Every case asserts the
 * decision of both, that explain agrees with decide, and that both explain traces are the same. A failing test shows where the index (or a condition it relies on) decides
 * differently from what the policy says.
 */

const OTHER = 'https://other.example.com';
const ROLES = {
  narrow: { sub: { allow: ['narrow'] } },
  wide: { pub: { allow: ['app.>'] }, sub: { allow: ['app.>'] } },
  extra: { sub: { allow: ['extra'] } },
};

type Rule = Record<string, unknown>;
type Claims = Record<string, unknown>;
interface Options {
  issuers?: { issuer: string; claim_delimiters?: Record<string, string>; required_claims?: unknown }[];
  issuer?: string;
  connection?: ConnectionFacts;
}

/** A rule granting `roles` (default: narrow), broad allowed so that any condition loads. */
function rule(name: string, when: unknown[] | undefined, extra: Rule = {}): Rule {
  return { name, allow_broad: true, account: 'APP', ...(when ? { when } : {}), ...('roles_from' in extra ? {} : { roles: ['narrow'] }), ...extra };
}

/** `grant:<rule>:<roles>` or `refused:<code>`. */
function outcome(p: Policy, claims: Claims, issuer: string, connection?: ConnectionFacts): string {
  try {
    const g = p.decide(issuer, claims, connection);
    return `grant:${g.rule}:${g.roles.join('+')}`;
  } catch (err) {
    assert.ok(err instanceof AuthFailure, `decide threw ${String(err)}`);
    return `refused:${err.code}`;
  }
}

function explained(p: Policy, claims: Claims, issuer: string, connection?: ConnectionFacts) {
  const e = p.explain(issuer, claims, connection);
  const result = 'grant' in e.result ? `grant:${e.result.grant.rule}:${e.result.grant.roles.join('+')}` : `refused:${e.result.failure.code}`;
  return { result, trace: e.trace.map((t) => ({ rule: t.rule, outcome: t.outcome, ...('failed' in t ? { condition: t.failed.condition } : {}) })) };
}

function policies(rules: readonly Rule[], o: Options = {}): { indexed: Policy; reference: Policy } {
  const common = { roles: ROLES, ...(o.issuers ? { issuers: o.issuers as never } : {}) };
  return { indexed: policyOf(rules, common), reference: policyOf(rules, { ...common, indexed: false }) };
}

/**
 * For each [claims, expected] the indexed and reference decisions are the same, and `expected`
 * (a rule name, or `refused:<code>`) when given.
 */
function agree(rules: readonly Rule[], cases: readonly (readonly [Claims, string?])[], o: Options = {}): void {
  const { indexed, reference } = policies(rules, o);
  const issuer = o.issuer ?? ISS;
  for (const [claims, expected] of cases) {
    const what = `claims ${JSON.stringify(claims)}`;
    const a = outcome(indexed, claims, issuer, o.connection);
    const b = outcome(reference, claims, issuer, o.connection);
    assert.equal(a, b, `indexed vs in turn, ${what}`);
    if (expected !== undefined) {
      if (expected.startsWith('refused:')) assert.equal(b, expected, what);
      else assert.match(b, new RegExp(`^grant:${expected}:`), what);
    }
    const ea = explained(indexed, claims, issuer, o.connection);
    const eb = explained(reference, claims, issuer, o.connection);
    assert.equal(ea.result, a, `explain vs decide (indexed), ${what}`);
    assert.equal(eb.result, b, `explain vs decide (in turn), ${what}`);
    assert.deepEqual(ea.trace, eb.trace, `explain traces, ${what}`);
  }
}

describe('rule index vs in turn: text, UTF-16 and code points', () => {
  it('globs with astral characters: `?` takes one code point, the tries walk code units', () => {
    const rules = [
      rule('one-after-x', [{ claim: 'nick', glob: 'x?' }]),
      rule('one-before-y', [{ claim: 'nick', glob: '?y' }]),
      rule('prefix-emoji', [{ claim: 'nick', glob: '😀*' }]),
      rule('suffix-emoji', [{ claim: 'nick', glob: '*😀' }]),
      rule('wide', [{ claim: 'team', equals: 'any' }], { roles: ['wide'] }),
    ];
    agree(rules, [
      [{ nick: '😀' }, 'prefix-emoji'],
      [{ nick: '😀abc' }, 'prefix-emoji'],
      [{ nick: 'abc😀' }, 'suffix-emoji'],
      // One code point, two code units.
      [{ nick: 'x😀' }, 'one-after-x'],
      [{ nick: 'xé' }, 'one-after-x'],
      // Two code points after x: `x?` must not match, whatever the code units.
      [{ nick: 'x😀😀' }, 'suffix-emoji'],
      [{ nick: '😀y' }, 'one-before-y'],
      [{ nick: 'éy' }, 'one-before-y'],
      // Lone surrogates: a half of the emoji is not the emoji.
      [{ nick: '\uD83D' }, 'refused:POLICY_NO_MATCH'],
      [{ nick: '\uDE00y' }, 'one-before-y'],
      [{ nick: 'x\uD83D', team: 'any' }, 'one-after-x'],
      [{ nick: '\uD83Dx', team: 'any' }, 'wide'],
    ]);
  });

  it('combining characters: `?` is one code point, so "cafe\\u0301" is not "caf?"', () => {
    const rules = [
      rule('caf-one', [{ claim: 'nick', glob: 'caf?' }]),
      rule('accent-end', [{ claim: 'nick', glob: '*\u0301' }]),
      rule('precomposed', [{ claim: 'nick', equals: 'é' }]),
      rule('decomposed-re', [{ claim: 'nick', regex: 'e\u0301+' }]),
      rule('wide', [{ claim: 'team', equals: 'any' }], { roles: ['wide'] }),
    ];
    agree(rules, [
      [{ nick: 'café' }, 'caf-one'],
      [{ nick: 'cafe\u0301' }, 'accent-end'],
      [{ nick: 'é' }, 'precomposed'],
      [{ nick: 'e\u0301' }, 'accent-end'],
      [{ nick: 'e\u0301\u0301', team: 'any' }, 'accent-end'],
      [{ nick: 'e', team: 'any' }, 'wide'],
    ]);
  });

  it('globs whose fixed prefix and suffix overlap in the value (ab*ba)', () => {
    const rules = [
      rule('abba', [{ claim: 'g', glob: 'ab*ba' }]),
      rule('a-a', [{ claim: 'g', glob: 'a?a' }]),
      rule('wide', [{ claim: 'team', equals: 'any' }], { roles: ['wide'] }),
    ];
    agree(rules, [
      [{ g: 'aba', team: 'any' }, 'a-a'],
      [{ g: 'abba' }, 'abba'],
      [{ g: 'abxba' }, 'abba'],
      [{ g: 'ab', team: 'any' }, 'wide'],
      [{ g: 'ba', team: 'any' }, 'wide'],
      [{ g: 'a😀a' }, 'a-a'],
    ]);
  });

  it('values longer than patterns read: refused by a pattern, matched by equality, as in turn', () => {
    const long = `ops-${'x'.repeat(1100)}`;
    const rules = [
      rule('glob', [{ claim: 'g', glob: 'ops-*' }]),
      rule('eq', [{ claim: 'h', equals: long }]),
      rule('wide', [{ claim: 'team', equals: 'any' }], { roles: ['wide'] }),
    ];
    agree(rules, [
      [{ g: long, team: 'any' }, 'refused:POLICY_CLAIM_TOO_LONG'],
      // A value of exactly 1024 characters is still read.
      [{ g: `ops-${'x'.repeat(1020)}` }, 'glob'],
      [{ g: `zz-${'x'.repeat(1100)}`, team: 'any' }, 'refused:POLICY_CLAIM_TOO_LONG'],
      [{ h: long }, 'eq'],
      [{ h: [long, 'other'] }, 'eq'],
    ]);
  });
});

describe('rule index vs in turn: equality keys', () => {
  it('numbers, decimal strings, -0, 1e3, unsafe integers and booleans', () => {
    const rules = [
      rule('seven', [{ claim: 'id', equals: 7 }]),
      rule('zero', [{ claim: 'id', equals: '0' }]),
      rule('thousand', [{ claim: 'id', equals: 1e3 }]),
      rule('true', [{ claim: 'flag', equals: true }]),
      // (equals "true" beside equals true is refused at load as shadowed: their condition keys
      // are alike, String(true) === "true"; so the text is matched by a glob here.)
      rule('true-text', [{ claim: 'flag', glob: 'tru?' }]),
      rule('big', [{ claim: 'id', equals: '9007199254740993' }]),
      rule('wide', [{ claim: 'team', equals: 'any' }], { roles: ['wide'] }),
    ];
    agree(rules, [
      [{ id: 7 }, 'seven'],
      [{ id: '7' }, 'seven'],
      [{ id: 7.0 }, 'seven'],
      [{ id: '07', team: 'any' }, 'wide'],
      [{ id: '7.0', team: 'any' }, 'wide'],
      [{ id: -0 }, 'zero'],
      [{ id: 0 }, 'zero'],
      [{ id: '-0', team: 'any' }, 'wide'],
      [{ id: 1000 }, 'thousand'],
      [{ id: '1000' }, 'thousand'],
      [{ id: '1e3', team: 'any' }, 'wide'],
      [{ id: 7.5, team: 'any' }, 'wide'],
      [{ id: 2 ** 53, team: 'any' }, 'wide'],
      // As a token's JSON reads 9007199254740993: an unsafe integer, equal to nothing.
      [{ id: JSON.parse('9007199254740993'), team: 'any' }, 'wide'],
      [{ id: '9007199254740993' }, 'big'],
      [{ flag: true }, 'true'],
      [{ flag: 'true' }, 'true-text'],
      // A boolean beside the text: the glob cannot read it, so the token is refused either way.
      [{ flag: [false, 'true'] }, 'refused:POLICY_CLAIM_SHAPE'],
      [{ flag: 1, team: 'any' }, 'wide'],
    ]);
  });

  it('numbers under patterns: safe integers as their decimal text, others refused', () => {
    const rules = [
      rule('re', [{ claim: 'id', regex: '10[0-9]+' }]),
      rule('glob', [{ claim: 'id', glob: '-*' }]),
      rule('wide', [{ claim: 'team', equals: 'any' }], { roles: ['wide'] }),
    ];
    agree(rules, [
      [{ id: 1000 }, 're'],
      [{ id: -5 }, 'glob'],
      [{ id: -0, team: 'any' }, 'wide'],
      [{ id: 1e21, team: 'any' }, 'refused:POLICY_CLAIM_SHAPE'],
      [{ id: 1.5, team: 'any' }, 'refused:POLICY_CLAIM_SHAPE'],
      [{ id: true, team: 'any' }, 'refused:POLICY_CLAIM_SHAPE'],
      // Every value is read as text first: one boolean refuses even beside a matching value.
      [{ id: [1000, true] }, 'refused:POLICY_CLAIM_SHAPE'],
      [{ id: [5, 1000] }, 're'],
    ]);
  });

  it('roles_from-only rules with numeric, boolean and -0 claim values', () => {
    const rules = [
      rule('by-id', [{ claim: 'kind', equals: 'svc' }], { roles_from: { claim: 'id', map: { '7': 'narrow', '0': 'extra', '1e3': 'extra', true: 'extra' } } }),
      rule('by-role', undefined, { roles_from: { claim: 'role', map: { '1000': 'wide', '-0': 'extra' } } }),
      rule('fallback', [{ claim: 'team', equals: 'any' }]),
    ];
    agree(rules, [
      [{ kind: 'svc', id: 7 }, 'by-id'],
      [{ kind: 'svc', id: -0 }, 'by-id'],
      [{ kind: 'svc', id: 1000, team: 'any' }, 'fallback'],
      [{ kind: 'svc', id: true, team: 'any' }, 'fallback'],
      [{ kind: 'svc', id: 'true' }, 'by-id'],
      [{ kind: 'svc', id: 7.5, team: 'any' }, 'fallback'],
      [{ role: 1000 }, 'by-role'],
      [{ role: 1e3 }, 'by-role'],
      [{ role: '1e3', team: 'any' }, 'fallback'],
      [{ role: -0, team: 'any' }, 'fallback'],
      [{ role: '-0' }, 'by-role'],
      [{ role: 2 ** 53, team: 'any' }, 'fallback'],
      [{ role: { o: 1 }, team: 'any' }, 'refused:POLICY_CLAIM_SHAPE'],
    ]);
  });
});

describe('rule index vs in turn: how claims are read', () => {
  it('delimited claims: per-issuer delimiters, scope and scp, rules for several issuers', () => {
    const issuers: Options['issuers'] = [
      { issuer: ISS, claim_delimiters: { groups: ',' } },
      { issuer: OTHER, claim_delimiters: { groups: ';', scope: ',' } },
    ];
    const rules = [
      rule('iss-ops', [{ claim: 'groups', equals: 'ops' }], { issuer: ISS }),
      rule('other-ops', [{ claim: 'groups', glob: 'op*' }], { issuer: OTHER }),
      rule('both-scope', [{ claim: 'scope', equals: 'write' }], { issuer: [ISS, OTHER], roles: ['wide'] }),
      rule('both-scp', [{ claim: 'scp', regex: 'rea+d' }], { issuer: [ISS, OTHER] }),
      rule('both-roles', undefined, { issuer: [ISS, OTHER], roles_from: { claim: 'groups', map: { dev: 'extra' } } }),
    ];
    const cases: [Claims, string][] = [
      [{ groups: 'dev, ops' }, 'iss-ops'],
      [{ groups: 'dev ops' }, 'refused:POLICY_NO_MATCH'],
      [{ groups: ['dev, ops'] }, 'refused:POLICY_NO_MATCH'],
      [{ groups: 'x,dev' }, 'both-roles'],
      [{ scope: 'read write' }, 'both-scope'],
      [{ scope: 'read,write' }, 'refused:POLICY_NO_MATCH'],
      [{ scp: 'openid  reaad ' }, 'both-scp'],
      [{ scp: ['openid raad'] }, 'refused:POLICY_NO_MATCH'],
    ];
    agree(rules, cases, { issuers });
    agree(
      rules,
      [
        [{ groups: 'dev;ops' }, 'other-ops'],
        [{ groups: 'dev, ops' }, 'refused:POLICY_NO_MATCH'],
        [{ groups: 'x; dev' }, 'both-roles'],
        [{ scope: 'read, write' }, 'both-scope'],
        [{ scope: 'read write' }, 'refused:POLICY_NO_MATCH'],
      ],
      { issuers, issuer: OTHER },
    );
  });

  it('one decision reads a delimited claim once for required claims, conditions, the index and roles_from', () => {
    const issuers = [{ issuer: ISS, claim_delimiters: { groups: ',' }, required_claims: [{ claim: 'groups', glob: '*' }] }];
    const rules = [
      rule('eq-and-roles', [{ claim: 'groups', equals: 'ops' }], { roles_from: { claim: 'groups', map: { 'ops,dev': 'wide', dev: 'extra' } } }),
      rule('glob', [{ claim: 'groups', glob: 'ops,*' }]),
      rule('regex', [{ claim: 'groups', regex: 'dev' }]),
    ];
    agree(
      rules,
      [
        [{ groups: 'ops,dev' }, 'eq-and-roles'],
        [{ groups: 'dev' }, 'regex'],
        [{ groups: ['ops,dev'] }, 'glob'],
        [{ groups: 'ops' }, 'refused:POLICY_NO_MATCH'],
      ],
      { issuers },
    );
  });

  it('dotted paths: flat and nested spellings, and both at once', () => {
    const rules = [
      rule('flat-or-nested', [{ claim: 'realm.roles', equals: 'admin' }], { roles: ['wide'] }),
      rule('nested-glob', [{ claim: 'realm.roles', glob: 'dev-*' }]),
      rule('parent', [
        { claim: 'realm', present: true },
        { claim: 'team', equals: 'any' },
      ]),
      rule('uri', [{ claim: 'https://x.example/roles', equals: 'r' }]),
    ];
    agree(rules, [
      [{ realm: { roles: ['admin'] } }, 'flat-or-nested'],
      [{ 'realm.roles': 'admin' }, 'flat-or-nested'],
      [{ realm: { roles: 'dev-1' } }, 'nested-glob'],
      [{ realm: { roles: 'dev-1' }, 'realm.roles': 'admin' }, 'refused:POLICY_CLAIM_AMBIGUOUS'],
      [{ realm: { roles: null }, 'realm.roles': 'admin' }, 'refused:POLICY_CLAIM_AMBIGUOUS'],
      [{ realm: { other: 1 }, 'realm.roles': 'admin' }, 'flat-or-nested'],
      [{ realm: 'x', team: 'any' }, 'parent'],
      [{ 'https://x.example/roles': 'r' }, 'uri'],
      [{ 'https://x': { 'example/roles': 'r' } }, 'uri'],
    ]);
  });

  it('claims of the wrong shape: refused as in turn whenever the rule reading them is reached', () => {
    const rules = [
      rule('eq', [{ claim: 'g', equals: 'ops' }]),
      rule('glob', [{ claim: 'h', glob: 'x*' }]),
      rule('wide', [{ claim: 'team', equals: 'any' }], { roles: ['wide'] }),
    ];
    agree(rules, [
      [{ g: { o: 1 }, team: 'any' }, 'refused:POLICY_CLAIM_SHAPE'],
      [{ g: [['ops']], team: 'any' }, 'refused:POLICY_CLAIM_SHAPE'],
      [{ g: ['ops', { o: 1 }] }, 'refused:POLICY_CLAIM_SHAPE'],
      [{ g: [null, 'ops'] }, 'eq'],
      [{ h: [true], team: 'any' }, 'refused:POLICY_CLAIM_SHAPE'],
      [{ h: 'x', g: true }, 'glob'],
    ]);
  });
});

describe('rule index vs in turn: combinations', () => {
  it('any with equals, glob and regex branches on different claims', () => {
    const rules = [
      rule(
        'mixed',
        [
          {
            any: [
              { claim: 'groups', equals: 'ops' },
              { claim: 'email', glob: '*@corp.example' },
              { claim: 'sub', regex: 'svc-[0-9]+' },
            ],
          },
        ],
        {
          roles: ['wide'],
        },
      ),
      rule('fallback', [{ claim: 'team', equals: 'any' }]),
    ];
    agree(rules, [
      [{ groups: ['dev', 'ops'] }, 'mixed'],
      [{ email: 'a@corp.example' }, 'mixed'],
      [{ sub: 'svc-12' }, 'mixed'],
      [{ sub: 'svc-', team: 'any' }, 'fallback'],
      [{ email: 'a@corp.example.org', team: 'any' }, 'fallback'],
      // An unreadable branch is read before the matching one: refused either way.
      [{ groups: 'dev', email: true, sub: 'svc-1' }, 'refused:POLICY_CLAIM_SHAPE'],
    ]);
  });

  it('any with a branch the index cannot file (connection, present, not, nested all) is always tried', () => {
    const rules = [
      rule('conn', [{ any: [{ claim: 'groups', equals: 'ops' }, { connection_type: 'WEBSOCKET' }] }]),
      rule('present', [
        {
          any: [
            { claim: 'groups', equals: 'dev' },
            { claim: 'admin', present: true },
          ],
        },
      ]),
      rule('not', [{ any: [{ claim: 'groups', equals: 'qa' }, { not: { claim: 'blocked', equals: true } }] }, { claim: 'tier', equals: 1 }]),
      rule('nested-all', [
        {
          any: [
            { claim: 'groups', equals: 'sre' },
            {
              all: [
                { claim: 'a', equals: 1 },
                { claim: 'b', glob: 'x*' },
              ],
            },
          ],
        },
      ]),
      rule('nested-any', [
        {
          any: [
            { claim: 'groups', equals: 'eng' },
            {
              any: [
                { claim: 'c', regex: 'c+' },
                { claim: 'd', glob: '*d' },
              ],
            },
          ],
        },
      ]),
      rule('fallback', [{ claim: 'team', equals: 'any' }], { roles: ['wide'] }),
    ];
    const claims: [Claims, string][] = [
      [{ admin: 'yes' }, 'present'],
      [{ tier: 1 }, 'not'],
      [{ tier: 1, blocked: true, team: 'any' }, 'fallback'],
      [{ a: 1, b: 'xy' }, 'nested-all'],
      [{ a: 1, b: 'yx', team: 'any' }, 'fallback'],
      [{ c: 'ccc' }, 'nested-any'],
      [{ d: 'odd' }, 'nested-any'],
    ];
    agree(rules, [...claims, [{ groups: 'x', team: 'any' }, 'fallback']]);
    agree(rules, [[{ groups: 'x' }, 'conn'], ...claims.map(([c]) => [c, 'conn'] as const)], { connection: { type: 'WEBSOCKET', host: '192.0.2.1' } });
  });

  it('not around an indexed condition is not filed by it', () => {
    const rules = [
      // The not comes first and the other condition lists more values: were a not filed by its
      // inner condition's values, it would be the one chosen.
      rule('not-eq', [{ not: { claim: 'groups', equals: 'banned' } }, { claim: 'kind', equals: ['user', 'member'] }]),
      rule('not-glob', [{ not: { claim: 'name', glob: 'tmp-*' } }, { claim: 'kind', equals: ['svc', 'daemon'] }]),
      rule('not-re', [{ not: { claim: 'name', regex: 'test[0-9]*' } }, { claim: 'kind', equals: ['bot', 'robot'] }]),
      rule('not-any', [
        {
          not: {
            any: [
              { claim: 'name', equals: 'x' },
              { claim: 'name', glob: 'y*' },
            ],
          },
        },
        { claim: 'kind', equals: ['ci', 'cd'] },
      ]),
      rule('not-not', [{ not: { not: { claim: 'kind', equals: 'nn' } } }]),
      rule('fallback', [{ claim: 'team', equals: 'any' }], { roles: ['wide'] }),
    ];
    agree(rules, [
      [{ kind: 'user' }, 'not-eq'],
      [{ kind: 'user', groups: 'banned', team: 'any' }, 'fallback'],
      [{ kind: 'svc' }, 'not-glob'],
      [{ kind: 'svc', name: 'tmp-1', team: 'any' }, 'fallback'],
      [{ kind: 'svc', name: true }, 'refused:POLICY_CLAIM_SHAPE'],
      [{ kind: 'bot', name: 'prod' }, 'not-re'],
      [{ kind: 'bot', name: 'test', team: 'any' }, 'fallback'],
      [{ kind: 'ci', name: 'z' }, 'not-any'],
      [{ kind: 'ci', name: 'yz', team: 'any' }, 'fallback'],
      [{ kind: 'nn' }, 'not-not'],
    ]);
  });

  it('connection conditions beside indexed ones', () => {
    const rules = [
      rule('ws-ops', [{ claim: 'groups', equals: 'ops' }, { connection_type: 'WEBSOCKET' }], { roles: ['wide'] }),
      rule('lan-ops', [{ claim: 'groups', equals: 'ops' }, { source_network: '10.0.0.0/8' }]),
      rule('not-lan', [{ claim: 'groups', glob: 'ext-*' }, { not: { source_network: '10.0.0.0/8' } }]),
    ];
    const cases: [Claims][] = [[{ groups: 'ops' }], [{ groups: 'ext-1' }], [{ groups: ['ops', 'ext-1'] }]];
    for (const connection of [
      { type: 'WEBSOCKET', host: '10.1.1.1' },
      { type: 'STANDARD', host: '10.1.1.1' },
      { type: 'STANDARD', host: '192.0.2.1' },
      { type: 'STANDARD', host: '::ffff:10.0.0.1' },
      { type: undefined, host: undefined },
    ] as ConnectionFacts[]) {
      agree(rules, cases, { connection });
    }
    agree(rules, [[{ groups: 'ops' }, 'lan-ops']], { connection: { type: 'STANDARD', host: '10.1.1.1' } });
    agree(rules, [[{ groups: 'ext-1' }, 'refused:POLICY_NO_MATCH']], { connection: { type: undefined, host: undefined } });
  });

  it('rules filed under the same values keep their order: the first that holds decides', () => {
    const rules = [
      rule('ops-ws', [
        { claim: 'groups', equals: 'ops' },
        { claim: 'x', equals: 1 },
      ]),
      rule(
        'ops-prefix',
        [
          { claim: 'groups', glob: 'op*' },
          { claim: 'y', equals: 1 },
        ],
        { roles: ['extra'] },
      ),
      rule('ops-re', [{ claim: 'groups', regex: 'o.*' }], { roles: ['wide'] }),
    ];
    agree(rules, [
      [{ groups: 'ops', x: 1, y: 1 }, 'ops-ws'],
      [{ groups: 'ops', y: 1 }, 'ops-prefix'],
      [{ groups: 'ops' }, 'ops-re'],
      [{ groups: ['x', 'opx'], y: 1 }, 'ops-prefix'],
    ]);
  });

  it('an unreadable claim in a rule another of its conditions rules out: the index may decide by a later rule', () => {
    // The exception the index is allowed: in turn, reading `name` (a boolean under a pattern)
    // refuses; the index skips the rule because `groups` is not `admin`, which fails anyway.
    const rules = [
      rule(
        'admins',
        [
          { claim: 'name', glob: ['adm*', 'root*'] },
          { claim: 'groups', equals: 'admin' },
        ],
        { roles: ['wide'] },
      ),
      rule('fallback', [{ claim: 'team', equals: 'any' }]),
    ];
    const { indexed, reference } = policies(rules);
    const claims = { name: true, groups: 'dev', team: 'any' };
    assert.equal(outcome(reference, claims, ISS), 'refused:POLICY_CLAIM_SHAPE');
    assert.equal(outcome(indexed, claims, ISS), 'grant:fallback:narrow');
    const trace = indexed.explain(ISS, claims).trace;
    assert.deepEqual(
      trace.map((t) => t.outcome),
      ['failed', 'matched'],
    );
    // The rule is reported as failing by the condition that rules it out.
    const first = trace[0]!;
    assert.ok(first.outcome === 'failed' && /groups equals/.test(first.failed.condition));
    // With a readable name, both decide alike.
    agree(rules, [[{ name: 'x', groups: 'dev', team: 'any' }, 'fallback']]);
  });
});

describe('rule index vs in turn: fixed prefixes of regular expressions', () => {
  const patterns: [string, string[], string[]][] = [
    ['svc-[0-9]+', ['svc-1', 'svc-99'], ['svc-', 'svc']],
    ['ab+c', ['abc', 'abbbc'], ['ac']],
    ['ab*c', ['ac', 'abbc'], ['abd']],
    ['ab?c', ['ac', 'abc'], ['abbc']],
    ['ab{0,2}c', ['ac', 'abbc'], ['abbbc']],
    ['ab{2}c', ['abbc'], ['abc']],
    ['a\\.b', ['a.b'], ['axb']],
    ['\\d+', ['12'], ['a']],
    ['^ops$', ['ops'], ['xops']],
    ['(?i)OPS', ['ops', 'OpS'], ['op']],
    ['[a-c]x', ['bx'], ['dx']],
    ['ops|dev', ['ops', 'dev'], ['od']],
    ['x(ops|dev)', ['xops', 'xdev'], ['ops']],
    ['é+x', ['éx', 'ééx'], ['x']],
    ['😀+x', ['😀x', '😀😀x'], ['x']],
    ['\\x{1F600}*x', ['x', '😀x'], ['y']],
    ['a{,2}', ['a{,2}'], ['a', 'aa']],
    ['a]', ['a]'], ['a']],
  ];
  for (const [pattern, yes, no] of patterns) {
    it(`${pattern}: decides as in turn and as RE2 matches the whole value`, () => {
      const rules = [rule('re', [{ claim: 'v', regex: pattern }], { roles: ['wide'] }), rule('fallback', [{ claim: 'team', equals: 'any' }])];
      const re = RE2JS.compile(pattern);
      for (const v of yes) assert.ok(re.matches(v), `RE2 matches ${v}`);
      for (const v of no) assert.ok(!re.matches(v), `RE2 does not match ${v}`);
      agree(rules, [...yes.map((v) => [{ v, team: 'any' }, 're'] as const), ...no.map((v) => [{ v, team: 'any' }, 'fallback'] as const)]);
    });
  }
});

describe('rule index: rules filed by their roles_from table', () => {
  it('a refusal for an unreadable claim is not turned into a grant by skipping a roles_from-only rule', () => {
    // `ops-roles` grants only through its roles_from table and its condition has no fixed text
    // (`*-suspended*`), so the index can file it only by the table. In turn, its condition
    // cannot read `groups` (a boolean) and the token is refused. The table is not a condition:
    // skipping the rule because `team` holds no table value must not let the later, wider
    // rule grant instead.
    const rules = [
      rule('ops-roles', [{ not: { claim: 'groups', glob: '*-suspended*' } }], { roles_from: { claim: 'team', map: { ops: 'extra' } } }),
      rule('staff', [{ claim: 'kind', equals: 'staff' }], { roles: ['wide'] }),
    ];
    const { indexed, reference } = policies(rules);
    const claims = { groups: [true], team: 'dev', kind: 'staff' };
    assert.equal(outcome(reference, claims, ISS), 'refused:POLICY_CLAIM_SHAPE');
    assert.equal(outcome(indexed, claims, ISS), outcome(reference, claims, ISS));
  });

  it('explain reports a roles_from-only rule whose conditions fail as failing, as in turn', () => {
    // The rule's condition (kind glob "*svc*") fails; explain must say so, as in turn, even
    // where the index would skip the rule by its table (outcome no_role).
    const rules = [
      rule('svc-roles', [{ claim: 'kind', glob: '*svc*' }], { roles_from: { claim: 'team', map: { ops: 'extra' } } }),
      rule('staff', [{ claim: 'kind', equals: 'staff' }], { roles: ['wide'] }),
    ];
    agree(rules, [[{ kind: 'staff', team: 'dev' }, 'staff']]);
  });
});

describe('regular expression conditions (indexed and in turn): the fixed prefix must not change what matches', () => {
  // The condition and the index both require a value to start with regexPrefix(pattern). A
  // prefix taking in a character the pattern can leave out (half of a surrogate pair before a
  // quantifier; a character before a flag group or an empty \Q\E and then a quantifier) would
  // refuse values RE2 matches, and a `not` around the condition would grant them.
  const cases: [string, string][] = [
    ['x😀*', 'x'],
    ['😀?x', 'x'],
    ['team-😀{0,1}', 'team-'],
    ['ops(?i)?', 'op'],
    ['ops(?-i)*', 'op'],
    ['ops\\Q\\E?', 'op'],
  ];
  for (const [pattern, value] of cases) {
    it(`${JSON.stringify(pattern)} matches ${JSON.stringify(value)} as RE2 does`, () => {
      assert.ok(RE2JS.compile(pattern).matches(value), 'RE2 matches');
      const rules = [
        rule('re', [{ claim: 'v', regex: pattern }], { roles: ['wide'] }),
        rule('all-but', [{ claim: 'kind', equals: 'user' }, { not: { claim: 'w', regex: pattern } }]),
      ];
      const { indexed, reference } = policies(rules);
      // The value matches: rule re grants; and `not` must refuse a value the pattern matches.
      const want = ['grant:re:wide', 'refused:POLICY_NO_MATCH'];
      const decided = (p: Policy) => [outcome(p, { v: value }, ISS), outcome(p, { kind: 'user', w: value }, ISS)];
      assert.deepEqual({ indexed: decided(indexed), reference: decided(reference) }, { indexed: want, reference: want });
    });
  }
});
