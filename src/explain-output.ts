import type { ConnectionFacts } from './conditions.js';
import type { RuleTrace } from './policy.js';
import type { Explanation } from './service.js';

/**
 * What `oidc-callout explain` prints: the decision, the verified claims on every outcome, a
 * trace of every rule in order, and on allow the grant and the user JWT claims that would be
 * issued. Plain data (printed as JSON), never the token itself.
 */
export function explainOutput(e: Explanation, connection: ConnectionFacts | undefined): Record<string, unknown> {
  const common = {
    ...(e.issuer !== undefined ? { issuer: e.issuer, claims: e.claims } : {}),
    ...(connection ? { connection: { type: connection.type ?? 'unknown', client_host: connection.host ?? 'unknown' } } : {}),
    ...(e.policy?.required ? { required_claims: { failed: e.policy.required.condition, saw: e.policy.required.saw ?? null } } : {}),
    ...(e.policy ? { rules: e.policy.trace.map(traceLine) } : {}),
  };
  if (e.decision === 'refuse') return { decision: 'refuse', code: e.failure.code, reason: e.failure.message, ...common };
  const g = e.grant;
  return {
    decision: 'allow',
    ...common,
    rule: g.rule,
    account: g.account,
    user_name: g.name,
    roles: g.roles,
    permissions: { pub: g.pub, sub: g.sub, ...(g.resp ? { resp: g.resp } : {}) },
    expires: new Date(e.expires * 1000).toISOString(),
    user_jwt: e.userJwt,
  };
}

function traceLine(t: RuleTrace): Record<string, unknown> {
  switch (t.outcome) {
    case 'matched':
      return { rule: t.rule, result: 'matched' };
    case 'refused':
      return { rule: t.rule, result: 'matched, but refused', code: t.code, reason: t.reason };
    case 'other_issuer':
      return { rule: t.rule, result: 'skipped: for other issuers' };
    case 'failed':
      return { rule: t.rule, result: 'no match', failed: t.failed.condition, saw: t.failed.saw ?? null };
    case 'no_role':
      return { rule: t.rule, result: `no match: no value of ${t.claim} maps to a role`, saw: t.saw ?? null };
    case 'not_tried':
      return { rule: t.rule, result: 'not tried' };
  }
}
