import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { LogCapture } from '../helpers/callout-fixture.js';
import type { Scenario } from '../helpers/adversarial-worker.js';
import { createLogger } from '../../src/log.js';
import { WorkerPool } from '../../src/worker-pool.js';

const WORKER = new URL('../helpers/adversarial-worker.js', import.meta.url);

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function until(what: string, pred: () => Promise<boolean> | boolean, timeoutMs = 8000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (Date.now() < end) {
    if (await pred()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for: ${what}`);
}

async function startPool(count: number, scenario: Scenario): Promise<{ pool: WorkerPool; replica: string; log: LogCapture }> {
  const dir = mkdtempSync(join(tmpdir(), 'oc-pool-adv-'));
  const file = join(dir, 'scenario.json');
  writeFileSync(file, JSON.stringify(scenario));
  const replica = join(dir, 'replica');
  const log = new LogCapture();
  const pool = await WorkerPool.start({ file, version: '0.0.0', count, connections: 24, replica }, createLogger('debug', log.write), WORKER);
  return { pool, replica, log };
}

/** The replica's oidc_callout_requests_total{result="allow"} in a scrape. */
const allowed = (m: { text: string }): number => Number(/^oidc_callout_requests_total\{result="allow"\} (\d+)$/m.exec(m.text)?.[1] ?? Number.NaN);

const serving = async (pool: WorkerPool, n: number) => (await pool.metrics()).text.includes(`oidc_callout_workers ${n}\n`);

describe('worker pool, adversarial', () => {
  it('starts a worker again when its restart fails during startup (a crash loop is retried, not given up)', async () => {
    // Worker 1 crashes; its second start fails before it serves (e.g. the file mid-edit, a
    // transient error); the third would serve. The replica must not stay a worker short forever.
    const { pool, log } = await startPool(2, { crashOnReadiness: [1], failStart: ['1:2'] });
    try {
      await pool.readiness();
      let ok = true;
      try {
        await until('worker 1 serving again', () => serving(pool, 2), 6000);
      } catch {
        ok = false;
      }
      assert.ok(
        ok,
        `worker 1 was never started again after its restart failed; readiness: ${JSON.stringify(await pool.readiness())}; log: ${JSON.stringify(
          log.records.map((r) => r.msg),
        )}`,
      );
    } finally {
      await pool.stop();
    }
  });

  it('a revocation relayed while a restarted worker is starting reaches that worker', async () => {
    const { pool, replica } = await startPool(2, { crashOnReadiness: [1], holdStart: ['1:2'], peersOnReload: true });
    try {
      await pool.readiness(); // worker 1 dies
      // Its second incarnation is spawned (given the revocations known then) but not yet serving.
      await until('worker 1 starting again', () => existsSync(`${replica}.w1.n2.starting`));
      // Now the primary (worker 0) receives a revocation of mallory and relays it.
      await pool.reload();
      writeFileSync(`${replica}.go`, '');
      await until('worker 1 serving again', () => serving(pool, 2));
      const readiness = await pool.readiness();
      const w1 = readiness.find((p) => /w1 n2 revoked/.test(p)) ?? '';
      assert.match(w1, /mallory/, `worker 1 serves without the revocation relayed while it started: ${JSON.stringify(readiness)}`);
    } finally {
      await pool.stop();
    }
  });

  it('a reload while a worker restarts is either applied and reported so, or applied nowhere', async () => {
    const { pool, replica } = await startPool(3, { crashOnReadiness: [1], holdStart: ['1:2'] });
    try {
      await pool.readiness();
      await until('worker 1 starting again', () => existsSync(`${replica}.w1.n2.starting`));
      const { errors } = await pool.reload();
      writeFileSync(`${replica}.go`, '');
      await until('worker 1 serving again', () => serving(pool, 3));
      const readiness = await pool.readiness();
      const reloadedOn = readiness.filter((p) => /reloads 1/.test(p));
      // The lifecycle logs "reload failed; keeping the running configuration" on any error.
      assert.ok(
        errors.length === 0 || reloadedOn.length === 0,
        `reload reported as failed (${JSON.stringify(errors)}) while workers applied it: ${JSON.stringify(reloadedOn)}`,
      );
    } finally {
      await pool.stop();
    }
  });

  it("a disconnected reply lane of one worker shows in /metrics (not hidden by another worker's lane of the same index)", async () => {
    const { pool } = await startPool(2, { lanes: { '0': { '0': 0.002 }, '1': { '0': null } } });
    try {
      const text = (await pool.metrics()).text;
      const lines = text.split('\n').filter((l) => l.startsWith('oidc_callout_reply_lane_delay_seconds'));
      assert.ok(
        lines.some((l) => / -1$/.test(l) || /\+Inf$/.test(l)),
        `worker 1's disconnected lane (reported -1) is not visible: ${JSON.stringify(lines)}`,
      );
    } finally {
      await pool.stop();
    }
  });

  it("a worker that does not answer a relayed revocation still lets the replica answer within the CLI's default --wait (2 s)", async () => {
    // Worker 0 takes a revocation and has it applied on worker 1, which never answers.
    const { pool } = await startPool(2, { peersOnReload: true, silentOnRevoke: [1] });
    try {
      const t0 = Date.now();
      await pool.reload();
      const ms = Date.now() - t0;
      // The replica's answer also has to reach the CLI over NATS: some margin is left for it.
      assert.ok(ms < 1950, `the other workers' results came back after ${ms} ms: the replica's answer misses a 2 s --wait`);
    } finally {
      await pool.stop();
    }
  });

  it('a worker that dies between answering a scrape and the scrape completing is counted once, and the next scrape does not go back', async () => {
    // Worker 0 (10 served) answers its second scrape late; worker 1 (20 served) answers it and
    // dies at once, so its exit is handled while that scrape still waits for worker 0.
    const { pool } = await startPool(2, { metricsAnswers: { '0:1:2': { delayMs: 400 }, '1:1:2': { exitAfter: true } } });
    try {
      assert.equal(allowed(await pool.metrics()), 30);
      const during = allowed(await pool.metrics());
      assert.equal(during, 30, 'the scrape the worker died during counts it once');
      await until('worker 1 serving again', () => serving(pool, 2));
      // Its successor has served 1: 10 + 20 (kept) + 1.
      const afterRestart = allowed(await pool.metrics());
      assert.ok(afterRestart >= during, `the counter went back from ${during} to ${afterRestart}`);
      assert.equal(afterRestart, 31);
    } finally {
      await pool.stop();
    }
  });

  it('a live worker that does not answer a scrape in time keeps its counts in it (counters never dip)', async () => {
    // Worker 1 answers its second scrape after the pool's 2 s limit.
    const { pool } = await startPool(2, { metricsAnswers: { '1:1:2': { delayMs: 2600 } } });
    try {
      assert.equal(allowed(await pool.metrics()), 30);
      const slow = allowed(await pool.metrics());
      assert.equal(slow, 30, `the counter dipped to ${slow} while worker 1 was slow to answer`);
      assert.equal(allowed(await pool.metrics()), 30);
    } finally {
      await pool.stop();
    }
  });

  it('stop while a restarted worker is still starting ends every worker', async () => {
    const { pool, replica } = await startPool(2, { crashOnReadiness: [1], holdStart: ['1:2'] });
    await pool.readiness();
    await until('worker 1 starting again', () => existsSync(`${replica}.w1.n2.starting`));
    const t0 = Date.now();
    await pool.stop();
    assert.ok(Date.now() - t0 < 5000);
    assert.deepEqual(
      await pool.readiness(),
      [0, 1].map((i) => `worker ${i} is not serving (starting again, or stopped)`),
    );
  });

  it('stop during the restart pause does not start the worker again', async () => {
    const { pool, replica } = await startPool(2, { crashOnReadiness: [1] });
    await pool.readiness(); // worker 1 dies; its restart is 1 s away
    await pool.stop();
    await sleep(1500);
    assert.equal(existsSync(`${replica}.w1.count`) ? Number((await import('node:fs')).readFileSync(`${replica}.w1.count`, 'utf8')) : 0, 1);
  });
});
