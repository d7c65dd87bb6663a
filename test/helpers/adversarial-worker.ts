/**
 * A stand-in for worker-main.js (worker-protocol.ts) for the adversarial WorkerPool tests,
 * driven by a scenario: `workerData.file` is a JSON file (below) instead of a configuration, and
 * `workerData.replica` is a path prefix for marker files (each incarnation of a worker counts
 * itself in `<replica>.w<index>.count`, so a scenario can treat a restarted worker differently).
 *
 * Readiness answers describe the worker's state: `w<i> n<incarnation> revoked <subjects>` and
 * `w<i> reloads <n>`, so tests can see what each worker holds.
 */
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { Counter, Registry } from 'prom-client';
import type { AppliedRevocation, RevokeTarget } from '../../src/admin.js';
import { Metrics } from '../../src/metrics.js';
import { type FromWorker, type ToPrimary, type ToWorker, type WorkerData, workerLaneLabel } from '../../src/worker-protocol.js';

export interface Scenario {
  /** Workers that exit (code 3) the first time they are asked for readiness. */
  readonly crashOnReadiness?: readonly number[];
  /** `"index:incarnation"`: that incarnation exits (code 2) before it says `started`. */
  readonly failStart?: readonly string[];
  /** `"index:incarnation"`: that incarnation writes `<replica>.w<i>.n<n>.starting` and waits for `<replica>.go` before `started`. */
  readonly holdStart?: readonly string[];
  /** Workers that never answer a revocation the pool relays to them (busy, wedged). */
  readonly silentOnRevoke?: readonly number[];
  /** Worker 0 relays a revocation of `mallory` through the pool when asked to reload. */
  readonly peersOnReload?: boolean;
  /**
   * `"index:incarnation:n"`: how that incarnation answers its n-th metrics request (from 1):
   * after `delayMs`, and/or exiting (code 3) right after the answer is sent.
   */
  readonly metricsAnswers?: Record<string, { readonly delayMs?: number; readonly exitAfter?: boolean }>;
  /** Reply lane delays (seconds; `null` for a disconnected lane) by worker index, reported through the real Metrics. */
  readonly lanes?: Record<string, Record<string, number | null>>;
}

// The test runner loads every file under test/ as a test: outside a worker thread this does nothing.
if (parentPort) serve(parentPort);

function serve(port: NonNullable<typeof parentPort>): void {
  const data = workerData as WorkerData;
  const send = (m: FromWorker) => port.postMessage(m);
  const scenario = JSON.parse(readFileSync(data.file, 'utf8')) as Scenario;

  const countFile = `${data.replica}.w${data.index}.count`;
  const incarnation = (existsSync(countFile) ? Number(readFileSync(countFile, 'utf8')) : 0) + 1;
  writeFileSync(countFile, String(incarnation));
  const me = `${data.index}:${incarnation}`;

  const revoked: RevokeTarget[] = [...(data.revocations ?? [])];
  let reloads = 0;

  // Requests served: the first incarnation of worker i served 10 * (i + 1); one started again has served 1 so far.
  const registry = new Registry();
  new Counter({ name: 'oidc_callout_requests_total', help: 'h', labelNames: ['result'], registers: [registry] }).inc(
    { result: 'allow' },
    incarnation === 1 ? 10 * (data.index + 1) : 1,
  );
  const metrics = new Metrics('0.0.0');
  const lanes = scenario.lanes?.[String(data.index)] ?? {};
  metrics.attach({
    inFlight: () => 0,
    queueLength: () => 0,
    // Labelled as worker-main labels its lanes.
    replyLaneDelays: () =>
      Object.entries(lanes).map(([connection, s]) => ({
        connection: workerLaneLabel(data.index, connection),
        seconds: s === null ? Number.POSITIVE_INFINITY : s,
      })),
    cacheEntries: () => 0,
    issuersKeysLoaded: () => [],
  });

  let peersAnswer: ((results: AppliedRevocation[]) => void) | undefined;
  let metricsAsked = 0;

  port.on('message', (m: ToWorker | ToPrimary) => {
    if (m.type === 'peers-answer') {
      peersAnswer?.(m.results);
      return;
    }
    const answer = (value: unknown) => send({ type: 'answer', id: m.id, value });
    switch (m.type) {
      case 'readiness': {
        const marker = `${data.replica}.w${data.index}.crashed`;
        if (scenario.crashOnReadiness?.includes(data.index) && !existsSync(marker)) {
          writeFileSync(marker, '');
          process.exit(3);
        }
        answer([`w${data.index} n${incarnation} revoked ${revoked.map((r) => r.subject).join(',')}`, `w${data.index} reloads ${reloads}`]);
        break;
      }
      case 'metrics': {
        const how = scenario.metricsAnswers?.[`${me}:${++metricsAsked}`] ?? {};
        void Promise.all([registry.getMetricsAsJSON(), metrics.registry.getMetricsAsJSON()]).then(([a, b]) =>
          setTimeout(() => {
            answer([...a, ...b]);
            if (how.exitAfter) setImmediate(() => process.exit(3));
          }, how.delayMs ?? 0),
        );
        break;
      }
      case 'revoke':
        revoked.push(m.target);
        if (scenario.silentOnRevoke?.includes(data.index)) break;
        answer({ dropped: 0, found: 0, kicked: 0, gone: 0, errors: [], incomplete: false } satisfies AppliedRevocation);
        break;
      case 'reload':
        reloads++;
        if (data.index === 0 && scenario.peersOnReload) {
          const target: RevokeTarget = { issuer: 'https://idp.example.com', subject: 'mallory', at: 1000 };
          revoked.push(target);
          peersAnswer = (results) => answer({ issuersKept: 1, peers: results });
          send({ type: 'peers', id: 1, target });
        } else answer({ issuersKept: 1 });
        break;
      case 'stop':
        answer(undefined);
        setImmediate(() => process.exit(0));
        break;
    }
  });

  async function begin(): Promise<void> {
    if (scenario.failStart?.includes(me)) process.exit(2);
    if (scenario.holdStart?.includes(me)) {
      writeFileSync(`${data.replica}.w${data.index}.n${incarnation}.starting`, '');
      while (!existsSync(`${data.replica}.go`)) await new Promise((r) => setTimeout(r, 20));
    }
    send({ type: 'started' });
  }
  void begin();
}
