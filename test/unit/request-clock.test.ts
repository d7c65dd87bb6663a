import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RequestClock } from '../../src/request-clock.js';

const SERVER = 'NSERVER';
const BUDGET_S = 2;

/**
 * A simulated nats-server whose clock is `skewMs` behind ours: `issue(at)` stamps a request
 * issued at our time `at` the way the server does (whole seconds of its own clock).
 */
function server(skewMs: number) {
  return {
    stamp(atOurMs: number) {
      const iat = Math.floor((atOurMs - skewMs) / 1000);
      return { iat, exp: iat + BUDGET_S };
    },
  };
}

/** Feeds `clock` a verified request issued at `issued` and received `delay` ms later. */
function learn(clock: RequestClock, srv: ReturnType<typeof server>, issued: number, delay: number): void {
  clock.observe(SERVER, srv.stamp(issued).iat, issued + delay);
}

/** A steady stream of promptly delivered requests from `from` to `to` (ours, ms). */
function steady(clock: RequestClock, srv: ReturnType<typeof server>, from: number, to: number, delay = 1, every = 37): void {
  for (let t = from; t < to; t += every) learn(clock, srv, t, delay);
}

describe('request clock', () => {
  it('takes a request from an unknown server as fresh, trusting its clock within 10 s', () => {
    const clock = new RequestClock();
    const srv = server(0);
    const received = 1_000_000_500;
    const fresh = clock.estimate(SERVER, srv.stamp(received).iat, srv.stamp(received).exp, received)!;
    assert.equal(fresh.calibrated, false);
    assert.equal(fresh.ageOnArrivalMs, 0);
    assert.equal(fresh.deadlineMs, received + 2000);
    // 8 s behind our clock: could be skew, still answered.
    const skewed = srv.stamp(received - 8000);
    assert.equal(clock.estimate(SERVER, skewed.iat, skewed.exp, received)!.deadlineMs, received + 2000);
    // 30 s old: no plausible skew explains it.
    const stale = srv.stamp(received - 30_000);
    const t = clock.estimate(SERVER, stale.iat, stale.exp, received)!;
    assert.ok(t.deadlineMs <= received, `stale request deadline ${t.deadlineMs - received}ms from now`);
  });

  it('learns a skewed server clock and sees fresh requests as fresh', () => {
    const clock = new RequestClock();
    const srv = server(-7_300); // the server's clock is 7.3 s ahead of ours
    steady(clock, srv, 1_000_000_000, 1_000_003_000);
    assert.equal(clock.calibrated(SERVER, 1_000_003_000), true);
    const now = 1_000_003_100;
    const s = srv.stamp(now);
    const t = clock.estimate(SERVER, s.iat, s.exp, now + 1)!;
    assert.ok(t.ageOnArrivalMs <= 40, `age ${t.ageOnArrivalMs}`);
    assert.ok(Math.abs(t.deadlineMs - (now + 2000)) <= 40, `deadline off by ${t.deadlineMs - (now + 2000)}ms`);
  });

  it('estimates the age of requests delayed on their way here (a backlog upstream)', () => {
    const clock = new RequestClock();
    const srv = server(2_000);
    steady(clock, srv, 1_000_000_000, 1_000_002_000); // calibrates the offset
    // Now every request reaches us 1.2 s after it was issued (the server or the sockets lag).
    steady(clock, srv, 1_000_002_000, 1_000_005_000, 1_200);
    const issued = 1_000_005_050;
    const s = srv.stamp(issued);
    const t = clock.estimate(SERVER, s.iat, s.exp, issued + 1_200)!;
    assert.ok(Math.abs(t.ageOnArrivalMs - 1_200) <= 40, `age ${t.ageOnArrivalMs}`);
    assert.ok(Math.abs(t.deadlineMs - (issued + 2_000)) <= 40, `deadline off by ${t.deadlineMs - (issued + 2_000)}ms`);
  });

  it('keeps the estimate within what the request stamp allows (borderline: issued at the end of its second)', () => {
    const clock = new RequestClock();
    const srv = server(0);
    steady(clock, srv, 1_000_000_000, 1_000_002_000);
    // iat says second S; if it was issued at S.999 and arrived at once it is fresh: the
    // estimate may not call it older than its stamp allows, nor younger.
    const issued = 1_000_002_999;
    const s = srv.stamp(issued);
    const t = clock.estimate(SERVER, s.iat, s.exp, issued + 1)!;
    assert.ok(t.ageOnArrivalMs <= 1_000 && t.ageOnArrivalMs >= 0);
    assert.ok(t.deadlineMs > issued + 1, 'a just-issued request is never expired on arrival');
  });

  it('sees a request stale beyond its budget as expired on arrival', () => {
    const clock = new RequestClock();
    const srv = server(0);
    steady(clock, srv, 1_000_000_000, 1_000_002_000);
    const issued = 1_000_001_000;
    const s = srv.stamp(issued);
    const t = clock.estimate(SERVER, s.iat, s.exp, issued + 3_500)!;
    assert.ok(t.deadlineMs <= issued + 3_500, `deadline ${t.deadlineMs - (issued + 3_500)}ms after arrival`);
  });

  it('learns only from what it is told was verified, and each server on its own', () => {
    const clock = new RequestClock();
    const srv = server(0);
    // Estimating never teaches: a forged iat far in the future cannot make real requests look old.
    for (let i = 0; i < 100; i++) clock.estimate(SERVER, 9_999_999_999, 10_000_000_001, 1_000_000_000 + i);
    assert.equal(clock.calibrated(SERVER, 1_000_000_000), false);
    steady(clock, srv, 1_000_000_000, 1_000_002_000);
    assert.equal(clock.calibrated(SERVER, 1_000_002_000), true);
    assert.equal(clock.calibrated('NOTHER', 1_000_002_000), false);
  });

  it('relearns the offset at once when a server clock steps back (its stamps jump)', () => {
    const clock = new RequestClock();
    let srv = server(0);
    steady(clock, srv, 1_000_000_000, 1_000_003_000);
    for (let t = 1_000_000_000; t < 1_000_003_000; t += 37) clock.noteArrival(SERVER, srv.stamp(t).iat, t + 1);
    srv = server(5_000); // NTP stepped the server's clock back by 5 s
    const arrive = (at: number) => {
      const st = srv.stamp(at);
      return { st, step: clock.noteArrival(SERVER, st.iat, at + 1) };
    };
    const first = arrive(1_000_003_010);
    assert.ok(clock.estimate(SERVER, first.st.iat, first.st.exp, 1_000_003_011)!.deadlineMs <= 1_000_003_011, 'looks 5 s old at first');
    assert.equal(first.step, false, 'one jumped arrival is only a suspicion');
    assert.equal(arrive(1_000_003_050).step, false);
    assert.equal(arrive(1_000_003_090).step, true, 'confirmed by the third');
    assert.equal(clock.calibrated(SERVER, 1_000_003_091), false);
    const s = srv.stamp(1_000_003_100);
    assert.ok(clock.estimate(SERVER, s.iat, s.exp, 1_000_003_101)!.deadlineMs > 1_000_004_000, 'fresh again once forgotten');
  });

  it('does not take a lone late request for a clock step', () => {
    const clock = new RequestClock();
    const srv = server(0);
    steady(clock, srv, 1_000_000_000, 1_000_003_000);
    const note = (issued: number, at: number) => clock.noteArrival(SERVER, srv.stamp(issued).iat, at);
    for (let t = 1_000_000_000; t < 1_000_003_000; t += 37) note(t, t + 1);
    // Stale and prompt requests interleaved (a replay, or another connection's backlog): never confirmed.
    for (let t = 1_000_003_000; t < 1_000_006_000; t += 20) {
      assert.equal(note(t - 4_000, t), false);
      assert.equal(note(t, t + 1), false);
    }
    assert.equal(clock.calibrated(SERVER, 1_000_006_000), true);
    // Each connection delivers in order: a backlog on connection 1 is not a step seen from connection 0.
    for (let t = 1_000_006_000; t < 1_000_009_000; t += 20) {
      assert.equal(clock.noteArrival(SERVER, srv.stamp(t).iat, t + 1, 0), false);
      assert.equal(clock.noteArrival(SERVER, srv.stamp(t - (t - 1_000_006_000) / 2).iat, t, 1), false);
    }
  });

  it('does not take a growing backlog for a clock step: its requests stay old', () => {
    const clock = new RequestClock();
    const srv = server(0);
    const t0 = 1_000_000_000;
    steady(clock, srv, t0 - 3_000, t0);
    for (let t = t0 - 3_000; t < t0; t += 37) clock.noteArrival(SERVER, srv.stamp(t).iat, t + 1);
    // From t0 the delay before requests reach us grows by 0.5 s per second (a FIFO backlog).
    let last: { deadlineMs: number; at: number } | undefined;
    for (let at = t0; at < t0 + 8_000; at += 20) {
      const delay = (at - t0) / 2;
      const issued = at - delay;
      const st = srv.stamp(issued);
      assert.equal(clock.noteArrival(SERVER, st.iat, at), false, `no step at ${at - t0}`);
      const t = clock.estimate(SERVER, st.iat, st.exp, at)!;
      last = { deadlineMs: t.deadlineMs, at };
    }
    // At the end requests arrive 4 s after they were issued: expired on arrival.
    assert.ok(last!.deadlineMs <= last!.at, `deadline ${last!.deadlineMs - last!.at}ms from arrival`);
  });

  it('forgets an offset no verified request has confirmed for 20 s (a quiet server whose clock moved)', () => {
    const clock = new RequestClock();
    steady(clock, server(0), 1_000_000_000, 1_000_001_000);
    assert.equal(clock.calibrated(SERVER, 1_000_015_000), true);
    assert.equal(clock.calibrated(SERVER, 1_000_021_500), false);
    // 3 s behind now, one connect every 30 s: judged with the 10 s tolerance, i.e. fresh.
    const s = server(3_000).stamp(1_000_031_000);
    assert.ok(clock.estimate(SERVER, s.iat, s.exp, 1_000_031_001)!.deadlineMs > 1_000_032_000);
  });

  it('returns nothing for requests without usable stamps', () => {
    const clock = new RequestClock();
    assert.equal(clock.estimate(SERVER, undefined, 5, 1), undefined);
    assert.equal(clock.estimate(SERVER, 10, 10, 1), undefined);
    assert.equal(clock.estimate(SERVER, 10.5, 12, 1), undefined);
    assert.equal(clock.estimate(SERVER, '10', 12, 1), undefined);
  });
});
