import type { ConnectionFacts } from './conditions.js';
import type { RuleTrace } from './policy.js';
import type { Explanation } from './service.js';

/**
 * What `oidc-callout explain` prints: the decision, the verified claims on every outcome, a
 * trace of every rule in order, and on allow the grant and the user JWT claims that would be
 * issued. Plain data (printed as JSON), never the token itself.
 */
export function explainOutput(e: Explanation, connection: ConnectionFacts | undefined, nowMs: number): Record<string, unknown> {
  const common = {
    // Token times are checked against this: with a token from another time, pass --now.
    now: new Date(nowMs).toISOString(),
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
    permissions: g.scoped
      ? `from the scope of ${g.account}'s signing key (in its account JWT): the user JWT carries none`
      : { pub: g.pub, sub: g.sub, ...(g.resp ? { resp: { max: g.resp.max, ttl: seconds(g.resp.ttl) } } : {}) },
    expires: new Date(e.expires * 1000).toISOString(),
    // The signing keys are not read by explain: the issuer stands for the key that would sign.
    user_jwt: { ...e.userJwt, iss: '(the public key of the seed that signs users of this account; explain does not read it)' },
  };
}

/** nats-server's nanoseconds as a duration: `5s`, `250ms`, `0s` (its default applies). */
function seconds(ns: number): string {
  const ms = ns / 1_000_000;
  return ms % 1000 === 0 ? `${ms / 1000}s` : `${ms}ms`;
}

function traceLine(t: RuleTrace): Record<string, unknown> {
  switch (t.outcome) {
    case 'matched':
      return { rule: t.rule, result: 'matched' };
    case 'refused':
      return {
        rule: t.rule,
        result: t.stage === 'grant' ? 'matched, but refused' : 'refused while reading its conditions (no later rule is tried)',
        code: t.code,
        reason: t.reason,
      };
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
