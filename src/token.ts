import { errors as joseErrors, jwtVerify, type JWTPayload } from 'jose';
import type { IssuerConfig } from './config.js';
import { AuthFailure, type FailureCode } from './errors.js';
import type { IssuerKeys } from './issuers.js';

/** A token whose signature, issuer, audience and times have been verified. */
export interface VerifiedToken {
  readonly issuer: IssuerConfig;
  readonly claims: Readonly<JWTPayload>;
  /** `exp` in seconds since the epoch; undefined only when the issuer allows tokens without it. */
  readonly exp: number | undefined;
}

const B64URL = /^[A-Za-z0-9_-]*$/;

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
 * `typ` are refused before any cryptography.
 */
export class TokenVerifier {
  readonly #issuers: ReadonlyMap<string, IssuerKeys>;
  readonly #maxBytes: number;

  constructor(issuers: readonly IssuerKeys[], maxBytes: number) {
    this.#issuers = new Map(issuers.map((k) => [k.config.issuer, k]));
    this.#maxBytes = maxBytes;
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
    if (!keys) throw new AuthFailure('TOKEN_ISSUER_UNKNOWN', `issuer ${JSON.stringify(payload.iss.slice(0, 200))} is not configured`);
    const cfg = keys.config;
    if (typeof header.alg !== 'string' || !cfg.algorithms.includes(header.alg)) {
      throw new AuthFailure('TOKEN_ALG_NOT_ALLOWED', `alg ${JSON.stringify(header.alg)} is not allowed for ${cfg.issuer} (allowed: ${cfg.algorithms.join(', ')})`);
    }
    if (cfg.tokenTypes) {
      const typ = typeof header.typ === 'string' ? normalizeType(header.typ) : undefined;
      if (!typ || !cfg.tokenTypes.some((t) => normalizeType(t) === typ)) {
        throw new AuthFailure('TOKEN_TYPE_INVALID', `typ ${JSON.stringify(header.typ)} is not one of ${cfg.tokenTypes.join(', ')}`);
      }
    }
    const claims = await this.#verifySignatureAndClaims(token, keys, nowMs);
    // jose checks iat only against a max age; a token issued in the future is not valid yet.
    if (typeof claims.iat === 'number' && claims.iat > nowMs / 1000 + cfg.leewaySeconds) {
      throw new AuthFailure('TOKEN_NOT_YET_VALID', `iat is ${Math.round(claims.iat - nowMs / 1000)}s in the future`);
    }
    return { issuer: cfg, claims, exp: claims.exp };
  }

  async #verifySignatureAndClaims(token: string, keys: IssuerKeys, nowMs: number): Promise<JWTPayload> {
    const cfg = keys.config;
    const options = {
      issuer: cfg.issuer,
      audience: [...cfg.audiences],
      algorithms: [...cfg.algorithms],
      clockTolerance: cfg.leewaySeconds,
      requiredClaims: cfg.allowMissingExp ? [] : ['exp'],
      currentDate: new Date(nowMs),
    };
    try {
      return (await jwtVerify(token, keys.getKey, options)).payload;
    } catch (err) {
      // A key rotated under the same kid verifies only after a reload: allow one, off cooldown.
      if (err instanceof joseErrors.JWSSignatureVerificationFailed) {
        const jwks = await keys.jwks();
        if (!jwks.coolingDown) {
          try {
            await jwks.reload();
            return (await jwtVerify(token, keys.getKey, options)).payload;
          } catch (retryErr) {
            throw translate(retryErr, cfg);
          }
        }
      }
      throw translate(err, cfg);
    }
  }
}

/** Maps jose's errors onto our stable codes, keeping jose's message as the logged reason. */
function translate(err: unknown, cfg: IssuerConfig): AuthFailure {
  if (err instanceof AuthFailure) return err;
  const code = (err as { code?: unknown })?.code;
  const message = err instanceof Error ? err.message : String(err);
  let ours: FailureCode = 'INTERNAL';
  switch (code) {
    case 'ERR_JWT_EXPIRED':
      ours = 'TOKEN_EXPIRED';
      break;
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED': {
      const { claim, reason } = err as joseErrors.JWTClaimValidationFailed;
      if (claim === 'exp' && reason === 'missing') ours = 'TOKEN_EXP_MISSING';
      else if (claim === 'aud') ours = 'TOKEN_AUDIENCE_INVALID';
      else if (claim === 'nbf') ours = 'TOKEN_NOT_YET_VALID';
      else if (claim === 'iss') ours = 'TOKEN_ISSUER_UNKNOWN';
      else ours = 'TOKEN_CLAIMS_INVALID';
      break;
    }
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      ours = 'TOKEN_ALG_NOT_ALLOWED';
      break;
    case 'ERR_JWKS_NO_MATCHING_KEY':
      ours = 'TOKEN_KEY_UNKNOWN';
      break;
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
      ours = 'TOKEN_SIGNATURE_INVALID';
      break;
    case 'ERR_JWS_INVALID':
    case 'ERR_JWT_INVALID':
    case 'ERR_JOSE_NOT_SUPPORTED':
      ours = 'TOKEN_MALFORMED';
      break;
    case 'ERR_JWKS_TIMEOUT':
    case 'ERR_JWKS_INVALID':
      ours = 'ISSUER_UNAVAILABLE';
      break;
    default:
      // Fetch failures surface as plain errors (TypeError "fetch failed") or jose's generic one.
      if (err instanceof TypeError || code === 'ERR_JOSE_GENERIC') ours = 'ISSUER_UNAVAILABLE';
  }
  const reason = ours === 'ISSUER_UNAVAILABLE' ? `keys of ${cfg.issuer} unavailable: ${message}` : message;
  return new AuthFailure(ours, reason, { cause: err });
}
