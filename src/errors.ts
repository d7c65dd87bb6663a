/**
 * Every way an authorization can fail, with a stable code and what the service does about it.
 *
 * - `reject`: answer with a signed error response; nats-server closes the client at once with
 *   `Authorization Violation`.
 * - `abort`: send no answer at all. Used when the request itself cannot be trusted (we must not
 *   sign anything bound to keys we could not verify) or when the server has already given up.
 *   The client then waits for the server's auth timeout.
 *
 * The message sent to nats-server is always generic; the real reason goes only to our log.
 */
export const FAILURES = {
  REQUEST_MALFORMED: { outcome: 'abort', summary: 'the authorization request is not a well-formed request JWT' },
  REQUEST_PLAINTEXT: { outcome: 'abort', summary: 'an xkey is configured but the request was not encrypted' },
  REQUEST_DECRYPT_FAILED: { outcome: 'abort', summary: 'the encrypted request could not be opened with our xkey' },
  REQUEST_XKEY_MISMATCH: { outcome: 'abort', summary: 'the server xkey inside the request differs from the Nats-Server-Xkey header' },
  REQUEST_SIGNATURE_INVALID: { outcome: 'abort', summary: 'the request is not signed by the server key it names' },
  REQUEST_CLAIMS_INVALID: { outcome: 'abort', summary: 'the request has a wrong audience, issuer, type, version or user key' },
  REQUEST_EXPIRED: { outcome: 'abort', summary: 'the request deadline passed before it was processed; the server has given up on it' },
  REQUEST_TOO_LATE: { outcome: 'abort', summary: 'the answer could not reach the server before the request deadline; dropped without work' },
  REQUEST_QUEUE_FULL: { outcome: 'abort', summary: 'the request queue was full; the oldest request was dropped without work' },
  TOKEN_MISSING: { outcome: 'reject', summary: 'the client sent no token in any configured CONNECT field' },
  TOKEN_TOO_LARGE: { outcome: 'reject', summary: 'the token is larger than token.max_bytes' },
  TOKEN_MALFORMED: { outcome: 'reject', summary: 'the token is not a compact JWS with a JSON header and claims' },
  TOKEN_ENCRYPTED: { outcome: 'reject', summary: 'the token is a JWE (encrypted); only signed tokens are accepted' },
  TOKEN_ISSUER_UNKNOWN: { outcome: 'reject', summary: "the token's iss is not a configured issuer" },
  TOKEN_ALG_NOT_ALLOWED: { outcome: 'reject', summary: "the token's alg is not in the issuer's algorithms allowlist" },
  TOKEN_KEY_UNKNOWN: { outcome: 'reject', summary: "no key in the issuer's JWKS matches the token's kid and alg" },
  TOKEN_SIGNATURE_INVALID: { outcome: 'reject', summary: "the token's signature does not verify with the issuer's key" },
  TOKEN_EXPIRED: { outcome: 'reject', summary: 'the token is expired (exp, after leeway)' },
  TOKEN_NOT_YET_VALID: { outcome: 'reject', summary: 'the token is not valid yet (nbf or iat in the future, after leeway)' },
  TOKEN_EXP_MISSING: { outcome: 'reject', summary: 'the token has no exp and the issuer does not allow that' },
  TOKEN_AUDIENCE_INVALID: { outcome: 'reject', summary: "the token's aud contains none of the issuer's audiences" },
  TOKEN_TYPE_INVALID: { outcome: 'reject', summary: "the token's typ header is not one of the issuer's token_types" },
  TOKEN_REVOKED: { outcome: 'reject', summary: "the token's identity was revoked (oidc-callout revoke) after the token was issued" },
  TOKEN_CLAIMS_INVALID: { outcome: 'reject', summary: 'a registered claim has the wrong type (e.g. exp not a number)' },
  ISSUER_UNAVAILABLE: { outcome: 'reject', summary: "the issuer's discovery document or JWKS could not be fetched" },
  POLICY_REQUIRED_CLAIMS: { outcome: 'reject', summary: "the token does not meet its issuer's required_claims (checked before any rule)" },
  POLICY_NO_MATCH: { outcome: 'reject', summary: 'no policy rule matches the verified claims' },
  POLICY_CONNECTION_REFUSED: {
    outcome: 'reject',
    summary: "the connection's type or client address is outside what the matching rule allows (connection_types, source_networks)",
  },
  POLICY_ACCOUNT_UNMAPPED: { outcome: 'reject', summary: "the claim that chooses the rule's account holds no value, several values, or one not in its table" },
  POLICY_CLAIM_UNSAFE: {
    outcome: 'reject',
    summary: 'a claim used in a subject template is missing, not a single plain subject token, or makes a reserved or malformed subject token',
  },
  POLICY_CLAIM_SHAPE: { outcome: 'reject', summary: 'a claim a condition reads holds an object or a nested list instead of values it can compare' },
  POLICY_CLAIM_AMBIGUOUS: { outcome: 'reject', summary: 'a dotted claim path names two claims (a flat key beside a nested one)' },
  POLICY_CLAIM_TOO_LONG: { outcome: 'reject', summary: 'a claim value a glob or regex condition reads is longer than 1024 characters' },
  ADMIN_REQUEST_INVALID: {
    outcome: 'reject',
    summary: 'an administrative request (revoke) is not signed by an admin key, is stale or replayed, or names nobody',
  },
  OVERLOADED: { outcome: 'reject', summary: 'too many requests in flight; answered at once rather than queued past the timeout' },
  INTERNAL: { outcome: 'reject', summary: 'an unexpected error inside the service' },
} as const satisfies Record<string, { outcome: 'reject' | 'abort'; summary: string }>;

export type FailureCode = keyof typeof FAILURES;
export type Outcome = 'reject' | 'abort';

/** The message nats-server receives for every rejection: it must not help an attacker. */
export const GENERIC_REJECTION = 'not authorized';

/** A refused authorization: `code` is stable, `reason` is detail for our log (never a secret). */
export class AuthFailure extends Error {
  readonly code: FailureCode;
  readonly outcome: Outcome;
  /** Whose verified token was refused (policy, revocation): set once the token is known good. */
  identity: { readonly issuer: string; readonly subject: string } | undefined;
  constructor(code: FailureCode, reason: string, options?: { cause?: unknown }) {
    super(reason, options);
    this.name = 'AuthFailure';
    this.code = code;
    this.outcome = FAILURES[code].outcome;
  }
}

/** A configuration problem found at load or check time; `path` names the offending key. */
export class ConfigError extends Error {
  readonly code = 'CONFIG_INVALID';
  readonly path: string;
  constructor(path: string, message: string, options?: { cause?: unknown }) {
    super(path ? `${path}: ${message}` : message, options);
    this.name = 'ConfigError';
    this.path = path;
  }
}

/**
 * A value from a request in a failure's reason: JSON-quoted and cut to `max` characters. Whoever
 * may publish on the request subject chooses it, and a reason is logged whole.
 */
export function quoted(value: unknown, max = 120): string {
  const s = JSON.stringify(value) ?? String(value);
  return s.length > max ? `${s.slice(0, max)}...` : s;
}

/** Wraps anything thrown into an AuthFailure so the service can always decide and log. */
export function asAuthFailure(err: unknown): AuthFailure {
  if (err instanceof AuthFailure) return err;
  const message = err instanceof Error ? err.message : String(err);
  return new AuthFailure('INTERNAL', message, { cause: err });
}
