import { AuthFailure } from './errors.js';

/**
 * Reading claims: lookup by dotted path, and the values a claim holds whatever its shape
 * (a scalar, an array, or one string of delimited values).
 */

/** A claim value a condition can compare: strings, safe integers and booleans. */
export type Scalar = string | number | boolean;

/**
 * Looks a claim up by dotted path, where a key may itself contain dots: at each level the
 * longest key that exists wins. So `realm_access.roles`, a URI-named claim
 * (`https://example.com/roles`) and Kubernetes' `kubernetes.io.namespace` (key `kubernetes.io`,
 * then `namespace`) all resolve. Only own properties are read, never the prototype chain.
 */
export function claimAt(claims: Readonly<Record<string, unknown>>, path: string): unknown {
  return lookup(claims, path.split('.'));
}

/** `claimAt` for one path, split once (conditions run on every decision). */
export function claimReader(path: string): (claims: Readonly<Record<string, unknown>>) => unknown {
  const segments = path.split('.');
  if (segments.length === 1) return (claims) => (Object.hasOwn(claims, path) ? claims[path] : undefined);
  return (claims) => lookup(claims, segments);
}

function lookup(node: unknown, segments: readonly string[]): unknown {
  if (segments.length === 0) return node;
  if (typeof node !== 'object' || node === null || Array.isArray(node)) return undefined;
  let found: unknown;
  for (let take = segments.length; take >= 1; take--) {
    const key = take === 1 ? segments[0]! : segments.slice(0, take).join('.');
    if (!Object.hasOwn(node, key)) continue;
    const value = lookup((node as Record<string, unknown>)[key], segments.slice(take));
    if (value === undefined) continue;
    // Two claims spelled the same path (a flat "a.b" beside a nested a.b): which one the IdP
    // meant cannot be known, and a token could add the flat one to shadow the real claim.
    if (found !== undefined) throw new AuthFailure('POLICY_CLAIM_AMBIGUOUS', `claim path ${segments.join('.')} names two different claims`);
    found = value;
  }
  return found;
}

/**
 * Every value a claim holds: an array's elements, a delimited string's parts (trimmed, empty
 * parts dropped), or the scalar itself; null (also as an element) holds no value. An object, a
 * nested list or a non-finite number cannot be compared: the token is refused
 * (POLICY_CLAIM_SHAPE) rather than read as "no such value", which under `not` would grant.
 */
export function claimValues(value: unknown, delimiter: string | undefined, claim = 'the claim'): Scalar[] {
  if (value === undefined || value === null) return [];
  if (Array.isArray(value)) {
    const out: Scalar[] = [];
    for (const v of value) {
      if (v === null) continue;
      if (!isScalar(v)) throw shapeFailure(claim);
      out.push(v);
    }
    return out;
  }
  if (typeof value === 'string' && delimiter !== undefined) {
    const out: string[] = [];
    for (const part of value.split(delimiter)) {
      const t = part.trim();
      if (t) out.push(t);
    }
    return out;
  }
  if (!isScalar(value)) throw shapeFailure(claim);
  return [value];
}

function shapeFailure(claim: string): AuthFailure {
  return new AuthFailure('POLICY_CLAIM_SHAPE', `claim ${claim} holds an object or a nested list where a condition compares values`);
}

/**
 * The key under which equal scalars meet (see scalarEquals): a safe integer and its decimal
 * string share one; undefined for values that equal nothing.
 */
export function equalityKey(v: Scalar): string | undefined {
  if (typeof v === 'string') return `s${v}`;
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  return Number.isSafeInteger(v) ? `s${v}` : undefined;
}

function isScalar(v: unknown): v is Scalar {
  return typeof v === 'string' || typeof v === 'boolean' || (typeof v === 'number' && Number.isFinite(v));
}

/**
 * Equality between a configured value and a claim value. Booleans equal only booleans. A safe
 * integer equals the same integer or its canonical decimal string (providers differ in
 * whether they write ids as numbers or strings: GitHub's `repository_id` is a string); no other
 * conversion happens, so `"1.0"`, `"01"` or `1.5` never equal `1`.
 */
export function scalarEquals(expected: Scalar, actual: Scalar): boolean {
  if (expected === actual) return typeof actual !== 'number' || Number.isSafeInteger(actual);
  if (typeof expected === 'number' && typeof actual === 'string') return String(expected) === actual;
  if (typeof expected === 'string' && typeof actual === 'number') return Number.isSafeInteger(actual) && String(actual) === expected;
  return false;
}
