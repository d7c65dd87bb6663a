/**
 * Shed decisions are taken without verifying the request: their log line carries the claimed
 * server only when it is a server key, and never as `server_id`.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { CalloutRunner } from '../../src/runner.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { until } from '../helpers/fake-clock.js';
import { FakeNats, fakeClockService } from '../helpers/fake-nats.js';

describe('shed log lines', () => {
  it('bound the unverified iss of a dropped request (no 100 KB server_id in the log)', async () => {
    const { service, clock, log, logger } = fakeClockService();
    const nc = new FakeNats();
    const runner = new CalloutRunner([nc.asNats()], service, logger);
    await runner.start();
    const server = fakeServer();
    const mark = log.mark();
    // 30 s stale: dropped as expired without verification.
    nc.deliver(authRequestJwt(server, { now: Math.floor(clock.mono / 1000) - 30, edit: (c) => (c.iss = `N${'A'.repeat(100_000)}`) }));
    await until(() => log.decisions(mark).length === 1, 'the request decided');
    const [d] = log.decisions(mark);
    assert.ok(d, 'a decision was logged');
    const line = JSON.stringify(d);
    assert.ok(line.length < 2_000, `shed line of ${line.length} chars; code ${d.code}, server_id of ${String(d.server_id).length} chars`);
    await runner.stop();
  });
});
