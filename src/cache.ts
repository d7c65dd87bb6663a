import { hash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import type { Grant } from './policy.js';

/**
 * A verified token: enough to decide and issue a user JWT without verifying it again. `grant`
 * is kept when the policy does not look at the connection (the same token always gets it).
 */
export interface CachedDecision {
  readonly issuer: string;
  readonly subject: string;
  readonly claims: Readonly<Record<string, unknown>>;
  readonly grant: Grant | undefined;
  /** The token's `exp` (seconds), undefined when the issuer allows tokens without one. */
  readonly tokenExp: number | undefined;
}

/**
 * The fast path for reconnect storms: decisions for tokens already verified, keyed by the
 * token's SHA-256 (tokens themselves are never kept). An entry lives at most `ttlMs` and never
 * past the token's `exp`; entries are never refreshed on access, and only verified tokens are cached.
 * A new cache is built on every configuration load, so reloads flush it.
 */
export class DecisionCache {
  readonly #lru: LRUCache<string, CachedDecision> | undefined;
  readonly #ttlMs: number;

  /** `clock` is the monotonic clock entries age by (tests inject one; default performance). */
  constructor(maxEntries: number, ttlMs: number, clock?: { now(): number }) {
    this.#ttlMs = ttlMs;
    this.#lru =
      maxEntries > 0 && ttlMs > 0
        ? new LRUCache({ max: maxEntries, ttl: ttlMs, ttlAutopurge: false, updateAgeOnGet: false, ...(clock ? { perf: clock, ttlResolution: 0 } : {}) })
        : undefined;
  }

  static key(token: string): string {
    return hash('sha256', token, 'base64');
  }

  get(key: string): CachedDecision | undefined {
    return this.#lru?.get(key);
  }

  set(key: string, decision: CachedDecision, nowMs: number): void {
    if (!this.#lru) return;
    const untilExp = decision.tokenExp === undefined ? this.#ttlMs : decision.tokenExp * 1000 - nowMs;
    const ttl = Math.min(this.#ttlMs, untilExp);
    if (ttl >= 1) this.#lru.set(key, decision, { ttl });
  }

  /** Drops every decision for `issuer` (and `subject`, when given); returns how many. */
  dropWhere(issuer: string | undefined, subject: string | undefined): number {
    if (!this.#lru) return 0;
    const keys: string[] = [];
    for (const [key, d] of this.#lru.entries()) {
      if ((issuer === undefined || d.issuer === issuer) && (subject === undefined || d.subject === subject)) keys.push(key);
    }
    for (const key of keys) this.#lru.delete(key);
    return keys.length;
  }

  get size(): number {
    return this.#lru?.size ?? 0;
  }

  clear(): void {
    this.#lru?.clear();
  }
}
