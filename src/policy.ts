import { bounded, DEFAULTS, parseDuration, type RawRule } from './config.js';
import { AuthFailure, ConfigError } from './errors.js';

/**
 * Claims -> NATS grant. Rules are tried in order; the first whose issuer and claim conditions
 * all hold decides; no match is a refusal. Pure: values in, values out.
 */

/** Publish or subscribe permission as it goes into the user JWT. */
export interface SubjectPermission {
  readonly allow?: readonly string[];
  readonly deny?: readonly string[];
}

export interface Grant {
  readonly rule: string;
  readonly account: string;
  readonly name: string;
  readonly pub: SubjectPermission;
  readonly sub: SubjectPermission;
  readonly resp: { readonly max: number; readonly ttl: number } | undefined;
  readonly maxLifetimeSeconds: number;
}

/** Longest claim value accepted inside a subject; NATS subjects themselves should stay short. */
export const MAX_SUBJECT_VALUE = 128;
const MAX_NAME = 256;
// One plain subject token: no separators, wildcards, whitespace, controls or invisible formatting.
// Lone surrogates (\p{Cs}) are refused too: nats-server would read each as U+FFFD.
const PLAIN_TOKEN = /^[^.*>\p{White_Space}\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]+$/u;
/** Values that would reach reserved namespaces: `$JS`, `$KV`, `$SYS`..., and other users' inboxes. */
const RESERVED_VALUE = /^(?:\$|_INBOX$)/;
const PLACEHOLDER = /\{\{\s*([^{}\s]+)\s*\}\}/g;

type Part = string | { readonly claim: string; readonly raw: string };
type Template = readonly Part[];

interface CompiledRule {
  readonly name: string;
  readonly issuers: readonly string[] | undefined;
  readonly match: readonly { readonly path: string; readonly values: readonly (string | number | boolean)[] }[];
  readonly account: string;
  readonly nameClaim: string;
  readonly maxLifetimeSeconds: number;
  readonly pub: { readonly allow: readonly Template[]; readonly deny: readonly Template[] } | undefined;
  readonly sub: { readonly allow: readonly Template[]; readonly deny: readonly Template[] } | undefined;
  readonly resp: { readonly max: number; readonly ttl: number } | undefined;
}

/**
 * Looks a claim up by dotted path, where a key may itself contain dots: at each level the
 * longest key that exists wins. So `realm_access.roles`, a URI-named claim
 * (`https://example.com/roles`) and Kubernetes' `kubernetes.io.namespace` (key `kubernetes.io`,
 * then `namespace`) all resolve. Only own properties are read, never the prototype chain.
 */
export function claimAt(claims: Readonly<Record<string, unknown>>, path: string): unknown {
  return lookup(claims, path.split('.'));
}

function lookup(node: unknown, segments: readonly string[]): unknown {
  if (segments.length === 0) return node;
  if (typeof node !== 'object' || node === null || Array.isArray(node)) return undefined;
  for (let take = segments.length; take >= 1; take--) {
    const key = segments.slice(0, take).join('.');
    if (Object.hasOwn(node, key)) {
      const found = lookup((node as Record<string, unknown>)[key], segments.slice(take));
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

function compileTemplate(subject: string, path: string): Template {
  const parts: Part[] = [];
  let last = 0;
  for (const m of subject.matchAll(PLACEHOLDER)) {
    if (m.index > last) parts.push(subject.slice(last, m.index));
    const ref = m[1]!;
    if (ref !== 'sub' && !ref.startsWith('claims.')) {
      throw new ConfigError(path, `unknown placeholder {{${ref}}}: use {{sub}} or {{claims.NAME}}`);
    }
    parts.push({ claim: ref === 'sub' ? 'sub' : ref.slice('claims.'.length), raw: ref });
    last = m.index + m[0].length;
  }
  if (last < subject.length) parts.push(subject.slice(last));
  // The shape is checked with every placeholder standing for one plain token.
  const shape = parts.map((p) => (typeof p === 'string' ? p : 'x')).join('');
  if (shape.includes('{{') || shape.includes('}}')) throw new ConfigError(path, `malformed placeholder in ${JSON.stringify(subject)}`);
  const problem = subjectProblem(shape);
  if (problem) throw new ConfigError(path, `${JSON.stringify(subject)}: ${problem}`);
  return parts;
}

/** Why `subject` is not a valid NATS subject (wildcards allowed), or undefined if it is. */
export function subjectProblem(subject: string): string | undefined {
  if (!subject) return 'empty subject';
  if (/[\p{White_Space}\p{Cc}]/u.test(subject)) return 'subjects cannot contain whitespace or control characters';
  const tokens = subject.split('.');
  for (let i = 0; i < tokens.length; i++) {
    const t = tokens[i]!;
    if (!t) return 'empty token (leading, trailing or double dot)';
    if (t === '>' && i !== tokens.length - 1) return '">" must be the last token';
    if ((t.includes('*') || t.includes('>')) && t.length > 1) return 'wildcards must be whole tokens';
  }
  return undefined;
}

function compilePermission(p: { allow?: string[] | undefined; deny?: string[] | undefined } | undefined, path: string) {
  if (!p) return undefined;
  return {
    allow: (p.allow ?? []).map((s, i) => compileTemplate(s, `${path}.allow[${i}]`)),
    deny: (p.deny ?? []).map((s, i) => compileTemplate(s, `${path}.deny[${i}]`)),
  };
}

function compileRule(rule: RawRule, i: number): CompiledRule {
  const path = `policy.rules[${i}]`;
  const perms = rule.permissions;
  return {
    name: rule.name,
    issuers: typeof rule.issuer === 'string' ? [rule.issuer] : rule.issuer,
    match: Object.entries(rule.match ?? {}).map(([claim, v]) => ({ path: claim, values: Array.isArray(v) ? v : [v] })),
    account: rule.account,
    nameClaim: rule.user_name_claim ?? DEFAULTS.rule.user_name_claim,
    maxLifetimeSeconds: Math.floor(
      bounded(parseDuration(rule.max_lifetime ?? DEFAULTS.rule.max_lifetime, `${path}.max_lifetime`), 1000, Infinity, `${path}.max_lifetime`) / 1000,
    ),
    pub: compilePermission(perms?.pub, `${path}.permissions.pub`),
    sub: compilePermission(perms?.sub, `${path}.permissions.sub`),
    resp: perms?.resp && {
      max: perms.resp.max,
      // nats-server reads the response ttl in nanoseconds.
      ttl: parseDuration(perms.resp.ttl ?? 0, `${path}.permissions.resp.ttl`) * 1_000_000,
    },
  };
}

/** Claims that carry several values in one space-separated string (RFC 6749 scope, RFC 9068 scp). */
const SPACE_DELIMITED = new Set(['scope', 'scp']);

function matches(rule: CompiledRule, issuer: string, claims: Readonly<Record<string, unknown>>): boolean {
  if (rule.issuers !== undefined && !rule.issuers.includes(issuer)) return false;
  return rule.match.every(({ path, values }) => {
    let actual = claimAt(claims, path);
    if (typeof actual === 'string' && SPACE_DELIMITED.has(path.slice(path.lastIndexOf('.') + 1))) {
      actual = actual.split(' ').filter(Boolean);
    }
    if (Array.isArray(actual)) return actual.some((a) => values.includes(a as never));
    return actual !== undefined && values.includes(actual as never);
  });
}

function render(template: Template, claims: Readonly<Record<string, unknown>>, rule: string): string {
  let out = '';
  for (const part of template) {
    if (typeof part === 'string') {
      out += part;
      continue;
    }
    const value = claimAt(claims, part.claim);
    const text = typeof value === 'string' ? value : typeof value === 'number' && Number.isSafeInteger(value) ? String(value) : undefined;
    // A value that is not one plain token would widen or reshape the grant: refuse instead.
    if (text === undefined || text.length > MAX_SUBJECT_VALUE || !PLAIN_TOKEN.test(text) || RESERVED_VALUE.test(text)) {
      const why =
        value === undefined
          ? 'is missing'
          : typeof value !== 'string' && typeof value !== 'number'
            ? `is a ${Array.isArray(value) ? 'list' : typeof value}`
            : text !== undefined && RESERVED_VALUE.test(text)
              ? 'would reach a reserved namespace ($... or _INBOX)'
              : 'is not a single plain subject token';
      throw new AuthFailure('POLICY_CLAIM_UNSAFE', `rule ${rule}: claim ${part.raw} ${why}`);
    }
    out += text;
  }
  return out;
}

function renderPermission(p: CompiledRule['pub'], claims: Readonly<Record<string, unknown>>, rule: string): SubjectPermission {
  // Deny by default: only allow entries grant. nats-server reads a missing allow list as "allow
  // everything", so a direction without allow entries is closed entirely; deny only subtracts.
  const allow = [...new Set((p?.allow ?? []).map((t) => render(t, claims, rule)))];
  const deny = [...new Set((p?.deny ?? []).map((t) => render(t, claims, rule)))];
  if (allow.length === 0) return { deny: ['>'] };
  return { allow, ...(deny.length ? { deny } : {}) };
}

function userName(claims: Readonly<Record<string, unknown>>, claim: string): string {
  const v = claimAt(claims, claim);
  const s = typeof v === 'string' && v ? v : typeof v === 'number' ? String(v) : typeof claims.sub === 'string' ? claims.sub : '';
  // Names reach server logs and monitoring: no control characters, bounded length.
  return Array.from(s.replace(/[\p{Cc}\p{Cf}]/gu, ''))
    .slice(0, MAX_NAME)
    .join('');
}

/** Compiled policy rules; construction validates every template and duration. */
export class Policy {
  readonly #rules: readonly CompiledRule[];

  constructor(rules: readonly RawRule[]) {
    this.#rules = rules.map(compileRule);
  }

  /** The grant for verified claims, or an AuthFailure (POLICY_NO_MATCH, POLICY_CLAIM_UNSAFE). */
  decide(issuer: string, claims: Readonly<Record<string, unknown>>): Grant {
    const rule = this.#rules.find((r) => matches(r, issuer, claims));
    if (!rule) throw new AuthFailure('POLICY_NO_MATCH', `no rule matches (issuer ${issuer})`);
    return {
      rule: rule.name,
      account: rule.account,
      name: userName(claims, rule.nameClaim),
      pub: renderPermission(rule.pub, claims, rule.name),
      sub: renderPermission(rule.sub, claims, rule.name),
      resp: rule.resp,
      maxLifetimeSeconds: rule.maxLifetimeSeconds,
    };
  }
}
