import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { LatencyWatch } from '../../src/latency-watch.js';

describe('latency watch (readiness)', () => {
  const make = () => {
    const clock = { ms: 1_000_000 };
    return { clock, watch: new LatencyWatch(1, () => clock.ms) };
  };

  it('is ready while decisions are fast, and with too few requests to tell', () => {
    const { watch } = make();
    for (let i = 0; i < 19; i++) watch.answered(5);
    assert.deepEqual(watch.problems(), [], '19 slow answers are too few to judge');
    const fast = make();
    for (let i = 0; i < 1000; i++) fast.watch.answered(0.002);
    assert.deepEqual(fast.watch.problems(), []);
  });

  it('reports slow answers above 5 % of the window, and recovers once the window has passed', () => {
    const { clock, watch } = make();
    for (let i = 0; i < 95; i++) watch.answered(0.01);
    for (let i = 0; i < 5; i++) watch.answered(1.5);
    assert.deepEqual(watch.problems(), [], 'exactly 5 % is still ready');
    watch.answered(1.5);
    const [problem] = watch.problems();
    assert.match(problem ?? '', /of 101 requests in the last 30s, 6 were answered after more than 1s and 0 were dropped/);
    clock.ms += 30_000;
    assert.deepEqual(watch.problems(), [], 'the slow second is out of the window');
  });

  it('counts dropped requests with the slow ones', () => {
    const { clock, watch } = make();
    for (let i = 0; i < 50; i++) {
      watch.answered(0.01);
      clock.ms += 100;
    }
    for (let i = 0; i < 10; i++) watch.shed();
    assert.match(watch.problems()[0] ?? '', /of 60 requests .* 0 were answered after more than 1s and 10 were dropped/);
  });

  it('forgets a bucket reused for a later second (the window is a ring)', () => {
    const { clock, watch } = make();
    for (let i = 0; i < 40; i++) watch.answered(3);
    assert.equal(watch.problems().length, 1);
    clock.ms += 60_000; // same slot of the ring, two windows later
    for (let i = 0; i < 40; i++) watch.answered(0.01);
    assert.deepEqual(watch.problems(), []);
  });

  it('only decisions with an answer time count as answered', () => {
    const { watch } = make();
    for (let i = 0; i < 40; i++) watch.decided('abort', 'REQUEST_EXPIRED', undefined, undefined);
    assert.deepEqual(watch.problems(), []);
    for (let i = 0; i < 40; i++) watch.decided('allow', undefined, false, 2);
    assert.equal(watch.problems().length, 1);
  });
});
