/**
 * The worker threads of one replica (workers > 1), seen from its main thread: started with the
 * configuration file, asked for readiness and metrics (one monitoring endpoint, one set of
 * metrics for the replica), told to reload and to drain, restarted (and counted) when one dies.
 * A revocation one worker received is applied on every other worker through here, and the
 * replica's replay guard for admin requests lives here (any worker may receive one).
 */
import { randomBytes } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { AggregatorRegistry, Counter, Gauge, Registry } from 'prom-client';
import { type AppliedRevocation, PEERS_BUDGET_MS, type RevokeTarget } from './admin.js';
import { LocalReplayGuard } from './admin-request.js';
import type { Logger } from './log.js';
import { countsOnly, type MetricSet, mergeCounts } from './metric-sets.js';
import type { FromWorker, ToPrimary, ToWorker, WorkerData } from './worker-protocol.js';

/** How long the main thread waits for a worker's answer (readiness, metrics, revocations). */
const ASK_TIMEOUT_MS = 2000;
/** Revocations remembered for workers that start again (the oldest are forgotten beyond it). */
const MAX_REMEMBERED_REVOCATIONS = 10_000;
/** A worker that died is started again after this pause (a crash loop costs no more than this). */
const RESTART_DELAY_MS = 1000;

type Ask = { [K in ToWorker['type']]: Omit<Extract<ToWorker, { type: K }>, 'id'> }[ToWorker['type']];

interface Slot {
  worker: Worker | undefined;
  started: boolean;
  /** Revocations (of #revocations, by sequence number) the worker was started with. */
  revocationsKnown: number;
  /** The worker's counters and histograms as last reported (see #retired). */
  lastCounts: MetricSet | undefined;
  readonly pending: Map<number, (m: { value: unknown; error?: string }) => void>;
}

export class WorkerPool {
  readonly #log: Logger;
  readonly #data: Omit<WorkerData, 'index' | 'adminQueue'>;
  readonly #adminQueue = `oidc-callout-admin-${randomBytes(8).toString('hex')}`;
  readonly #slots: Slot[];
  readonly #registry = new Registry();
  /** The worker's code: worker-main.js (tests give a stand-in speaking the same protocol). */
  readonly #script: URL;
  readonly #restarts: Counter<'worker'>;
  #nextId = 0;
  #stopping = false;
  /** Whether every worker has served once: from then on, a failed start is retried like a crash. */
  #running = false;
  /** Revocations applied since the pool started (those forgotten beyond the bound included). */
  #revocationCount = 0;
  /** Admin request ids the replica acted on, whichever worker received them. */
  readonly #replays = new LocalReplayGuard();
  /** Revocations applied so far, replayed to a worker that starts again (its state died with it). */
  readonly #revocations: RevokeTarget[] = [];
  /**
   * The last reported counters and histograms of workers that died, still added to the
   * replica's: a counter that went backwards would read as a reset to Prometheus, and rate()
   * over the replica's sum would turn into a spike. What a worker counted after the last scrape
   * before it died is lost; nothing counted is ever taken back.
   */
  #retired: MetricSet[] = [];

  private constructor(data: Omit<WorkerData, 'index' | 'adminQueue'>, log: Logger, script: URL) {
    this.#script = script;
    this.#data = data;
    this.#log = log;
    this.#slots = Array.from({ length: data.count }, () => ({
      worker: undefined,
      started: false,
      revocationsKnown: 0,
      lastCounts: undefined,
      pending: new Map(),
    }));
    this.#restarts = new Counter({
      name: 'oidc_callout_worker_restarts_total',
      help: 'Worker threads started again after they died, by worker index',
      labelNames: ['worker'],
      registers: [this.#registry],
    });
    const slots = this.#slots;
    new Gauge({
      name: 'oidc_callout_workers',
      help: 'Worker threads of this replica serving now',
      registers: [this.#registry],
      collect() {
        this.set(slots.filter((s) => s.started).length);
      },
    });
  }

  /** Starts every worker; resolves once all serve (rejects when one fails to start). */
  static async start(data: Omit<WorkerData, 'index' | 'adminQueue'>, log: Logger, script = new URL('./worker-main.js', import.meta.url)): Promise<WorkerPool> {
    const pool = new WorkerPool(data, log, script);
    await Promise.all(pool.#slots.map((_, i) => pool.#spawn(i)));
    pool.#running = true;
    return pool;
  }

  #spawn(index: number): Promise<void> {
    const slot = this.#slots[index]!;
    // A worker started again knows no revocation: it gets every one before it serves.
    const worker = new Worker(this.#script, {
      workerData: { ...this.#data, index, adminQueue: this.#adminQueue, revocations: [...this.#revocations] } satisfies WorkerData,
    });
    slot.worker = worker;
    slot.started = false;
    slot.revocationsKnown = this.#revocationCount;
    return new Promise<void>((resolve, reject) => {
      worker.on('message', (m: FromWorker) => {
        if (m.type === 'started') {
          slot.started = true;
          // Revocations applied while it was starting: it was not serving, so it did not get them.
          const missed = this.#revocationCount - slot.revocationsKnown;
          for (const target of missed > 0 ? this.#revocations.slice(-missed) : []) void this.#ask(index, { type: 'revoke', target });
          resolve();
        } else if (m.type === 'answer') {
          slot.pending.get(m.id)?.({ value: m.value, error: m.error });
          slot.pending.delete(m.id);
        } else if (m.type === 'peers') {
          void this.#applyOnPeers(index, m.target).then((results) => worker.postMessage({ type: 'peers-answer', id: m.id, results } satisfies ToPrimary));
        } else if (m.type === 'claim') {
          const fresh = typeof m.jti === 'string' && this.#replays.claimNow(m.jti, m.until, m.now);
          worker.postMessage({ type: 'claim-answer', id: m.id, fresh } satisfies ToPrimary);
        }
      });
      worker.on('error', (err) => this.#log.error('worker failed', { worker: index, error: err.message }));
      worker.on('exit', (code) => {
        const wasStarted = slot.started;
        slot.started = false;
        slot.worker = undefined;
        for (const answer of slot.pending.values()) answer({ value: undefined, error: `worker ${index} exited` });
        slot.pending.clear();
        if (slot.lastCounts) this.#retire(slot.lastCounts);
        slot.lastCounts = undefined;
        if (this.#stopping) return;
        if (!wasStarted) reject(new Error(`worker ${index} exited with code ${code} before it served`));
        // Before the replica first served, a worker that cannot start fails the start.
        if (!wasStarted && !this.#running) return;
        // A worker that dies is started again, and counted: the replica keeps every core busy.
        this.#restarts.inc({ worker: String(index) });
        this.#log.error('worker exited; starting it again', { worker: index, code });
        // A restart that fails is retried the same way (its own exit comes back here).
        setTimeout(() => {
          if (!this.#stopping) this.#spawn(index).catch((err: Error) => this.#log.error('worker restart failed', { worker: index, error: err.message }));
        }, RESTART_DELAY_MS).unref();
      });
    });
  }

  /** Asks worker `index`; undefined (with the reason) when it does not answer in time. */
  #ask(index: number, ask: Ask, timeoutMs = ASK_TIMEOUT_MS): Promise<{ value: unknown; error?: string }> {
    const slot = this.#slots[index]!;
    if (!slot.worker || !slot.started) return Promise.resolve({ value: undefined, error: `worker ${index} is not serving (starting again, or stopped)` });
    const id = this.#nextId++;
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        slot.pending.delete(id);
        resolve({ value: undefined, error: `worker ${index} did not answer within ${timeoutMs}ms` });
      }, timeoutMs);
      slot.pending.set(id, (m) => {
        clearTimeout(timer);
        resolve(m);
      });
      slot.worker!.postMessage({ ...ask, id } as ToWorker);
    });
  }

  async #applyOnPeers(from: number, target: RevokeTarget): Promise<AppliedRevocation[]> {
    if (this.#revocations.length >= MAX_REMEMBERED_REVOCATIONS) this.#revocations.shift();
    this.#revocations.push(target);
    this.#revocationCount++;
    const others = this.#slots.map((_, i) => i).filter((i) => i !== from);
    // Not ASK_TIMEOUT_MS: the receiving worker's answer must reach the CLI within its wait.
    const answers = await Promise.all(others.map((i) => this.#ask(i, { type: 'revoke', target }, PEERS_BUDGET_MS)));
    return answers.map((a, k) =>
      a.error ? { dropped: 0, found: 0, kicked: 0, gone: 0, errors: [`worker ${others[k]}: ${a.error}`], incomplete: true } : (a.value as AppliedRevocation),
    );
  }

  /** The workers' readiness problems: one shared by every worker once, others named by their workers. */
  async readiness(): Promise<string[]> {
    const answers = await Promise.all(this.#slots.map((_, i) => this.#ask(i, { type: 'readiness' })));
    const byProblem = new Map<string, number[]>();
    const silent: string[] = [];
    answers.forEach((a, i) => {
      if (a.error) silent.push(a.error);
      else for (const p of a.value as string[]) byProblem.set(p, [...(byProblem.get(p) ?? []), i]);
    });
    return [...silent, ...[...byProblem].map(([p, workers]) => (workers.length === this.#slots.length ? p : `worker ${workers.join(', ')}: ${p}`))];
  }

  /** The replica's metrics: every worker's, added up (gauges as each declares), and the pool's own. */
  async metrics(): Promise<{ text: string; contentType: string }> {
    // The worker each slot holds as the scrape starts. One that exits before every answer is in
    // is counted through #retired only: adding its answer as well counted it twice, and the next
    // scrape went back by as much (a reset to Prometheus).
    const asked = this.#slots.map((s) => s.worker);
    const answers = await Promise.all(
      this.#slots.map((slot, i) =>
        this.#ask(i, { type: 'metrics' }).then((a) => {
          // Kept as the answer arrives, in the worker's message order, so its exit (handled
          // later) retires these counts and not those of an earlier scrape.
          if (!a.error && Array.isArray(a.value) && slot.worker === asked[i]) slot.lastCounts = countsOnly(a.value as MetricSet);
          return a;
        }),
      ),
    );
    const sets: MetricSet[] = [];
    answers.forEach((a, i) => {
      const slot = this.#slots[i]!;
      // Exited (or replaced) since it was asked: its counts are in #retired now.
      if (!slot.worker || slot.worker !== asked[i]) return;
      if (!a.error && Array.isArray(a.value)) sets.push(a.value as MetricSet);
      // Alive but silent (busy past the timeout): its last counts stand in, or the replica's
      // counters would dip for one scrape and read as a reset.
      else if (slot.lastCounts) sets.push(slot.lastCounts);
    });
    const merged = Registry.merge([AggregatorRegistry.aggregate([...sets, ...this.#retired]), this.#registry]);
    return { text: await merged.metrics(), contentType: merged.contentType };
  }

  #retire(counts: MetricSet): void {
    this.#retired.push(counts);
    // A crash loop must not grow this list: the oldest two are added into one.
    if (this.#retired.length > 16) {
      const [a, b] = this.#retired.splice(0, 2) as [MetricSet, MetricSet];
      this.#retired.unshift(mergeCounts(a, b));
    }
  }

  /** Reloads every worker: the errors of those that kept their configuration, and the issuers whose keys were kept. */
  async reload(): Promise<{ errors: string[]; issuersKept?: number }> {
    // Loading warms new issuers' keys: up to their HTTP timeouts.
    // A worker not serving (starting again) is not asked: it loads the file when it starts.
    const serving = this.#slots.map((s, i) => (s.worker && s.started ? i : -1)).filter((i) => i >= 0);
    const answers = await Promise.all(serving.map((i) => this.#ask(i, { type: 'reload' }, 120_000)));
    const errors = answers.flatMap((a, k) => (a.error ? [`worker ${serving[k]}: ${a.error}`] : []));
    return { errors, issuersKept: (answers[0]?.value as { issuersKept?: number } | undefined)?.issuersKept };
  }

  /** Drains every worker and waits for their exits (terminating one that takes longer than `timeoutMs`). */
  async stop(timeoutMs = 20_000): Promise<void> {
    this.#stopping = true;
    await Promise.all(
      this.#slots.map(async (slot, i) => {
        const worker = slot.worker;
        if (!worker) return;
        const exited = new Promise<void>((resolve) => worker.once('exit', () => resolve()));
        await this.#ask(i, { type: 'stop' }, timeoutMs);
        const timer = setTimeout(() => void worker.terminate(), 2000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
}
