import { createHash } from 'node:crypto';
import { claimAt } from './claims.js';
import { AuthFailure, ConfigError } from './errors.js';
import { subjectProblem } from './subject.js';

/**
 * Subject templates: `orders.{{claims.tenant}}.>`, `_INBOX.{{sub}}.>`,
 * `mail.{{ claims.email | lower | hash }}`. A placeholder names `sub` or `claims.PATH`, then
 * optional functions applied left to right: `lower` (lower case) and `hash` (a short stable
 * hash: the first 80 bits of SHA-256 in lower-case base32, 16 characters, for values that are
 * not subject tokens themselves, such as e-mail addresses).
 *
 * Rendering refuses (POLICY_CLAIM_UNSAFE) rather than widening or reshaping a grant: every
 * inserted value must be one plain subject token, and every token of the rendered subject that
 * holds inserted text is checked again as a whole, so `{{claims.a}}{{claims.b}}` with `_IN` and
 * `BOX` cannot make `_INBOX`.
 */

/** Longest claim value accepted inside a subject; NATS subjects themselves should stay short. */
export const MAX_SUBJECT_VALUE = 128;
/** Longest value `hash` reads; longer ones are refused rather than hashed. */
const MAX_HASH_INPUT = 4096;
const FUNCTIONS = ['lower', 'hash'] as const;
type TemplateFunction = (typeof FUNCTIONS)[number];

// One plain subject token: no separators, wildcards, whitespace, controls or invisible formatting.
// Lone surrogates (\p{Cs}) are refused too: nats-server would read each as U+FFFD.
const PLAIN_TOKEN = /^[^.*>\p{White_Space}\p{Cc}\p{Cf}\p{Cs}\p{Zl}\p{Zp}]+$/u;
/** Tokens that lead into reserved namespaces (`$JS`, `$KV`, `$SYS`...) or other users' replies. */
const RESERVED_TOKEN = /^(?:\$|(?:_INBOX|_R_|_GR_)$)/;
const PLACEHOLDER = /\{\{([^{}]*)\}\}/g;

interface Placeholder {
  /** The claim path (`sub` for the subject). */
  readonly claim: string;
  /** As written, for messages. */
  readonly raw: string;
  readonly functions: readonly TemplateFunction[];
}

type Part = string | Placeholder;

/** A compiled subject template. */
export class SubjectTemplate {
  readonly source: string;
  readonly #parts: readonly Part[];
  /** The subject with placeholders in canonical form, for load-time checks (subject.ts). */
  readonly shape: string;
  /** Claim paths the template reads. */
  readonly claims: readonly string[];

  private constructor(source: string, parts: readonly Part[], shape: string) {
    this.source = source;
    this.#parts = parts;
    this.shape = shape;
    this.claims = [...new Set(parts.filter((p): p is Placeholder => typeof p !== 'string').map((p) => p.claim))];
  }

  /** Compiles `subject`; a ConfigError at `path` names what is wrong. */
  static compile(subject: string, path: string): SubjectTemplate {
    const parts: Part[] = [];
    let last = 0;
    for (const m of subject.matchAll(PLACEHOLDER)) {
      if (m.index > last) parts.push(subject.slice(last, m.index));
      parts.push(placeholder(m[1]!, path));
      last = m.index + m[0].length;
    }
    if (last < subject.length) parts.push(subject.slice(last));
    // The shape is checked with every placeholder standing for one plain token.
    const probe = parts.map((p) => (typeof p === 'string' ? p : 'x')).join('');
    if (probe.includes('{{') || probe.includes('}}')) throw new ConfigError(path, `malformed placeholder in ${JSON.stringify(subject)}`);
    const problem = subjectProblem(probe);
    if (problem) throw new ConfigError(path, `${JSON.stringify(subject)}: ${problem}`);
    // Placeholders stand as `{{claim|functions}}` (dots made colons) inside their tokens, so
    // one token stays one token and equal placeholders compare equal.
    const shape = parts.map((p) => (typeof p === 'string' ? p : `{{${[p.claim.replaceAll('.', ':'), ...p.functions].join('|')}}}`)).join('');
    return new SubjectTemplate(subject, parts, shape);
  }

  get dynamic(): boolean {
    return this.claims.length > 0;
  }

  /** The subject for these claims, or POLICY_CLAIM_UNSAFE naming `rule`. */
  render(claims: Readonly<Record<string, unknown>>, rule: string): string {
    if (!this.dynamic) return this.source;
    let out = '';
    let tokenStart = 0;
    let tokenDynamic = false;
    for (const part of this.#parts) {
      if (typeof part === 'string') {
        for (const ch of part) {
          if (ch === '.') {
            if (tokenDynamic) checkToken(out.slice(tokenStart), tokenStart === 0, rule);
            tokenStart = out.length + 1;
            tokenDynamic = false;
          }
          out += ch;
        }
        continue;
      }
      out += value(part, claims, rule);
      tokenDynamic = true;
    }
    if (tokenDynamic) checkToken(out.slice(tokenStart), tokenStart === 0, rule);
    return out;
  }
}

function placeholder(inner: string, path: string): Placeholder {
  const [head, ...calls] = inner.split('|').map((s) => s.trim());
  const ref = head ?? '';
  if (ref !== 'sub' && !/^claims\.[^\s]+$/.test(ref)) {
    throw new ConfigError(path, `unknown placeholder {{${inner}}}: use {{sub}} or {{claims.NAME}}, optionally followed by | lower or | hash`);
  }
  for (const fn of calls) {
    if (!(FUNCTIONS as readonly string[]).includes(fn)) {
      throw new ConfigError(path, `unknown template function ${JSON.stringify(fn)} in {{${inner}}} (known: ${FUNCTIONS.join(', ')})`);
    }
  }
  return { claim: ref === 'sub' ? 'sub' : ref.slice('claims.'.length), raw: ref, functions: calls as TemplateFunction[] };
}

function value(p: Placeholder, claims: Readonly<Record<string, unknown>>, rule: string): string {
  const v = claimAt(claims, p.claim);
  let text = typeof v === 'string' ? v : typeof v === 'number' && Number.isSafeInteger(v) ? String(v) : undefined;
  if (text === undefined) {
    const what =
      v === undefined || v === null
        ? 'is missing'
        : Array.isArray(v)
          ? 'is a list'
          : typeof v === 'object'
            ? 'is an object'
            : `is ${show(v)}, not a string or integer`;
    throw new AuthFailure('POLICY_CLAIM_UNSAFE', `rule ${rule}: claim ${p.raw} ${what}`);
  }
  for (const fn of p.functions) {
    if (fn === 'lower') text = lower(text, p.raw, rule);
    else {
      if (text.length > MAX_HASH_INPUT)
        throw new AuthFailure('POLICY_CLAIM_UNSAFE', `rule ${rule}: claim ${p.raw} is longer than ${MAX_HASH_INPUT} characters`);
      text = shortHash(text);
    }
  }
  return plainToken(text, `claim ${p.raw}`, rule);
}

/**
 * `text` when it is one plain subject token that leads nowhere reserved, else POLICY_CLAIM_UNSAFE
 * naming `what` (e.g. `claim claims.tenant`): for every value that ends up inside a subject.
 */
export function plainToken(text: string, what: string, rule: string): string {
  if (text.length === 0 || text.length > MAX_SUBJECT_VALUE || !PLAIN_TOKEN.test(text)) {
    const why =
      text.length === 0
        ? 'it is empty'
        : text.length > MAX_SUBJECT_VALUE
          ? `it is longer than ${MAX_SUBJECT_VALUE} characters`
          : /[.*>]/.test(text)
            ? 'it holds ".", "*" or ">"'
            : 'it holds whitespace, control or invisible characters';
    throw new AuthFailure('POLICY_CLAIM_UNSAFE', `rule ${rule}: ${what} (${show(text)}) is not a single plain subject token: ${why}`);
  }
  if (RESERVED_TOKEN.test(text)) {
    throw new AuthFailure('POLICY_CLAIM_UNSAFE', `rule ${rule}: ${what} would reach a reserved namespace ($..., _INBOX, _R_ or _GR_)`);
  }
  return text;
}

/**
 * Lower case, refusing a character outside ASCII that lower-cases into ASCII (KELVIN SIGN to
 * `k`, DOTTED CAPITAL I to `i` + a combining dot): it would take another user's subject.
 */
function lower(text: string, claim: string, rule: string): string {
  for (const ch of text) {
    if (ch.codePointAt(0)! > 0x7f && [...ch.toLowerCase()].some((c) => c.codePointAt(0)! <= 0x7f)) {
      throw new AuthFailure('POLICY_CLAIM_UNSAFE', `rule ${rule}: claim ${claim} holds ${JSON.stringify(ch)}, which lower-cases into ASCII`);
    }
  }
  return text.toLowerCase();
}

function checkToken(token: string, first: boolean, rule: string): void {
  if (token.length > MAX_SUBJECT_VALUE * 2 || !PLAIN_TOKEN.test(token) || RESERVED_TOKEN.test(token)) {
    throw new AuthFailure(
      'POLICY_CLAIM_UNSAFE',
      `rule ${rule}: inserted claims make the ${first ? 'first ' : ''}subject token ${JSON.stringify(token.slice(0, 64))}, which is reserved or not plain`,
    );
  }
}

/** A claim value for a log line: JSON-quoted (controls escaped), at most 64 characters. */
function show(v: unknown): string {
  const s = JSON.stringify(v) ?? String(v);
  return s.length > 64 ? `${s.slice(0, 61)}...` : s;
}

const BASE32 = 'abcdefghijklmnopqrstuvwxyz234567';

/** The first 80 bits of SHA-256 in lower-case base32 (16 characters). */
export function shortHash(value: string): string {
  const digest = createHash('sha256').update(value).digest();
  let bits = 0;
  let acc = 0;
  let out = '';
  for (let i = 0; i < 10; i++) {
    acc = (acc << 8) | digest[i]!;
    bits += 8;
    while (bits >= 5) {
      out += BASE32[(acc >>> (bits - 5)) & 31];
      bits -= 5;
    }
    acc &= (1 << bits) - 1;
  }
  return out;
}
