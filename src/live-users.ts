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
  /** Identities that lost entries to the bound (not to expiry): their record may be incomplete. */
  readonly #overflowed = new LRUCache<string, true>({ max: 10_000 });

  constructor(max = 100_000) {
    this.#lru = new LRUCache({
      max,
      ttlAutopurge: false,
      dispose: (user, _key, reason) => {
        if (reason === 'evict') this.#overflowed.set(identity(user.issuer, user.subject), true);
      },
    });
  }

  record(userNkey: string, user: LiveUser, expiresMs: number, nowMs: number): void {
    const ttl = expiresMs - nowMs;
    if (ttl >= 1) this.#lru.set(userNkey, user, { ttl });
  }

  /** The live users of `issuer` (and `subject`, when given). */
  matching(issuer: string | undefined, subject: string | undefined): (LiveUser & { readonly userNkey: string })[] {
    const found: (LiveUser & { readonly userNkey: string })[] = [];
    for (const [userNkey, user] of this.#lru.entries()) {
      if ((issuer === undefined || user.issuer === issuer) && (subject === undefined || user.subject === subject)) found.push({ ...user, userNkey });
    }
    return found;
  }

  /** Forgets a connection (kicked, or found closed). */
  forget(userNkey: string): void {
    this.#lru.delete(userNkey);
  }

  /** Whether entries of matching identities were pushed out by the bound (some connections may be missing). */
  incomplete(issuer: string | undefined, subject: string | undefined): boolean {
    for (const key of this.#overflowed.keys()) {
      const [i, s] = JSON.parse(key) as [string, string];
      if ((issuer === undefined || i === issuer) && (subject === undefined || s === subject)) return true;
    }
    return false;
  }

  get size(): number {
    return this.#lru.size;
  }
}

function identity(issuer: string, subject: string): string {
  return JSON.stringify([issuer, subject]);
}
