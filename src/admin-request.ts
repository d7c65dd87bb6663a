import { randomBytes } from 'node:crypto';
import { AuthFailure } from './errors.js';
import { decodeNatsJwt, encodeNatsJwt } from './nats-jwt.js';
import { isPublicKey, type NkeySigner, publicKeyObject, verifySignature } from './nkey.js';

/**
 * Administrative requests (revocation) are NATS JWTs signed by an admin user key the
 * configuration lists (`admin.public_keys`): whoever can publish on the admin subject still
 * cannot act without that key. Each is short-lived and used once.
 */

export interface RevokeRequest {
  /** Who asked: the admin key that signed. */
  readonly admin: string;
  /** When it was signed: the revocation takes effect as of then (a replay changes nothing). */
  readonly iat: number;
  readonly issuer: string | undefined;
  readonly subject: string | undefined;
}

/** How long a signed request stays valid, and how far our clocks may disagree. */
const MAX_AGE_S = 60;
const SKEW_S = 30;
const TYPE = 'oidc_callout_revoke';

export function signRevokeRequest(target: { issuer?: string; subject?: string }, signer: NkeySigner, nowSeconds: number): string {
  // A nonce makes two requests for the same identity in one second two requests (jti is a content hash).
  return encodeNatsJwt(
    {
      iss: signer.publicKey,
      iat: nowSeconds,
      exp: nowSeconds + MAX_AGE_S,
      type: TYPE,
      nonce: randomBytes(12).toString('base64url'),
      ...(target.issuer !== undefined ? { issuer: target.issuer } : {}),
      ...(target.subject !== undefined ? { subject: target.subject } : {}),
    },
    signer,
  );
}

/**
 * The request ids a replica has acted on, until they expire: a captured request must not be
 * acted on twice. One per replica, shared across reloads, and by all of its workers (their
 * guard asks the main thread's), since any worker may receive a request.
 */
export interface ReplayGuard {
  /** True when `jti` is new (it is then taken until `untilSeconds`), false when already used. */
  claim(jti: string, untilSeconds: number, nowSeconds: number): Promise<boolean>;
}

/** The replica's ids in this thread. */
export class LocalReplayGuard implements ReplayGuard {
  readonly #seen = new Map<string, number>();

  claimNow(jti: string, untilSeconds: number, nowSeconds: number): boolean {
    for (const [id, until] of this.#seen) if (until < nowSeconds) this.#seen.delete(id);
    if (this.#seen.has(jti)) return false;
    this.#seen.set(jti, untilSeconds);
    return true;
  }

  async claim(jti: string, untilSeconds: number, nowSeconds: number): Promise<boolean> {
    return this.claimNow(jti, untilSeconds, nowSeconds);
  }
}

/** Verifies a revoke request: signature by a listed admin key, fresh, not seen before. */
export class RevokeVerifier {
  readonly #admins: ReadonlySet<string>;
  readonly #replays: ReplayGuard;

  constructor(adminKeys: readonly string[], replays: ReplayGuard = new LocalReplayGuard()) {
    this.#admins = new Set(adminKeys);
    this.#replays = replays;
  }

  async verify(data: Uint8Array, nowSeconds: number): Promise<RevokeRequest> {
    const decoded = decodeNatsJwt(Buffer.from(data).toString('utf8'));
    if (typeof decoded === 'string') throw new AuthFailure('ADMIN_REQUEST_INVALID', decoded);
    const c = decoded.claims;
    const iss = c.iss;
    if (typeof iss !== 'string' || !isPublicKey(iss, 'user') || !this.#admins.has(iss)) {
      throw new AuthFailure('ADMIN_REQUEST_INVALID', 'not signed by a key listed in admin.public_keys');
    }
    if (!verifySignature(publicKeyObject(iss, 'user'), decoded.signingInput, decoded.signature)) {
      throw new AuthFailure('ADMIN_REQUEST_INVALID', `the signature does not verify with ${iss}`);
    }
    if (c.type !== TYPE) throw new AuthFailure('ADMIN_REQUEST_INVALID', 'not a revoke request');
    const { iat, exp, jti } = c;
    if (typeof iat !== 'number' || typeof exp !== 'number' || typeof jti !== 'string')
      throw new AuthFailure('ADMIN_REQUEST_INVALID', 'iat, exp and jti are required');
    if (exp - iat > MAX_AGE_S || iat > nowSeconds + SKEW_S || exp < nowSeconds - SKEW_S) {
      throw new AuthFailure('ADMIN_REQUEST_INVALID', 'the request is expired, not yet valid, or valid for too long');
    }
    if (!(await this.#replays.claim(jti, exp + SKEW_S, nowSeconds))) throw new AuthFailure('ADMIN_REQUEST_INVALID', 'the request was already used (replay)');
    for (const k of ['issuer', 'subject'] as const) {
      if (k in c && (typeof c[k] !== 'string' || c[k] === '')) throw new AuthFailure('ADMIN_REQUEST_INVALID', `${k} is present but not a non-empty string`);
    }
    const issuer = c.issuer as string | undefined;
    const subject = c.subject as string | undefined;
    // Revoking everyone is not a request this interface takes.
    if (!issuer && !subject) throw new AuthFailure('ADMIN_REQUEST_INVALID', 'name an issuer, a subject or both');
    return { admin: iss, iat, issuer, subject };
  }
}
