import { claimReader, equalityKey, type Scalar } from './claims.js';
import { type Condition, type IndexHit, MAX_MATCHED_VALUE, type MatchContext, readValues } from './conditions.js';

/**
 * Which rules could match a token, found without trying them one by one: a 1,000-rule policy
 * still decides in microseconds. Each rule is filed under the claim values one of its top-level
 * conditions cannot hold without (an `equals` value, a glob or regex's fixed prefix or suffix,
 * every branch of an `any`; or, for a rule whose roles come only from `roles_from`, the table's
 * values). Rules with no such condition are always candidates. Candidates are then tried in rule
 * order exactly as before, so the index changes how fast, never what is decided: it only skips
 * rules that one of their own conditions would fail.
 *
 * Where reading a claim's values refuses the token (a shape no condition can compare), or a
 * value cannot be looked up as text (a boolean under a pattern, a value longer than patterns
 * read), every rule filed under that claim becomes a candidate, so evaluating it refuses as it
 * would without the index.
 */

interface Trie {
  readonly next: Map<string, Trie>;
  readonly rules: number[];
}

interface ClaimEntry {
  readonly read: (claims: Readonly<Record<string, unknown>>) => unknown;
  readonly equals: Map<string, number[]>;
  readonly prefix: Trie;
  readonly suffix: Trie;
  /** Every rule filed under this claim, and those filed by a pattern. */
  readonly all: number[];
  readonly patterns: number[];
}

export interface IndexedRule {
  readonly when: Condition;
  /** The claim and table values of a `roles_from` that is the rule's only grant. */
  readonly rolesOnlyFrom: { readonly claim: string; readonly values: readonly string[] } | undefined;
}

export class RuleIndex {
  readonly #always: Uint8Array;
  readonly #claims = new Map<string, ClaimEntry>();
  /** What a rule is filed by: the condition, `roles` (its roles_from table), or undefined (always tried). */
  readonly #filed: (Condition | 'roles' | undefined)[];

  constructor(rules: readonly IndexedRule[]) {
    this.#always = new Uint8Array(rules.length);
    this.#filed = rules.map((rule, i) => {
      const filed = filing(rule);
      if (!filed) {
        this.#always[i] = 1;
        return undefined;
      }
      for (const hit of filed.hits) this.#file(hit, i);
      return filed.by;
    });
  }

  /** 1 for every rule that could match (rule order), 0 for those that cannot. */
  candidates(ctx: MatchContext): Uint8Array {
    const marks = this.#always.slice();
    for (const [claim, entry] of this.#claims) {
      let values: Scalar[];
      try {
        values = readValues(ctx, claim, entry.read);
      } catch {
        mark(marks, entry.all);
        continue;
      }
      for (const v of values) {
        const key = equalityKey(v);
        if (key !== undefined) {
          const rules = entry.equals.get(key);
          if (rules) mark(marks, rules);
        }
        if (entry.patterns.length === 0) continue;
        const text = typeof v === 'string' ? v : typeof v === 'number' && Number.isSafeInteger(v) ? String(v) : undefined;
        if (text === undefined || text.length > MAX_MATCHED_VALUE) {
          mark(marks, entry.patterns);
          continue;
        }
        walk(entry.prefix, text, false, marks);
        walk(entry.suffix, text, true, marks);
      }
    }
    return marks;
  }

  /**
   * Why rule `i` is not a candidate: the condition it is filed by (which fails for this token),
   * or `roles` when no value of its roles_from claim is in its table.
   */
  filedBy(i: number): Condition | 'roles' | undefined {
    return this.#filed[i];
  }

  #file(hit: IndexHit, rule: number): void {
    let entry = this.#claims.get(hit.claim);
    if (!entry) {
      entry = { read: claimReader(hit.claim), equals: new Map(), prefix: trie(), suffix: trie(), all: [], patterns: [] };
      this.#claims.set(hit.claim, entry);
    }
    if (!entry.all.includes(rule)) entry.all.push(rule);
    if (hit.kind === 'equals') {
      const list = entry.equals.get(hit.literal) ?? [];
      if (!list.includes(rule)) list.push(rule);
      entry.equals.set(hit.literal, list);
      return;
    }
    if (!entry.patterns.includes(rule)) entry.patterns.push(rule);
    let node = hit.kind === 'prefix' ? entry.prefix : entry.suffix;
    const literal = hit.kind === 'prefix' ? hit.literal : reverse(hit.literal);
    // UTF-16 code units, as walk() reads values.
    for (let i = 0; i < literal.length; i++) {
      const ch = literal[i]!;
      let child = node.next.get(ch);
      if (!child) {
        child = trie();
        node.next.set(ch, child);
      }
      node = child;
    }
    if (!node.rules.includes(rule)) node.rules.push(rule);
  }
}

/** The top-level condition with the fewest hits, or else the rule's roles table; undefined: always tried. */
function filing(rule: IndexedRule): { readonly hits: readonly IndexHit[]; readonly by: Condition | 'roles' } | undefined {
  let best: Condition | undefined;
  for (const c of conjuncts(rule.when)) if (c.hits && (!best || c.hits.length < best.hits!.length)) best = c;
  if (best) return { hits: best.hits!, by: best };
  // The table rules a rule out only as its last step: a condition that reads claims would be
  // tried first (and may refuse a token it cannot read), so such a rule is always tried.
  const roles = rule.rolesOnlyFrom;
  if (!roles || rule.when.readsClaims) return undefined;
  const hits: IndexHit[] = [];
  for (const v of roles.values) {
    const key = equalityKey(v);
    if (key !== undefined) hits.push({ claim: roles.claim, kind: 'equals', literal: key });
  }
  return { hits, by: 'roles' };
}

function conjuncts(c: Condition): readonly Condition[] {
  return c.parts ? c.parts.flatMap(conjuncts) : [c];
}

function trie(): Trie {
  return { next: new Map(), rules: [] };
}

function mark(marks: Uint8Array, rules: readonly number[]): void {
  for (const r of rules) marks[r] = 1;
}

/** Marks the rules of every node along `text` (from its end when `fromEnd`). */
function walk(root: Trie, text: string, fromEnd: boolean, marks: Uint8Array): void {
  if (root.next.size === 0) return;
  let node: Trie | undefined = root;
  for (let i = 0; i < text.length && node; i++) {
    node = node.next.get(text[fromEnd ? text.length - 1 - i : i]!);
    if (node) mark(marks, node.rules);
  }
}

function reverse(s: string): string {
  return s.split('').reverse().join('');
}
