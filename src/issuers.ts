import {
  type CompactJWSHeaderParameters,
  type CryptoKey,
  createRemoteJWKSet,
  customFetch,
  type FetchImplementation,
  type FlattenedJWSInput,
  type JWTVerifyGetKey,
  type RemoteJWKSet,
} from 'jose';
import * as oidc from 'openid-client';
import { Agent } from 'undici';
import type { IssuerConfig } from './config.js';
import { AuthFailure } from './errors.js';
import type { DecisionObserver } from './metrics.js';

type FetchOptions = Parameters<FetchImplementation>[1];

/** What health checks, metrics and `check` report about one issuer. */
export interface IssuerStatus {
  readonly issuer: string;
  readonly jwksUri: string | undefined;
  readonly keysLoaded: boolean;
  readonly jwksFetches: number;
  readonly jwksFetchFailures: number;
  readonly lastFetchAt: number | undefined;
  readonly lastError: string | undefined;
}

/**
 * The signing keys of one configured issuer. The JWKS location comes from configuration or
 * OpenID discovery (openid-client, which also pins the discovered `issuer` to the configured
 * one). jose's remote JWKS does the caching: stale reload after `jwks_cache_max_age`, one
 * shared in-flight fetch, and an unknown `kid` refetches at most once per `jwks_cooldown`; our
 * fetch adds the same cooldown after failures and serves the last good key set while the IdP
 * fails, up to `jwks_max_stale`.
 */
export class IssuerKeys {
  readonly config: IssuerConfig;
  #jwks: RemoteJWKSet | undefined;
  #jwksUri: string | undefined;
  #discovering: Promise<RemoteJWKSet> | undefined;
  #lastDiscoveryFailure = 0;
  #fetches = 0;
  #failures = 0;
  #lastError: string | undefined;
  #lastFailureAt: number | undefined;
  /** The last key set the IdP served successfully, when, and the kids it holds. */
  #lastGood: { readonly body: string; readonly at: number; readonly kids: ReadonlySet<unknown> } | undefined;
  /** Discovery or JWKS requests under way, and a promise settled when none is. */
  #inFlight = 0;
  #settled: { readonly promise: Promise<void>; readonly resolve: () => void } | undefined;

  readonly #observer: Pick<DecisionObserver, 'jwksFetched'> | undefined;

  /** A key set given up front (`explain --jwks`): used instead of any fetch. */
  readonly #offline: string | undefined;

  readonly #now: () => number;
  /** Connections trusting only the issuer's `ca_file`, when it has one. */
  readonly #dispatcher: Agent | undefined;

  /** `now` is the clock freshness is judged by (tests inject one). */
  constructor(config: IssuerConfig, observer?: Pick<DecisionObserver, 'jwksFetched'>, offlineJwks?: string, now: () => number = Date.now) {
    this.config = config;
    this.#observer = observer;
    this.#offline = offlineJwks;
    this.#now = now;
    this.#dispatcher = config.ca === undefined ? undefined : new Agent({ connect: { ca: config.ca } });
    if (offlineJwks !== undefined) {
      if (!isJwks(safeJson(offlineJwks))) throw new Error('the key set is not a JSON Web Key Set ({"keys": [...]})');
      this.#jwks = this.#remote('offline:jwks');
    } else if (config.jwksUri) this.#jwks = this.#remote(config.jwksUri);
  }

  /** Resolves the JWKS (discovering it first if needed); refuses with ISSUER_UNAVAILABLE. */
  async jwks(): Promise<RemoteJWKSet> {
    if (this.#jwks) return this.#jwks;
    // Failed discovery is retried at most once per cooldown so a dead IdP is not hammered.
    if (!this.#discovering && this.#now() - this.#lastDiscoveryFailure < this.config.jwksCooldownMs) {
      throw new AuthFailure('ISSUER_UNAVAILABLE', `discovery for ${this.config.issuer} failed recently: ${this.#lastError}`);
    }
    if (!this.#discovering) {
      this.#fetchStarted();
      this.#discovering = this.#discover().finally(() => {
        this.#discovering = undefined;
        this.#fetchEnded();
      });
    }
    return this.#discovering;
  }

  /** A jose key resolver bound to this issuer's JWKS. */
  readonly getKey: JWTVerifyGetKey = async (header, token) => (await this.jwks())(header, token);

  /**
   * The keys a token's header selects (several when a kid repeats), with jose's failures
   * translated into refusals: an unknown kid (TOKEN_KEY_UNKNOWN, naming what was looked for), an
   * unsupported key (TOKEN_ALG_NOT_ALLOWED), an IdP that cannot be reached (ISSUER_UNAVAILABLE).
   */
  async keysFor(header: CompactJWSHeaderParameters, token: FlattenedJWSInput): Promise<AsyncIterable<CryptoKey> | CryptoKey[]> {
    try {
      return [(await this.getKey(header, token)) as CryptoKey];
    } catch (err) {
      if ((err as { code?: unknown }).code === 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') return err as AsyncIterable<CryptoKey>;
      throw keyFailure(err, this.config, header);
    }
  }

  /** Refetches the key set unless the cooldown forbids it (false then); refuses as keysFor does. */
  async reloadUnlessCoolingDown(): Promise<boolean> {
    const jwks = await this.jwks();
    if (jwks.coolingDown) return false;
    try {
      await jwks.reload();
    } catch (err) {
      throw keyFailure(err, this.config, {});
    }
    return true;
  }

  /** Loads discovery and keys now (startup, `check`); throws ISSUER_UNAVAILABLE with the cause. */
  async load(): Promise<void> {
    const jwks = await this.jwks();
    try {
      await jwks.reload();
    } catch (err) {
      if (err instanceof AuthFailure) throw err;
      throw new AuthFailure('ISSUER_UNAVAILABLE', `cannot load JWKS of ${this.config.issuer} from ${this.#jwksUri}: ${describe(err)}`, { cause: err });
    }
  }

  /** fetch, through the issuer's own CA when it has one. */
  #fetch(url: string, init: RequestInit): Promise<Response> {
    if (!this.#dispatcher) return fetch(url, init);
    return fetch(url, { ...init, dispatcher: this.#dispatcher } as RequestInit);
  }

  /** Whether discovery or a key set fetch is under way. */
  get fetching(): boolean {
    return this.#inFlight > 0;
  }

  /**
   * Counts a fetch as under way from now (synchronously), until the returned function is called:
   * a reload about to be asked for is seen by every token that comes after, before its first await.
   */
  holdFetch(): () => void {
    this.#fetchStarted();
    let released = false;
    return () => {
      if (!released) {
        released = true;
        this.#fetchEnded();
      }
    };
  }

  /** Resolves once no discovery or key set fetch is under way (at once if none is). */
  settled(): Promise<void> {
    return this.#settled?.promise ?? Promise.resolve();
  }

  #fetchStarted(): void {
    if (this.#inFlight++ === 0) {
      let resolve!: () => void;
      const promise = new Promise<void>((r) => {
        resolve = r;
      });
      this.#settled = { promise, resolve };
    }
  }

  #fetchEnded(): void {
    if (--this.#inFlight === 0) {
      this.#settled?.resolve();
      this.#settled = undefined;
    }
  }

  /** Whether the last key set fetched holds `kid` (a token without kid: whether any set is held). */
  holdsKid(kid: unknown): boolean {
    if (this.#offline !== undefined) return true;
    const good = this.#lastGood;
    if (!good) return false;
    return kid === undefined || good.kids.has(kid);
  }

  status(): IssuerStatus {
    return {
      issuer: this.config.issuer,
      jwksUri: this.#jwksUri,
      keysLoaded: this.#holdsUsableKeys(),
      jwksFetches: this.#fetches,
      jwksFetchFailures: this.#failures,
      lastFetchAt: this.#lastGood?.at,
      lastError: this.#lastError,
    };
  }

  async #discover(): Promise<RemoteJWKSet> {
    const c = this.config;
    try {
      const configuration = await this.#fetchDiscovery();
      const uri = configuration.serverMetadata().jwks_uri;
      if (!uri) throw new Error('discovery document has no jwks_uri');
      const url = new URL(uri);
      if (url.protocol !== 'https:' && !(url.protocol === 'http:' && c.allowInsecureHttp)) {
        throw new Error(`discovered jwks_uri ${uri} is not https`);
      }
      this.#jwks = this.#remote(uri);
      return this.#jwks;
    } catch (err) {
      this.#lastDiscoveryFailure = this.#now();
      this.#lastError = `discovery: ${describe(err)}`;
      throw new AuthFailure('ISSUER_UNAVAILABLE', `discovery for ${c.issuer} failed: ${describe(err)}`, { cause: err });
    }
  }

  /**
   * One immediate retry on a network-level failure: a pooled keep-alive connection the IdP has
   * just closed fails with ECONNRESET, and without the retry discovery would sit out a cooldown.
   */
  async #fetchDiscovery(): Promise<oidc.Configuration> {
    const c = this.config;
    const attempt = () =>
      oidc.discovery(new URL(c.issuer), 'oidc-callout', undefined, undefined, {
        timeout: Math.ceil(c.httpTimeoutMs / 1000),
        ...(c.allowInsecureHttp ? { execute: [oidc.allowInsecureRequests] } : {}),
        // Through the issuer's CA when it has one, and never reading more than a key set may hold.
        [oidc.customFetch]: async (url: string, options: oidc.CustomFetchOptions) => {
          const res = await this.#fetch(url, options as RequestInit);
          const body = await readCapped(res, MAX_JWKS_BYTES);
          return new Response(body, { status: res.status, statusText: res.statusText, headers: res.headers });
        },
      });
    try {
      return await attempt();
    } catch (err) {
      if (!(err instanceof TypeError)) throw err;
      return attempt();
    }
  }

  /**
   * jose's fetch, with what it does not do itself: after a failed fetch the network is asked
   * again only once `jwks_cooldown` has passed (jose's cooldown counts from the last success),
   * and while the IdP is failing the last good key set keeps being served for up to
   * `jwks_max_stale` after it was fetched; then the issuer fails closed.
   */
  async #fetchJwks(url: string, options: FetchOptions): Promise<Response> {
    const c = this.config;
    if (this.#offline !== undefined) return new Response(this.#offline, { status: 200, headers: { 'content-type': 'application/json' } });
    if (this.#lastFailureAt !== undefined && this.#now() - this.#lastFailureAt < c.jwksCooldownMs) return this.#lastGoodOr(this.#lastError);
    this.#fetches++;
    this.#fetchStarted();
    try {
      // As for discovery: one immediate retry when a pooled connection was reset.
      const res = await this.#fetch(url, options).catch((err: unknown) => {
        if (err instanceof TypeError && !options.signal?.aborted) return this.#fetch(url, options);
        throw err;
      });
      if (!res.ok) throw new Error(`HTTP ${res.status}`);
      const body = await readCapped(res, MAX_JWKS_BYTES);
      let parsed: unknown;
      try {
        parsed = JSON.parse(body);
      } catch {
        throw new Error('the response is not JSON');
      }
      if (!isJwks(parsed)) throw new Error('the response is not a JSON Web Key Set');
      const count = (parsed as { keys: unknown[] }).keys.length;
      if (count > MAX_JWKS_KEYS) throw new Error(`the key set holds ${count} keys, more than ${MAX_JWKS_KEYS}`);
      this.#lastGood = { body, at: this.#now(), kids: new Set((parsed as { keys: { kid?: unknown }[] }).keys.map((k) => k.kid)) };
      this.#lastFailureAt = undefined;
      this.#lastError = undefined;
      this.#observer?.jwksFetched(c.issuer, true);
      return new Response(body, { status: 200, headers: { 'content-type': 'application/json' } });
    } catch (err) {
      this.#failures++;
      this.#lastFailureAt = this.#now();
      this.#lastError = `JWKS fetch from ${url}: ${describe(err)}`;
      this.#observer?.jwksFetched(c.issuer, false);
      return this.#lastGoodOr(this.#lastError);
    } finally {
      this.#fetchEnded();
    }
  }

  /**
   * A usable key set is held: one was fetched, and either the IdP has not failed since (keys are
   * fetched on demand, so a quiet hour says nothing about the IdP) or it is within jwks_max_stale.
   */
  #holdsUsableKeys(): boolean {
    if (this.#offline !== undefined) return true;
    if (!this.#lastGood) return false;
    return this.#lastFailureAt === undefined || this.#usableLastGood() !== undefined;
  }

  #usableLastGood(): string | undefined {
    return this.#lastGood && this.#now() - this.#lastGood.at <= this.config.jwksMaxStaleMs ? this.#lastGood.body : undefined;
  }

  #lastGoodOr(reason: string | undefined): Response {
    const body = this.#usableLastGood();
    if (body !== undefined) return new Response(body, { status: 200, headers: { 'content-type': 'application/json' } });
    throw new AuthFailure('ISSUER_UNAVAILABLE', `keys of ${this.config.issuer} unavailable: ${reason ?? 'no key set fetched yet'}`);
  }

  #remote(uri: string): RemoteJWKSet {
    this.#jwksUri = uri;
    return createRemoteJWKSet(new URL(uri), {
      cacheMaxAge: this.config.jwksCacheMaxAgeMs,
      cooldownDuration: this.config.jwksCooldownMs,
      timeoutDuration: this.config.httpTimeoutMs,
      [customFetch]: (url, options) => this.#fetchJwks(url, options),
    });
  }
}

/** Real key sets are a few KiB with a handful of keys; anything far larger is refused, not held. */
const MAX_JWKS_BYTES = 1024 * 1024;
const MAX_JWKS_KEYS = 100;

/** The response body as text, refusing it once it passes `max` bytes (it is not read further). */
async function readCapped(res: Response, max: number): Promise<string> {
  const declared = Number(res.headers.get('content-length'));
  if (declared > max) {
    await res.body?.cancel();
    throw new Error(`the key set is ${declared} bytes, more than ${max}`);
  }
  const reader = res.body?.getReader();
  if (!reader) return '';
  const chunks: Uint8Array[] = [];
  let size = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    size += value.byteLength;
    if (size > max) {
      await reader.cancel();
      throw new Error(`the key set is more than ${max} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

const isJwks = (v: unknown): boolean =>
  typeof v === 'object' &&
  v !== null &&
  Array.isArray((v as { keys?: unknown }).keys) &&
  (v as { keys: unknown[] }).keys.every((k) => typeof k === 'object' && k !== null);

function keyFailure(err: unknown, cfg: IssuerConfig, header: { readonly kid?: unknown; readonly alg?: unknown }): AuthFailure {
  if (err instanceof AuthFailure) return err;
  const code = (err as { code?: unknown })?.code;
  const message = err instanceof Error ? err.message : String(err);
  if (code === 'ERR_JWKS_NO_MATCHING_KEY') {
    // Name what was looked for: a rotated key (new kid) and a wrong issuer look alike otherwise.
    return new AuthFailure('TOKEN_KEY_UNKNOWN', `no key with kid ${quote(header.kid)} and alg ${quote(header.alg)} in the JWKS of ${cfg.issuer}`, {
      cause: err,
    });
  }
  if (code === 'ERR_JOSE_NOT_SUPPORTED') return new AuthFailure('TOKEN_ALG_NOT_ALLOWED', message, { cause: err });
  if (code === 'ERR_JWKS_TIMEOUT' || code === 'ERR_JWKS_INVALID' || code === 'ERR_JOSE_GENERIC' || err instanceof TypeError) {
    return new AuthFailure('ISSUER_UNAVAILABLE', `keys of ${cfg.issuer} unavailable: ${message}`, { cause: err });
  }
  return new AuthFailure('INTERNAL', message, { cause: err });
}

function quote(value: unknown): string {
  const s = JSON.stringify(value) ?? String(value);
  return s.length > 120 ? `${s.slice(0, 120)}...` : s;
}

function safeJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function describe(err: unknown): string {
  if (!(err instanceof Error)) return String(err);
  const cause = err.cause instanceof Error ? ` (${err.cause.message})` : '';
  return `${err.message}${cause}`;
}
