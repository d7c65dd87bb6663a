/**
 * A worker thread of a replica (workers > 1): one ServiceInstance with NATS connections of its
 * own in the queue group, its own decision cache and metrics, driven by the main thread.
 */
import { parentPort, workerData } from 'node:worker_threads';
import type { AppliedRevocation, RevokeTarget } from './admin.js';
import type { ReplayGuard } from './admin-request.js';
import { loadConfig, workerConnections } from './config.js';
import { createLogger } from './log.js';
import { Metrics } from './metrics.js';
import { ServiceInstance } from './service-instance.js';
import { type FromWorker, type ToPrimary, type ToWorker, type WorkerData, workerLaneLabel } from './worker-protocol.js';

const data = workerData as WorkerData;
const port = parentPort!;
const send = (m: FromWorker) => port.postMessage(m);

async function main(): Promise<void> {
  const config = loadConfig(data.file);
  // Every line says which worker wrote it.
  const log = createLogger(config.log.level, (line) => process.stdout.write(`${line.slice(0, -2)},"worker":${data.index}}\n`));
  const metrics = new Metrics(data.version);
  // The replica's NATS connections, shared out: each worker serves its part of the queue group.
  const connections = workerConnections(data.connections, data.count, data.index);
  let nextAsk = 0;
  const peersPending = new Map<number, (r: AppliedRevocation[]) => void>();
  const claimsPending = new Map<number, (fresh: boolean) => void>();
  const peers = (target: RevokeTarget) =>
    new Promise<AppliedRevocation[]>((resolve) => {
      const id = nextAsk++;
      peersPending.set(id, resolve);
      send({ type: 'peers', id, target });
    });
  // The replica's replay guard lives in the main thread: any worker may receive a request again.
  const replays: ReplayGuard = {
    claim: (jti, until, now) =>
      new Promise<boolean>((resolve) => {
        const id = nextAsk++;
        claimsPending.set(id, resolve);
        send({ type: 'claim', id, jti, until, now });
      }),
  };
  const instance = await ServiceInstance.start(config, log, metrics, {
    replica: `${data.replica}/w${data.index}`,
    primary: data.index === 0,
    connections,
    connectionName: `${config.nats.name}/w${data.index}`,
    workers: { peers, replays, queue: data.adminQueue },
    revocations: data.revocations,
    laneLabel: (c) => workerLaneLabel(data.index, c),
  });
  // NATS closed for good (not by a stop): this worker ends, and the pool starts it again.
  let stopping = false;
  void instance.closed().then(() => {
    if (stopping) return;
    process.exit(1);
  });
  port.on('message', (m: ToWorker | ToPrimary) => {
    if (m.type === 'peers-answer') {
      peersPending.get(m.id)?.(m.results);
      peersPending.delete(m.id);
      return;
    }
    if (m.type === 'claim-answer') {
      claimsPending.get(m.id)?.(m.fresh);
      claimsPending.delete(m.id);
      return;
    }
    void answer(m).then(
      (value) => send({ type: 'answer', id: m.id, value }),
      (err: Error) => send({ type: 'answer', id: m.id, value: undefined, error: err.message }),
    );
  });

  async function answer(m: ToWorker): Promise<unknown> {
    switch (m.type) {
      case 'readiness':
        return instance.readiness();
      case 'metrics':
        return metrics.registry.getMetricsAsJSON();
      case 'revoke':
        return instance.applyRevocation(m.target);
      case 'reload': {
        const next = loadConfig(data.file);
        try {
          const r = await instance.reload(next);
          metrics.reloaded(true);
          return r;
        } catch (err) {
          metrics.reloaded(false);
          throw err;
        }
      }
      case 'stop':
        stopping = true;
        await instance.stop();
        setImmediate(() => process.exit(0));
        return undefined;
    }
  }
  send({ type: 'started' });
}

main().catch((err: Error) => {
  process.stderr.write(`oidc-callout worker ${data.index}: ${err.message}\n`);
  process.exit(2);
});
