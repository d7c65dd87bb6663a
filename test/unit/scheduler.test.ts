/**
 * The storm scheduler (runner.ts + reply-lanes.ts + request-queue.ts): the runner on
 * in-memory connections whose PINGs the test answers, and a deadline clock the test moves.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Metrics } from '../../src/metrics.js';
import { CalloutRunner } from '../../src/runner.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { until } from '../helpers/fake-clock.js';
import { FakeNats, fakeClockService, settle } from '../helpers/fake-nats.js';

const seconds = (ms: number) => Math.floor(ms / 1000);

describe('storm scheduler', () => {
  it('never has more than laneWindow unconfirmed answers on a lane (the window is checked before answers of the slice are sent)', async () => {
    const { service, clock, log, logger } = fakeClockService();
    const nc = new FakeNats();
    const runner = new CalloutRunner([nc.asNats()], service, logger, { laneWindow: 2, drainTimeoutMs: 100 });
    await runner.start();
    nc.flushMode = 'never'; // the server never confirms: at most 2 answers may be sent
    const server = fakeServer();
    for (let i = 0; i < 10; i++) nc.deliver(authRequestJwt(server, { now: seconds(clock.mono), connectOpts: {} }));
    await until(() => nc.published.length + runner.queueLength === 10 && nc.published.length > 0, 'the window is full and the rest queued');
    await settle(20); // a slice more: a runner ignoring its window would send now
    assert.ok(nc.published.length <= 2, `${nc.published.length} answers unconfirmed on one lane, window is 2`);
    await runner.stop(); // the queued rest is dropped after the drain timeout, and logged
    const stopped = log.records.find((r) => r.msg === 'stopped with requests still waiting');
    assert.equal(stopped?.dropped, 8);
    assert.equal(runner.inFlight, 0);
    assert.equal(log.decisions().filter((d) => d.code === 'REQUEST_TOO_LATE' && /service stopped/.test(d.reason ?? '')).length, 8);
  });

  it('a stalled connection does not make the requests of a healthy one too late', async () => {
    const { service, clock, log, logger } = fakeClockService();
    const healthy = new FakeNats();
    const stalled = new FakeNats();
    const runner = new CalloutRunner([healthy.asNats(), stalled.asNats()], service, logger, { laneWindow: 2 });
    await runner.start();
    stalled.flushMode = 'never'; // a half-open TCP connection: its PING never comes back
    const server = fakeServer();
    // One answer on the stalled lane stays unconfirmed: its PING never comes back.
    healthy.deliver(authRequestJwt(server, { now: seconds(clock.mono), connectOpts: {} }));
    stalled.deliver(authRequestJwt(server, { now: seconds(clock.mono), connectOpts: {} }));
    await until(() => healthy.published.length === 1 && stalled.published.length === 1, 'both first requests answered');
    assert.equal(stalled.published.length, 1, 'one answer went out on the stalled lane');
    clock.advance(2_500); // the stalled lane's PING is now 2.5 s old (the healthy one's came back at once)
    healthy.autoPongMs = 20; // from now on it confirms its answers within 20 ms
    const mark = log.mark();
    for (let i = 0; i < 200; i++) healthy.deliver(authRequestJwt(server, { now: seconds(clock.mono), connectOpts: {} }));
    // Two answers per 20 ms PONG: the healthy connection works through them in about 2 s.
    await until(() => log.decisions(mark).length === 200, 'all 200 requests decided', 20_000);
    const decisions = log.decisions(mark);
    const tooLate = decisions.filter((d) => d.code === 'REQUEST_TOO_LATE');
    assert.equal(tooLate.length, 0, `${tooLate.length} of 200 fresh requests (2 s budget, queued for ms) dropped as too late; first: ${tooLate[0]?.reason}`);
    assert.equal(healthy.published.length, 201, 'every request of the healthy connection answered on it');
    assert.equal(stalled.published.length, 1, 'nothing crosses to the stalled connection');
    await runner.stop();
  });

  it('answers the first burst of a restarted server whose clock is 15 s behind ours on an idle service (not only what follows)', async () => {
    const { service, clock, log, logger } = fakeClockService();
    const nc = new FakeNats();
    const runner = new CalloutRunner([nc.asNats()], service, logger);
    await runner.start();
    const server = fakeServer(); // a restarted nats-server: a new server id, nothing learnt yet
    const behind = (ms: number) => seconds(ms - 15_000);
    const mark = log.mark();
    // Its clients reconnect at once: 20 requests in one read.
    for (let i = 0; i < 20; i++) nc.deliver(authRequestJwt(server, { now: behind(clock.mono), connectOpts: {} }));
    await until(() => log.decisions(mark).length === 20, 'the burst decided');
    const decided = log.decisions(mark);
    const shed = decided.filter((d) => d.shed);
    assert.equal(decided.length, 20, `${decided.length} of 20 requests decided`);
    assert.ok(shed.length <= 1, `${shed.length} of 20 fresh requests dropped on an idle service (${shed[0]?.reason}); answers: ${nc.published.length}`);
    assert.equal(nc.published.length, 20 - shed.length, 'every request not dropped is answered');
    await runner.stop();
  });

  it('does not keep a queued request forever when every lane is full and no PONG comes back (stop() hangs)', async () => {
    const { service, clock, logger } = fakeClockService();
    const nc = new FakeNats();
    const runner = new CalloutRunner([nc.asNats()], service, logger, { laneWindow: 1 });
    await runner.start();
    nc.flushMode = 'never';
    const server = fakeServer();
    nc.deliver(authRequestJwt(server, { now: seconds(clock.mono), connectOpts: {} }));
    await until(() => nc.published.length === 1, 'the first request answered'); // the lane's window (1) is now full until a PONG
    nc.deliver(authRequestJwt(server, { now: seconds(clock.mono), connectOpts: {} }));
    await until(() => runner.queueLength === 1, 'the second request queued');
    await settle(20);
    assert.equal(nc.published.length, 1);
    assert.equal(runner.queueLength, 1, 'the second request waits for the lane');
    clock.advance(10_000); // the held request's deadline is long past
    await until(() => runner.queueLength === 0, `a request 10 s past its deadline leaves the queue (in_flight ${runner.inFlight})`);
    const stopped = await Promise.race([runner.stop().then(() => 'stopped'), settle(1000).then(() => 'hung')]);
    assert.equal(stopped, 'stopped');
  });

  it('stop() completes when every connection is down and a queued request has no known deadline', async () => {
    const { service, logger } = fakeClockService();
    const nc = new FakeNats();
    const runner = new CalloutRunner([nc.asNats()], service, logger);
    await runner.start();
    nc.emitStatus({ type: 'disconnect', server: 'x' });
    await settle(10);
    const server = fakeServer();
    nc.deliver(authRequestJwt(server, { connectOpts: {}, edit: (c) => delete c.exp }));
    await settle(50);
    const stopped = await Promise.race([runner.stop().then(() => 'stopped'), settle(1000).then(() => 'hung')]);
    assert.equal(stopped, 'stopped', `stop() still waiting for ${runner.inFlight} request(s) after 1 s`);
  });

  it('measures request latency (log latency_ms, request_duration_seconds) from receipt, queue wait included', async () => {
    const metrics = new Metrics('test');
    const { service, clock, log, logger } = fakeClockService({ observer: metrics });
    const nc = new FakeNats();
    const runner = new CalloutRunner([nc.asNats()], service, logger, { laneWindow: 1 });
    await runner.start();
    nc.flushMode = 'manual';
    const server = fakeServer();
    const mark = log.mark();
    nc.deliver(authRequestJwt(server, { now: seconds(clock.mono), connectOpts: {} }));
    nc.deliver(authRequestJwt(server, { now: seconds(clock.mono), connectOpts: {} }));
    await until(() => nc.published.length === 1 && runner.queueLength === 1, 'one answered, one waiting for the lane');
    clock.advance(300); // the second request waits 300 ms for the lane
    nc.flushMode = 'auto';
    nc.pong();
    await until(() => log.decisions(mark).length === 2, 'both decided');
    const decisions = log.decisions(mark);
    assert.equal(decisions.length, 2);
    const waited = decisions[1]!;
    assert.ok((waited.latency_ms as number) >= 250, `latency_ms ${waited.latency_ms} for a request that waited 300 ms before being served`);
    await runner.stop();
  });
});
