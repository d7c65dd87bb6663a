import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type CachedDecision, DecisionCache } from '../../src/cache.js';

const entry = (tokenExp: number | undefined): CachedDecision => ({ issuer: 'i', subject: 's', claims: {}, grant: undefined, tokenExp });

describe('decision cache', () => {
  it("keeps an entry for ttl or until the token's exp, whichever comes first, never refreshed by use", () => {
    const clock = { t: 1_000_000, now: () => clock.t };
    const wall = 1_700_000_000_000;
    const cache = new DecisionCache(10, 60_000, clock);
    cache.set('long', entry(wall / 1000 + 3600), wall); // token valid 1 h: ttl (60 s) decides
    cache.set('short', entry(wall / 1000 + 30), wall); // token valid 30 s: its exp decides
    cache.set('no-exp', entry(undefined), wall);
    cache.set('expired', entry(wall / 1000 - 1), wall); // already past exp: never stored
    assert.equal(cache.size, 3);
    clock.t += 29_000;
    assert.ok(cache.get('short') && cache.get('long'));
    clock.t += 2_000; // 31 s
    assert.equal(cache.get('short'), undefined);
    assert.ok(cache.get('long'), 'still within ttl');
    clock.t += 28_000; // 59 s; the gets above did not refresh it
    assert.ok(cache.get('long'));
    clock.t += 2_000; // 61 s
    assert.equal(cache.get('long'), undefined);
    assert.equal(cache.get('no-exp'), undefined);
  });

  it('is off with no entries or no ttl, and evicts the least recently used beyond max_entries', () => {
    const off = new DecisionCache(0, 60_000);
    off.set('a', entry(undefined), Date.now());
    assert.equal(off.get('a'), undefined);
    const noTtl = new DecisionCache(10, 0);
    noTtl.set('a', entry(undefined), Date.now());
    assert.equal(noTtl.get('a'), undefined);
    const small = new DecisionCache(2, 60_000);
    small.set('a', entry(undefined), Date.now());
    small.set('b', entry(undefined), Date.now());
    small.get('a');
    small.set('c', entry(undefined), Date.now());
    assert.ok(small.get('a') && small.get('c'));
    assert.equal(small.get('b'), undefined);
  });

  it('keys a token by its SHA-256, never the token itself', () => {
    const key = DecisionCache.key('header.claims.signature');
    assert.match(key, /^[A-Za-z0-9+/]{43}=$/);
    assert.ok(!key.includes('claims'));
  });
});
