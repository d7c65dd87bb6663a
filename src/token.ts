import type { CompactJWSHeaderParameters, JWTPayload } from 'jose';
import type { IssuerConfig } from './config.js';
import { AuthFailure } from './errors.js';
import { keyProblem, verifyJws } from './jws.js';
import type { IssuerKeys } from './issuers.js';

/** A token whose signature, issuer, audience and times have been verified. */
export interface VerifiedToken {
  readonly issuer: IssuerConfig;
  readonly claims: Readonly<JWTPayload>;
  /** `exp` in seconds since the epoch; undefined only when the issuer allows tokens without it. */
  readonly exp: number | undefined;
}

const B64URL = /^[A-Za-z0-9_-]*$/;
/** Keys of one kid and alg tried for one token; real key sets share a kid between two at most. */
const MAX_KEYS_PER_KID = 4;

function parseSegment(segment: string, what: string): Record<string, unknown> {
  if (!segment || !B64URL.test(segment)) throw new AuthFailure('TOKEN_MALFORMED', `${what} is not base64url`);
  let value: unknown;
  try {
    value = JSON.parse(Buffer.from(segment, 'base64url').toString('utf8'));
  } catch {
    throw new AuthFailure('TOKEN_MALFORMED', `${what} is not JSON`);
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) throw new AuthFailure('TOKEN_MALFORMED', `${what} is not a JSON object`);
  return value as Record<string, unknown>;
}

/** `at+jwt` and `application/at+jwt` are the same media type (RFC 7515 section 4.1.9). */
function normalizeType(typ: string): string {
  const t = typ.toLowerCase();
  return t.startsWith('application/') ? t.slice('application/'.length) : t;
}

/**
 * Verifies OIDC tokens. The issuer is chosen by the exact `iss` before any key is touched, so
 * a token can only ever be checked against the one issuer it names; shape, size, `alg` and
 * `typ` are refused before any cryptography. The issuer's key store (issuers.ts) selects the key;
 * the signature is verified natively (src/jws.ts) and the registered claims are checked here, after it.
 */
export class TokenVerifier {
  readonly #issuers: ReadonlyMap<string, IssuerKeys>;
  readonly #maxBytes: number;

  constructor(issuers: readonly IssuerKeys[], maxBytes: number) {
    this.#issuers = new Map(issuers.map((k) => [k.config.issuer, k]));
    this.#maxBytes = maxBytes;
  }

  /**
   * What the service needs before a token takes a slot of its issuer's budget: the configured
   * issuer it names (by its unverified `iss`), and, when its kid is not among the keys held while
   * they are being fetched, the key store to wait on (without a slot). Refuses what needs no key:
   * size, shape, an unknown issuer.
   */
  admission(token: string): { readonly issuer: string; readonly waitFor: IssuerKeys | undefined } {
    if (token.length > this.#maxBytes) throw new AuthFailure('TOKEN_TOO_LARGE', `token is ${token.length} bytes, limit ${this.#maxBytes}`);
    const segments = token.split('.');
    if (segments.length !== 3) return { issuer: '', waitFor: undefined }; // verify() says what is wrong with it
    const header = parseSegment(segments[0]!, 'token header');
    const payload = parseSegment(segments[1]!, 'token claims');
    if (typeof payload.iss !== 'string') throw new AuthFailure('TOKEN_ISSUER_UNKNOWN', 'token has no iss');
    const keys = this.#issuers.get(payload.iss);
    if (!keys) throw new AuthFailure('TOKEN_ISSUER_UNKNOWN', `issuer ${quote(payload.iss)} is not configured`);
    return { issuer: payload.iss, waitFor: keys.fetching && !keys.holdsKid(header.kid) ? keys : undefined };
  }

  /** The issuer a token names; see admission(). */
  issuerOf(token: string): string {
    return this.admission(token).issuer;
  }

  async verify(token: string, nowMs = Date.now()): Promise<VerifiedToken> {
    if (token.length > this.#maxBytes) throw new AuthFailure('TOKEN_TOO_LARGE', `token is ${token.length} bytes, limit ${this.#maxBytes}`);
    const segments = token.split('.');
    if (segments.length === 5) throw new AuthFailure('TOKEN_ENCRYPTED', 'token has 5 segments (JWE)');
    if (segments.length !== 3) throw new AuthFailure('TOKEN_MALFORMED', `token has ${segments.length} segments, expected 3`);
    const header = parseSegment(segments[0]!, 'token header');
    if ('enc' in header) throw new AuthFailure('TOKEN_ENCRYPTED', 'token header has enc (JWE)');
    const payload = parseSegment(segments[1]!, 'token claims');
    if (typeof payload.iss !== 'string') throw new AuthFailure('TOKEN_ISSUER_UNKNOWN', 'token has no iss');
    const keys = this.#issuers.get(payload.iss);
    if (!keys) throw new AuthFailure('TOKEN_ISSUER_UNKNOWN', `issuer ${quote(payload.iss)} is not configured`);
    const cfg = keys.config;
    if (typeof header.alg !== 'string' || !cfg.algorithms.includes(header.alg)) {
      throw new AuthFailure('TOKEN_ALG_NOT_ALLOWED', `alg ${quote(header.alg)} is not allowed for ${cfg.issuer} (allowed: ${cfg.algorithms.join(', ')})`);
    }
    if (cfg.tokenTypes) {
      const typ = typeof header.typ === 'string' ? normalizeType(header.typ) : undefined;
      if (!typ || !cfg.tokenTypes.some((t) => normalizeType(t) === typ)) {
        throw new AuthFailure('TOKEN_TYPE_INVALID', `typ ${quote(header.typ)} is not one of ${cfg.tokenTypes.join(', ')}`);
      }
    }
    if ('crit' in header) throw new AuthFailure('TOKEN_MALFORMED', 'token header has crit: no critical extensions are supported');
    if (!segments[2] || !B64URL.test(segments[2])) throw new AuthFailure('TOKEN_MALFORMED', 'token signature is not base64url');
    // base64url leaves the last character's low bits unused: only the canonical spelling is the
    // token, so one signature cannot be written several ways (and fill the cache several times).
    if (Buffer.from(segments[2], 'base64url').toString('base64url') !== segments[2]) {
      throw new AuthFailure('TOKEN_MALFORMED', 'token signature is not canonical base64url');
    }
    await this.#verifySignature(segments as [string, string, string], header, keys);
    return { issuer: cfg, claims: payload as JWTPayload, exp: checkClaims(payload, cfg, nowMs) };
  }

  async #verifySignature(segments: [string, string, string], header: Record<string, unknown>, keys: IssuerKeys): Promise<void> {
    refuseUnknownKidWhileFetching(keys, header.kid);
    const signingInput = Buffer.from(`${segments[0]}.${segments[1]}`);
    const signature = Buffer.from(segments[2], 'base64url');
    if (await this.#anyKeyVerifies(segments, header, keys, signingInput, signature)) return;
    // While keys are being fetched, a failed signature does not wait on the fetch (and hold its
    // slot): junk under the issuer's real kid must cost as little as junk under an unknown one.
    if (keys.fetching) throw new AuthFailure('TOKEN_SIGNATURE_INVALID', 'signature verification failed (keys are being fetched)');
    // A key rotated under the same kid verifies only after a reload: allow one, off cooldown.
    const release = keys.holdFetch();
    try {
      if ((await keys.reloadUnlessCoolingDown()) && (await this.#anyKeyVerifies(segments, header, keys, signingInput, signature))) return;
    } finally {
      release();
    }
    throw new AuthFailure('TOKEN_SIGNATURE_INVALID', 'signature verification failed');
  }

  /** Resolves the token's key through the JWKS (several when kids repeat) and verifies natively. */
  async #anyKeyVerifies(
    segments: [string, string, string],
    header: Record<string, unknown>,
    keys: IssuerKeys,
    input: Buffer,
    signature: Buffer,
  ): Promise<boolean> {
    const alg = header.alg as string;
    const candidates = await keys.keysFor(header as CompactJWSHeaderParameters, { protected: segments[0], payload: segments[1], signature: segments[2] });
    let problem: string | undefined;
    let usable = 0;
    let tried = 0;
    for await (const key of candidates) {
      // A key set with many keys under one kid must not make every forged token cost that many checks.
      if (++tried > MAX_KEYS_PER_KID) break;
      // An unusable key (e.g. a short RSA key) is skipped, not fatal: another may share the kid.
      const p = keyProblem(alg, key);
      if (p) {
        problem = p;
        continue;
      }
      usable++;
      if (verifyJws(alg, key, input, signature)) return true;
    }
    if (usable === 0 && problem) throw new AuthFailure('TOKEN_KEY_UNKNOWN', `the JWKS key for kid ${quote(header.kid)} is unusable: ${problem}`);
    return false;
  }
}

const isNumericDate = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);

/**
 * Checks the registered claims after the signature: audience (any of the configured ones),
 * exp / nbf / iat with the issuer's leeway. Returns `exp`.
 */
function checkClaims(claims: Record<string, unknown>, cfg: IssuerConfig, nowMs: number): number | undefined {
  const now = Math.floor(nowMs / 1000);
  const leeway = cfg.leewaySeconds;
  const { aud, exp, nbf, iat, sub } = claims;
  const auds = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : undefined;
  if (!auds?.some((a) => typeof a === 'string' && cfg.audiences.includes(a))) {
    throw new AuthFailure('TOKEN_AUDIENCE_INVALID', `aud ${quote(aud)} contains none of ${cfg.audiences.join(', ')}`);
  }
  if (sub !== undefined && typeof sub !== 'string') throw new AuthFailure('TOKEN_CLAIMS_INVALID', 'sub is not a string');
  for (const [name, value] of [
    ['exp', exp],
    ['nbf', nbf],
    ['iat', iat],
  ] as const) {
    if (value !== undefined && !isNumericDate(value)) throw new AuthFailure('TOKEN_CLAIMS_INVALID', `${name} is not a number`);
  }
  if (exp === undefined) {
    if (!cfg.allowMissingExp) throw new AuthFailure('TOKEN_EXP_MISSING', 'token has no exp');
  } else if ((exp as number) <= now - leeway) {
    throw new AuthFailure('TOKEN_EXPIRED', `token expired ${Math.round(now - (exp as number))}s ago (leeway ${leeway}s)`);
  }
  if (nbf !== undefined && (nbf as number) > now + leeway) throw new AuthFailure('TOKEN_NOT_YET_VALID', `nbf is ${(nbf as number) - now}s in the future`);
  if (iat !== undefined && (iat as number) > now + leeway) throw new AuthFailure('TOKEN_NOT_YET_VALID', `iat is ${(iat as number) - now}s in the future`);
  // nats-server reads a user JWT's exp as an integer: a fractional one would void the user.
  return exp === undefined ? undefined : Math.floor(exp as number);
}

/** Token-controlled values in log reasons: JSON-quoted (no log injection) and bounded. */
function quote(value: unknown): string {
  const s = JSON.stringify(value) ?? String(value);
  return s.length > 120 ? `${s.slice(0, 120)}...` : s;
}

/**
 * While an issuer's keys are being fetched, a kid they do not hold is refused at once rather than
 * waiting on the fetch: a flood of junk kids at a slow IdP holds no slot and no time.
 */
function refuseUnknownKidWhileFetching(keys: IssuerKeys, kid: unknown): void {
  if (keys.fetching && !keys.holdsKid(kid)) {
    throw new AuthFailure('TOKEN_KEY_UNKNOWN', `kid ${quote(kid)} is not among the keys of ${keys.config.issuer}, which are being fetched`);
  }
}
