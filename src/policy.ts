import { claimAt, claimValues } from './claims.js';
import type { BlockList } from 'node:net';
import { addressIn, type Condition, type ConnectionFacts, type Failed, type MatchContext } from './conditions.js';
import { AuthFailure } from './errors.js';
import { RuleIndex } from './rule-index.js';
import type { ConnectionType } from './policy-schema.js';
import { plainToken, type SubjectTemplate } from './subject-template.js';

/**
 * Claims -> NATS user. Compiled once at load (policy-compile.ts); pure at decision time: the
 * issuer's required claims must hold, then rules are tried in order and the first whose
 * conditions hold decides; no match is a refusal.
 */

/** Publish or subscribe permission as it goes into the user JWT. */
export interface SubjectPermission {
  readonly allow?: readonly string[];
  readonly deny?: readonly string[];
}

export interface TimeRange {
  readonly start: string;
  readonly end: string;
}

/** What a rule restricts beyond subjects: the same in the rule and in each grant it makes. */
export interface UserRestrictions {
  readonly connectionTypes: readonly ConnectionType[];
  readonly sourceNetworks: readonly string[] | undefined;
  /** `sourceNetworks`, parsed: connections are checked against it (see admitConnection). */
  readonly sourceBlocks: BlockList | undefined;
  readonly times: readonly TimeRange[] | undefined;
  readonly timesLocation: string | undefined;
  /** The user JWT's `proxy_required`: nats-server, not the service, checks it (see admitServer). */
  readonly proxyRequired: boolean;
}

/** Everything the user JWT says about the user, decided by one rule. */
export interface Grant extends UserRestrictions {
  readonly rule: string;
  /** The account signs with a scoped key: the scope, not `pub`/`sub`/`resp`, grants the permissions. */
  readonly scoped: boolean;
  /** The user JWT's tags, rendered for this user (scope templates read them as {{tag(NAME)}}). */
  readonly tags: readonly string[] | undefined;
  readonly account: string;
  readonly name: string;
  /** The roles granted (named permission sets), in the order first granted. */
  readonly roles: readonly string[];
  readonly pub: SubjectPermission;
  readonly sub: SubjectPermission;
  readonly resp: { readonly max: number; readonly ttl: number } | undefined;
  readonly maxLifetimeSeconds: number;
}

/**
 * Refuses a connection the grant does not cover (POLICY_CONNECTION_REFUSED): a connection type
 * not listed, or a client address outside the source networks. nats-server (2.10 to 2.15) does
 * not check either for a user issued by an auth callout, though both are in the user JWT, so the
 * service checks them before it answers. A fact the request does not carry never passes a check.
 */
export function admitConnection(grant: Grant, connection: ConnectionFacts): void {
  if (connection.type === undefined || !grant.connectionTypes.includes(connection.type)) {
    throw new AuthFailure(
      'POLICY_CONNECTION_REFUSED',
      `rule ${grant.rule} allows ${grant.connectionTypes.join(', ')} connections, this one is ${connection.type ?? 'of an unknown type'}`,
    );
  }
  if (grant.sourceBlocks && !addressIn(grant.sourceBlocks, connection.host)) {
    throw new AuthFailure(
      'POLICY_CONNECTION_REFUSED',
      `rule ${grant.rule} allows clients from ${grant.sourceNetworks!.join(', ')}, this one is at ${connection.host ?? 'an unknown address'}`,
    );
  }
}

/** The first nats-server release that enforces a user JWT's `proxy_required`. */
const PROXY_REQUIRED_SINCE = [2, 12] as const;

/**
 * Refuses a grant the answering server would not enforce (POLICY_CONNECTION_REFUSED): a user JWT's
 * `proxy_required` is read by nats-server 2.12 and later and silently ignored by older servers,
 * which would then admit the user without a proxy. The request does not say whether the client
 * came through a trusted proxy, so the service cannot check the requirement itself; it only makes
 * sure that the server will. A version the request does not give, or that does not parse, fails.
 */
export function admitServer(grant: Grant, serverVersion: string | undefined): void {
  if (!grant.proxyRequired) return;
  const m = /^v?(\d+)\.(\d+)\./.exec(serverVersion ?? '');
  const [major, minor] = m ? [Number(m[1]), Number(m[2])] : [0, 0];
  const [needMajor, needMinor] = PROXY_REQUIRED_SINCE;
  if (major > needMajor || (major === needMajor && minor >= needMinor)) return;
  throw new AuthFailure(
    'POLICY_CONNECTION_REFUSED',
    `rule ${grant.rule} requires a trusted proxy, which nats-server ${serverVersion || '(version unknown)'} does not enforce (2.12 or later does)`,
  );
}

/** One direction of a compiled permission set. */
export interface CompiledDirection {
  readonly allow: readonly SubjectTemplate[];
  readonly deny: readonly SubjectTemplate[];
}

/** A named permission set: a role, or a rule's own `permissions` (named `permissions`). */
export interface PermissionSet {
  readonly name: string;
  readonly pub: CompiledDirection;
  readonly sub: CompiledDirection;
  /** ttl in nanoseconds, as nats-server reads it. */
  readonly resp: { readonly max: number; readonly ttl: number } | undefined;
}

export type AccountChoice = { readonly fixed: string } | { readonly claim: string; readonly map: ReadonlyMap<string, string> };

export interface CompiledRule extends UserRestrictions {
  /** Its accounts sign with scoped keys: the user JWT carries no permissions, and its name feeds the scope's templates. */
  readonly scoped: boolean;
  /** Tags for the user JWT; placeholders are rendered per user, each value one plain token. */
  readonly tags: readonly TagTemplate[] | undefined;
  readonly name: string;
  /** undefined: every configured issuer. */
  readonly issuers: ReadonlySet<string> | undefined;
  readonly when: Condition;
  readonly account: AccountChoice;
  /** Fixed roles and the rule's own permissions. */
  readonly sets: readonly PermissionSet[];
  readonly rolesFrom: { readonly claim: string; readonly map: ReadonlyMap<string, readonly PermissionSet[]> } | undefined;
  readonly nameClaim: string;
  readonly maxLifetimeSeconds: number;
}

export interface CompiledIssuer {
  readonly required: Condition | undefined;
  readonly delimiters: ReadonlyMap<string, string>;
}

/** How one rule fared, for `explain`. */
export type RuleTrace =
  | { readonly rule: string; readonly outcome: 'matched' }
  | { readonly rule: string; readonly outcome: 'refused'; readonly stage: 'conditions' | 'grant'; readonly code: string; readonly reason: string }
  | { readonly rule: string; readonly outcome: 'other_issuer' }
  | { readonly rule: string; readonly outcome: 'failed'; readonly failed: Failed }
  | { readonly rule: string; readonly outcome: 'no_role'; readonly claim: string; readonly saw: unknown }
  | { readonly rule: string; readonly outcome: 'not_tried' };

export interface PolicyExplanation {
  /** Set when the issuer's required claims did not hold (no rule was tried). */
  readonly required: Failed | undefined;
  readonly trace: readonly RuleTrace[];
  readonly result: { readonly grant: Grant } | { readonly failure: AuthFailure };
}

const MAX_NAME = 256;
/** A filing-free stand-in condition: every rule is always tried. */
const ALWAYS = { test: () => true, trace: () => undefined, text: '', guarantees: [], readsClaims: false, narrows: false, key: '' } satisfies Condition;
const NO_CONNECTION: ConnectionFacts = { type: undefined, host: undefined };
const EMPTY_DELIMITERS: ReadonlyMap<string, string> = new Map();

export class Policy {
  readonly #rules: readonly CompiledRule[];
  readonly #issuers: ReadonlyMap<string, CompiledIssuer>;
  readonly #index: RuleIndex;
  /** Whether any condition looks at the connection: decisions then cannot be reused across connections. */
  readonly usesConnection: boolean;

  /** `indexed: false` tries every rule in turn (the reference the index is tested against). */
  constructor(rules: readonly CompiledRule[], issuers: ReadonlyMap<string, CompiledIssuer>, usesConnection: boolean, indexed = true) {
    this.#rules = rules;
    this.#issuers = issuers;
    this.usesConnection = usesConnection;
    this.#index = new RuleIndex(
      indexed
        ? rules.map((r) => ({
            when: r.when,
            rolesOnlyFrom: r.sets.length === 0 && r.rolesFrom ? { claim: r.rolesFrom.claim, values: [...r.rolesFrom.map.keys()] } : undefined,
          }))
        : rules.map(() => ({ when: { ...ALWAYS, parts: [] }, rolesOnlyFrom: undefined })),
    );
  }

  get ruleNames(): readonly string[] {
    return this.#rules.map((r) => r.name);
  }

  /**
   * The grant for verified claims, or an AuthFailure (POLICY_REQUIRED_CLAIMS, POLICY_NO_MATCH,
   * POLICY_ACCOUNT_UNMAPPED, POLICY_CLAIM_UNSAFE, POLICY_CLAIM_TOO_LONG).
   */
  decide(issuer: string, claims: Readonly<Record<string, unknown>>, connection: ConnectionFacts = NO_CONNECTION): Grant {
    const ctx = this.#context(issuer, claims, connection);
    const required = this.#issuers.get(issuer)?.required;
    if (required && !required.test(ctx)) {
      throw new AuthFailure('POLICY_REQUIRED_CLAIMS', `the token does not meet the required claims of ${issuer}: ${required.trace(ctx)?.condition}`);
    }
    const candidates = this.#index.candidates(ctx);
    const rules = this.#rules;
    for (let i = 0; i < rules.length; i++) {
      if (candidates[i] === 0) continue;
      const rule = rules[i]!;
      if (rule.issuers !== undefined && !rule.issuers.has(issuer)) continue;
      if (!rule.when.test(ctx)) continue;
      const sets = grantedSets(rule, ctx);
      if (sets) return grant(rule, sets, ctx);
    }
    throw new AuthFailure('POLICY_NO_MATCH', `no rule matches (issuer ${issuer})`);
  }

  /** Like decide, recording how every rule fared. */
  explain(issuer: string, claims: Readonly<Record<string, unknown>>, connection: ConnectionFacts = NO_CONNECTION): PolicyExplanation {
    const ctx = this.#context(issuer, claims, connection);
    const trace: RuleTrace[] = [];
    const fail = (failure: unknown) => ({ failure: failure instanceof AuthFailure ? failure : new AuthFailure('INTERNAL', String(failure)) });
    const requiredCondition = this.#issuers.get(issuer)?.required;
    let required: Failed | undefined;
    try {
      required = requiredCondition?.trace(ctx);
    } catch (err) {
      return { required: undefined, trace, result: fail(err) };
    }
    if (required) {
      const failure = new AuthFailure('POLICY_REQUIRED_CLAIMS', `the token does not meet the required claims of ${issuer}: ${required.condition}`);
      return { required, trace: this.#rules.map((r) => ({ rule: r.name, outcome: 'not_tried' })), result: { failure } };
    }
    let result: PolicyExplanation['result'] | undefined;
    let candidates: Uint8Array;
    try {
      candidates = this.#index.candidates(ctx);
    } catch (err) {
      return { required: undefined, trace, result: fail(err) };
    }
    for (const [i, rule] of this.#rules.entries()) {
      if (result) {
        trace.push({ rule: rule.name, outcome: 'not_tried' });
        continue;
      }
      if (rule.issuers !== undefined && !rule.issuers.has(issuer)) {
        trace.push({ rule: rule.name, outcome: 'other_issuer' });
        continue;
      }
      // As decide: a rule the index rules out is not evaluated; the condition it is filed by says why.
      const filedBy = candidates[i] === 0 ? this.#index.filedBy(i) : undefined;
      if (filedBy === 'roles') {
        // Filed by its table only when its conditions read no claim: one that fails is still the reason.
        const failed = rule.when.trace(ctx);
        if (failed) trace.push({ rule: rule.name, outcome: 'failed', failed });
        else trace.push({ rule: rule.name, outcome: 'no_role', claim: rule.rolesFrom!.claim, saw: claimAt(claims, rule.rolesFrom!.claim) });
        continue;
      }
      if (filedBy) {
        // The first condition that fails, in the order written; if reading an earlier one would
        // refuse the token, the condition the index ruled the rule out by.
        let failed: Failed | undefined;
        try {
          failed = rule.when.trace(ctx);
        } catch {
          failed = undefined;
        }
        trace.push({ rule: rule.name, outcome: 'failed', failed: failed ?? filedBy.trace(ctx) ?? { condition: filedBy.text, saw: null } });
        continue;
      }
      let stage: 'conditions' | 'grant' = 'conditions';
      try {
        const failed = rule.when.trace(ctx);
        if (failed) {
          trace.push({ rule: rule.name, outcome: 'failed', failed });
          continue;
        }
        const sets = grantedSets(rule, ctx);
        if (!sets) {
          trace.push({ rule: rule.name, outcome: 'no_role', claim: rule.rolesFrom!.claim, saw: claimAt(claims, rule.rolesFrom!.claim) });
          continue;
        }
        stage = 'grant';
        result = { grant: grant(rule, sets, ctx) };
        trace.push({ rule: rule.name, outcome: 'matched' });
      } catch (err) {
        result = fail(err);
        trace.push({ rule: rule.name, outcome: 'refused', stage, code: result.failure.code, reason: result.failure.message });
      }
    }
    return { required: undefined, trace, result: result ?? { failure: new AuthFailure('POLICY_NO_MATCH', `no rule matches (issuer ${issuer})`) } };
  }

  #context(issuer: string, claims: Readonly<Record<string, unknown>>, connection: ConnectionFacts): MatchContext {
    return { claims, delimiters: this.#issuers.get(issuer)?.delimiters ?? EMPTY_DELIMITERS, connection, values: new Map() };
  }
}

/** The permission sets a matching rule grants, or undefined when its roles come only from a claim and none is mapped. */
function grantedSets(rule: CompiledRule, ctx: MatchContext): readonly PermissionSet[] | undefined {
  if (!rule.rolesFrom) return rule.sets;
  const sets = [...rule.sets];
  for (const v of claimValues(claimAt(ctx.claims, rule.rolesFrom.claim), ctx.delimiters.get(rule.rolesFrom.claim), rule.rolesFrom.claim)) {
    // As in equality: booleans and numbers other than safe integers are never table keys.
    if (typeof v === 'boolean' || (typeof v === 'number' && !Number.isSafeInteger(v))) continue;
    for (const set of rule.rolesFrom.map.get(String(v)) ?? []) if (!sets.includes(set)) sets.push(set);
  }
  return sets.length > 0 ? sets : undefined;
}

function grant(rule: CompiledRule, sets: readonly PermissionSet[], ctx: MatchContext): Grant {
  return {
    rule: rule.name,
    scoped: rule.scoped,
    account: account(rule, ctx),
    // nats-server renders a scope's {{name()}} into subjects unchecked: for a scoped account the
    // name must be one plain token, or a user named `*` would get every user's subjects.
    name: rule.scoped ? scopedUserName(ctx.claims, rule.nameClaim, rule.name) : userName(ctx.claims, rule.nameClaim),
    roles: sets.map((s) => s.name).filter((n) => n !== 'permissions'),
    pub: direction(sets, 'pub', ctx.claims, rule.name),
    sub: direction(sets, 'sub', ctx.claims, rule.name),
    resp: response(sets),
    maxLifetimeSeconds: rule.maxLifetimeSeconds,
    connectionTypes: rule.connectionTypes,
    sourceNetworks: rule.sourceNetworks,
    sourceBlocks: rule.sourceBlocks,
    times: rule.times,
    timesLocation: rule.timesLocation,
    tags: rule.tags?.map((t) => renderTag(t, ctx.claims, rule.name)),
    proxyRequired: rule.proxyRequired,
  };
}

function account(rule: CompiledRule, ctx: MatchContext): string {
  const choice = rule.account;
  if ('fixed' in choice) return choice.fixed;
  const raw = claimAt(ctx.claims, choice.claim);
  const values = claimValues(raw, ctx.delimiters.get(choice.claim), choice.claim);
  if (values.length !== 1) {
    throw new AuthFailure('POLICY_ACCOUNT_UNMAPPED', `rule ${rule.name}: claim ${choice.claim} holds ${values.length} values; the account needs exactly one`);
  }
  const v = values[0]!;
  const name = typeof v === 'boolean' || (typeof v === 'number' && !Number.isSafeInteger(v)) ? undefined : choice.map.get(String(v));
  if (name === undefined) {
    throw new AuthFailure(
      'POLICY_ACCOUNT_UNMAPPED',
      `rule ${rule.name}: claim ${choice.claim} value ${JSON.stringify(String(v)).slice(0, 80)} is not in the account table`,
    );
  }
  return name;
}

/**
 * The union of the sets' grants in one direction. Deny by default: only allow entries grant,
 * and nats-server reads a missing allow list as "allow everything", so a direction without
 * allow entries is closed entirely; deny only subtracts. Load-time checks make sure no set's
 * deny touches another set's allow, so the union is exact.
 */
function direction(sets: readonly PermissionSet[], which: 'pub' | 'sub', claims: Readonly<Record<string, unknown>>, rule: string): SubjectPermission {
  const allow = new Set<string>();
  const deny = new Set<string>();
  for (const set of sets) {
    for (const t of set[which].allow) allow.add(t.render(claims, rule));
    for (const t of set[which].deny) deny.add(t.render(claims, rule));
  }
  if (allow.size === 0) return { deny: ['>'] };
  return deny.size ? { allow: [...allow], deny: [...deny] } : { allow: [...allow] };
}

/** Responses: the most any set allows. */
function response(sets: readonly PermissionSet[]): Grant['resp'] {
  let resp: Grant['resp'];
  for (const s of sets) {
    if (!s.resp) continue;
    resp = resp ? { max: Math.max(resp.max, s.resp.max), ttl: Math.max(resp.ttl, s.resp.ttl) } : s.resp;
  }
  return resp;
}

function userName(claims: Readonly<Record<string, unknown>>, claim: string): string {
  const s = rawUserName(claims, claim);
  // Names reach server logs and monitoring: no control characters, bounded length.
  return Array.from(s.replace(/[\p{Cc}\p{Cf}]/gu, ''))
    .slice(0, MAX_NAME)
    .join('');
}

function rawUserName(claims: Readonly<Record<string, unknown>>, claim: string): string {
  const v = claimAt(claims, claim);
  return typeof v === 'string' && v ? v : typeof v === 'number' ? String(v) : typeof claims.sub === 'string' ? claims.sub : '';
}

/**
 * The name of a user of a scoped account, checked as it is in the token, never cleaned: a
 * scope's {{name()}} renders it into subjects, and a name that only cleaning makes plain
 * (`ali\u00ADce`) would become another user's.
 */
function scopedUserName(claims: Readonly<Record<string, unknown>>, claim: string, rule: string): string {
  return plainToken(rawUserName(claims, claim), `user name (${claim})`, rule);
}

/** A tag of a rule: literal text, or a template whose placeholders are subject tokens. */
export type TagTemplate = Pick<SubjectTemplate, 'render' | 'claims'>;

/** Longest tag nats-server keeps. */
export const MAX_TAG = 255;

/**
 * A tag for this user. Inserted claims are held to the subject-token rules (SubjectTemplate):
 * a scope template reading `{{tag(NAME)}}` puts the value into a subject, where `*` or `>`
 * would widen the grant. A comma would split the tag in two.
 */
function renderTag(template: TagTemplate, claims: Readonly<Record<string, unknown>>, rule: string): string {
  const tag = template.render(claims, rule);
  if (tag.length > MAX_TAG || tag.includes(',')) {
    throw new AuthFailure(
      'POLICY_CLAIM_UNSAFE',
      `rule ${rule}: the tag ${JSON.stringify(tag.slice(0, 64))} is longer than ${MAX_TAG} characters or holds a comma`,
    );
  }
  return tag;
}
