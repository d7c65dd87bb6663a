/**
 * The request queue is bounded in bytes as well as in count: each queued request keeps its whole
 * decoded request, including a CONNECT token of any size below max_control_line (token.max_bytes
 * is only checked when the request is served), and any unauthenticated client chooses that size.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MsgHdrsImpl } from '@nats-io/transport-node';
import { CalloutRunner } from '../../src/runner.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { until } from '../helpers/fake-clock.js';
import { memoryUsed } from '../helpers/memory-used.js';
import { runnerScenario } from '../helpers/runner-scenario.js';
import { FakeNats, fakeClockService, settle } from '../helpers/fake-nats.js';

const used = memoryUsed;

describe('queue memory', () => {
  it('a flood of requests carrying 60 KB tokens stays within 256 MiB', async () => {
    const { service, clock, logger } = fakeClockService();
    const nc = new FakeNats();
    const runner = new CalloutRunner([nc.asNats()], service, logger, { laneWindow: 1 });
    await runner.start();
    nc.flushMode = 'never'; // the only lane fills with one answer: everything else waits in the queue
    const server = fakeServer();
    const now = Math.floor(clock.mono / 1000);
    nc.deliver(authRequestJwt(server, { now, connectOpts: {} }));
    await until(() => nc.published.length === 1, 'the first request answered: the lane is full');
    // 60 KB fits nats-server's recommended max_control_line (64 KiB) and exceeds token.max_bytes (16 KiB).
    const big = authRequestJwt(server, { now, connectOpts: { auth_token: 'x'.repeat(60_000) } });
    const n = 3_000; // 180 MB of requests
    const before = used();
    for (let i = 0; i < n; i++) nc.deliver(new TextEncoder().encode(big));
    await settle(20);
    const held = runner.queueLength;
    assert.ok(held < 600, `${held} requests of 60 KB held: the queue is bounded in bytes (32 MiB), not only in count`);
    const retainedMiB = (used() - before) / 2 ** 20;
    assert.ok(retainedMiB <= 256, `${Math.round(retainedMiB)} MiB retained by the queue`);
    nc.flushMode = 'auto';
    await runner.stop();
  });

  it('a request kept unopened holds a copy of its bytes, not the socket read it arrived in', async () => {
    const { clock, nc, runner, fresh } = await runnerScenario({ lazyBacklogMs: 0, drainTimeoutMs: 50 }, 'never');
    nc.deliver(fresh());
    await until(() => nc.published.length === 1, 'the first request answered: the lane is full');
    nc.deliver(fresh());
    clock.advance(200); // the queue lags: what arrives now is kept unopened
    const request = new TextEncoder().encode(fresh());
    const n = 2_000;
    const before = used();
    for (let i = 0; i < n; i++) {
      // nats.js hands the callback a Buffer that is a view into the socket read (up to 64 KiB) the
      // message came in, and Buffer#slice is a view too: a request kept so must be copied out.
      const read = Buffer.alloc(64 * 1024);
      read.set(request, 100);
      nc.deliver(read.subarray(100, 100 + request.length));
    }
    await settle(20);
    assert.equal(runner.queueLength, n + 1, 'all of them kept');
    const retainedMiB = (used() - before) / 2 ** 20;
    // ~2 KB each: a few MiB; 125 MiB when each keeps the 64 KiB read it came in.
    assert.ok(retainedMiB < 32, `${Math.round(retainedMiB)} MiB retained by ${n} unopened requests of ${request.length} bytes`);
    await runner.stop();
  });

  it("a request keeps its xkey header's value, not the header block nats.js decoded it from, and the header counts toward the bytes bound", async () => {
    const { clock, nc, runner, server, fresh: request } = await runnerScenario({ lazyBacklogMs: 0, drainTimeoutMs: 50 }, 'never');
    nc.deliver(request());
    await until(() => nc.published.length === 1, 'the first request answered: the lane is full');
    const xkey = server.curve.getPublicKey();
    // Headers as nats.js decodes them: each value a slice of the decoded block, which V8 keeps whole.
    const headers = (block: string) => MsgHdrsImpl.decode(new TextEncoder().encode(`NATS/1.0\r\n${block}\r\n\r\n`));
    const before = used();
    for (let i = 0; i < 300; i++) {
      if (i === 150) clock.advance(200); // the first half opened on arrival, the second kept unopened
      nc.deliver(request(), undefined, headers(`Nats-Server-Xkey: ${xkey}\r\nPad: ${'p'.repeat(200_000)}${i}`));
    }
    await settle(20);
    assert.equal(runner.queueLength, 300);
    const retainedMiB = (used() - before) / 2 ** 20;
    // 300 requests of ~1 KB: under a MiB; 57 MiB when each keeps its 200 KB header block.
    assert.ok(retainedMiB < 16, `${Math.round(retainedMiB)} MiB retained by 300 requests whose xkey header came with 200 KB of others`);
    // The xkey header's value itself is chosen by whoever publishes the request: it counts.
    for (let i = 0; i < 300; i++) nc.deliver(request(), undefined, headers(`Nats-Server-Xkey: ${'X'.repeat(200_000)}${i}`));
    await settle(20);
    assert.ok(runner.queueLength <= 200, `${runner.queueLength} requests held with 200 KB xkey headers: beyond the 32 MiB bound`);
    await runner.stop();
  });
});
