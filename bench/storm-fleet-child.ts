/**
 * A slice of the reconnect storm's client fleet in a process of its own (forked by
 * storm-fleet.ts when one process cannot hold every client socket). It runs a
 * {@link ClientFleet} over clients `firstIndex` .. `firstIndex + tokens - 1` and does what the
 * parent asks over the message channel: open a window (answering with the closed one and this
 * process's event-loop delay over it), start, check permissions, stop. Its running counts go to
 * the parent at most every 50 ms, and at once when the slice becomes fully connected or stops
 * being so. It exits when the channel closes, so it never outlives the benchmark.
 */
import { monitorEventLoopDelay } from 'node:perf_hooks';
import { connectPayload } from './loadgen.js';
import { ClientFleet, type FleetWindow } from './storm-clients.js';
import { type ChildStatus, type FromChild, permissionSubjects, type ToChild, type WindowMessage } from './storm-fleet.js';

const STATUS_EVERY_MS = 50;

const tokens: string[] = [];
let fleet: ClientFleet | undefined;
let lastSent = '';
let full = false;
const loop = monitorEventLoopDelay({ resolution: 10 });
loop.enable();

const send = (m: FromChild, then?: () => void): void => {
  if (process.connected) process.send!(m, undefined, {}, () => then?.());
};

function status(): ChildStatus {
  if (!fleet) return { connected: 0, fullSinceNs: undefined, attempts: 0, connects: 0, failures: {} };
  const w = fleet.window;
  return { connected: fleet.connected, fullSinceNs: fleet.fullSinceNs, attempts: w.attempts, connects: w.connects, failures: { ...w.failures } };
}

/** Sends the status when it changed since the last one sent. */
function pushStatus(): void {
  if (!fleet) return;
  const s = status();
  const key = `${s.connected} ${s.attempts} ${s.connects}`;
  if (key === lastSent) return;
  lastSent = key;
  send({ type: 'status', status: s });
}

function windowMessage(w: FleetWindow): WindowMessage {
  const loopDelayMs = { p50: loop.percentile(50) / 1e6, p99: loop.percentile(99) / 1e6, max: loop.max / 1e6 };
  loop.reset();
  return {
    name: w.name,
    attempts: w.attempts,
    attemptsPerClient: w.attemptsPerClient,
    connects: w.connects,
    failures: w.failures,
    disconnects: w.disconnects,
    errorsWhileConnected: w.errorsWhileConnected,
    details: [...w.details],
    latencyNs: w.latency.values(),
    loopDelayMs,
  };
}

function reply(id: number, extra: { window?: WindowMessage; verify?: Awaited<ReturnType<ClientFleet['verifyPermissions']>> } = {}, then?: () => void): void {
  const s = status();
  lastSent = `${s.connected} ${s.attempts} ${s.connects}`;
  send({ type: 'reply', id, status: s, ...extra }, then);
}

async function handle(m: ToChild): Promise<void> {
  switch (m.type) {
    case 'tokens':
      tokens.push(...m.tokens);
      return;
    case 'init':
      fleet = new ClientFleet({
        ports: m.ports,
        payloads: tokens.map(connectPayload),
        firstIndex: m.firstIndex,
        sources: m.sources,
        attemptTimeoutMs: m.attemptTimeoutMs,
        retryMinMs: m.retryMinMs,
        retryMaxMs: m.retryMaxMs,
        onConnectedChange: () => {
          // Becoming fully connected, or no longer: the parent ends a phase on it.
          const now = fleet !== undefined && fleet.connected === fleet.size;
          if (now !== full) {
            full = now;
            pushStatus();
          }
        },
      });
      tokens.length = 0;
      setInterval(pushStatus, STATUS_EVERY_MS).unref();
      reply(m.id);
      return;
    case 'window': {
      const closed = fleet!.window;
      fleet!.beginWindow(m.name);
      reply(m.id, { window: windowMessage(closed) });
      return;
    }
    case 'start':
      fleet!.start();
      return;
    case 'status':
      reply(m.id);
      return;
    case 'verify':
      reply(m.id, { verify: await fleet!.verifyPermissions(permissionSubjects, m.timeoutMs) });
      return;
    case 'stop':
      fleet?.stop();
      // Once the answer is written: closing the channel cancels writes still queued.
      reply(m.id, {}, () => process.disconnect());
      return;
  }
}

process.on('message', (m: ToChild) => {
  handle(m).catch((err: unknown) => send({ type: 'error', ...('id' in m ? { id: m.id } : {}), message: (err as Error).stack ?? String(err) }));
});
// The parent is gone (or done): stop the clients and leave.
process.on('disconnect', () => {
  fleet?.stop();
  process.exit(0);
});
