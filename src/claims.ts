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
  for (let take = segments.length; take >= 1; take--) {
    const key = take === 1 ? segments[0]! : segments.slice(0, take).join('.');
    if (Object.hasOwn(node, key)) {
      const found = lookup((node as Record<string, unknown>)[key], segments.slice(take));
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

/**
 * Every value a claim holds: an array's scalar elements, a delimited string's parts (trimmed,
 * empty parts dropped), or the scalar itself. Objects, nulls and nested arrays hold nothing a
 * condition can compare, so they contribute no value.
 */
export function claimValues(value: unknown, delimiter: string | undefined): Scalar[] {
  if (value === undefined || value === null) return [];
  if (Array.isArray(value)) return value.filter(isScalar);
  if (typeof value === 'string' && delimiter !== undefined) {
    const out: string[] = [];
    for (const part of value.split(delimiter)) {
      const t = part.trim();
      if (t) out.push(t);
    }
    return out;
  }
  return isScalar(value) ? [value] : [];
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
