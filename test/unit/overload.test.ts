/**
 * Past capacity: requests that arrive while a connection's queue is far behind are kept unopened;
 * the ones the scheduler picks (newest first) are opened then, the ones the backlog outlives are
 * dropped without ever being opened, and shed requests log a bounded number of lines.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { Metrics } from '../../src/metrics.js';
import { SHED_REASONS } from '../../src/request-queue.js';
import { ShedLog } from '../../src/shed-log.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { until } from '../helpers/fake-clock.js';
import { runnerScenario } from '../helpers/runner-scenario.js';
import { fakeClockService, settle } from '../helpers/fake-nats.js';

const seconds = (ms: number) => Math.floor(ms / 1000);

describe('overload', () => {
  it('keeps requests that arrive behind a backlog unopened, and drops those it outlives without opening them', async () => {
    const { clock, log, nc, runner, opens, fresh } = await runnerScenario({ drainTimeoutMs: 100, lazyBacklogMs: 0 });
    nc.deliver(fresh());
    await until(() => nc.published.length === 1, 'the first request answered: the window (1) is full until a PONG');
    nc.deliver(fresh());
    await settle(10);
    assert.equal(opens.opened, 2, 'a request arriving at a queue that is not behind is opened at once');
    clock.advance(200); // the queued request has now waited past lifoAfterMs (100 ms): the queue is behind
    const mark = log.mark();
    for (let i = 0; i < 50; i++) nc.deliver(fresh());
    await settle(10);
    assert.equal(opens.opened, 2, 'nothing that arrived behind the backlog was opened');
    assert.equal(runner.queueLength, 51);
    // Past any budget a server gave (2 s, plus the second iat truncates): all of it is dead.
    clock.advance(3_500);
    nc.pong();
    await until(() => runner.queueLength === 0, 'the dead backlog dropped');
    const shed = log.decisions(mark).filter((d) => d.shed === 'expired');
    assert.equal(shed.length, 51);
    assert.equal(shed.filter((d) => /dropped unopened/.test(d.reason ?? '')).length, 50, 'the unopened ones dropped as such');
    assert.equal(opens.opened, 2, 'and never opened');
    assert.equal(nc.published.length, 1, 'nothing answered late');
    await runner.stop();
  });

  it('opens requests on arrival while less than a second of work is queued (the request clock reads them in order)', async () => {
    const { clock, nc, runner, opens, fresh } = await runnerScenario({ drainTimeoutMs: 100 });
    nc.deliver(fresh());
    await until(() => nc.published.length === 1, 'the first answered: the window is full');
    nc.deliver(fresh());
    clock.advance(200); // behind, but with two requests queued: far from a second of work
    for (let i = 0; i < 20; i++) nc.deliver(fresh());
    await settle(10);
    assert.equal(opens.opened, 22);
    nc.flushMode = 'auto';
    nc.pong();
    await until(() => runner.queueLength === 0, 'all served');
    await runner.stop();
  });

  it('opens and answers the newest of a backlog first', async () => {
    const { clock, nc, runner, opens, fresh } = await runnerScenario({ drainTimeoutMs: 100, lazyBacklogMs: 0 });
    nc.deliver(fresh(), 'first');
    await until(() => nc.published.length === 1, 'the first answered');
    nc.deliver(fresh(), 'queued');
    clock.advance(200);
    for (let i = 0; i < 5; i++) nc.deliver(fresh(), `late-${i}`);
    await settle(10);
    assert.equal(opens.opened, 2);
    for (let k = 2; k <= 7; k++) {
      await settle(5); // the lane's PING goes out a turn after its answer
      nc.pong();
      await until(() => nc.published.length === k, `answer ${k}`);
    }
    // Newest first while behind; each opened when picked.
    assert.deepEqual(
      nc.published.map((p) => p.subject),
      ['first', 'late-4', 'late-3', 'late-2', 'late-1', 'late-0', 'queued'],
    );
    assert.equal(opens.opened, 7);
    await runner.stop();
  });

  it('logs at most 100 shed requests a second one by one, and the rest in one summary line', () => {
    const shedLog = new ShedLog();
    let lines = 0;
    let summary: ReturnType<ShedLog['take']>['summary'];
    for (let i = 0; i < 250; i++) {
      const r = shedLog.take(i % 2 ? 'expired' : 'queue_full', 1_000 + i);
      if (r.line) lines++;
      summary ??= r.summary;
    }
    assert.equal(lines, 100);
    assert.equal(summary, undefined, 'nothing to summarize within the first window');
    assert.equal(shedLog.flush(1_500), undefined, 'the window has not ended');
    const s = shedLog.flush(2_000);
    assert.deepEqual(s, { expired: 75, too_late: 0, queue_full: 75, unverified: 0, window_ms: 1_000 });
    // A new window logs again.
    assert.equal(shedLog.take('too_late', 2_001).line, true);
    assert.equal(shedLog.flush(3_100), undefined, 'a window without unlogged sheds says nothing');
  });

  it('counts every shed request in the metrics and summarizes the unlogged ones in the log', async () => {
    const { service, clock, log } = fakeClockService();
    const server = fakeServer();
    const stale = () => authRequestJwt(server, { now: seconds(clock.mono) - 30, connectOpts: {} });
    const mark = log.mark();
    for (let i = 0; i < 130; i++) {
      const admitted = service.admit(new TextEncoder().encode(stale()), undefined, clock.mono);
      assert.ok(admitted);
      service.shed(admitted, 'expired');
    }
    assert.equal(log.decisions(mark).filter((d) => d.shed === 'expired').length, 100);
    clock.advance(1_000);
    service.flushShedLog();
    const summary = log.records.find((r) => /requests shed without a line each/.test(String(r.msg)));
    assert.equal(summary?.expired, 30);
  });

  it('summarizes, when it stops, the shed requests of its last window that had no line of their own', async () => {
    const { log, nc, runner, fresh } = await runnerScenario({ drainTimeoutMs: 50 }, 'never');
    nc.deliver(fresh());
    await until(() => nc.published.length === 1, 'the first answered: the window is full for good');
    const mark = log.mark();
    for (let i = 0; i < 250; i++) nc.deliver(fresh());
    await settle(10);
    assert.equal(runner.queueLength, 250);
    await runner.stop(); // the drain gives up: all 250 dropped, 100 with a line of their own
    assert.equal(log.decisions(mark).filter((d) => d.shed === 'too_late').length, 100);
    const summaries = log.records.slice(mark).filter((r) => /requests shed without a line each/.test(String(r.msg)));
    assert.equal(
      summaries.reduce((n, r) => n + (r.too_late as number), 0),
      150,
      'the 150 dropped without a line are in a summary line before the service is gone',
    );
  });

  it('learns the deadline bound from requests opened late as well (a server with a longer timeout met only under overload)', async () => {
    // The scenario's server: exp - iat = 2 s, so the bound becomes 3 s.
    const { clock, nc, runner, fresh: freshShort } = await runnerScenario({ drainTimeoutMs: 100, lazyBacklogMs: 0 });
    const long = fakeServer(); // authorization timeout 10 s
    const fresh = (server?: typeof long) =>
      server === long ? authRequestJwt(long, { now: seconds(clock.mono), connectOpts: {}, edit: (c) => (c.exp = c.iat + 10) }) : freshShort();
    nc.deliver(fresh(), 'first');
    await until(() => nc.published.length === 1, 'the first answered: the window is full');
    nc.deliver(fresh(), 'queued');
    clock.advance(200); // behind: what arrives now is kept unopened
    nc.deliver(fresh(long), 'long-1');
    await settle(5);
    nc.pong();
    await until(() => nc.published.length === 2, 'long-1 picked (newest first), opened and answered');
    assert.equal(nc.published[1]?.subject, 'long-1');
    nc.deliver(fresh(long), 'long-2'); // kept unopened: its deadline is not known until it is opened
    clock.advance(5_000); // 5 s on: long-2 is still waited for (10 s), the 2 s request is not
    await settle(5);
    nc.pong();
    await until(() => runner.queueLength === 0, 'the queue worked through');
    assert.deepEqual(
      nc.published.map((p) => p.subject),
      ['first', 'long-1', 'long-2'],
      'a request of the 10 s server kept unopened is not dropped at the 3 s bound of the 2 s server',
    );
    await runner.stop();
  });

  it('counts every request once, opened on arrival or later, malformed, shed for room or dropped by stop(), and ends with nothing in flight', async () => {
    const metrics = new Metrics('test');
    const { clock, nc, runner, fresh } = await runnerScenario({ drainTimeoutMs: 50, lazyBacklogMs: 0, maxQueue: 20 }, 'manual', metrics);
    let delivered = 0;
    const deliver = (data: string) => {
      delivered++;
      nc.deliver(data);
    };
    deliver(fresh());
    await until(() => nc.published.length === 1, 'the first answered: the window is full');
    deliver(fresh()); // opened on arrival, queued
    deliver('not a request'); // opened on arrival: malformed, decided at once
    clock.advance(200); // behind: from now on kept unopened
    for (let i = 0; i < 30; i++) deliver(i % 3 ? fresh() : 'garbage'); // 11 over maxQueue: shed for room
    await settle(10);
    assert.equal(runner.queueLength, 20);
    for (let k = 0; k < 4; k++) {
      await settle(5);
      nc.pong(); // a few picked, newest first: garbage is found malformed only now
      await settle(5);
    }
    await runner.stop(); // the rest dropped
    assert.equal(runner.inFlight, 0);
    assert.equal(runner.queueLength, 0);
    const total = async (name: string) => ((await metrics.registry.getSingleMetric(name)?.get())?.values ?? []).reduce((n, v) => n + v.value, 0);
    assert.equal(await total('oidc_callout_requests_total'), delivered, 'each request decided once');
    const shedCodes = ((await metrics.registry.getSingleMetric('oidc_callout_requests_total')?.get())?.values ?? [])
      .filter((v) => /^REQUEST_(EXPIRED|TOO_LATE|QUEUE_FULL)$/.test(String(v.labels.code)))
      .reduce((n, v) => n + v.value, 0);
    assert.equal(await total('oidc_callout_shed_total'), shedCodes, 'each shed counted once, as a shed and as a request');
    assert.ok(shedCodes >= 11, `${shedCodes} shed`);
  });

  it('exposes every shed reason from the start, at 0, so a rate() of it reads 0 rather than no data', async () => {
    const text = await new Metrics('test').registry.metrics();
    for (const reason of SHED_REASONS) assert.match(text, new RegExp(`^oidc_callout_shed_total\\{reason="${reason}"\\} 0$`, 'm'));
  });
});
