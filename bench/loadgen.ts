/**
 * A connect-storm load generator that speaks the NATS client protocol directly over net.Socket:
 * read the server's INFO line, send `CONNECT {...}\r\nPING\r\n`, and wait for PONG (the server
 * accepted the connection, i.e. the callout allowed it) or `-ERR` (refused), then close.
 * A real nats.js client costs far more CPU per connect than the server side being measured.
 *
 * Accepted connections are closed with a TCP reset: the client side would otherwise keep every
 * port in TIME_WAIT for 60 s and run out of ephemeral ports on long plain-token runs.
 */
import { connect as tcpConnect } from 'node:net';
import { nowNs, Samples } from './lib.js';

export type Outcome = 'ok' | 'auth_violation' | 'error' | 'timeout' | 'closed' | 'socket_error';

/** The bytes a client sends once it has read INFO; built once per token. */
export function connectPayload(token: string): Buffer {
  const opts = { auth_token: token, verbose: false, pedantic: false, protocol: 1, lang: 'bench', version: '0' };
  return Buffer.from(`CONNECT ${JSON.stringify(opts)}\r\nPING\r\n`);
}

/** One connect attempt; calls `done` exactly once. */
export function connectOnce(port: number, payload: Buffer, timeoutMs: number, done: (outcome: Outcome, detail?: string) => void): void {
  const socket = tcpConnect({ host: '127.0.0.1', port, noDelay: true });
  let buf = '';
  let sentConnect = false;
  let finished = false;
  const finish = (outcome: Outcome, detail?: string): void => {
    if (finished) return;
    finished = true;
    clearTimeout(timer);
    if (outcome === 'ok' && !socket.destroyed) socket.resetAndDestroy();
    else socket.destroy();
    done(outcome, detail);
  };
  const timer = setTimeout(() => finish('timeout'), timeoutMs);
  socket.on('data', (chunk: Buffer) => {
    buf += chunk.toString('latin1');
    if (!sentConnect) {
      const nl = buf.indexOf('\r\n');
      if (nl < 0) return;
      if (!buf.startsWith('INFO ')) return finish('error', buf.slice(0, 80));
      buf = buf.slice(nl + 2);
      sentConnect = true;
      socket.write(payload);
    }
    if (buf.length === 0) return;
    if (buf.includes('PONG\r\n')) return finish('ok');
    const err = buf.indexOf('-ERR');
    if (err >= 0) {
      const end = buf.indexOf('\r\n', err);
      if (end < 0) return; // wait for the whole line
      const line = buf.slice(err, end);
      return finish(/Authorization Violation/i.test(line) ? 'auth_violation' : 'error', line);
    }
  });
  socket.on('error', (e: NodeJS.ErrnoException) => finish('socket_error', e.code ?? e.message));
  socket.on('close', () => finish('closed'));
}

/** Promise form, for probes. */
export function connectOnceAsync(port: number, token: string, timeoutMs = 5000): Promise<{ outcome: Outcome; detail?: string | undefined }> {
  return new Promise((resolve) => connectOnce(port, connectPayload(token), timeoutMs, (outcome, detail) => resolve({ outcome, detail })));
}

export interface StormOptions {
  readonly port: number;
  /** Connects kept in flight. */
  readonly concurrency: number;
  readonly durationMs: number;
  /** Payload of the n-th connect; undefined when the supply is exhausted (the storm ends early). */
  readonly payload: (n: number) => Buffer | undefined;
  readonly timeoutMs?: number;
}

export interface StormResult {
  readonly attempted: number;
  readonly success: number;
  readonly failure: number;
  readonly outcomes: Record<string, number>;
  /** A few distinct failure details, for diagnosis. */
  readonly details: string[];
  readonly wallNs: bigint;
  /** Latency of successful connects, ns (TCP connect to PONG). */
  readonly latency: Samples;
  /** The payload supply ran out before the duration ended. */
  readonly exhausted: boolean;
}

/** Keeps `concurrency` connects in flight for `durationMs`, then waits for the stragglers. */
export function storm(opts: StormOptions): Promise<StormResult> {
  return new Promise((resolve) => {
    const latency = new Samples();
    const outcomes: Record<string, number> = {};
    const details = new Set<string>();
    let attempted = 0;
    let success = 0;
    let failure = 0;
    let inFlight = 0;
    let exhausted = false;
    const start = nowNs();
    const stopAt = start + BigInt(Math.round(opts.durationMs * 1e6));
    let stopping = false;
    const timeoutMs = opts.timeoutMs ?? 5000;

    const launch = (): void => {
      if (stopping) return;
      const payload = opts.payload(attempted);
      if (!payload) {
        exhausted = true;
        stopping = true;
        return;
      }
      attempted++;
      inFlight++;
      const t0 = nowNs();
      connectOnce(opts.port, payload, timeoutMs, (outcome, detail) => {
        const t1 = nowNs();
        inFlight--;
        outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
        if (outcome === 'ok') {
          success++;
          latency.push(Number(t1 - t0));
        } else {
          failure++;
          if (detail && details.size < 5) details.add(`${outcome}: ${detail}`);
        }
        if (!stopping && t1 >= stopAt) stopping = true;
        launch();
        if (stopping && inFlight === 0) {
          resolve({ attempted, success, failure, outcomes, details: [...details], wallNs: nowNs() - start, latency, exhausted });
        }
      });
    };
    for (let i = 0; i < opts.concurrency; i++) launch();
    if (inFlight === 0) resolve({ attempted, success, failure, outcomes, details: [], wallNs: nowNs() - start, latency, exhausted });
  });
}
