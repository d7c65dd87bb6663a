/**
 * `npm run bench -- --only capacity`: the service alone, without nats-server's callout work.
 * Valid authorization requests, recorded beforehand (signed by a stand-in server key; sealed to
 * the service's xkey or not; cache hits: 8 tokens, unique tokens: one RS256 token each) are sent
 * at the service through a plain nats-server, 64 in flight, as request/reply; every answer is
 * opened and checked (an allow, for that request's user key). Reported: authorizations per
 * second and the service process's CPU per authorization, for each worker count asked for.
 */
import { connect } from '@nats-io/transport-node';
import { AUTH_SUBJECT } from '../src/runner.js';
import { fakeServer } from '../test/helpers/auth-request.js';
import { startLocalIssuer } from '../test/helpers/local-issuer.js';
import { signTokens } from './fixtures.js';
import { type BenchResult, processCpuMicros, processSyscalls } from './lib.js';
import { makeWorkDir, pickServers, removeWorkDir, startService } from './processes.js';
import { closedLoop, logTail, RequestRecorder, SENDER_USER, startPlainNats, untilAnswering, writeServiceFiles, xkeyHeader } from './service-alone.js';

export interface CapacityOptions {
  /** Worker counts to measure (`workers` of the service). */
  readonly workers: readonly number[];
  /** Requests per measured run. */
  readonly requests: number;
  readonly concurrency: number;
  /** Write a V8 CPU profile of each service process here (one file per run, in run order). */
  readonly profileDir?: string | undefined;
  readonly log: (line: string) => void;
  readonly onResult?: (r: BenchResult) => void;
}

const HIT_TOKENS = 8;

export async function runServiceCapacity(opts: CapacityOptions): Promise<BenchResult[]> {
  const [bin] = await pickServers(['newest']);
  const idp = await startLocalIssuer();
  const work = makeWorkDir();
  const results: BenchResult[] = [];
  try {
    opts.log(`  signing ${opts.requests} unique RS256 tokens and ${HIT_TOKENS} shared ones ...`);
    const unique = await signTokens(idp, opts.requests, 1_000);
    const shared = await signTokens(idp, HIT_TOKENS, 0);
    for (const xkey of [true, false]) {
      for (const kind of ['hit', 'miss'] as const) {
        for (const workers of opts.workers) {
          const r = await measure({ bin: bin!.path, issuer: idp.issuer, work, xkey, workers, tokens: kind === 'hit' ? shared : unique, opts });
          const name = `service alone, cache ${kind}, xkey ${xkey ? 'on' : 'off'}, ${workers} worker${workers === 1 ? '' : 's'}`;
          const result: BenchResult = {
            group: 'e2e',
            name,
            ops: r.answers,
            seconds: r.seconds,
            opsPerSec: r.answers / r.seconds,
            meanUs: (r.seconds * 1e6) / r.answers,
            extra: {
              serviceCpuUsPerAuthorization: Math.round(r.serviceCpuUs / r.answers),
              senderCpuUsPerAuthorization: Math.round(r.senderCpuUs / r.answers),
              // Socket reads and writes (system calls) of the service per authorization.
              serviceReadsPerAuthorization: Math.round((100 * r.serviceReads) / r.answers) / 100,
              serviceWritesPerAuthorization: Math.round((100 * r.serviceWrites) / r.answers) / 100,
              workers,
              xkey,
              kind,
            },
          };
          results.push(result);
          opts.onResult?.(result);
        }
      }
    }
  } finally {
    await idp.stop();
    removeWorkDir(work);
  }
  return results;
}

async function measure(o: {
  bin: string;
  issuer: string;
  work: string;
  xkey: boolean;
  workers: number;
  tokens: readonly string[];
  opts: CapacityOptions;
}): Promise<{ answers: number; seconds: number; serviceCpuUs: number; senderCpuUs: number; serviceReads: number; serviceWrites: number }> {
  const nats = await startPlainNats(o.bin);
  const files = writeServiceFiles({ work: o.work, natsUrl: nats.url, issuer: o.issuer, xkey: o.xkey, workers: o.workers });
  // Recorded before the service starts (the local IdP, in this process, must then be free to
  // answer it), with a long-lived exp, so none is dropped as stale while it waits its turn.
  const recorder = new RequestRecorder(fakeServer(), files.serviceXkey);
  const recorded = Array.from({ length: o.opts.requests }, (_, i) => recorder.record(o.tokens[i % o.tokens.length]!, { lifetimeS: 600 }));
  const service = await startService(files.configFile, files.logFile, o.opts.profileDir);
  const requestOpts = o.xkey ? { timeout: 10_000, headers: xkeyHeader(recorder.box.publicKey) } : { timeout: 10_000 };
  const sender = await connect({ servers: nats.url, ...SENDER_USER });
  try {
    const ask = async (i: number): Promise<void> => {
      const r = recorded[i]!;
      const msg = await sender.request(AUTH_SUBJECT, r.data, requestOpts);
      const wrong = recorder.check(msg.data, r.userNkey);
      if (wrong) throw new Error(wrong);
    };
    // Until the service answers (subscribed, keys loaded): the warm-up also teaches it the clock.
    await untilAnswering(() => ask(0), files.logFile);
    const cpu0 = processCpuMicros(service.pid);
    const sender0 = process.cpuUsage();
    const io0 = processSyscalls(service.pid);
    const t0 = performance.now();
    try {
      await closedLoop(1, recorded.length, o.opts.concurrency, ask);
    } catch (err) {
      // The service's log says why it refused.
      throw new Error(`${(err as Error).message}; the service's last log lines:\n${logTail(files.logFile, 3)}`);
    }
    const seconds = (performance.now() - t0) / 1000;
    const serviceCpuUs = processCpuMicros(service.pid) - cpu0;
    const sender1 = process.cpuUsage(sender0);
    const io1 = processSyscalls(service.pid);
    return {
      answers: recorded.length - 1,
      seconds,
      serviceCpuUs,
      senderCpuUs: sender1.user + sender1.system,
      serviceReads: io1.reads - io0.reads,
      serviceWrites: io1.writes - io0.writes,
    };
  } finally {
    await sender.close();
    await service.stop();
    await nats.stop();
  }
}
