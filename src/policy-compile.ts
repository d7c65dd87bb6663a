import { allOf, type Condition, canonicalNetworks, compileCondition, compileMatch, implies, networkList, REGISTERED_CLAIMS } from './conditions.js';
import { bounded, parseDuration } from './duration.js';
import { ConfigError } from './errors.js';
import {
  MAX_TAG,
  type TagTemplate,
  type AccountChoice,
  type CompiledDirection,
  type CompiledIssuer,
  type CompiledRule,
  type PermissionSet,
  Policy,
  type TimeRange,
} from './policy.js';
import type { ClaimMatchInput, ConditionInput, ConnectionType, PermissionsInput, PolicyInput, RuleInput } from './policy-schema.js';
import { subjectCovers, subjectsIntersect } from './subject.js';
import { SubjectTemplate } from './subject-template.js';

/**
 * Load-time compilation of the policy: every matcher, template and duration is compiled once,
 * and every way a policy could be read as other than it is, is a configuration error naming
 * its key: undefined roles, roles whose union would not be exact, rules no token could reach,
 * rules every token of an issuer would match (unless `allow_broad`), template claims no
 * condition guarantees, and accounts no user may be placed in.
 */

/** What the policy is compiled from. */
export interface PolicySource {
  readonly policy: PolicyInput;
  readonly issuers: readonly {
    readonly issuer: string;
    readonly required_claims?: ClaimMatchInput | ConditionInput[] | undefined;
    readonly claim_delimiters?: Readonly<Record<string, string>> | undefined;
  }[];
  /** Account names a rule may place users into (operator mode: the `accounts` section); undefined: any name. */
  readonly accounts: ReadonlySet<string> | undefined;
  /** Accounts no rule may ever place users into, with the reason. */
  readonly reserved: ReadonlyMap<string, string>;
  /** Accounts whose users are signed with a scoped signing key: nats-server applies the scope, rules grant nothing. */
  readonly scopedAccounts?: ReadonlySet<string>;
  readonly defaults: { readonly maxLifetime: string; readonly userNameClaim: string; readonly connectionTypes: readonly ConnectionType[] };
}

/**
 * Issuers that anyone can get tokens from: without required claims pinning the owner, every
 * rule for them would be open to the world.
 */
const PINNED_ISSUERS = new Map([
  [
    'https://token.actions.githubusercontent.com',
    {
      claims: ['repository_owner_id', 'repository_owner', 'repository_id', 'repository'],
      why: 'anyone on GitHub can mint tokens of this issuer: pin your organization or repository, e.g. required_claims: {repository_owner_id: "123456"}',
    },
  ],
]);

/** Claims with several values in one space-separated string (RFC 6749 scope, RFC 9068 scp). */
const DEFAULT_DELIMITERS: Readonly<Record<string, string>> = { scope: ' ', scp: ' ' };
/** Always present in a usable token in practice; a missing `sub` still refuses at render time. */
const ALWAYS_GUARANTEED = new Set(['sub']);
const ACCOUNT_NAME = /^[^\p{White_Space}\p{Cc}\p{Cf}]+$/u;
const TIME = /^([01]\d|2[0-3]):[0-5]\d:[0-5]\d$/;

/** `indexed: false` builds the reference policy that tries every rule in turn (tests). */
export function compilePolicy(source: PolicySource, options: { readonly indexed?: boolean } = {}): Policy {
  const issuerNames = source.issuers.map((i) => i.issuer);
  const issuers = new Map<string, CompiledIssuer & { readonly guarantees: readonly string[] }>();
  source.issuers.forEach((iss, i) => {
    const path = `issuers[${i}]`;
    const required = compileRequired(iss.required_claims, `${path}.required_claims`);
    const delimiters = new Map(Object.entries({ ...DEFAULT_DELIMITERS, ...(iss.claim_delimiters ?? {}) }));
    issuers.set(iss.issuer, { required, delimiters, guarantees: required?.guarantees ?? [] });
  });

  source.issuers.forEach((iss, i) => {
    const pinned = PINNED_ISSUERS.get(iss.issuer);
    if (!pinned) return;
    const required = issuers.get(iss.issuer)!.required;
    const pins = required ? conjuncts(required).some((c) => c.narrows && c.guarantees.some((g) => pinned.claims.includes(g))) : false;
    if (!pins) throw new ConfigError(`issuers[${i}].required_claims`, pinned.why);
  });

  const roles = new Map<string, PermissionSet>();
  for (const [name, perms] of Object.entries(source.policy.roles ?? {})) {
    if (name === 'permissions') throw new ConfigError(`policy.roles.${name}`, '"permissions" names a rule\'s own permissions; choose another role name');
    roles.set(name, permissionSet(name, perms, `policy.roles.${name}`));
  }

  const rules = source.policy.rules.map((raw, i) => compileRule(raw, `policy.rules[${i}]`, source, roles, issuerNames));
  const names = new Map<string, number>();
  rules.forEach((r, i) => {
    const before = names.get(r.name);
    if (before !== undefined) throw new ConfigError(`policy.rules[${i}].name`, `duplicate rule name ${JSON.stringify(r.name)} (also policy.rules[${before}])`);
    names.set(r.name, i);
  });

  rules.forEach((rule, i) => {
    const path = `policy.rules[${i}]`;
    const raw = source.policy.rules[i]!;
    checkGuarantees(rule, raw, path, issuers, issuerNames);
    checkUnion(rule, path);
    checkBroad(rule, raw, path);
    checkShadowed(rules, source.policy.rules, i);
  });

  const usesConnection =
    source.policy.rules.some((r) => mentionsConnection(r.when ?? [])) ||
    source.issuers.some((i) => Array.isArray(i.required_claims) && mentionsConnection(i.required_claims));
  return new Policy(rules, issuers, usesConnection, options.indexed ?? true);
}

function mentionsConnection(conditions: readonly ConditionInput[]): boolean {
  return conditions.some(
    (c) =>
      c.connection_type !== undefined ||
      c.source_network !== undefined ||
      mentionsConnection(c.all ?? []) ||
      mentionsConnection(c.any ?? []) ||
      (c.not !== undefined && mentionsConnection([c.not])),
  );
}

function compileRequired(raw: ClaimMatchInput | ConditionInput[] | undefined, path: string): Condition | undefined {
  if (raw === undefined) return undefined;
  const conditions = Array.isArray(raw) ? raw.map((c, i) => compileCondition(c, `${path}[${i}]`)) : compileMatch(raw, path);
  return conditions.length ? allOf(conditions) : undefined;
}

function compileRule(
  raw: RuleInput,
  path: string,
  source: PolicySource,
  roles: ReadonlyMap<string, PermissionSet>,
  issuerNames: readonly string[],
): CompiledRule {
  const ruleIssuers = raw.issuer === undefined ? undefined : typeof raw.issuer === 'string' ? [raw.issuer] : raw.issuer;
  // Claims of different issuers are different namespaces: with several issuers, a rule that
  // does not say whose tokens it is for would let one issuer mint another's groups.
  if (ruleIssuers === undefined && issuerNames.length > 1) {
    throw new ConfigError(`${path}.issuer`, 'required when several issuers are configured (a name or a list)');
  }
  for (const iss of ruleIssuers ?? []) {
    if (!issuerNames.includes(iss)) throw new ConfigError(`${path}.issuer`, `${iss} is not one of the configured issuers`);
  }

  const conditions = [...compileMatch(raw.match, `${path}.match`), ...(raw.when ?? []).map((c, i) => compileCondition(c, `${path}.when[${i}]`))];

  const role = (name: string, at: string) => {
    const set = roles.get(name);
    if (!set) throw new ConfigError(at, `role ${JSON.stringify(name)} is not defined under policy.roles`);
    return set;
  };
  const sets: PermissionSet[] = (raw.roles ?? []).map((r, i) => role(r, `${path}.roles[${i}]`));
  if (raw.permissions) sets.push(permissionSet('permissions', raw.permissions, `${path}.permissions`));
  let rolesFrom: CompiledRule['rolesFrom'];
  if (raw.roles_from) {
    const map = new Map<string, PermissionSet[]>();
    for (const [value, granted] of Object.entries(raw.roles_from.map)) {
      map.set(
        value,
        (Array.isArray(granted) ? granted : [granted]).map((r) => role(r, `${path}.roles_from.map.${value}`)),
      );
    }
    rolesFrom = { claim: raw.roles_from.claim, map };
  }
  const account = accountChoice(raw.account, `${path}.account`, source);
  const scoped = scopedTarget(account, raw, path, source);
  if (scoped) {
    // The scope in the account JWT is the whole grant: nothing of the rule's own may be signed.
    if (sets.length > 0 || rolesFrom) {
      throw new ConfigError(
        path,
        "places users into an account whose signing key is scoped: nats-server grants them the scope's permissions and refuses a user JWT carrying its own; remove roles, roles_from and permissions",
      );
    }
  } else {
    const grantable = [...sets, ...[...(rolesFrom?.map.values() ?? [])].flat()];
    if (!grantable.some((s) => s.pub.allow.length || s.sub.allow.length || s.resp)) {
      throw new ConfigError(
        path,
        'grants nothing: give it roles, roles_from or permissions with allow entries (a user with no permissions cannot do anything)',
      );
    }
  }

  const maxLifetime = `${path}.max_lifetime`;
  return {
    name: raw.name,
    issuers: ruleIssuers && new Set(ruleIssuers),
    when: allOf(conditions),
    account,
    scoped,
    sets,
    rolesFrom,
    nameClaim: raw.user_name_claim ?? source.defaults.userNameClaim,
    maxLifetimeSeconds: Math.floor(bounded(parseDuration(raw.max_lifetime ?? source.defaults.maxLifetime, maxLifetime), 1000, Infinity, maxLifetime) / 1000),
    connectionTypes: raw.connection_types ? [...new Set(raw.connection_types)] : source.defaults.connectionTypes,
    sourceNetworks: raw.source_networks && canonicalNetworks(raw.source_networks, `${path}.source_networks`),
    sourceBlocks: raw.source_networks && networkList(raw.source_networks, `${path}.source_networks`),
    times: raw.times?.map((t, i) => timeRange(t, `${path}.times[${i}]`)),
    timesLocation: raw.times_location && timeZone(raw.times_location, `${path}.times_location`, raw.times !== undefined),
    tags: raw.tags?.map((t, i) => tag(t, `${path}.tags[${i}]`)),
    proxyRequired: raw.proxy_required ?? false,
  };
}

/**
 * Whether the rule's accounts sign with scoped keys (all of them, or none: a table mixing both
 * would grant some users the rule's permissions and others a scope). A scoped user JWT carries no
 * limits either, so restrictions only the server enforces (times, proxy_required) cannot apply.
 */
function scopedTarget(account: AccountChoice, raw: RuleInput, path: string, source: PolicySource): boolean {
  const names = 'fixed' in account ? [account.fixed] : [...new Set(account.map.values())];
  const scoped = names.filter((n) => source.scopedAccounts?.has(n));
  if (scoped.length === 0) return false;
  if (scoped.length < names.length) {
    throw new ConfigError(
      `${path}.account`,
      `mixes accounts with scoped signing keys (${scoped.join(', ')}) and without (${names.filter((n) => !scoped.includes(n)).join(', ')}); use one rule for each`,
    );
  }
  for (const key of ['times', 'proxy_required'] as const) {
    if (raw[key] !== undefined) {
      throw new ConfigError(`${path}.${key}`, `cannot apply to ${scoped.join(', ')}: a user signed with a scoped key carries no limits; put them in the scope`);
    }
  }
  return true;
}

function accountChoice(raw: RuleInput['account'], path: string, source: PolicySource): AccountChoice {
  const check = (name: string, at: string) => {
    if (!ACCOUNT_NAME.test(name)) throw new ConfigError(at, `${JSON.stringify(name)} is not an account name (no whitespace or control characters)`);
    const why = source.reserved.get(name);
    if (why) throw new ConfigError(at, `users can never be placed into ${name}: it is ${why}`);
    if (source.accounts && !source.accounts.has(name)) {
      throw new ConfigError(at, `account ${name} is not listed under accounts (operator mode signs per account)`);
    }
    return name;
  };
  if (typeof raw === 'string') return { fixed: check(raw, path) };
  const map = new Map<string, string>();
  for (const [value, name] of Object.entries(raw.map)) map.set(value, check(name, `${path}.map.${value}`));
  if (map.size === 0) throw new ConfigError(`${path}.map`, 'an empty account table would refuse every user');
  return { claim: raw.claim, map };
}

function permissionSet(name: string, raw: PermissionsInput, path: string): PermissionSet {
  const dir = (d: { allow?: string[] | undefined; deny?: string[] | undefined } | undefined, at: string): CompiledDirection => ({
    allow: (d?.allow ?? []).map((s, i) => SubjectTemplate.compile(s, `${at}.allow[${i}]`)),
    deny: (d?.deny ?? []).map((s, i) => SubjectTemplate.compile(s, `${at}.deny[${i}]`)),
  });
  return {
    name,
    pub: dir(raw.pub, `${path}.pub`),
    sub: dir(raw.sub, `${path}.sub`),
    resp: raw.resp && {
      max: raw.resp.max,
      // nats-server reads the response ttl in nanoseconds.
      ttl: parseDuration(raw.resp.ttl ?? 0, `${path}.resp.ttl`) * 1_000_000,
    },
  };
}

function allSets(rule: CompiledRule): PermissionSet[] {
  const sets = [...rule.sets];
  for (const granted of rule.rolesFrom?.map.values() ?? []) for (const s of granted) if (!sets.includes(s)) sets.push(s);
  return sets;
}

/** Every template claim of every set the rule can grant must be guaranteed by a condition. */
function checkGuarantees(
  rule: CompiledRule,
  raw: RuleInput,
  path: string,
  issuers: ReadonlyMap<string, { readonly guarantees: readonly string[]; readonly delimiters: ReadonlyMap<string, string> }>,
  issuerNames: readonly string[],
): void {
  const ruleIssuers = rule.issuers ? [...rule.issuers] : issuerNames;
  const fromIssuers = ruleIssuers.map((i) => issuers.get(i)?.guarantees ?? []).reduce((a, b) => a.filter((x) => b.includes(x)));
  const guaranteed = new Set([...rule.when.guarantees, ...fromIssuers, ...ALWAYS_GUARANTEED]);
  if ('claim' in rule.account) guaranteed.add(rule.account.claim);
  // A rule granting only roles mapped from a claim matches only when that claim holds a mapped value.
  if (rule.sets.length === 0 && rule.rolesFrom) guaranteed.add(rule.rolesFrom.claim);
  const delimitedBy = (claim: string) => ruleIssuers.find((i) => issuers.get(i)?.delimiters.has(claim));
  for (const set of allSets(rule)) {
    for (const which of ['pub', 'sub'] as const) {
      for (const t of [...set[which].allow, ...set[which].deny]) {
        for (const claim of t.claims) {
          const where = set.name === 'permissions' ? `its permissions.${which}` : `role ${set.name}`;
          const delimited = delimitedBy(claim);
          if (delimited !== undefined) {
            throw new ConfigError(
              path,
              `rule ${JSON.stringify(raw.name)}: ${where} uses claims.${claim}, which ${delimited} writes as a delimited list (claim_delimiters): a list cannot be one subject token`,
            );
          }
          if (guaranteed.has(claim)) continue;
          throw new ConfigError(
            path,
            `rule ${JSON.stringify(raw.name)}: ${where} uses claims.${claim}, which no condition of the rule guarantees; add {claim: ${claim}, present: true} to when (or match on it)`,
          );
        }
      }
    }
  }
  for (const claim of (rule.tags ?? []).flatMap((t) => t.claims)) {
    if (delimitedBy(claim) !== undefined) {
      throw new ConfigError(path, `rule ${JSON.stringify(raw.name)}: its tags use claims.${claim}, which ${delimitedBy(claim)} writes as a delimited list`);
    }
    if (guaranteed.has(claim)) continue;
    throw new ConfigError(
      path,
      `rule ${JSON.stringify(raw.name)}: its tags use claims.${claim}, which no condition of the rule guarantees; add {claim: ${claim}, present: true} to when (or match on it)`,
    );
  }
}

/**
 * The user gets the union of the sets the rule grants. nats-server applies every deny to the
 * whole user, so a deny of one set that touches an allow of another would take away what that
 * set grants: refused here, unless the other set denies it too.
 */
function checkUnion(rule: CompiledRule, path: string): void {
  const sets = allSets(rule);
  // Within one set: an allow that a deny covers entirely grants nothing (deny wins in nats-server).
  for (const x of sets) {
    for (const which of ['pub', 'sub'] as const) {
      for (const a of x[which].allow) {
        const d = x[which].deny.find((e) => subjectCovers(e.shape, a.shape));
        if (d) {
          throw new ConfigError(
            path,
            `rule ${JSON.stringify(rule.name)}: ${label(x)} allows ${which} ${JSON.stringify(a.source)} but also denies all of it (${JSON.stringify(d.source)}); ` +
              'nats-server applies the deny first, so the allow grants nothing: remove one of them',
          );
        }
      }
    }
  }
  for (const x of sets) {
    for (const y of sets) {
      if (x === y) continue;
      for (const which of ['pub', 'sub'] as const) {
        for (const d of x[which].deny) {
          for (const a of y[which].allow) {
            if (!subjectsIntersect(d.shape, a.shape)) continue;
            if (y[which].deny.some((e) => subjectCovers(e.shape, d.shape))) continue;
            throw new ConfigError(
              path,
              `rule ${JSON.stringify(rule.name)}: ${label(x)} denies ${which} ${JSON.stringify(d.source)}, which ${label(y)} allows (${JSON.stringify(a.source)}); ` +
                'a user holding both would lose part of it: put the deny in both sets or narrow the allow',
            );
          }
        }
      }
    }
  }
}

function label(set: PermissionSet): string {
  return set.name === 'permissions' ? "the rule's own permissions" : `role ${set.name}`;
}

/** A rule every token of its issuers would match must say so. */
function checkBroad(rule: CompiledRule, raw: RuleInput, path: string): void {
  if (raw.allow_broad) return;
  const narrowedByRoles = rule.sets.length === 0 && rule.rolesFrom !== undefined && !REGISTERED_CLAIMS.has(rule.rolesFrom.claim);
  const narrowedByAccount = 'claim' in rule.account && !REGISTERED_CLAIMS.has(rule.account.claim);
  if (rule.when.narrows || narrowedByRoles || narrowedByAccount) return;
  throw new ConfigError(
    path,
    `rule ${JSON.stringify(raw.name)} matches every token of ${rule.issuers ? [...rule.issuers].join(', ') : 'its issuer'}: ` +
      'add a claim condition (match or when), or set allow_broad: true if that is intended',
  );
}

function checkShadowed(rules: readonly CompiledRule[], raws: readonly RuleInput[], j: number): void {
  const later = rules[j]!;
  for (let i = 0; i < j; i++) {
    const first = rules[i]!;
    // A rule whose roles come only from a claim lets unmapped tokens fall through.
    if (first.sets.length === 0 && first.rolesFrom) continue;
    const issuersCovered = first.issuers === undefined || (later.issuers !== undefined && [...later.issuers].every((x) => first.issuers!.has(x)));
    if (!issuersCovered) continue;
    const firstConds = conjuncts(first.when);
    const laterConds = conjuncts(later.when);
    if (firstConds.every((c) => laterConds.some((l) => implies(l, c)))) {
      throw new ConfigError(
        `policy.rules[${j}]`,
        `rule ${JSON.stringify(raws[j]!.name)} can never match: rule ${JSON.stringify(raws[i]!.name)} (policy.rules[${i}]) comes first and matches every token it would`,
      );
    }
  }
}

/** The top-level conditions of a rule (its `match` entries and `when` items). */
function conjuncts(c: Condition): readonly Condition[] {
  return c.parts ? c.parts.flatMap(conjuncts) : [c];
}

function timeRange(t: { start: string; end: string }, path: string): TimeRange {
  if (!TIME.test(t.start)) throw new ConfigError(`${path}.start`, `${JSON.stringify(t.start)} is not a time of day HH:MM:SS`);
  if (!TIME.test(t.end)) throw new ConfigError(`${path}.end`, `${JSON.stringify(t.end)} is not a time of day HH:MM:SS`);
  return { start: t.start, end: t.end };
}

function timeZone(zone: string, path: string, hasTimes: boolean): string {
  if (!hasTimes) throw new ConfigError(path, 'only meaningful with times');
  try {
    new Intl.DateTimeFormat('en', { timeZone: zone });
  } catch {
    throw new ConfigError(path, `${JSON.stringify(zone)} is not an IANA time zone (e.g. Europe/Berlin, UTC)`);
  }
  return zone;
}

/** A tag, possibly with placeholders (`tenant:{{claims.tenant}}`), each rendered as one plain token. */
function tag(t: string, path: string): TagTemplate {
  if (t.length > MAX_TAG || /[\p{White_Space}\p{Cc},]/u.test(t))
    throw new ConfigError(path, 'tags are at most 255 characters, without whitespace, commas or control characters');
  // Literal text is any tag text; only a tag with placeholders is parsed as a template.
  return t.includes('{{') ? SubjectTemplate.compile(t, path) : { render: () => t, claims: [] };
}
