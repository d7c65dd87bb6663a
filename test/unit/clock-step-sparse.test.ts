/**
 * A server clock that steps back while logins keep coming, spread over the
 * default 8 connections (request-clock.ts step detection, runner.ts).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CalloutRunner } from '../../src/runner.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { until } from '../helpers/fake-clock.js';
import { FakeNats, fakeClockService } from '../helpers/fake-nats.js';

const seconds = (ms: number) => Math.floor(ms / 1000);

describe('request clock step back on a quiet system with 8 connections', () => {
  it('relearns the offset after a few jumped requests instead of dropping every login for 20 s', async () => {
    const { service, clock, log, logger } = fakeClockService();
    const ncs = Array.from({ length: 8 }, () => new FakeNats());
    const runner = new CalloutRunner(
      ncs.map((n) => n.asNats()),
      service,
      logger,
    );
    await runner.start();
    const server = fakeServer();
    let skew = 0; // how far the server's clock is behind ours (ms)
    let i = 0;
    // One login every 2 s; nats-server spreads them over the queue group's 8 subscriptions.
    const login = async () => {
      const mark = log.mark();
      ncs[i++ % 8]!.deliver(authRequestJwt(server, { now: seconds(clock.mono - skew), connectOpts: {} }));
      await until(() => log.decisions(mark).length === 1, 'the login decided');
      clock.advance(2_000);
      return log.decisions(mark)[0]!;
    };
    for (let k = 0; k < 20; k++) assert.ok(!(await login()).shed, 'answered while the clocks agree');
    skew = 5_000; // NTP steps the server's clock back by 5 s
    let dropped = 0;
    for (let k = 0; k < 15; k++) {
      const d = await login();
      if (!d.shed) break;
      dropped++;
    }
    assert.ok(dropped <= 4, `${dropped} consecutive live logins (one every 2 s) dropped as ${'expired'} after a 5 s step back of the server clock`);
    await runner.stop();
  });
});
