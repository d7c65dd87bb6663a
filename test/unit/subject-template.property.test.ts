import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { AuthFailure } from '../../src/errors.js';
import { SubjectTemplate, shortHash } from '../../src/subject-template.js';
import { policyOf, TEST_ISSUER } from '../helpers/policy.js';

/**
 * Properties of subject templates under hostile claims: whatever a token says, a rendered
 * subject is refused (POLICY_CLAIM_UNSAFE) or has exactly the template's shape, with inserted
 * text that is plain, not reserved, and derived from the claims as the template says.
 */

const RUNS = 300;

// ---- claim values ---------------------------------------------------------------------------

/** Pieces a hostile value is made of: separators, wildcards, whitespace, controls, invisible formatting, lone surrogates, reserved prefixes. */
const HOSTILE = [
  '.',
  '*',
  '>',
  ' ',
  '\t',
  '\n',
  '\r',
  '\u0000',
  '\u001f',
  '\u007f',
  '\u0085',
  '\u00a0',
  '\u1680',
  '\u200b',
  '\u200e',
  '\u2028',
  '\u2029',
  '\u3000',
  '\ufeff',
  '\ud800',
  '\udbff',
  '\udc00',
  '\udfff',
  '\ud83d',
  '\ude00',
  '$',
  '$SYS',
  '_INBOX',
  '_R_',
  '_GR_',
  '_IN',
  'BOX',
  '_R',
  '_GR',
  '_',
  'R_',
  '{{',
  '}}',
  '|',
  'İ',
  'ß',
  'Σ',
  'ǅ',
  '😀',
];
const PLAIN = ['a', 'b', 'x', 'Z', '0', '7', '-', 'ñ', 'é', '@'];

const unit = fc.oneof(
  { weight: 5, arbitrary: fc.constantFrom(...PLAIN) },
  { weight: 3, arbitrary: fc.constantFrom(...HOSTILE) },
  { weight: 2, arbitrary: fc.string({ unit: 'binary', minLength: 1, maxLength: 1 }) },
);
const hostileString = fc.oneof(
  { weight: 8, arbitrary: fc.string({ unit, minLength: 0, maxLength: 6 }) },
  // Around the 128-character limit of one inserted value.
  { weight: 1, arbitrary: fc.string({ unit: fc.constantFrom(...PLAIN), minLength: 120, maxLength: 140 }) },
);
const scalarValue = fc.oneof(
  { weight: 10, arbitrary: hostileString },
  { weight: 2, arbitrary: fc.integer({ min: -1_000_000, max: 1_000_000 }) },
  { weight: 1, arbitrary: fc.double() },
  { weight: 1, arbitrary: fc.constantFrom(Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER + 1, -0, 1e21, Number.NaN) },
  { weight: 1, arbitrary: fc.boolean() },
  { weight: 1, arbitrary: fc.constant(null) },
);
/** A value every template can insert as it is. */
const plainValue = fc.oneof(fc.string({ unit: fc.constantFrom('a', 'Q', '0', '9', '-', 'é', '@'), minLength: 1, maxLength: 20 }), fc.nat());
/** Any claim value: plain ones, hostile strings, numbers, booleans, null, arrays, objects, or absent. */
const claimValue = fc.oneof(
  { weight: 6, arbitrary: plainValue },
  { weight: 12, arbitrary: scalarValue },
  { weight: 1, arbitrary: fc.array(scalarValue, { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.dictionary(fc.constantFrom('x', 'y', 'a'), scalarValue, { maxKeys: 2 }) },
  { weight: 1, arbitrary: fc.constant(undefined) },
);

const claimsArb = fc
  .record({ a: claimValue, b: claimValue, c: claimValue, sub: claimValue, n: fc.oneof(claimValue, fc.record({ x: claimValue })) })
  .map((r) => Object.fromEntries(Object.entries(r).filter(([, v]) => v !== undefined)) as Record<string, unknown>);

// ---- templates ------------------------------------------------------------------------------

type Fn = 'lower' | 'hash';
type Piece = { readonly literal: string } | { readonly claim: 'a' | 'b' | 'c' | 'sub' | 'n.x'; readonly functions: readonly Fn[]; readonly spaced: boolean };
type Token =
  | { readonly kind: 'static'; readonly text: string }
  | { readonly kind: '*' }
  | { readonly kind: '>' }
  | { readonly kind: 'dynamic'; readonly pieces: readonly Piece[] };

const placeholderArb = fc.record({
  claim: fc.constantFrom('a' as const, 'b' as const, 'c' as const, 'sub' as const, 'n.x' as const),
  functions: fc.constantFrom<readonly Fn[]>([], [], ['lower'], ['hash'], ['lower', 'hash'], ['hash', 'lower']),
  spaced: fc.boolean(),
});

function templateArb(literals: readonly string[], statics: readonly string[]): fc.Arbitrary<readonly Token[]> {
  const literal = fc.constantFrom(...literals).map((text): Piece => ({ literal: text }));
  // Several pieces in one token, at least one a placeholder: `{{claims.a}}{{claims.b}}`, `x{{sub}}_`.
  const dynamic = fc
    .tuple(fc.array(fc.oneof(placeholderArb, literal), { maxLength: 2 }), placeholderArb, fc.array(fc.oneof(placeholderArb, literal), { maxLength: 2 }))
    .map(([before, p, after]): Token => ({ kind: 'dynamic', pieces: [...before, p, ...after] }));
  const middle = fc.oneof(
    { weight: 4, arbitrary: dynamic },
    { weight: 2, arbitrary: fc.constantFrom(...statics).map((text): Token => ({ kind: 'static', text })) },
    { weight: 1, arbitrary: fc.constant<Token>({ kind: '*' }) },
  );
  return fc
    .tuple(fc.array(middle, { minLength: 1, maxLength: 5 }), fc.boolean())
    .filter(([tokens]) => tokens.some((t) => t.kind === 'dynamic'))
    .map(([tokens, tail]) => (tail ? [...tokens, { kind: '>' } as Token] : tokens));
}

function placeholderText(p: Extract<Piece, { claim: string }>): string {
  const ref = p.claim === 'sub' ? 'sub' : `claims.${p.claim}`;
  const inner = [ref, ...p.functions].join(p.spaced ? ' | ' : '|');
  return p.spaced ? `{{ ${inner} }}` : `{{${inner}}}`;
}

function templateText(tokens: readonly Token[]): string {
  return tokens
    .map((t) =>
      t.kind === 'static' ? t.text : t.kind === 'dynamic' ? t.pieces.map((p) => ('literal' in p ? p.literal : placeholderText(p))).join('') : t.kind,
    )
    .join('.');
}

// ---- what a rendered subject may be ---------------------------------------------------------

/** Whitespace, controls, invisible formatting, lone surrogates, line and paragraph separators. */
const UNSAFE_CHAR = /[\p{White_Space}\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]/u;
const isReserved = (token: string) => token.startsWith('$') || token === '_INBOX' || token === '_R_' || token === '_GR_';

/** The claim's text as a subject may hold it (strings and safe integers), before the template functions. */
function claimText(claims: Readonly<Record<string, unknown>>, claim: string): string | undefined {
  let v: unknown;
  if (claim === 'n.x') {
    const n = claims['n'];
    v = n && typeof n === 'object' && !Array.isArray(n) && Object.hasOwn(n, 'x') ? (n as Record<string, unknown>)['x'] : undefined;
  } else v = Object.hasOwn(claims, claim) ? claims[claim] : undefined;
  if (typeof v === 'string') return v;
  if (typeof v === 'number' && Number.isSafeInteger(v)) return String(v);
  return undefined;
}

/** The text a placeholder inserts, as the template documents it (undefined: the claim cannot be inserted). */
function inserted(claims: Readonly<Record<string, unknown>>, p: Extract<Piece, { claim: string }>): string | undefined {
  let text = claimText(claims, p.claim);
  if (text === undefined) return undefined;
  for (const fn of p.functions) text = fn === 'lower' ? text.toLowerCase() : shortHash(text);
  return text;
}

function refusedUnsafe(err: unknown): boolean {
  return err instanceof AuthFailure && err.code === 'POLICY_CLAIM_UNSAFE';
}

/**
 * Checks a rendered subject against its template: same token count, wildcards exactly where the
 * template has them, static tokens unchanged, and every token holding inserted text equal to its
 * literals and the placeholders' values, plain and not reserved.
 */
function checkRendered(tokens: readonly Token[], claims: Readonly<Record<string, unknown>>, subject: string): void {
  assert.doesNotMatch(subject, UNSAFE_CHAR, 'whitespace or control character in the subject');
  const out = subject.split('.');
  assert.equal(out.length, tokens.length, `token count of ${JSON.stringify(subject)}`);
  tokens.forEach((t, i) => {
    const got = out[i]!;
    assert.notEqual(got, '', 'empty token');
    if (t.kind === '*' || t.kind === '>') {
      assert.equal(got, t.kind);
      return;
    }
    assert.ok(!got.includes('*') && !got.includes('>'), `wildcard in token ${i} of ${JSON.stringify(subject)}`);
    if (t.kind === 'static') {
      assert.equal(got, t.text);
      return;
    }
    assert.ok(!isReserved(got), `reserved token ${JSON.stringify(got)} made of inserted text`);
    const expected = t.pieces.map((p) => ('literal' in p ? p.literal : inserted(claims, p))).join('');
    assert.ok(
      t.pieces.every((p) => 'literal' in p || inserted(claims, p) !== undefined),
      `a claim that cannot be inserted was rendered in ${JSON.stringify(subject)}`,
    );
    assert.equal(got, expected, `token ${i} is not derived from the claims`);
  });
}

// ---- properties -----------------------------------------------------------------------------

describe('subject templates (properties)', () => {
  // Literals a template may put next to a placeholder; `$`, `_IN`, `_R` and `_` can make a reserved token together with a value.
  const hostileTemplates = templateArb(['x', '-', '_', '$', '_IN', 'BOX', '_R', '_GR', 'R_', 'ab'], ['orders', 'svc', '_INBOX', '$SYS', 'x-1', '_R_']);

  it('refuses (POLICY_CLAIM_UNSAFE) or renders exactly the template shape with plain, unreserved inserted text', () => {
    let rendered = 0;
    let total = 0;
    fc.assert(
      fc.property(hostileTemplates, claimsArb, (tokens, claims) => {
        const template = SubjectTemplate.compile(templateText(tokens), 'property');
        total++;
        let subject: string;
        try {
          subject = template.render(claims, 'r');
        } catch (err) {
          if (refusedUnsafe(err)) return;
          throw err;
        }
        rendered++;
        checkRendered(tokens, claims, subject);
      }),
      { numRuns: RUNS },
    );
    // The property says something only if a fair share of the cases renders.
    assert.ok(rendered > total / 10, `only ${rendered} of ${total} templates rendered`);
  });

  it('renders every template when the claims are plain tokens', () => {
    const plainClaims = fc.record({ a: plainValue, b: plainValue, c: plainValue, sub: plainValue, n: fc.record({ x: plainValue }) });
    const plainTemplates = templateArb(['x', '-', 'ab', '0'], ['orders', 'svc', '_INBOX', '$SYS', 'x-1']);
    fc.assert(
      fc.property(plainTemplates, plainClaims, (tokens, claims) => {
        const subject = SubjectTemplate.compile(templateText(tokens), 'property').render(claims, 'r');
        checkRendered(tokens, claims, subject);
      }),
      { numRuns: RUNS },
    );
  });

  it('hash always inserts 16 lower-case base32 characters', () => {
    fc.assert(
      fc.property(fc.string({ unit, maxLength: 40 }), (v) => {
        const subject = SubjectTemplate.compile('mail.{{claims.a | hash}}', 'property').render({ a: v }, 'r');
        assert.match(subject, /^mail\.[a-z2-7]{16}$/);
        assert.equal(subject, `mail.${shortHash(v)}`);
      }),
      { numRuns: RUNS },
    );
  });
});

describe('policy.decide (properties)', () => {
  const policy = policyOf(
    [
      {
        name: 'tenants',
        match: { groups: 'orders' },
        when: [
          { claim: 'tenant', present: true },
          { claim: 'email', present: true },
        ],
        account: 'APP',
        roles: ['tenant'],
      },
    ],
    {
      roles: {
        tenant: {
          pub: { allow: ['orders.{{claims.tenant}}.>'], deny: ['orders.{{claims.tenant}}.admin.>'] },
          sub: { allow: ['orders.{{claims.tenant}}.>', '_INBOX.{{sub}}.>', 'mail.{{claims.email | lower | hash}}.*'] },
        },
      },
    },
  );

  it('never grants a subject the templates do not derive from the claims', () => {
    const groups = fc.oneof(
      { weight: 4, arbitrary: fc.constantFrom<unknown>('orders', ['orders', 'x'], ['x'], 'other', 'orders x') },
      { weight: 1, arbitrary: claimValue },
    );
    const value = fc.oneof({ weight: 3, arbitrary: plainValue }, { weight: 2, arbitrary: claimValue });
    const claims = fc
      .record({ sub: value, tenant: value, email: value, groups })
      .map((r) => Object.fromEntries(Object.entries(r).filter(([, v]) => v !== undefined)) as Record<string, unknown>);
    let granted = 0;
    fc.assert(
      fc.property(claims, (c) => {
        let grant: ReturnType<typeof policy.decide>;
        try {
          grant = policy.decide(TEST_ISSUER, c);
        } catch (err) {
          assert.ok(
            err instanceof AuthFailure && ['POLICY_CLAIM_UNSAFE', 'POLICY_CLAIM_SHAPE', 'POLICY_CLAIM_AMBIGUOUS', 'POLICY_NO_MATCH'].includes(err.code),
            `unexpected ${String(err)}`,
          );
          return;
        }
        granted++;
        const tenant = claimText(c, 'tenant');
        const sub = claimText(c, 'sub');
        const email = claimText(c, 'email');
        assert.ok(tenant !== undefined && sub !== undefined && email !== undefined, 'granted although a template claim cannot be inserted');
        // `orders.{{claims.tenant}}.>`: exactly `orders`, the tenant claim as one token, `>`.
        for (const s of [...(grant.pub.allow ?? []), ...(grant.sub.allow ?? [])].filter((s) => s.startsWith('orders.'))) {
          assert.deepEqual(s.split('.'), ['orders', tenant, '>']);
        }
        assert.deepEqual(grant.pub, { allow: [`orders.${tenant}.>`], deny: [`orders.${tenant}.admin.>`] });
        assert.deepEqual(grant.sub, { allow: [`orders.${tenant}.>`, `_INBOX.${sub}.>`, `mail.${shortHash(email.toLowerCase())}.*`] });
        for (const s of [...grant.pub.allow!, ...grant.pub.deny!, ...grant.sub.allow!]) {
          assert.doesNotMatch(s, UNSAFE_CHAR);
          const inserted = s.split('.')[1]!;
          assert.ok(!isReserved(inserted) && !inserted.includes('*') && !inserted.includes('>'), `unsafe token in ${JSON.stringify(s)}`);
        }
      }),
      { numRuns: RUNS },
    );
    assert.ok(granted > 0, 'no case was granted: the property checked nothing');
  });
});
