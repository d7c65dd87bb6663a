import { type CompactJWSHeaderParameters, type CryptoKey, createLocalJWKSet, type FlattenedJWSInput, importJWK, type JSONWebKeySet, type JWK } from 'jose';
import * as oidc from 'openid-client';
import { Agent } from 'undici';
import { type Clock, systemClock } from './clock.js';
import type { IssuerConfig } from './config.js';
import { AuthFailure } from './errors.js';
import { keyProblem } from './jws.js';
import type { DecisionObserver } from './metrics.js';

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
 * The signing keys of one configured issuer, and how fresh they are. The JWKS location comes from
 * configuration or OpenID discovery (openid-client, which also pins the discovered `issuer` to the
 * configured one). The store fetches key sets itself and hands jose only a local key set:
 * - one fetch at a time (every caller waits on the same one);
 * - keys older than `jwks_cache_max_age` are refetched when next needed;
 * - an unknown `kid` or a failed signature refetches at most once per `jwks_cooldown`, and after a
 *   failed fetch the IdP is asked again only once the cooldown has passed;
 * - while the IdP fails, the last key set fetched stays in use up to `jwks_max_stale` after it was
 *   fetched; then the issuer fails closed.
 */
export class IssuerKeys {
  readonly config: IssuerConfig;
  #jwksUri: string | undefined;
  #discovering: Promise<string> | undefined;
  #lastDiscoveryFailure = 0;
  #fetches = 0;
  #failures = 0;
  #lastError: string | undefined;
  #lastFailureAt: number | undefined;
  /** When the IdP was last asked for keys (success or not): the cooldown counts from it. */
  #lastAttemptAt: number | undefined;
  /**
   * The last key set the IdP served successfully, when (`at` on the monotonic clock, `fetchedAt`
   * on the wall clock for status), the kids it holds, and jose's view of it.
   */
  #lastGood:
    | {
        readonly body: string;
        readonly at: number;
        readonly fetchedAt: number;
        readonly kids: ReadonlySet<unknown>;
        readonly keys: ReturnType<typeof createLocalJWKSet>;
      }
    | undefined;
  #refreshing: Promise<void> | undefined;
  /** Discovery or JWKS requests under way, and a promise settled when none is. */
  #inFlight = 0;
  #settled: { readonly promise: Promise<void>; readonly resolve: () => void } | undefined;

  readonly #observer: Pick<DecisionObserver, 'jwksFetched'> | undefined;
  /** A key set given up front (`explain --jwks`): used instead of any fetch. */
  readonly #offline: ReturnType<typeof createLocalJWKSet> | undefined;
  /** Freshness, cooldowns and staleness are measured on the monotonic clock: a wall-clock step (NTP) moves none of them. */
  readonly #now: () => number;
  readonly #wall: () => number;
  /** Connections trusting only the issuer's `ca_file`, when it has one. */
  readonly #dispatcher: Agent | undefined;

  /** `clock`: the service's (tests inject one). */
  constructor(
    config: IssuerConfig,
    observer?: Pick<DecisionObserver, 'jwksFetched'>,
    offlineJwks?: string,
    clock: Pick<Clock, 'now' | 'monotonic'> = systemClock,
  ) {
    this.config = config;
    this.#observer = observer;
    this.#now = () => clock.monotonic();
    this.#wall = () => clock.now();
    this.#dispatcher = config.ca === undefined ? undefined : new Agent({ connect: { ca: config.ca } });
    this.#jwksUri = config.jwksUri;
    if (offlineJwks !== undefined) {
      const parsed = safeJson(offlineJwks);
      const invalid = new Error('the key set is not a JSON Web Key Set ({"keys": [...]})');
      if (!isJwks(parsed)) throw invalid;
      try {
        this.#offline = createLocalJWKSet(parsed as JSONWebKeySet);
      } catch {
        throw invalid;
      }
    }
  }

  /** Releases the connections of the issuer's `ca_file` pool (when a reload drops or replaces the issuer). */
  async close(): Promise<void> {
    await this.#dispatcher?.close().catch(() => undefined);
  }

  /** Fetches discovery (if needed) and the key set now (startup, `check`); throws ISSUER_UNAVAILABLE with the cause. */
  async load(): Promise<void> {
    if (this.#offline) return;
    await this.#refresh();
  }

  /** Whether a refetch for an unknown kid or a failed signature must wait (jwks_cooldown). */
  get coolingDown(): boolean {
    return this.#lastAttemptAt !== undefined && this.#now() - this.#lastAttemptAt < this.config.jwksCooldownMs;
  }

  /**
   * The keys a token's header selects (several when a kid repeats), with jose's failures
   * translated into refusals: an unknown kid (TOKEN_KEY_UNKNOWN, naming what was looked for), an
   * unsupported key (TOKEN_ALG_NOT_ALLOWED), keys that cannot be had (ISSUER_UNAVAILABLE).
   */
  async keysFor(header: CompactJWSHeaderParameters, token: FlattenedJWSInput): Promise<AsyncIterable<CryptoKey> | CryptoKey[]> {
    const select = async () => {
      try {
        return [(await (await this.#keys())(header, token)) as CryptoKey];
      } catch (err) {
        if ((err as { code?: unknown }).code === 'ERR_JWKS_MULTIPLE_MATCHING_KEYS') return err as AsyncIterable<CryptoKey>;
        throw err;
      }
    };
    try {
      return await select();
    } catch (err) {
      // A kid the held set lacks may be a rotation: one refetch, off cooldown, then look again.
      if ((err as { code?: unknown }).code !== 'ERR_JWKS_NO_MATCHING_KEY' || this.#offline || this.coolingDown) throw keyFailure(err, this.config, header);
      await this.#refresh().catch(() => undefined);
      try {
        return await select();
      } catch (again) {
        throw keyFailure(again, this.config, header);
      }
    }
  }

  /** Refetches the key set unless the cooldown forbids it (false then); refuses with ISSUER_UNAVAILABLE when no usable keys remain. */
  async reloadUnlessCoolingDown(): Promise<boolean> {
    if (this.#offline || this.coolingDown) return false;
    try {
      await this.#refresh();
    } catch (err) {
      if (!this.#holdsUsableKeys()) throw err;
    }
    return true;
  }

  /** jose's view of the keys in use, fetching or refetching them as freshness requires. */
  async #keys(): Promise<ReturnType<typeof createLocalJWKSet>> {
    if (this.#offline) return this.#offline;
    const good = this.#lastGood;
    if (!good) {
      if (this.#lastFailureAt !== undefined && this.coolingDown) {
        throw new AuthFailure('ISSUER_UNAVAILABLE', `keys of ${this.config.issuer} unavailable: ${this.#lastError ?? 'no key set fetched yet'}`);
      }
      await this.#refresh();
      return this.#lastGood!.keys;
    }
    if (this.#now() - good.at > this.config.jwksCacheMaxAgeMs && !(this.#lastFailureAt !== undefined && this.coolingDown)) {
      // Past its max age: refetch. While the held set is usable it keeps serving and the refresh
      // runs in the background: a slow IdP must not hold every login (and the issuer's budget) at
      // each refresh. While the IdP fails, the last set serves until jwks_max_stale.
      const refresh = this.#refresh().catch(() => undefined);
      if (!this.#holdsUsableKeys()) await refresh;
    }
    if (!this.#holdsUsableKeys()) {
      throw new AuthFailure('ISSUER_UNAVAILABLE', `keys of ${this.config.issuer} unavailable: ${this.#lastError ?? 'stale'}`);
    }
    return this.#lastGood!.keys;
  }

  /** Fetches the key set (discovering its location first if needed): one fetch at a time. */
  #refresh(): Promise<void> {
    this.#refreshing ??= this.#fetchKeySet().finally(() => {
      this.#refreshing = undefined;
    });
    return this.#refreshing;
  }

  async #fetchKeySet(): Promise<void> {
    const c = this.config;
    this.#fetchStarted();
    try {
      const uri = await this.#location();
      this.#fetches++;
      this.#lastAttemptAt = this.#now();
      try {
        const init = { signal: AbortSignal.timeout(c.httpTimeoutMs), headers: { accept: 'application/json' } };
        // As for discovery: one immediate retry when a pooled connection was reset.
        const res = await this.#fetchKeySetResponse(uri, init).catch((err: unknown) => {
          if (err instanceof TypeError) return this.#fetchKeySetResponse(uri, { ...init, signal: AbortSignal.timeout(c.httpTimeoutMs) });
          throw err;
        });
        if (!res.ok) {
          await res.body?.cancel();
          throw new Error(`HTTP ${res.status}`);
        }
        const body = await readCapped(res, MAX_JWKS_BYTES, 'the key set');
        let parsed: unknown;
        try {
          parsed = JSON.parse(body);
        } catch {
          throw new Error('the response is not JSON');
        }
        if (!isJwks(parsed)) throw new Error('the response is not a JSON Web Key Set');
        const count = (parsed as { keys: unknown[] }).keys.length;
        if (count > MAX_JWKS_KEYS) throw new Error(`the key set holds ${count} keys, more than ${MAX_JWKS_KEYS}`);
        // A set no token could be verified with (empty, symmetric, encryption keys, keys of
        // other algorithms, short RSA keys) is a failed fetch: the last good set stays in use.
        if (!(await holdsSigningKey(parsed as JSONWebKeySet, c.algorithms))) {
          throw new Error(`the key set holds no key usable to verify ${c.algorithms.join(', ')} signatures`);
        }
        const keys = createLocalJWKSet(parsed as JSONWebKeySet);
        this.#lastGood = {
          body,
          at: this.#now(),
          fetchedAt: this.#wall(),
          kids: new Set((parsed as { keys: { kid?: unknown }[] }).keys.map((k) => k.kid)),
          keys,
        };
        this.#lastFailureAt = undefined;
        this.#lastError = undefined;
        this.#observer?.jwksFetched(c.issuer, true);
      } catch (err) {
        this.#failures++;
        this.#lastFailureAt = this.#now();
        this.#lastError = `JWKS fetch from ${uri}: ${describe(err)}`;
        this.#observer?.jwksFetched(c.issuer, false);
        throw new AuthFailure('ISSUER_UNAVAILABLE', `cannot load JWKS of ${c.issuer} from ${uri}: ${describe(err)}`, { cause: err });
      }
    } finally {
      this.#fetchEnded();
    }
  }

  /** The JWKS URL: configured, or discovered (retried at most once per cooldown after a failure). */
  async #location(): Promise<string> {
    if (this.#jwksUri) return this.#jwksUri;
    if (!this.#discovering && this.#now() - this.#lastDiscoveryFailure < this.config.jwksCooldownMs) {
      throw new AuthFailure('ISSUER_UNAVAILABLE', `discovery for ${this.config.issuer} failed recently: ${this.#lastError}`);
    }
    this.#discovering ??= this.#discover().finally(() => {
      this.#discovering = undefined;
    });
    return this.#discovering;
  }

  /**
   * The key set response. Redirects are followed (at most MAX_REDIRECTS) only to URLs the issuer's
   * transport rule allows: an https key set must never be replaced over plain http.
   */
  async #fetchKeySetResponse(uri: string, init: RequestInit): Promise<Response> {
    let url = uri;
    for (let hop = 0; ; hop++) {
      const res = await this.#fetch(url, { ...init, redirect: 'manual' });
      const location = res.status >= 300 && res.status < 400 ? res.headers.get('location') : null;
      if (location === null) return res;
      await res.body?.cancel();
      if (hop >= MAX_REDIRECTS) throw new Error(`more than ${MAX_REDIRECTS} redirects`);
      const next = new URL(location, url);
      if (next.protocol !== 'https:' && !(next.protocol === 'http:' && this.config.allowInsecureHttp)) {
        throw new Error(`redirected to ${next.protocol}//${next.host}, which is not https`);
      }
      url = next.href;
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
      lastFetchAt: this.#lastGood?.fetchedAt,
      lastError: this.#lastError,
    };
  }

  async #discover(): Promise<string> {
    const c = this.config;
    this.#fetchStarted();
    try {
      const configuration = await this.#fetchDiscovery();
      const uri = configuration.serverMetadata().jwks_uri;
      if (!uri) throw new Error('discovery document has no jwks_uri');
      const url = new URL(uri);
      if (url.protocol !== 'https:' && !(url.protocol === 'http:' && c.allowInsecureHttp)) {
        throw new Error(`discovered jwks_uri ${uri} is not https`);
      }
      this.#jwksUri = uri;
      return uri;
    } catch (err) {
      this.#lastDiscoveryFailure = this.#now();
      this.#lastError = `discovery: ${describe(err)}`;
      throw new AuthFailure('ISSUER_UNAVAILABLE', `discovery for ${c.issuer} failed: ${describe(err)}`, { cause: err });
    } finally {
      this.#fetchEnded();
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
          const body = await readCapped(res, MAX_JWKS_BYTES, 'the discovery document');
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
   * A usable key set is held: one was fetched, and either the IdP has not failed since (keys are
   * fetched on demand, so a quiet hour says nothing about the IdP) or it is within jwks_max_stale.
   */
  #holdsUsableKeys(): boolean {
    if (this.#offline !== undefined) return true;
    if (!this.#lastGood) return false;
    return this.#lastFailureAt === undefined || this.#now() - this.#lastGood.at <= this.config.jwksMaxStaleMs;
  }
}

/** Real key sets are a few KiB with a handful of keys; anything far larger is refused, not held. */
const MAX_JWKS_BYTES = 1024 * 1024;
const MAX_JWKS_KEYS = 100;
const MAX_REDIRECTS = 3;

/** The response body as text, refusing it once it passes `max` bytes (it is not read further). */
async function readCapped(res: Response, max: number, what: string): Promise<string> {
  const declared = Number(res.headers.get('content-length'));
  if (declared > max) {
    await res.body?.cancel();
    throw new Error(`${what} is ${declared} bytes, more than ${max}`);
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
      throw new Error(`${what} is more than ${max} bytes`);
    }
    chunks.push(value);
  }
  return Buffer.concat(chunks).toString('utf8');
}

/** Key types and curves each algorithm family verifies with. */
const KEY_TYPE_OF: Readonly<Record<string, { kty: string; crv?: string }>> = {
  ES256: { kty: 'EC', crv: 'P-256' },
  ES384: { kty: 'EC', crv: 'P-384' },
  ES512: { kty: 'EC', crv: 'P-521' },
  EdDSA: { kty: 'OKP', crv: 'Ed25519' },
  Ed25519: { kty: 'OKP', crv: 'Ed25519' },
};

/** Whether one key of `set` can verify a signature of one of `algorithms` (as token verification would select and check it). */
async function holdsSigningKey(set: JSONWebKeySet, algorithms: readonly string[]): Promise<boolean> {
  for (const jwk of set.keys as (JWK & { use?: unknown; key_ops?: unknown })[]) {
    if (jwk.use !== undefined && jwk.use !== 'sig') continue;
    if (Array.isArray(jwk.key_ops) && !jwk.key_ops.includes('verify')) continue;
    for (const alg of algorithms) {
      if (jwk.alg !== undefined && jwk.alg !== alg) continue;
      const type = KEY_TYPE_OF[alg] ?? { kty: 'RSA' };
      if (jwk.kty !== type.kty || (type.crv !== undefined && jwk.crv !== type.crv)) continue;
      try {
        const key = await importJWK({ ...jwk, ext: true }, alg);
        if (typeof key === 'object' && !(key instanceof Uint8Array) && keyProblem(alg, key as CryptoKey) === undefined) return true;
      } catch {
        // Not importable for this algorithm: try the next.
      }
    }
  }
  return false;
}

const isJwks = (v: unknown): boolean =>
  typeof v === 'object' &&
  v !== null &&
  Array.isArray((v as { keys?: unknown }).keys) &&
  (v as { keys: unknown[] }).keys.every((k) => typeof k === 'object' && k !== null && !Array.isArray(k));

/** Maps jose's key-selection errors onto our stable codes, keeping jose's message as the reason. */
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
  // A key the IdP published that cannot be imported (an RSA key without `e`): the IdP's fault,
  // refused like an unknown key, not reported as a fault of this service.
  if (code === 'ERR_JWK_INVALID' || (err as { name?: unknown })?.name === 'DataError') {
    return new AuthFailure('TOKEN_KEY_UNKNOWN', `the JWKS key for kid ${quote(header.kid)} is unusable: ${message}`, { cause: err });
  }
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
