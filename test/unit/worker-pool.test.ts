import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { LogCapture } from '../helpers/callout-fixture.js';
import { createLogger } from '../../src/log.js';
import { WorkerPool } from '../../src/worker-pool.js';

const FAKE = new URL('../helpers/fake-worker.js', import.meta.url);

describe('worker pool', () => {
  it('adds up metrics, merges readiness, restarts and counts a worker that died (keeping what it counted), and drains every worker', async () => {
    const log = new LogCapture();
    const replica = join(mkdtempSync(join(tmpdir(), 'oc-pool-')), 'replica');
    const pool = await WorkerPool.start({ file: '/nonexistent', version: '0.0.0', count: 3, connections: 24, replica }, createLogger('debug', log.write), FAKE);
    const metrics = await pool.metrics();
    assert.match(metrics.text, /oidc_callout_requests_total\{result="allow"\} 60/, "the workers' counters add up (10 + 20 + 30)");
    assert.match(metrics.text, /oidc_callout_workers 3/);
    // The primary (worker 0) receives a revocation: the pool applies it on the other workers.
    assert.deepEqual(await pool.reload(), { errors: [], issuersKept: 1 });
    // Worker 1 dies when first asked: the answer says so, and the pool starts it again.
    const first = await pool.readiness();
    assert.ok(
      first.some((p) => /worker 1 exited/.test(p)),
      JSON.stringify(first),
    );
    for (let i = 0; i < 100 && !(await pool.metrics()).text.includes('oidc_callout_workers 3'); i++) await new Promise((r) => setTimeout(r, 50));
    const after = await pool.metrics();
    assert.match(after.text, /oidc_callout_worker_restarts_total\{worker="1"\} 1/);
    // What the worker that died had counted (20, last scraped above) stays in the replica's
    // counters next to what its successor counts (20 again): counters never go backwards. Its
    // gauges do not outlive it (1 + 2 + 3).
    assert.match(after.text, /oidc_callout_requests_total\{result="allow"\} 80/);
    assert.match(after.text, /oidc_callout_in_flight 6/);
    // nats.connections as the replica started with it, shared out exactly, also by the worker started again.
    assert.match(after.text, /fake_worker_connections 24/);
    assert.ok(log.records.some((r) => r.msg === 'worker exited; starting it again' && Number(r.worker) === 1 && Number(r.code) === 3));
    // A problem every worker has is said once; one of a single worker names it. The worker that
    // started again was given the revocation applied before.
    assert.deepEqual((await pool.readiness()).sort(), [
      'keys of https://idp.example.com not loaded',
      'worker 0: only on worker 0',
      'worker 1: holds 1 revocation(s) from before it started',
    ]);
    await pool.stop();
    assert.deepEqual(
      await pool.readiness(),
      [0, 1, 2].map((i) => `worker ${i} is not serving (starting again, or stopped)`),
    );
  });
});
