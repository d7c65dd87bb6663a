import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { RE2JS } from 're2js';
import { compileCondition, regexPrefix } from '../../src/conditions.js';
import { AuthFailure } from '../../src/errors.js';
import type { Grant, Policy } from '../../src/policy.js';
import { policyOf, TEST_ISSUER } from '../helpers/policy.js';

/** Refusals that mean "a condition could not read this token": the index may skip such a rule. */
const UNREADABLE = new Set(['POLICY_CLAIM_SHAPE', 'POLICY_CLAIM_TOO_LONG', 'POLICY_CLAIM_AMBIGUOUS']);

function outcome(p: Policy, claims: Record<string, unknown>): Grant | string {
  try {
    return p.decide(TEST_ISSUER, claims);
  } catch (err) {
    assert.ok(err instanceof AuthFailure, String(err));
    return err.code;
  }
}

const words = ['ops', 'dev', 'sre-1', 'sre-2', 'a@x.org', 'b@y.org', 'svc-12', 'svc-x', 'team-a', ''];
const claimNames = ['groups', 'email', 'sub', 'team'];
const word = fc.constantFrom(...words);
const claimValue = fc.oneof(
  word,
  fc.array(word, { maxLength: 4 }),
  fc.constantFrom<unknown>(true, 7, null, { o: 1 }, [['ops']], 'x'.repeat(1100), ['ops', 1.5]),
);

/** A condition over the claims above, in every indexable and unindexable shape. */
const condition: fc.Arbitrary<Record<string, unknown>> = fc.letrec((tie) => ({
  leaf: fc.oneof(
    fc.record({ claim: fc.constantFrom(...claimNames), equals: fc.array(word, { minLength: 1, maxLength: 3 }) }),
    fc.record({ claim: fc.constantFrom(...claimNames), glob: fc.constantFrom('sre-*', '*@x.org', '*e*', '?ev', 'svc-??', 'ops') }),
    fc.record({ claim: fc.constantFrom(...claimNames), regex: fc.constantFrom('svc-[0-9]+', 'sre-.*', '(?i)OPS', 'a|dev', 'te+am-.') }),
    fc.record({ claim: fc.constantFrom(...claimNames), present: fc.boolean() }),
  ),
  node: fc.oneof(
    { weight: 3, arbitrary: tie('leaf') },
    fc.record({ any: fc.array(tie('node'), { minLength: 1, maxLength: 3 }) }),
    fc.record({ all: fc.array(tie('node'), { minLength: 1, maxLength: 2 }) }),
    fc.record({ not: tie('leaf') }),
  ),
})).node as fc.Arbitrary<Record<string, unknown>>;

const rules = fc.array(
  fc.record({
    when: fc.array(condition, { minLength: 1, maxLength: 3 }),
    rolesOnly: fc.boolean(),
  }),
  { minLength: 1, maxLength: 8 },
);

/**
 * Whether `condition` holds (`value` true) or fails (`value` false) for `claims` whatever the
 * parts that cannot read them would say: a part that refuses decides nothing.
 */
function definitely(condition: Record<string, unknown>, value: boolean, claims: Record<string, unknown>): boolean {
  const parts = (condition['any'] ?? condition['all']) as Record<string, unknown>[] | undefined;
  if (condition['not'] !== undefined) return definitely(condition['not'] as Record<string, unknown>, !value, claims);
  if (parts) {
    // all holds when every part holds and fails when one part fails; any the other way round.
    const everyPart = (condition['all'] !== undefined) === value;
    return everyPart ? parts.every((p) => definitely(p, value, claims)) : parts.some((p) => definitely(p, value, claims));
  }
  try {
    return compileCondition(condition as never, 'c').test({ claims, delimiters: new Map(), connection: { type: undefined, host: undefined } }) === value;
  } catch {
    return false;
  }
}

describe('rule index', () => {
  it('decides as trying every rule in turn would, only skipping rules a condition rules out', () => {
    let compared = 0;
    fc.assert(
      fc.property(rules, fc.dictionary(fc.constantFrom(...claimNames), claimValue), (raw, claims) => {
        const docs = raw.map((r, i) => ({
          name: `r${i}`,
          allow_broad: true,
          when: r.when,
          account: 'APP',
          ...(r.rolesOnly ? { roles_from: { claim: 'team', map: { 'team-a': 'x', ops: 'x' } } } : { roles: ['x'] }),
        }));
        const roles = { x: { sub: { allow: ['x'] } } };
        let indexed: Policy;
        let reference: Policy;
        try {
          indexed = policyOf(docs, { roles });
          reference = policyOf(docs, { roles, indexed: false });
        } catch {
          return; // shadowed or otherwise invalid: not a policy that loads
        }
        compared++;
        const a = outcome(indexed, claims);
        const b = outcome(reference, claims);
        if (typeof b !== 'string') {
          // A rule that matches is never skipped, and nothing before it matches either way.
          assert.deepEqual(a, b);
        } else if (UNREADABLE.has(b)) {
          // In turn, an unreadable claim refuses; the index may skip that rule when another of its
          // conditions rules it out, and then decide by a later rule that does match.
          if (typeof a !== 'string') {
            const refusing = reference.explain(TEST_ISSUER, claims).trace.find((t) => t.outcome === 'refused');
            assert.ok(refusing, 'in turn, a rule refused the token');
            const when = docs[Number(refusing.rule.slice(1))]!.when;
            assert.ok(
              when.some((c) => definitely(c, false, claims)),
              `${refusing.rule} (refused in turn) was skipped although no condition of it rules it out: ${JSON.stringify(when)}`,
            );
          }
        } else {
          assert.equal(typeof a === 'string' ? a : a.rule, b);
        }
        // explain agrees with decide.
        const e = indexed.explain(TEST_ISSUER, claims);
        if (typeof a === 'string') assert.ok('failure' in e.result && e.result.failure.code === a);
        else assert.ok('grant' in e.result && e.result.grant.rule === a.rule);
      }),
      { numRuns: 400 },
    );
    assert.ok(compared > 100, `only ${compared} policies loaded`);
  });

  it('matches regular expressions exactly as RE2 does, whatever their fixed prefix', () => {
    const piece = fc.constantFrom('a', 'b', 'x', '😀', 'é', '.', '*', '+', '?', '{0,1}', '(?i)', '(?-i)', '\\Q\\E', '\\.', '[ab]', '(a)', '-', '|');
    const value = fc.array(fc.constantFrom('a', 'b', 'x', 'A', '😀', 'é', '-', '.'), { maxLength: 6 }).map((a) => a.join(''));
    let checked = 0;
    fc.assert(
      fc.property(fc.array(piece, { minLength: 1, maxLength: 6 }), fc.array(value, { minLength: 1, maxLength: 8 }), (pieces, values) => {
        const pattern = pieces.join('');
        let re: RE2JS;
        try {
          re = RE2JS.compile(pattern);
        } catch {
          return;
        }
        checked++;
        const c = compileCondition({ claim: 'w', regex: pattern }, 'p');
        for (const v of values) {
          const ctx = { claims: { w: v }, delimiters: new Map(), connection: { type: undefined, host: undefined } };
          assert.equal(c.test(ctx), re.matches(v), `${JSON.stringify(pattern)} on ${JSON.stringify(v)}`);
          if (re.matches(v)) assert.ok(v.startsWith(regexPrefix(pattern)));
        }
      }),
      { numRuns: 1000 },
    );
    assert.ok(checked > 300);
  });

  it('finds the fixed prefix of a regular expression conservatively', () => {
    assert.equal(regexPrefix('svc-[0-9]+'), 'svc-');
    assert.equal(regexPrefix('abc*'), 'ab');
    assert.equal(regexPrefix('ab?c'), 'a');
    assert.equal(regexPrefix('ab{0,2}'), 'a');
    assert.equal(regexPrefix('ab+c'), 'a');
    assert.equal(regexPrefix('a+(?i)*'), '');
    assert.equal(regexPrefix('x😀*'), 'x');
    assert.equal(regexPrefix('a|b'), '');
    assert.equal(regexPrefix('(?i)abc'), '');
    assert.equal(regexPrefix('\\d+'), '');
    assert.equal(regexPrefix('a.b'), 'a');
    assert.equal(regexPrefix('^abc$'), '');
  });
});
