/**
 * The provider examples in conf/examples/ and their fixtures in test/fixtures/providers/: a
 * token shaped like the provider's documented tokens (header and claims), variants of it, and
 * what `oidc-callout explain` must print for each.
 *
 * A variant lists only what differs from the base token: claims and header fields it sets,
 * where null removes the field.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

/** The repository root (this module runs from test/helpers or dist/test/helpers). */
export const ROOT = (() => {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!readdirSync(dir).includes('package.json')) dir = dirname(dir);
  return dir;
})();

export const EXAMPLES_DIR = join(ROOT, 'conf', 'examples');
export const FIXTURES_DIR = join(ROOT, 'test', 'fixtures', 'providers');

/** Every provider with an example, by file name without `.yaml`. */
export const PROVIDERS = ['keycloak', 'entra-id', 'okta', 'auth0', 'google', 'github-actions', 'kubernetes', 'cloudflare-access', 'delimited-claims'] as const;
export type Provider = (typeof PROVIDERS)[number];

/** What explain must print; only the keys given are compared. */
export interface Expectation {
  readonly decision: 'allow' | 'refuse';
  readonly code?: string;
  readonly rule?: string;
  readonly account?: string;
  readonly user_name?: string;
  readonly roles?: readonly string[];
  readonly permissions?: {
    readonly pub: { readonly allow?: readonly string[]; readonly deny?: readonly string[] };
    readonly sub: { readonly allow?: readonly string[]; readonly deny?: readonly string[] };
    readonly resp?: { readonly max: number; readonly ttl: number };
  };
  readonly expires?: string;
  /** The failed required claim (compared on the keys given). */
  readonly required_claims?: { readonly failed: string; readonly saw?: unknown };
  /** Trace lines that must appear (each compared on the keys given). */
  readonly rules?: readonly Record<string, unknown>[];
  /** A regular expression the reason must match. */
  readonly reason?: string;
}

export interface Variant {
  readonly name: string;
  readonly header?: Readonly<Record<string, unknown>>;
  readonly claims?: Readonly<Record<string, unknown>>;
  readonly expect: Expectation;
}

/** What the end-to-end test does with the example's base token. */
export interface IntegrationPlan {
  /** A subject the base token may subscribe to, covering `publish`. */
  readonly subscribe: string;
  /** A subject the base token may publish to; delivered to its own subscription. */
  readonly publish: string;
  /** Send `publish` as a request the client answers itself: the reply needs `resp` and the private inbox. */
  readonly request: boolean;
  /** A subject the base token may not publish to. */
  readonly forbidden_publish: string;
  /** The name of a refused variant whose login nats-server must refuse. */
  readonly refused: string;
}

export interface ProviderFixture {
  readonly example: string;
  /** explain's --now: inside the base token's lifetime. */
  readonly now: string;
  readonly header: Readonly<Record<string, unknown>>;
  readonly claims: Readonly<Record<string, unknown>>;
  readonly expect: Expectation;
  readonly variants: readonly Variant[];
  readonly integration?: IntegrationPlan;
}

export function readFixture(provider: Provider): ProviderFixture {
  return JSON.parse(readFileSync(join(FIXTURES_DIR, `${provider}.json`), 'utf8')) as ProviderFixture;
}

export function exampleText(provider: Provider): string {
  return readFileSync(join(EXAMPLES_DIR, `${provider}.yaml`), 'utf8');
}

/** The example as the YAML parser sees it. */
export function exampleDoc(provider: Provider): Record<string, any> {
  return parse(exampleText(provider), { uniqueKeys: true }) as Record<string, any>;
}

function overlay(base: Readonly<Record<string, unknown>>, changes: Readonly<Record<string, unknown>> | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = structuredClone(base) as Record<string, unknown>;
  for (const [k, v] of Object.entries(changes ?? {})) {
    if (v === null) delete out[k];
    else out[k] = structuredClone(v);
  }
  return out;
}

/** The base token (variant undefined) or a variant: its header and claims. */
export function tokenOf(fixture: ProviderFixture, variant?: Variant): { header: Record<string, unknown>; claims: Record<string, unknown> } {
  return { header: overlay(fixture.header, variant?.header), claims: overlay(fixture.claims, variant?.claims) };
}

/** The private inbox prefix among granted subscriptions (`_INBOX.X.>` gives `_INBOX.X`). */
export function inboxPrefix(subAllow: readonly string[] | undefined): string | undefined {
  const inboxes = (subAllow ?? []).filter((s) => s.startsWith('_INBOX.'));
  if (inboxes.length !== 1) return undefined;
  const m = /^(_INBOX\.[^.*>\s]+)\.>$/.exec(inboxes[0]!);
  return m?.[1];
}

/** Every account name the example's rules place users into. */
export function accountsOf(doc: Record<string, any>): string[] {
  const names = new Set<string>();
  for (const rule of doc.policy.rules as Record<string, any>[]) {
    if (typeof rule.account === 'string') names.add(rule.account);
    else for (const a of Object.values(rule.account.map as Record<string, string>)) names.add(a);
  }
  return [...names];
}
