import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RequestQueue, type Queued, type ShedReason } from '../../src/request-queue.js';

function queue(lifoAfterMs = 100) {
  const q = new RequestQueue<string>({ lifoAfterMs });
  const shed: [string, ShedReason][] = [];
  const onShed = (e: Queued<string>, r: ShedReason) => shed.push([e.item, r]);
  return { q, shed, next: (now: number, cost = 1) => q.next(now, cost, onShed)?.item };
}

describe('request queue', () => {
  it('serves in arrival order while it keeps up', () => {
    const { q, next, shed } = queue();
    q.push({ item: 'a', receivedMs: 0, deadlineMs: 2000 });
    q.push({ item: 'b', receivedMs: 10, deadlineMs: 2010 });
    assert.equal(next(20), 'a');
    assert.equal(next(20), 'b');
    assert.equal(next(20), undefined);
    assert.deepEqual(shed, []);
  });

  it('serves the newest first once the oldest has waited past lifoAfterMs', () => {
    const { q, next } = queue();
    for (let i = 0; i < 5; i++) q.push({ item: `r${i}`, receivedMs: i * 10, deadlineMs: 2000 + i * 10 });
    assert.equal(next(150), 'r4');
    assert.equal(next(150), 'r3');
    // Caught up to requests younger than the threshold: back to arrival order.
    assert.equal(next(100), 'r0');
  });

  it('sheds expired requests without serving them, even from the old end in LIFO mode', () => {
    const { q, next, shed } = queue();
    q.push({ item: 'dead', receivedMs: 0, deadlineMs: 500 });
    q.push({ item: 'alive', receivedMs: 400, deadlineMs: 2400 });
    assert.equal(next(600), 'alive');
    assert.deepEqual(shed, [['dead', 'expired']]);
  });

  it('sheds a request whose answer cannot arrive before its deadline (borderline included)', () => {
    const { q, next, shed } = queue(10_000);
    q.push({ item: 'tight', receivedMs: 0, deadlineMs: 1049 });
    q.push({ item: 'exact', receivedMs: 0, deadlineMs: 1050 });
    // now 950, answering costs 100 ms (our work plus the reply lane): the answer of 'exact'
    // lands right at its deadline, which still counts; 'tight' would land 1 ms late.
    assert.equal(next(950, 100), 'exact');
    assert.deepEqual(shed, [['tight', 'too_late']]);
  });

  it('never sheds a request whose deadline is unknown', () => {
    const { q, next, shed } = queue();
    q.push({ item: 'unknown', receivedMs: 0, deadlineMs: undefined });
    assert.equal(next(1_000_000, 1_000_000), 'unknown');
    assert.deepEqual(shed, []);
  });

  it('hands out its oldest entry for the owner to bound it', () => {
    const { q, next } = queue();
    q.push({ item: 'a', receivedMs: 0, deadlineMs: 2000 });
    q.push({ item: 'b', receivedMs: 1, deadlineMs: 2000 });
    q.push({ item: 'c', receivedMs: 2, deadlineMs: 2000 });
    assert.equal(q.oldest()?.item, 'a');
    assert.equal(q.shiftOldest()?.item, 'a');
    assert.equal(q.length, 2);
    assert.equal(next(3), 'b');
    assert.equal(next(3), 'c');
    assert.equal(q.shiftOldest(), undefined);
  });

  it('stays correct across many pushes and takes from both ends (compaction)', () => {
    const { q, next } = queue(1_000_000);
    for (let i = 0; i < 5000; i++) q.push({ item: String(i), receivedMs: i, deadlineMs: undefined });
    for (let i = 0; i < 3000; i++) assert.equal(next(5000), String(i));
    assert.equal(q.oldestWaitMs(5000), 2000);
    const { q: lifo, next: nextLifo } = queue(0);
    for (let i = 0; i < 5000; i++) lifo.push({ item: String(i), receivedMs: i, deadlineMs: undefined });
    assert.equal(nextLifo(6000), '4999');
    assert.equal(lifo.clear().length, 4999);
    assert.equal(lifo.length, 0);
  });
});
