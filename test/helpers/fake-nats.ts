/**
 * Test helpers: an in-memory stand-in for a NatsConnection, enough for CalloutRunner (subscribe,
 * publish, flush as the PING probe, status events), and a CalloutService on a clock the test
 * moves. Lets scheduler tests decide when (or whether) each PING comes back.
 */
import { createAccount } from '@nats-io/nkeys';
import type { Msg, MsgHdrs, NatsConnection } from '@nats-io/transport-node';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import type { Metrics } from '../../src/metrics.js';
import { AUTH_SUBJECT } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { LogCapture, seedOf } from './callout-fixture.js';
import { FakeClock } from './fake-clock.js';

export type FlushMode = 'auto' | 'manual' | 'never';

export class FakeNats {
  readonly published: { subject: string; data: Uint8Array }[] = [];
  /** How PINGs (flush) are answered: at once, when `pong()` is called, or never. */
  flushMode: FlushMode = 'auto';
  /** Delay of an automatic PONG (ms, real time). */
  autoPongMs = 0;
  #pending: (() => void)[] = [];
  #callback: ((err: Error | null, msg: Msg) => void) | undefined;
  #status: unknown[] = [];
  #waiter: ((r: IteratorResult<unknown>) => void) | undefined;
  #closed = false;

  subscribe(_subject: string, opts: { queue?: string; callback: (err: Error | null, msg: Msg) => void }) {
    this.#callback = opts.callback;
    return {
      isClosed: () => false,
      drain: async () => {
        this.#callback = undefined;
      },
      unsubscribe: () => {
        this.#callback = undefined;
      },
    };
  }

  /** Delivers one request as nats-server would (synchronously, in the read loop), with `headers` when given. */
  deliver(data: Uint8Array | string, reply: string | undefined = `$SYS._INBOX.test.${this.published.length}`, headers?: MsgHdrs): void {
    const bytes = typeof data === 'string' ? new TextEncoder().encode(data) : data;
    this.#callback?.(null, { subject: AUTH_SUBJECT, data: bytes, reply, headers } as unknown as Msg);
  }

  publish(subject: string, data: Uint8Array): void {
    if (this.#closed) throw new Error('closed');
    this.published.push({ subject, data });
  }

  flush(): Promise<void> {
    if (this.flushMode === 'never') return new Promise<void>(() => {});
    if (this.flushMode === 'manual') return new Promise<void>((resolve) => this.#pending.push(resolve));
    if (this.autoPongMs > 0) return new Promise<void>((resolve) => setTimeout(resolve, this.autoPongMs));
    return Promise.resolve();
  }

  /** Answers every PING sent so far (flushMode 'manual'). */
  pong(): void {
    const p = this.#pending;
    this.#pending = [];
    for (const resolve of p) resolve();
  }

  status(): AsyncIterable<unknown> {
    return {
      [Symbol.asyncIterator]: () => ({
        next: () =>
          new Promise<IteratorResult<unknown>>((resolve) => {
            if (this.#status.length) resolve({ value: this.#status.shift(), done: false });
            else this.#waiter = resolve;
          }),
      }),
    };
  }

  emitStatus(event: { type: string; server?: string }): void {
    const w = this.#waiter;
    if (w) {
      this.#waiter = undefined;
      w({ value: event, done: false });
    } else this.#status.push(event);
  }

  getServer(): string {
    return '127.0.0.1:4222';
  }

  isClosed(): boolean {
    return this.#closed;
  }

  closed(): Promise<undefined | Error> {
    return new Promise(() => {});
  }

  async drain(): Promise<void> {
    this.#closed = true;
  }

  async close(): Promise<void> {
    this.#closed = true;
  }

  asNats(): NatsConnection {
    return this as unknown as NatsConnection;
  }
}

/** A service on a clock the test moves (`clock.mono`, `clock.advance`); wall time starts real. */
export function fakeClockService(opts: { observer?: Metrics; token?: Record<string, unknown> } = {}) {
  const log = new LogCapture();
  const clock = new FakeClock();
  const config = buildConfig(
    {
      nats: {},
      callout: { account: 'AUTH', issuer_seed: seedOf(createAccount()) },
      issuers: [{ issuer: 'https://idp.example.com', audiences: ['nats'] }],
      policy: { rules: [{ name: 'all', allow_broad: true, account: 'APP', permissions: { pub: { allow: ['app.>'] } } }] },
      ...(opts.token ? { token: opts.token } : {}),
    },
    {},
  );
  const service = new CalloutService(config, createLogger('debug', log.write), {
    clock,
    observer: opts.observer,
  });
  return { service, log, clock, logger: createLogger('debug', log.write) };
}

/** Lets timers, immediates and promises run for `ms` of real time. */
export const settle = (ms = 30): Promise<void> => new Promise((r) => setTimeout(r, ms));
