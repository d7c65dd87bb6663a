/**
 * A scheduler under test: a runner on one in-memory connection with a window of one answer,
 * whose PINGs the test answers (`flushMode`), and fresh requests of one stand-in server on the
 * test's clock. Shared by the overload and queue-memory tests.
 */
import type { Metrics } from '../../src/metrics.js';
import { CalloutRunner, type RunnerOptions } from '../../src/runner.js';
import type { CalloutService } from '../../src/service.js';
import { authRequestJwt, fakeServer } from './auth-request.js';
import { FakeNats, type FlushMode, fakeClockService } from './fake-nats.js';

/** Counts the requests the service opens (admit). */
function countOpens(service: CalloutService): { opened: number } {
  const counter = { opened: 0 };
  const admit = service.admit.bind(service);
  service.admit = (...args: Parameters<CalloutService['admit']>) => {
    counter.opened++;
    return admit(...args);
  };
  return counter;
}

export async function runnerScenario(options: RunnerOptions, flushMode: FlushMode = 'manual', observer?: Metrics) {
  const { service, clock, log, logger } = fakeClockService({ observer });
  const opens = countOpens(service);
  const nc = new FakeNats();
  const runner = new CalloutRunner([nc.asNats()], service, logger, { laneWindow: 1, ...options });
  await runner.start();
  nc.flushMode = flushMode;
  const server = fakeServer();
  const fresh = () => authRequestJwt(server, { now: Math.floor(clock.mono / 1000), connectOpts: {} });
  return { service, clock, log, nc, runner, opens, server, fresh };
}
