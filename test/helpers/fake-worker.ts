/**
 * A stand-in for worker-main.js speaking the same protocol (worker-protocol.ts), for WorkerPool
 * tests: it answers from plain state instead of serving NATS. Worker 1 exits with code 3 the
 * first time it is asked for readiness (a crash), and serves normally once started again.
 */
import { existsSync, writeFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { Counter, Gauge, Registry } from 'prom-client';
import { workerConnections } from '../../src/config.js';
import type { FromWorker, ToPrimary, ToWorker, WorkerData } from '../../src/worker-protocol.js';

// The test runner loads every file under test/ as a test: outside a worker thread this does nothing.
if (parentPort) serve(parentPort);

function serve(port: NonNullable<typeof parentPort>): void {
  const data = workerData as WorkerData;
  const send = (m: FromWorker) => port.postMessage(m);
  const registry = new Registry();
  const requests = new Counter({ name: 'oidc_callout_requests_total', help: 'h', labelNames: ['result'], registers: [registry] });
  requests.inc({ result: 'allow' }, 10 * (data.index + 1));
  new Gauge({ name: 'oidc_callout_in_flight', help: 'h', registers: [registry], aggregator: 'sum' }).set(data.index + 1);
  // The connections worker-main would open: the replica's, as the pool handed them (also to a worker started again).
  new Gauge({ name: 'fake_worker_connections', help: 'h', registers: [registry], aggregator: 'sum' }).set(
    workerConnections(data.connections, data.count, data.index),
  );
  // The crash happens once per test run: a marker file (named by the replica) remembers it.
  const crashedMarker = `${data.replica}.crashed`;

  let peersAnswer: ((results: unknown) => void) | undefined;

  port.on('message', (m: ToWorker | ToPrimary) => {
    if (m.type === 'peers-answer') {
      peersAnswer?.(m.results);
      return;
    }
    const answer = (value: unknown) => send({ type: 'answer', id: m.id, value });
    switch (m.type) {
      case 'readiness':
        if (data.index === 1 && !existsSync(crashedMarker)) {
          writeFileSync(crashedMarker, '');
          process.exit(3);
        }
        answer([
          'keys of https://idp.example.com not loaded',
          ...(data.index === 0 ? ['only on worker 0'] : []),
          ...(data.revocations?.length ? [`holds ${data.revocations.length} revocation(s) from before it started`] : []),
        ]);
        break;
      case 'metrics':
        void registry.getMetricsAsJSON().then(answer);
        break;
      case 'revoke':
        answer({ dropped: data.index, found: 1, kicked: 1, gone: 0, errors: [], incomplete: false });
        break;
      case 'reload':
        // Worker 0 stands for the primary receiving a revocation: it has the others apply it.
        if (data.index === 0) {
          peersAnswer = (results) => answer({ issuersKept: 1, peers: results });
          send({ type: 'peers', id: 1, target: { issuer: 'https://idp.example.com', subject: 'mallory', at: 1000 } });
        } else answer({ issuersKept: 1 });
        break;
      case 'stop':
        answer(undefined);
        setImmediate(() => process.exit(0));
        break;
    }
  });
  send({ type: 'started' });
}
