/**
 * `npm run bench -- --only policy`: policy.decide with a 1,000-rule policy, compiled by the
 * configuration loader (buildConfig). Rules mix what large deployments write: equals on groups
 * and realm roles, globs on e-mail addresses, RE2 regexes on `sub`, `present`, any/not
 * combinations, roles from an alias table (roles_from), account tables and claim templates,
 * over four issuers (most rules for the main one). Measured: the first rule matching, one in
 * the middle, the last one, and a token no rule matches (the refusal walks every rule of its
 * issuer).
 */
import assert from 'node:assert/strict';
import { createAccount } from '@nats-io/nkeys';
import { buildConfig } from '../src/config.js';
import { AuthFailure } from '../src/errors.js';
import type { Policy } from '../src/policy.js';
import { type BenchResult, type MeasureOptions, measureSync } from './lib.js';

export const RULES = 1000;

const MAIN = 'https://keycloak.example.com/realms/prod';
const ENTRA = 'https://login.microsoftonline.com/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0';
const GITHUB = 'https://token.actions.githubusercontent.com';
const KUBERNETES = 'https://kubernetes.default.svc.cluster.local';

/** 70 % of the rules for the main IdP, 15 % Entra, 5 % each GitHub and Kubernetes, 5 % shared by the main IdP and Entra. */
function ruleIssuer(i: number): string | string[] {
  const slot = i % 20;
  if (slot < 14) return MAIN;
  if (slot < 17) return ENTRA;
  if (slot === 17) return GITHUB;
  if (slot === 18) return KUBERNETES;
  return [MAIN, ENTRA];
}

const ROLES = {
  reader: { sub: { allow: ['public.>', '_INBOX.{{sub}}.>'] } },
  writer: { pub: { allow: ['data.{{sub}}.>'] }, sub: { allow: ['data.{{sub}}.>'] } },
  admin: { pub: { allow: ['ops.>'] }, sub: { allow: ['ops.>'] }, resp: { max: 1, ttl: '5s' } },
};

/** Rule i: one of eight shapes, each narrowed by a value of its own so no rule shadows another. */
export function scaleRule(i: number): Record<string, unknown> {
  const base = { name: `rule-${String(i).padStart(4, '0')}`, issuer: ruleIssuer(i) };
  switch (i % 8) {
    case 0: // a group, tenant-scoped subjects
      return {
        ...base,
        match: { groups: `team-${i}` },
        when: [{ claim: 'tenant', present: true }],
        account: 'APP',
        permissions: {
          pub: { allow: [`app.${i}.{{claims.tenant}}.>`], deny: [`app.${i}.{{claims.tenant}}.admin.>`] },
          sub: { allow: [`app.${i}.{{claims.tenant}}.>`, '_INBOX.{{sub}}.>'] },
        },
      };
    case 1: // Keycloak realm roles (nested claim), fixed roles
      return { ...base, match: { 'realm_access.roles': [`role-${i}-read`, `role-${i}-write`] }, account: 'APP', roles: ['reader', 'writer'] };
    case 2: // e-mail domains by glob, a hashed mailbox subject
      return {
        ...base,
        when: [{ claim: 'email', glob: [`*@dept${i}.example.com`, `*.*@dept${i}.example.org`] }],
        account: 'APP',
        roles: ['reader'],
        permissions: { sub: { allow: ['mail.{{claims.email | lower | hash}}.>'] } },
      };
    case 3: // service accounts by RE2 regex on sub
      return {
        ...base,
        when: [{ claim: 'sub', regex: `svc-${i}-[a-z0-9]{4,32}` }],
        account: 'SERVICES',
        max_lifetime: '15m',
        permissions: { pub: { allow: ['svc.{{sub}}.>'] }, sub: { allow: ['svc.{{sub}}.>', '_INBOX.{{sub}}.>'] }, resp: { max: 1 } },
      };
    case 4: // any/not combination
      return {
        ...base,
        when: [
          {
            any: [
              { claim: 'groups', equals: `ops-${i}` },
              { claim: 'groups', glob: `sre-${i}-*` },
            ],
          },
          { not: { claim: 'suspended', equals: true } },
          { claim: 'team', present: true },
        ],
        account: 'OPS',
        permissions: { pub: { allow: ['ops.{{claims.team}}.>'] }, sub: { allow: ['ops.{{claims.team}}.>', '_INBOX.{{sub}}.>'] } },
      };
    case 5: // roles from an alias table
      return {
        ...base,
        match: { department: `dept-${i}` },
        account: 'APP',
        roles_from: { claim: 'roles', map: { viewer: 'reader', editor: ['reader', 'writer'], owner: ['reader', 'writer', 'admin'] } },
      };
    case 6: // the account from a table
      return {
        ...base,
        match: { groups: `tenant-admins-${i}` },
        account: { claim: 'tenant', map: { acme: 'ACME', globex: 'GLOBEX', initech: 'INITECH', umbrella: 'UMBRELLA' } },
        permissions: { pub: { allow: ['tenant.{{claims.tenant}}.>'] }, sub: { allow: ['tenant.{{claims.tenant}}.>', '_INBOX.{{sub}}.>'] } },
      };
    default: // a URI-named claim, several present claims, multi-claim templates
      return {
        ...base,
        match: { 'https://example.com/tier': `tier-${i}` },
        when: [
          { claim: 'team', present: true },
          { claim: 'tenant', present: true },
        ],
        account: 'APP',
        permissions: { pub: { allow: ['events.{{claims.tenant}}.{{claims.team}}.*'] }, sub: { allow: ['events.{{claims.tenant}}.>', '_INBOX.{{sub}}.>'] } },
      };
  }
}

/** A realistic access token's claims from the main IdP that no rule matches. */
export function baseClaims(): Record<string, unknown> {
  const now = Math.floor(Date.now() / 1000);
  return {
    iss: MAIN,
    sub: 'f3b2c1d0-8e5a-4c1b-9d3e-4711a0b1c2d3',
    aud: ['nats', 'account'],
    azp: 'nats-portal',
    iat: now,
    exp: now + 300,
    scope: 'openid profile email nats',
    email: 'jane.doe@corp.example.org',
    email_verified: true,
    preferred_username: 'jdoe',
    name: 'Jane Doe',
    groups: ['staff', 'vpn-users', 'all-employees', 'building-7'],
    realm_access: { roles: ['offline_access', 'uma_authorization', 'default-roles-prod'] },
    department: 'dept-none',
    'https://example.com/tier': 'tier-none',
    tenant: 'acme',
    team: 'payments',
    roles: ['viewer'],
  };
}

/** Claims that rule i matches (and no earlier rule). */
export function claimsFor(i: number): Record<string, unknown> {
  const c = baseClaims();
  const groups = c['groups'] as string[];
  switch (i % 8) {
    case 0:
      groups.push(`team-${i}`);
      break;
    case 1:
      (c['realm_access'] as { roles: string[] }).roles.push(`role-${i}-write`);
      break;
    case 2:
      c['email'] = `Jane.Doe@dept${i}.example.com`;
      break;
    case 3:
      c['sub'] = `svc-${i}-a1b2c3d4`;
      break;
    case 4:
      groups.push(`sre-${i}-oncall`);
      break;
    case 5:
      c['department'] = `dept-${i}`;
      c['roles'] = ['editor'];
      break;
    case 6:
      groups.push(`tenant-admins-${i}`);
      break;
    default:
      c['https://example.com/tier'] = `tier-${i}`;
  }
  return c;
}

/** The 1,000-rule policy, compiled by the configuration loader. */
export function scalePolicy(): Policy {
  const issuerSeed = new TextDecoder().decode(createAccount().getSeed());
  const doc = {
    callout: { account: 'AUTH', issuer_seed: issuerSeed },
    issuers: [
      { issuer: MAIN, audiences: ['nats'] },
      { issuer: ENTRA, audiences: ['nats'] },
      // Anyone on GitHub can mint its tokens: pinned to one organization.
      { issuer: GITHUB, audiences: ['nats'], required_claims: { repository_owner_id: '123456' } },
      { issuer: KUBERNETES, audiences: ['nats'] },
    ],
    policy: { roles: ROLES, rules: Array.from({ length: RULES }, (_, i) => scaleRule(i)) },
  };
  return buildConfig(doc).policy;
}

export interface PolicyScaleOptions {
  readonly minMs?: number;
  readonly onResult?: (r: BenchResult) => void;
}

/** Rules tried for a token of the main IdP up to and including rule `last`. */
function rulesTried(last: number): number {
  let n = 0;
  for (let i = 0; i <= last; i++) {
    const iss = ruleIssuer(i);
    if (iss === MAIN || (Array.isArray(iss) && iss.includes(MAIN))) n++;
  }
  return n;
}

export function runPolicyScale(opts: PolicyScaleOptions = {}): BenchResult[] {
  const m: MeasureOptions = { minMs: opts.minMs ?? 1000 };
  const results: BenchResult[] = [];
  const t0 = process.hrtime.bigint();
  const policy = scalePolicy();
  const compileMs = Number(process.hrtime.bigint() - t0) / 1e6;
  assert.equal(policy.ruleNames.length, RULES);

  const cases: [string, number | undefined][] = [
    ['first rule matches', 0],
    ['middle rule matches', RULES / 2],
    ['last rule matches', RULES - 1],
    ['no rule matches (refused)', undefined],
  ];
  for (const [what, index] of cases) {
    const claims = index === undefined ? baseClaims() : claimsFor(index);
    let decide: () => unknown;
    if (index === undefined) {
      assert.throws(
        () => policy.decide(MAIN, claims),
        (err: unknown) => err instanceof AuthFailure && err.code === 'POLICY_NO_MATCH',
      );
      decide = () => {
        try {
          return policy.decide(MAIN, claims);
        } catch (err) {
          return err;
        }
      };
    } else {
      assert.equal(policy.decide(MAIN, claims).rule, policy.ruleNames[index]);
      decide = () => policy.decide(MAIN, claims);
    }
    const r = measureSync(`policy.decide, ${RULES} rules: ${what}`, decide, m);
    const tried = rulesTried(index ?? RULES - 1);
    const withExtra: BenchResult = { ...r, extra: { rulesTried: tried, compileMs: Math.round(compileMs) } };
    results.push(withExtra);
    opts.onResult?.(withExtra);
  }
  return results;
}
