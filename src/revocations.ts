import { LRUCache } from 'lru-cache';

/**
 * Identities revoked on this replica: their tokens issued up to the revocation are refused, so a
 * disconnected user cannot come straight back with the token it still holds. Bounded in count,
 * and each entry is kept for `keepMs` (longer than any token an IdP issues for NATS should live).
 */
export class Revocations {
  readonly #lru: LRUCache<string, number>;

  constructor(max = 10_000, keepMs = 24 * 3_600_000) {
    this.#lru = new LRUCache({ max, ttl: keepMs, ttlAutopurge: false });
  }

  /** Revokes `subject` of `issuer` (every subject when undefined) as of `atSeconds`. */
  revoke(issuer: string | undefined, subject: string | undefined, atSeconds: number): void {
    this.#lru.set(key(issuer, subject), atSeconds);
  }

  /**
   * The revocation time that refuses a token of this identity issued at `iat`, if any. `skew` is
   * how far the issuer's clock may be ahead of ours (its leeway): a token stamped up to that much
   * after the revocation may still have been issued before it, so it is refused too.
   */
  revokedAt(issuer: string, subject: string, iat: number | undefined, skew: number): number | undefined {
    for (const k of [key(issuer, subject), key(issuer, undefined), key(undefined, subject)]) {
      const at = this.#lru.get(k);
      // A token without iat cannot show it was issued after the revocation.
      if (at !== undefined && (iat === undefined || iat <= at + skew)) return at;
    }
    return undefined;
  }
}

function key(issuer: string | undefined, subject: string | undefined): string {
  return JSON.stringify([issuer ?? null, subject ?? null]);
}
