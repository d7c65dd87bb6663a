/**
 * The request clock's step-back handling (request-clock.ts, service.ts admit/shed).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Metrics } from '../../src/metrics.js';
import { RequestClock } from '../../src/request-clock.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { fakeClockService } from '../helpers/fake-nats.js';

const enc = (s: string) => new TextEncoder().encode(s);
const seconds = (ms: number) => Math.floor(ms / 1000);

describe('request clock', () => {
  it('a quiet system relearns a server clock that stepped back 3 s within a couple of connects, not after 10', async () => {
    const metrics = new Metrics('test');
    const { service, clock } = fakeClockService({ observer: metrics });
    const steps = async () => (await metrics.registry.getSingleMetric('oidc_callout_clock_steps_total')?.get())?.values[0]?.value ?? 0;
    const server = fakeServer();
    let skew = 0; // how far the server's clock is behind ours (ms)
    const connect = () => service.handle(enc(authRequestJwt(server, { now: seconds(clock.mono - skew), connectOpts: {} })), undefined);
    // Calibration: a few connects spread over 3 s.
    for (let i = 0; i < 10; i++) {
      assert.ok(await connect(), 'answered while the clocks agree');
      clock.advance(317);
    }
    assert.equal(await steps(), 0, 'no step while the clocks agree');
    // An hour of silence, then NTP steps the server clock back by 3 s. Clients connect now and
    // then (one attempt every 30 s, as a quiet system sees them).
    clock.advance(3_600_000);
    skew = 3_000;
    let dropped = 0;
    for (let attempt = 0; attempt < 20; attempt++) {
      if (await connect()) break;
      dropped++;
      clock.advance(30_000);
    }
    assert.ok(dropped <= 2, `${dropped} consecutive connects dropped unanswered (${(dropped * 30) / 60} min) on an idle service after a 3 s clock step`);
    // After an hour the offset was forgotten anyway: the new one is learnt without a step.
    assert.equal(await steps(), 0, 'no step counted: the silence made the old offset stale first');
  });

  it('does not mistake an upstream backlog (delay growing no faster than time) for a clock step and stop shedding', () => {
    const clock = new RequestClock();
    const SERVER = 'NSERVER';
    const budget = 2;
    // Mirrors service.ts: admit estimates and notes every arrival; only served requests
    // (not expired on arrival) are verified and observed.
    const arrive = (issuedMs: number, receivedMs: number) => {
      const iat = seconds(issuedMs);
      const t = clock.estimate(SERVER, iat, iat + budget, receivedMs)!;
      const expired = t.deadlineMs <= receivedMs;
      clock.noteArrival(SERVER, expired, receivedMs);
      if (!expired) clock.observe(SERVER, iat, receivedMs);
      return t;
    };
    let now = 1_000_000_000_000;
    // 3 s of prompt delivery: calibrated.
    for (const end = now + 3_000; now < end; now += 5) arrive(now, now + 1);
    // Storm: the server issues 2,000 requests/s but they reach us at 1,000/s (a FIFO backlog in
    // the server's send queue): the delay grows by 0.5 s every second, for 8 s.
    const start = now;
    let issued = now;
    for (; now < start + 8_000; now += 1) {
      arrive(issued, now);
      issued += 0.5;
    }
    // A request arriving now was issued (now - issued) ms ago: 4 s, twice its budget.
    const age = now - issued;
    const t = clock.estimate(SERVER, seconds(issued), seconds(issued) + budget, now)!;
    assert.ok(
      t.deadlineMs <= now,
      `a request ${Math.round(age)} ms old (budget 2 s) is estimated alive: deadline in ${Math.round(t.deadlineMs - now)} ms, calibrated=${t.calibrated}`,
    );
  });

  it('a request stamped before a step back, verified from the queue after the step was seen, does not teach the old offset again', () => {
    const clock = new RequestClock();
    const SERVER = 'NSERVER';
    let now = 1_000_000_000_000;
    // Calibrated: prompt arrivals for 3 s.
    for (const end = now + 3_000; now < end; now += 50) {
      clock.noteArrival(SERVER, seconds(now), now);
      clock.observe(SERVER, seconds(now), now + 1);
    }
    // A request that arrives now waits in the queue (a backlog) ...
    const queued = { iat: seconds(now), receivedMs: now };
    now += 100;
    // ... while the server's clock steps back 5 s: its next arrivals show the step.
    const skew = 5_000;
    let stepped = false;
    for (let i = 0; i < 5; i++, now += 20) stepped = clock.noteArrival(SERVER, seconds(now - skew), now) || stepped;
    assert.ok(stepped, 'the step is seen');
    // A fresh request of the new clock is verified and teaches the new offset; then the queued one is served (verified).
    clock.observe(SERVER, seconds(now - skew), now);
    clock.observe(SERVER, queued.iat, queued.receivedMs);
    now += 300;
    const fresh = clock.estimate(SERVER, seconds(now - skew), seconds(now - skew) + 2, now)!;
    assert.ok(
      fresh.deadlineMs > now,
      `a fresh request (2 s budget) is estimated ${Math.round(now - fresh.issuedMs)} ms old: dead on arrival, as every request of this server would be until the offset is forgotten`,
    );
  });
});
