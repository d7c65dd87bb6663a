import { LRUCache } from 'lru-cache';

/** Who a live connection is: what revocation needs to find and disconnect it. */
export interface LiveUser {
  readonly issuer: string;
  readonly subject: string;
  /** The nats-server that asked (its public key) and its id for the connection. */
  readonly serverId: string;
  readonly clientId: number | undefined;
}

/**
 * The connections this replica let in, by their per-connection user key, until their user JWT
 * expires: bounded (the least recently admitted are forgotten first), kept across reloads.
 */
export class LiveUsers {
  readonly #lru: LRUCache<string, LiveUser>;

  constructor(max = 100_000) {
    this.#lru = new LRUCache({ max, ttlAutopurge: false });
  }

  record(userNkey: string, user: LiveUser, expiresMs: number, nowMs: number): void {
    const ttl = expiresMs - nowMs;
    if (ttl >= 1) this.#lru.set(userNkey, user, { ttl });
  }

  /** The live users of `issuer` (and `subject`, when given), forgotten as they are returned. */
  take(issuer: string | undefined, subject: string | undefined): (LiveUser & { readonly userNkey: string })[] {
    const found: (LiveUser & { readonly userNkey: string })[] = [];
    for (const [userNkey, user] of this.#lru.entries()) {
      if ((issuer === undefined || user.issuer === issuer) && (subject === undefined || user.subject === subject)) found.push({ ...user, userNkey });
    }
    for (const u of found) this.#lru.delete(u.userNkey);
    return found;
  }

  get size(): number {
    return this.#lru.size;
  }
}
