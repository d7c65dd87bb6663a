import { BlockList, isIP } from 'node:net';
import { RE2JS } from 're2js';
import { claimAt, claimReader, claimValues, equalityKey, type Scalar } from './claims.js';
import { AuthFailure, ConfigError } from './errors.js';
import { globMatches } from './glob.js';
import type { ClaimMatchInput, ConditionInput, ConnectionType } from './policy-schema.js';

/**
 * Compiled conditions on verified claims and on the connection. Each compiles once at load
 * into a test; `trace` says which part failed and what it saw, for `explain`.
 */

/** What a condition is evaluated against. */
export interface MatchContext {
  readonly claims: Readonly<Record<string, unknown>>;
  /** Values already read in this decision, by claim path (many rules read the same claims). */
  readonly values?: Map<string, Scalar[]>;
  /** Claims the token's issuer writes as one delimited string, by path. */
  readonly delimiters: ReadonlyMap<string, string>;
  readonly connection: ConnectionFacts;
}

/** What the authorization request says about the connection (unknown: undefined). */
export interface ConnectionFacts {
  readonly type: ConnectionType | undefined;
  readonly host: string | undefined;
}

/** Why a condition did not hold: the condition as written and the value it saw. */
export interface Failed {
  readonly condition: string;
  readonly saw: unknown;
}

export interface Condition {
  readonly test: (ctx: MatchContext) => boolean;
  /** undefined when the condition holds. */
  readonly trace: (ctx: MatchContext) => Failed | undefined;
  readonly text: string;
  /** Claim paths whose presence the condition guarantees when it holds. */
  readonly guarantees: readonly string[];
  /** False when (nearly) every token would meet it: it narrows nothing. */
  readonly narrows: boolean;
  /** Canonical form: equal keys test the same thing. */
  readonly key: string;
  /** For `equals`: the claim and values, so a wider list can be seen to imply a narrower one. */
  readonly equals?: { readonly claim: string; readonly values: readonly Scalar[] };
  /** For a conjunction: its conditions. */
  readonly parts?: readonly Condition[];
  /** True when a fact the condition reads is unknown: `not` must not turn that into a match. */
  readonly unknown?: (ctx: MatchContext) => boolean;
  /** Whether it reads claims (and so may refuse a token whose claims it cannot read). */
  readonly readsClaims: boolean;
  /**
   * Claim values the condition cannot hold without (rule-index.ts): it holds only if some hit
   * matches. Undefined when no such list can be given (e.g. `present`, `not`, `glob: "*x*"`).
   */
  readonly hits?: readonly IndexHit[];
}

/**
 * A claim value a condition needs: equal to `literal` (an equality key, see claims.ts), or, as
 * text, starting or ending with it.
 */
export interface IndexHit {
  readonly claim: string;
  readonly kind: 'equals' | 'prefix' | 'suffix';
  readonly literal: string;
}

/**
 * Claims every verified token holds (`iss`, `aud` and the times are checked before any rule): a
 * condition on them narrows nothing.
 */
export const REGISTERED_CLAIMS: ReadonlySet<string> = new Set(['iss', 'aud', 'exp', 'iat', 'nbf', 'jti']);

/** Longest pattern accepted for glob and regex conditions. */
export const MAX_PATTERN = 256;
/** Longest claim value a glob or regex is run on; a longer value refuses the token. */
export const MAX_MATCHED_VALUE = 1024;
/** Values that every reasonable claim value resembles: a pattern matching them all narrows nothing. */
const PROBES = ['a', 'Z', '0', 'x-y_z', 'user@example.com', '/group/sub', 'repo:org/name:ref:refs/heads/main', 'ñ'];

/** The values of a claim in this decision, read once and shared by every condition and the rule index. */
export function readValues(ctx: MatchContext, claim: string, read: (claims: Readonly<Record<string, unknown>>) => unknown): Scalar[] {
  let values = ctx.values?.get(claim);
  if (values === undefined) {
    values = claimValues(read(ctx.claims), ctx.delimiters.get(claim), claim);
    ctx.values?.set(claim, values);
  }
  return values;
}

/** `match: {claim: value(s)}` as conditions. */
export function compileMatch(match: ClaimMatchInput | undefined, path: string): Condition[] {
  return Object.entries(match ?? {}).map(([claim, v]) => equalsCondition(claim, Array.isArray(v) ? v : [v], `${path}.${claim}`));
}

export function compileCondition(raw: ConditionInput, path: string): Condition {
  const keys = Object.keys(raw).filter((k) => (raw as Record<string, unknown>)[k] !== undefined);
  if (raw.claim !== undefined) {
    const ops = keys.filter((k) => k !== 'claim');
    if (ops.length !== 1 || !['equals', 'glob', 'regex', 'present'].includes(ops[0]!)) {
      throw new ConfigError(path, `a claim condition takes exactly one of equals, glob, regex, present (got ${ops.join(', ') || 'none'})`);
    }
    const claim = raw.claim;
    if (raw.equals !== undefined) return equalsCondition(claim, Array.isArray(raw.equals) ? raw.equals : [raw.equals], `${path}.equals`);
    if (raw.glob !== undefined) return globCondition(claim, list(raw.glob), `${path}.glob`);
    if (raw.regex !== undefined) return regexCondition(claim, list(raw.regex), `${path}.regex`);
    return presentCondition(claim, raw.present!);
  }
  if (keys.length !== 1) {
    throw new ConfigError(path, `a condition is one of {claim, ...}, all, any, not, connection_type, source_network (got ${keys.join(', ') || 'nothing'})`);
  }
  if (raw.all) return allOf(raw.all.map((c, i) => compileCondition(c, `${path}.all[${i}]`)));
  if (raw.any) return anyOf(raw.any.map((c, i) => compileCondition(c, `${path}.any[${i}]`)));
  if (raw.not) return notOf(compileCondition(raw.not, `${path}.not`));
  if (raw.connection_type) return connectionTypeCondition(list(raw.connection_type));
  if (raw.source_network) return sourceNetworkCondition(list(raw.source_network), `${path}.source_network`);
  throw new ConfigError(path, `unknown condition ${keys[0]}`);
}

function list<T>(v: T | T[]): T[] {
  return Array.isArray(v) ? v : [v];
}

type ValuesOf = (ctx: MatchContext) => Scalar[];

function valuesOf(claim: string): ValuesOf {
  const read = claimReader(claim);
  return (ctx) => readValues(ctx, claim, read);
}

function equalsCondition(claim: string, expected: readonly Scalar[], path: string): Condition {
  expected.forEach((v, i) => {
    if (typeof v === 'number' && !Number.isSafeInteger(v)) {
      throw new ConfigError(`${path}${expected.length > 1 ? `[${i}]` : ''}`, `${v} is not a safe integer: compare numbers exactly or quote the value`);
    }
  });
  const values = valuesOf(claim);
  // A set of equality keys: long lists of groups against long lists of values stay cheap.
  const keys = new Set(expected.map(equalityKey));
  const test = (ctx: MatchContext) => values(ctx).some((a) => keys.has(equalityKey(a)));
  const text = `${claim} equals ${expected.map((v) => JSON.stringify(v)).join(' or ')}`;
  const hits = [...keys].filter((k): k is string => k !== undefined).map((literal) => ({ claim, kind: 'equals' as const, literal }));
  return { ...claimCondition(claim, text, test, true, `eq:${claim}:${JSON.stringify([...keys].map(String).sort())}`, { claim, values: expected }), hits };
}

function textValues(values: ValuesOf, ctx: MatchContext, claim: string): string[] {
  const out: string[] = [];
  for (const v of values(ctx)) {
    if (typeof v === 'boolean' || (typeof v === 'number' && !Number.isSafeInteger(v))) {
      throw new AuthFailure('POLICY_CLAIM_SHAPE', `claim ${claim} holds ${String(v)}, which a pattern cannot match`);
    }
    const s = String(v);
    // A value too long to match is refused outright: under `not`, "does not match" would grant.
    if (s.length > MAX_MATCHED_VALUE)
      throw new AuthFailure('POLICY_CLAIM_TOO_LONG', `claim ${claim} holds a value longer than ${MAX_MATCHED_VALUE} characters`);
    out.push(s);
  }
  return out;
}

function globCondition(claim: string, patterns: readonly string[], path: string): Condition {
  patterns.forEach((p, i) => {
    checkPatternLength(p, patterns.length > 1 ? `${path}[${i}]` : path);
  });
  const globs = patterns.map(compileGlob);
  const matches = (s: string) => globs.some((g) => g(s));
  const values = valuesOf(claim);
  const test = (ctx: MatchContext) => textValues(values, ctx, claim).some(matches);
  const narrows = !PROBES.every(matches);
  const hits = patterns.map((p): IndexHit | undefined => {
    const prefix = p.slice(0, firstWildcard(p));
    if (prefix) return { claim, kind: 'prefix', literal: prefix };
    const suffix = p.slice(lastWildcard(p) + 1);
    return suffix ? { claim, kind: 'suffix', literal: suffix } : undefined;
  });
  const condition = claimCondition(
    claim,
    `${claim} glob ${patterns.map((p) => JSON.stringify(p)).join(' or ')}`,
    test,
    narrows,
    `glob:${claim}:${JSON.stringify([...patterns].sort())}`,
  );
  return hits.every((h) => h) ? { ...condition, hits: hits as IndexHit[] } : condition;
}

function regexCondition(claim: string, patterns: readonly string[], path: string): Condition {
  const compiled = patterns.map((p, i) => {
    const at = patterns.length > 1 ? `${path}[${i}]` : path;
    checkPatternLength(p, at);
    try {
      return RE2JS.compile(p);
    } catch (err) {
      throw new ConfigError(at, `invalid regular expression ${JSON.stringify(p)}: ${(err as Error).message} (RE2 syntax, matched against the whole value)`);
    }
  });
  // RE2's matches() is a whole-value match: patterns are anchored whether or not they say ^...$.
  const prefixes = patterns.map(regexPrefix);
  // A value without the fixed prefix cannot match: skip the RE2 machine for it.
  const matches = (s: string) => compiled.some((r, i) => s.startsWith(prefixes[i]!) && r.matches(s));
  const values = valuesOf(claim);
  const test = (ctx: MatchContext) => textValues(values, ctx, claim).some(matches);
  const narrows = !PROBES.every(matches);
  const condition = claimCondition(
    claim,
    `${claim} regex ${patterns.map((p) => JSON.stringify(p)).join(' or ')}`,
    test,
    narrows,
    `re:${claim}:${JSON.stringify([...patterns].sort())}`,
  );
  return prefixes.every((p) => p) ? { ...condition, hits: prefixes.map((literal) => ({ claim, kind: 'prefix', literal })) } : condition;
}

/**
 * The literal text every match of an RE2 pattern starts with (may be empty). Conservative: no
 * alternation, flags, escapes or classes are read, and the prefix ends before a character that a
 * quantifier, group or escape follows.
 */
export function regexPrefix(pattern: string): string {
  if (pattern.includes('|')) return '';
  const META = '\\.^$|?*+()[]{}';
  // By code point: a quantifier after an astral character applies to all of it.
  const chars = Array.from(pattern);
  let out = '';
  for (let i = 0; i < chars.length; i++) {
    const c = chars[i]!;
    if (META.includes(c)) break;
    const next = chars[i + 1];
    if (next === undefined || !META.includes(next)) {
      out += c;
      continue;
    }
    // `c` is certainly matched only when what follows is an atom of its own (`.`, a class): a
    // quantifier may make it optional, also through an empty group (`a+(?i)*` matches "").
    if (next === '.' || next === '[') out += c;
    break;
  }
  return out;
}

function firstWildcard(p: string): number {
  const i = p.search(/[*?]/);
  return i < 0 ? p.length : i;
}

function lastWildcard(p: string): number {
  return Math.max(p.lastIndexOf('*'), p.lastIndexOf('?'));
}

/** A glob with its fixed prefix and suffix checked first: most values fail there, cheaply. */
function compileGlob(pattern: string): (value: string) => boolean {
  const first = firstWildcard(pattern);
  if (first === pattern.length) return (v) => v === pattern;
  const prefix = pattern.slice(0, first);
  const suffix = pattern.slice(lastWildcard(pattern) + 1);
  return (v) => v.length >= prefix.length + suffix.length && v.startsWith(prefix) && v.endsWith(suffix) && globMatches(pattern, v);
}

function checkPatternLength(p: string, path: string): void {
  if (p.length > MAX_PATTERN) throw new ConfigError(path, `patterns are at most ${MAX_PATTERN} characters`);
}

function presentCondition(claim: string, present: boolean): Condition {
  const read = claimReader(claim);
  const has = (ctx: MatchContext) => {
    const v = read(ctx.claims);
    return v !== undefined && v !== null && v !== '' && !(Array.isArray(v) && v.length === 0);
  };
  const test = present ? has : (ctx: MatchContext) => !has(ctx);
  const c = claimCondition(claim, `${claim} ${present ? 'present' : 'absent'}`, test, false, `present:${claim}:${present}`);
  return present ? c : { ...c, guarantees: [] };
}

function claimCondition(
  claim: string,
  text: string,
  test: (ctx: MatchContext) => boolean,
  narrows: boolean,
  key: string,
  equals?: Condition['equals'],
): Condition {
  return {
    test,
    trace: (ctx) => (test(ctx) ? undefined : { condition: text, saw: claimAt(ctx.claims, claim) }),
    text,
    guarantees: [claim],
    readsClaims: true,
    narrows: narrows && !REGISTERED_CLAIMS.has(claim),
    key,
    ...(equals ? { equals } : {}),
  };
}

/** All of `conditions` (the conjunction of a rule's `match` and `when`). */
export function allOf(conditions: readonly Condition[]): Condition {
  return {
    test: (ctx) => conditions.every((c) => c.test(ctx)),
    trace: (ctx) => {
      for (const c of conditions) {
        const f = c.trace(ctx);
        if (f) return f;
      }
      return undefined;
    },
    text: `all of (${conditions.map((c) => c.text).join('; ')})`,
    guarantees: [...new Set(conditions.flatMap((c) => c.guarantees))],
    readsClaims: conditions.some((c) => c.readsClaims),
    narrows: conditions.some((c) => c.narrows),
    key: `all:[${conditions
      .map((c) => c.key)
      .sort()
      .join(',')}]`,
    parts: conditions,
    unknown: (ctx) => conditions.some((c) => c.unknown?.(ctx) ?? false),
  };
}

function anyOf(conditions: readonly Condition[]): Condition {
  const text = `any of (${conditions.map((c) => c.text).join('; ')})`;
  const test = (ctx: MatchContext) => conditions.some((c) => c.test(ctx));
  return {
    test,
    trace: (ctx) => (test(ctx) ? undefined : { condition: text, saw: conditions.map((c) => c.trace(ctx)?.saw) }),
    text,
    // A claim is guaranteed only when every branch guarantees it.
    guarantees: conditions.map((c) => c.guarantees).reduce((a, b) => a.filter((x) => b.includes(x))),
    readsClaims: conditions.some((c) => c.readsClaims),
    narrows: conditions.every((c) => c.narrows),
    key: `any:[${conditions
      .map((c) => c.key)
      .sort()
      .join(',')}]`,
    unknown: (ctx) => conditions.some((c) => c.unknown?.(ctx) ?? false),
    ...(conditions.every((c) => c.hits) ? { hits: conditions.flatMap((c) => c.hits!) } : {}),
  };
}

function notOf(inner: Condition): Condition {
  const text = `not (${inner.text})`;
  // An unknown fact (no client address, an unknown connection type) never makes `not` hold.
  const test = (ctx: MatchContext) => !inner.test(ctx) && !(inner.unknown?.(ctx) ?? false);
  return {
    test,
    trace: (ctx) =>
      test(ctx) ? undefined : { condition: text, saw: inner.unknown?.(ctx) ? 'unknown (the request does not say)' : 'the inner condition holds' },
    unknown: (ctx) => inner.unknown?.(ctx) ?? false,
    text,
    guarantees: [],
    readsClaims: inner.readsClaims,
    // Excluding some tokens still admits nearly all of them.
    narrows: false,
    key: `not:${inner.key}`,
  };
}

function connectionTypeCondition(types: readonly ConnectionType[]): Condition {
  const text = `connection type is ${types.join(' or ')}`;
  const test = (ctx: MatchContext) => ctx.connection.type !== undefined && types.includes(ctx.connection.type);
  return {
    test,
    trace: (ctx) => (test(ctx) ? undefined : { condition: text, saw: ctx.connection.type ?? 'unknown' }),
    text,
    guarantees: [],
    readsClaims: false,
    narrows: false,
    key: `ctype:${[...types].sort().join(',')}`,
    unknown: (ctx) => ctx.connection.type === undefined,
  };
}

function sourceNetworkCondition(networks: readonly string[], path: string): Condition {
  const blocks = networkList(networks, path);
  const text = `client address in ${networks.join(' or ')}`;
  const test = (ctx: MatchContext) => addressIn(blocks, ctx.connection.host);
  return {
    test,
    trace: (ctx) => (test(ctx) ? undefined : { condition: text, saw: ctx.connection.host ?? 'unknown' }),
    text,
    guarantees: [],
    readsClaims: false,
    narrows: false,
    key: `src:${[...networks].sort().join(',')}`,
    unknown: (ctx) => !isIP(ctx.connection.host ?? ''),
  };
}

/** Parses CIDR networks (`10.0.0.0/8`, `2001:db8::/32`, or one address) into a BlockList. */
export function networkList(networks: readonly string[], path: string): BlockList {
  const blocks = new BlockList();
  for (const [address, prefix, family] of parseNetworks(networks, path)) blocks.addSubnet(address, prefix, family);
  return blocks;
}

/**
 * The networks as nats-server reads a user JWT's `src`: always with a prefix length (it
 * refuses a bare address), `192.0.2.7` becoming `192.0.2.7/32`.
 */
export function canonicalNetworks(networks: readonly string[], path: string): string[] {
  return parseNetworks(networks, path).map(([address, prefix]) => `${address}/${prefix}`);
}

function parseNetworks(networks: readonly string[], path: string): [string, number, 'ipv4' | 'ipv6'][] {
  const out: [string, number, 'ipv4' | 'ipv6'][] = [];
  networks.forEach((n, i) => {
    const at = networks.length > 1 ? `${path}[${i}]` : path;
    const [address, prefixText, extra] = n.split('/');
    const family = isIP(address ?? '');
    const max = family === 4 ? 32 : 128;
    const prefix = prefixText === undefined ? max : /^\d{1,3}$/.test(prefixText) ? Number(prefixText) : NaN;
    if (!family || extra !== undefined || !(prefix >= 0 && prefix <= max)) {
      throw new ConfigError(at, `${JSON.stringify(n)} is not an IP network (e.g. 10.0.0.0/8, 192.0.2.7, 2001:db8::/32)`);
    }
    out.push([address!, prefix, family === 4 ? 'ipv4' : 'ipv6']);
  });
  return out;
}

/** Whether `host` (an IP address as nats-server reports it) is in `blocks`. */
export function addressIn(blocks: BlockList, host: string | undefined): boolean {
  if (!host) return false;
  const family = isIP(host);
  if (family === 4) return blocks.check(host, 'ipv4');
  if (family !== 6) return false;
  // An IPv4 client on a dual-stack listener shows as ::ffff:a.b.c.d; IPv4 networks must see it.
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(host);
  return blocks.check(host, 'ipv6') || (mapped !== null && blocks.check(mapped[1]!, 'ipv4'));
}

/** Whether condition `a` holding implies `b` holds (a sound under-approximation). */
export function implies(a: Condition, b: Condition): boolean {
  if (a.key === b.key) return true;
  if (a.equals && b.equals && a.equals.claim === b.equals.claim) {
    return a.equals.values.every((v) => b.equals!.values.some((w) => equalityKey(w) === equalityKey(v) && equalityKey(v) !== undefined));
  }
  return false;
}
