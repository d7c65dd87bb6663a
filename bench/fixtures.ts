/**
 * The policy, claims and configuration shared by the micro and end-to-end benchmarks, so both
 * measure the same work: three rules, the matching one last, with many claim templates.
 */
import type { LocalIssuer } from '../test/helpers/local-issuer.js';

export const AUDIENCE = 'nats';
export const TARGET_ACCOUNT = 'APP';

/** A template-heavy policy: two rules that do not match, then one with 9 templated subjects. */
export function benchRules(issuer: string): Record<string, unknown>[] {
  return [
    {
      name: 'admins',
      issuer,
      match: { groups: 'nats-admins' },
      account: TARGET_ACCOUNT,
      permissions: { pub: { allow: ['orders.>'] }, sub: { allow: ['orders.>', '_INBOX.{{sub}}.>'] } },
    },
    {
      name: 'guests',
      issuer,
      match: { groups: 'guests', 'https://example.com/tier': 'free' },
      account: TARGET_ACCOUNT,
      permissions: { sub: { allow: ['public.>'] } },
    },
    {
      name: 'tenant-services',
      issuer,
      match: { groups: ['orders-writers', 'orders-readers'], 'https://example.com/tier': ['gold', 'silver'] },
      when: [
        { claim: 'tenant', present: true },
        { claim: 'region', present: true },
        { claim: 'team', present: true },
      ],
      account: TARGET_ACCOUNT,
      user_name_claim: 'name',
      max_lifetime: '15m',
      permissions: {
        pub: {
          allow: [
            'orders.{{claims.tenant}}.{{sub}}.>',
            'events.{{claims.tenant}}.{{claims.region}}.*',
            'svc.{{claims.tenant}}.{{claims.team}}.{{sub}}',
            '$SYS.REQ.USER.INFO',
          ],
          deny: ['orders.{{claims.tenant}}.admin.>'],
        },
        sub: {
          allow: [
            '_INBOX.{{sub}}.>',
            'orders.{{claims.tenant}}.>',
            'events.{{claims.tenant}}.{{claims.region}}.>',
            'notify.{{claims.tenant}}.{{claims.team}}.{{sub}}',
          ],
        },
        resp: { max: 1, ttl: '5s' },
      },
    },
  ];
}

/** The `sub` of the i-th distinct client. */
export const benchSubject = (i: number): string => `svc-${i.toString(36).padStart(6, '0')}`;

/** Claims of the i-th distinct client; every one matches `tenant-services`. */
export function benchClaims(i: number): Record<string, unknown> {
  return {
    sub: benchSubject(i),
    aud: AUDIENCE,
    azp: 'orders-service',
    scope: 'openid nats',
    groups: ['staff', 'orders-writers'],
    'https://example.com/tier': 'gold',
    tenant: 'acme',
    region: 'eu-west-1',
    team: 'payments',
    name: `Zoë Müller ${i}`,
    jti: `bench-${i}-${Math.random().toString(36).slice(2, 10)}`,
  };
}

/** Signs `count` distinct access tokens (RS256 signing costs ~0.3 ms each on this machine). */
export async function signTokens(issuer: LocalIssuer, count: number, first = 0, lifetimeSeconds = 3600): Promise<string[]> {
  const now = Math.floor(Date.now() / 1000);
  const tokens: string[] = [];
  for (let i = 0; i < count; i++) tokens.push(await issuer.sign({ ...benchClaims(first + i), exp: now + lifetimeSeconds }));
  return tokens;
}

export interface ConfigDocOptions {
  /** `nats.servers`: one URL, or every node of a cluster. */
  readonly natsUrl: string | readonly string[];
  readonly issuer: string;
  readonly issuerSeed: string | { file: string };
  readonly xkeySeed?: string | { file: string } | undefined;
  readonly algorithms?: readonly string[];
  readonly logLevel?: 'debug' | 'info' | 'warn' | 'error';
  /** `http.listen` (`host:port`) of the monitoring endpoints; off when undefined. */
  readonly httpListen?: string | undefined;
  /** `nats.connections`; the service's default when undefined. */
  readonly connections?: number | undefined;
  /** `workers`; the service's default (one per core) when undefined. */
  readonly workers?: number | 'auto' | undefined;
}

/** A service configuration document (buildConfig input; as JSON it is also valid YAML). */
export function configDoc(o: ConfigDocOptions): Record<string, unknown> {
  return {
    nats: {
      servers: typeof o.natsUrl === 'string' ? [o.natsUrl] : [...o.natsUrl],
      user: 'auth',
      password: 'bench-password',
      ...(o.connections ? { connections: o.connections } : {}),
    },
    callout: { account: 'AUTH', issuer_seed: o.issuerSeed, ...(o.xkeySeed ? { xkey_seed: o.xkeySeed } : {}) },
    issuers: [
      {
        issuer: o.issuer,
        audiences: [AUDIENCE],
        algorithms: o.algorithms ?? ['RS256'],
        token_types: ['at+jwt'],
        allow_insecure_http: true,
      },
    ],
    policy: { rules: benchRules(o.issuer) },
    log: { level: o.logLevel ?? 'error' },
    ...(o.workers !== undefined ? { workers: o.workers } : {}),
    ...(o.httpListen ? { http: { listen: o.httpListen } } : {}),
  };
}
