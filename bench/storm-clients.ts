/**
 * The client fleet of the reconnect storm: one raw-protocol NATS client per token (like
 * loadgen.ts: read INFO, send `CONNECT {...}\r\nPING\r\n`, PONG = accepted) that behaves like a
 * real client over time:
 *
 * - an accepted client stays connected and answers the server's PINGs (nats-server pings idle
 *   clients and drops those that do not answer);
 * - after a refusal, a timeout, a socket error or a closed socket (also of an accepted client,
 *   e.g. when nats-server restarts) it waits a uniformly random pause and connects again.
 *
 * Sockets the client closes itself are reset (RST) rather than closed, so the load generator's
 * ports do not sit in TIME_WAIT for a minute: a long storm makes hundreds of thousands of
 * attempts from a few loopback addresses. Counters go into the current {@link FleetWindow}, so
 * the caller can measure phases (cold start, restart) separately while the fleet runs on.
 *
 * A fleet may be one slice of a larger one (clients `firstIndex` .. `firstIndex + size - 1`)
 * running in a child process (storm-fleet.ts): a client's index, and so its server, source
 * address and subjects, is its index in the whole storm.
 */
import { connect as tcpConnect, type Socket } from 'node:net';
import { nowNs, Samples } from './lib.js';

/** Why an attempt failed. */
export type FailOutcome =
  /**
   * `-ERR 'Authorization Violation'`: the service refused, or nats-server got no callout answer
   * within its wait (the authorization timeout; with no service subscribed it waits all of it).
   */
  | 'auth_violation'
  /** `-ERR 'Authentication Timeout'`: the connection's authorization timer ran out before a decision. */
  | 'auth_timeout'
  /** Any other `-ERR` before PONG (e.g. maximum connections exceeded). */
  | 'other_err'
  /**
   * The client's own timeout, by stage: the TCP connection was not established (SYNs dropped
   * while the listen backlog was full), no INFO came, or CONNECT got neither PONG nor -ERR.
   */
  | 'timeout_tcp'
  | 'timeout_info'
  | 'timeout_answer'
  /** ECONNREFUSED: nothing listening, the server is down. */
  | 'refused'
  /** ECONNRESET or EPIPE. */
  | 'reset'
  /** Any other socket error (the code is in the details). */
  | 'socket_error'
  /** The server closed the socket without a -ERR. */
  | 'closed';

/** What the fleet counted from `beginWindow()` until the next one. */
export interface FleetWindow {
  readonly name: string;
  readonly startNs: bigint;
  /** Connection attempts started. */
  attempts: number;
  /** Attempts per client of this fleet (index 0 is client `firstIndex`). */
  readonly attemptsPerClient: Uint32Array;
  /** Attempts that got PONG. */
  connects: number;
  readonly failures: Record<string, number>;
  /** Accepted clients whose socket closed afterwards. */
  disconnects: number;
  /** -ERR lines received by accepted clients outside a permission check. */
  errorsWhileConnected: number;
  /** A few distinct failure lines, for diagnosis. */
  readonly details: Set<string>;
  /** Of successful attempts, ns from starting the TCP connect to PONG. */
  readonly latency: Samples;
}

export interface FleetOptions {
  /** Client ports of the nats-servers on 127.0.0.1; client i connects to `ports[i % ports.length]`. */
  readonly ports: readonly number[];
  /** One `CONNECT ...\r\nPING\r\n` payload per client (see loadgen.ts connectPayload). */
  readonly payloads: readonly Buffer[];
  /** Index in the whole storm of this fleet's first client (default 0). */
  readonly firstIndex?: number;
  /** Local source addresses; client i binds to `sources[i % sources.length]`; none: no bind (host-limits.ts). */
  readonly sources: readonly string[];
  /** The client's own connect timeout; longer than the server's authorization timeout. */
  readonly attemptTimeoutMs: number;
  readonly retryMinMs: number;
  readonly retryMaxMs: number;
  /** Called (synchronously) whenever the number of connected clients changes. */
  readonly onConnectedChange?: () => void;
}

/** Outcome of {@link ClientFleet.verifyPermissions}. */
export interface VerifyResult {
  readonly seconds: number;
  /** Connected clients that were checked. */
  readonly checked: number;
  /** Clients that saw no error for the allowed subject and exactly the violation for the denied one. */
  readonly correct: number;
  readonly mismatches: number;
  /** Clients not connected when the check started (not checked). */
  readonly notConnected: number;
  /** A few mismatches, for diagnosis. */
  readonly details: string[];
}

interface PermissionProbe {
  readonly denied: string;
  pongs: number;
  readonly errorsBeforeFirstPong: string[];
  readonly errorsAfterFirstPong: string[];
  finish(why?: string): void;
}

interface Client {
  /** Index in the whole storm. */
  readonly index: number;
  /** Index in this fleet. */
  readonly local: number;
  readonly payload: Buffer;
  readonly port: number;
  readonly source: string | undefined;
  state: 'idle' | 'waiting' | 'connecting' | 'connected' | 'stopped';
  /** The socket of the current attempt or connection; events of older sockets are ignored. */
  socket: Socket | undefined;
  buf: string;
  sentConnect: boolean;
  startNs: bigint;
  /** Attempt timeout while connecting, retry pause while waiting. */
  timer: NodeJS.Timeout | undefined;
  probe: PermissionProbe | undefined;
}

const classifyErr = (line: string): FailOutcome =>
  /Authorization Violation/i.test(line) ? 'auth_violation' : /Authentication Timeout/i.test(line) ? 'auth_timeout' : 'other_err';

function classifySocketError(e: NodeJS.ErrnoException): FailOutcome {
  if (e.code === 'ECONNREFUSED') return 'refused';
  if (e.code === 'ECONNRESET' || e.code === 'EPIPE') return 'reset';
  return 'socket_error';
}

/** Closes a socket we give up on without leaving its port in TIME_WAIT. */
function discard(socket: Socket): void {
  // An unestablished socket has nothing to reset (resetAndDestroy would wait for the connect).
  if (socket.connecting || socket.destroyed) socket.destroy();
  else socket.resetAndDestroy();
}

export class ClientFleet {
  readonly #o: FleetOptions;
  readonly #clients: Client[];
  #connected = 0;
  #fullSinceNs: bigint | undefined;
  #window: FleetWindow;
  #onAllConnected: (() => void) | undefined;

  constructor(opts: FleetOptions) {
    this.#o = opts;
    const first = opts.firstIndex ?? 0;
    this.#clients = opts.payloads.map((payload, local) => ({
      index: first + local,
      local,
      payload,
      port: opts.ports[(first + local) % opts.ports.length]!,
      source: opts.sources.length === 0 ? undefined : opts.sources[(first + local) % opts.sources.length],
      state: 'idle',
      socket: undefined,
      buf: '',
      sentConnect: false,
      startNs: 0n,
      timer: undefined,
      probe: undefined,
    }));
    this.#window = this.beginWindow('initial');
  }

  get size(): number {
    return this.#clients.length;
  }

  /** Clients connected now. */
  get connected(): number {
    return this.#connected;
  }

  get window(): FleetWindow {
    return this.#window;
  }

  /** When every client of this fleet became connected (and still is), by nowNs(); undefined otherwise. */
  get fullSinceNs(): bigint | undefined {
    return this.#fullSinceNs;
  }

  /** Starts counting into a new window (the previous one keeps its figures). */
  beginWindow(name: string): FleetWindow {
    this.#window = {
      name,
      startNs: nowNs(),
      attempts: 0,
      attemptsPerClient: new Uint32Array(this.#clients.length),
      connects: 0,
      failures: {},
      disconnects: 0,
      errorsWhileConnected: 0,
      details: new Set(),
      latency: new Samples(),
    };
    return this.#window;
  }

  /** Every client starts its first attempt now. */
  start(): void {
    for (const c of this.#clients) if (c.state === 'idle') this.#attempt(c);
  }

  /** Resolves true once every client is connected, false after `timeoutMs`. */
  waitAllConnected(timeoutMs: number): Promise<boolean> {
    if (this.#connected === this.#clients.length) return Promise.resolve(true);
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.#onAllConnected = undefined;
        resolve(false);
      }, timeoutMs);
      this.#onAllConnected = () => {
        clearTimeout(timer);
        this.#onAllConnected = undefined;
        resolve(true);
      };
    });
  }

  /**
   * Every connected client publishes once to `allowed(i)` and once to `denied(i)`, each followed
   * by PING. The server answers in order on the connection, so the first PONG closes the window
   * in which an error would belong to the allowed publish, and the violation for the denied
   * one must arrive before the second PONG.
   */
  verifyPermissions(subjects: (i: number) => { allowed: string; denied: string }, timeoutMs: number): Promise<VerifyResult> {
    const t0 = nowNs();
    const details: string[] = [];
    let checked = 0;
    let correct = 0;
    let pending = 0;
    let notConnected = 0;
    return new Promise((resolve) => {
      let ended = false;
      const done = (): void => {
        if (ended) return;
        ended = true;
        clearTimeout(timer);
        for (const c of this.#clients) c.probe?.finish('no answer before the timeout');
        resolve({ seconds: Number(nowNs() - t0) / 1e9, checked, correct, mismatches: checked - correct, notConnected, details });
      };
      const timer = setTimeout(done, timeoutMs);
      for (const c of this.#clients) {
        if (c.state !== 'connected' || !c.socket) {
          notConnected++;
          continue;
        }
        const { allowed, denied } = subjects(c.index);
        checked++;
        pending++;
        const probe: PermissionProbe = {
          denied,
          pongs: 0,
          errorsBeforeFirstPong: [],
          errorsAfterFirstPong: [],
          finish: (why) => {
            if (c.probe !== probe) return;
            c.probe = undefined;
            const before = probe.errorsBeforeFirstPong;
            const after = probe.errorsAfterFirstPong;
            const violation = after.length === 1 && after[0]!.includes(`Permissions Violation for Publish to "${denied}"`);
            if (!why && probe.pongs === 2 && before.length === 0 && violation) correct++;
            else if (details.length < 5) {
              details.push(`client ${c.index}: ${why ?? 'wrong answers'}; allowed ${allowed}: [${before.join(', ')}], denied ${denied}: [${after.join(', ')}]`);
            }
            if (--pending === 0) done();
          },
        };
        c.probe = probe;
        c.socket.write(`PUB ${allowed} 0\r\n\r\nPING\r\nPUB ${denied} 0\r\n\r\nPING\r\n`);
      }
      if (pending === 0) done();
    });
  }

  /** Stops every client: no more attempts, every socket reset. */
  stop(): void {
    for (const c of this.#clients) {
      c.state = 'stopped';
      clearTimeout(c.timer);
      c.probe?.finish('fleet stopped');
      const socket = c.socket;
      c.socket = undefined;
      if (socket) discard(socket);
    }
    this.#setConnected(0);
  }

  #attempt(c: Client): void {
    const w = this.#window;
    w.attempts++;
    w.attemptsPerClient[c.local]!++;
    c.state = 'connecting';
    c.buf = '';
    c.sentConnect = false;
    c.startNs = nowNs();
    const socket = tcpConnect({ host: '127.0.0.1', port: c.port, noDelay: true, ...(c.source === undefined ? {} : { localAddress: c.source }) });
    c.socket = socket;
    c.timer = setTimeout(() => this.#fail(c, socket.connecting ? 'timeout_tcp' : c.sentConnect ? 'timeout_answer' : 'timeout_info'), this.#o.attemptTimeoutMs);
    socket.on('data', (chunk: Buffer) => {
      if (c.socket !== socket) return;
      c.buf += chunk.toString('latin1');
      for (let nl = c.buf.indexOf('\r\n'); nl >= 0 && c.socket === socket; nl = c.buf.indexOf('\r\n')) {
        const line = c.buf.slice(0, nl);
        c.buf = c.buf.slice(nl + 2);
        this.#line(c, socket, line);
      }
    });
    socket.on('error', (e: NodeJS.ErrnoException) => this.#gone(c, socket, classifySocketError(e), e.code ?? e.message));
    socket.on('close', () => this.#gone(c, socket, 'closed'));
  }

  #line(c: Client, socket: Socket, line: string): void {
    if (line === 'PING') {
      socket.write('PONG\r\n');
      return;
    }
    if (c.state === 'connected') {
      if (line === 'PONG') {
        if (c.probe && ++c.probe.pongs === 2) c.probe.finish();
      } else if (line.startsWith('-ERR')) {
        if (c.probe) (c.probe.pongs === 0 ? c.probe.errorsBeforeFirstPong : c.probe.errorsAfterFirstPong).push(line);
        else {
          this.#window.errorsWhileConnected++;
          this.#detail(`connected: ${line}`);
        }
      }
      return;
    }
    if (!c.sentConnect) {
      if (!line.startsWith('INFO ')) {
        this.#fail(c, 'other_err', `before INFO: ${line.slice(0, 80)}`);
        return;
      }
      c.sentConnect = true;
      socket.write(c.payload);
    } else if (line === 'PONG') {
      this.#accepted(c);
    } else if (line.startsWith('-ERR')) {
      this.#fail(c, classifyErr(line), line);
    }
    // Anything else before PONG (+OK, an INFO update) changes nothing.
  }

  #accepted(c: Client): void {
    clearTimeout(c.timer);
    c.timer = undefined;
    c.state = 'connected';
    const w = this.#window;
    w.connects++;
    w.latency.push(Number(nowNs() - c.startNs));
    this.#setConnected(this.#connected + 1);
    if (this.#connected === this.#clients.length) this.#onAllConnected?.();
  }

  #setConnected(n: number): void {
    if (n === this.#connected) return;
    this.#connected = n;
    this.#fullSinceNs = n === this.#clients.length ? nowNs() : undefined;
    this.#o.onConnectedChange?.();
  }

  /** The socket reported an error or closed. */
  #gone(c: Client, socket: Socket, outcome: FailOutcome, detail?: string): void {
    if (c.socket !== socket) return;
    if (c.state === 'connected') {
      this.#setConnected(this.#connected - 1);
      this.#window.disconnects++;
      c.probe?.finish(`connection lost (${outcome})`);
      c.socket = undefined;
      discard(socket);
      this.#retryLater(c);
    } else {
      this.#fail(c, outcome, detail);
    }
  }

  /** The current attempt failed: count it, drop its socket and try again after a pause. */
  #fail(c: Client, outcome: FailOutcome, detail?: string): void {
    if (c.state !== 'connecting') return;
    clearTimeout(c.timer);
    this.#window.failures[outcome] = (this.#window.failures[outcome] ?? 0) + 1;
    if (detail) this.#detail(`${outcome}: ${detail}`);
    const socket = c.socket;
    c.socket = undefined;
    if (socket) discard(socket);
    this.#retryLater(c);
  }

  #retryLater(c: Client): void {
    c.state = 'waiting';
    const pause = this.#o.retryMinMs + Math.random() * (this.#o.retryMaxMs - this.#o.retryMinMs);
    c.timer = setTimeout(() => this.#attempt(c), pause);
  }

  #detail(text: string): void {
    if (this.#window.details.size < 8) this.#window.details.add(text);
  }
}
