/**
 * Shared pieces of the integration tests: a nats-server with auth_callout in server-config mode
 * plus the callout service (CalloutService + CalloutRunner) listening on it, a capture of the
 * service's JSON log (the only place a refusal's real reason appears), and client-side helpers
 * that assert what a NATS client sees.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createAccount, createCurve, type KeyPair } from '@nats-io/nkeys';
import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectAll } from '../../src/nats-connection.js';
import { CalloutRunner } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { startNatsServer, type RunningNats } from './nats-server.js';

/** One parsed line of the service log. */
export interface LogRecord {
  readonly level: string;
  readonly msg: string;
  readonly result?: string;
  readonly code?: string;
  readonly reason?: string;
  readonly [field: string]: unknown;
}

/** Collects the service's JSON log lines and lets tests wait for a matching record. */
export class LogCapture {
  readonly records: LogRecord[] = [];
  readonly #listeners = new Set<() => void>();

  /** Pass to createLogger as its `write` function. */
  readonly write = (line: string): void => {
    for (const text of line.split('\n')) {
      if (!text.trim()) continue;
      this.records.push(JSON.parse(text) as LogRecord);
    }
    for (const listener of this.#listeners) listener();
  };

  /** The current position: records logged from now on have an index >= mark(). */
  mark(): number {
    return this.records.length;
  }

  /** The `authorization` decisions logged since `from`. */
  decisions(from = 0): LogRecord[] {
    return this.records.slice(from).filter((r) => r.msg === 'authorization');
  }

  /** Resolves with the first record at or after `from` matching `pred`; rejects after `timeoutMs`. */
  waitFor(pred: (r: LogRecord) => boolean, opts: { from?: number; timeoutMs?: number } = {}): Promise<LogRecord> {
    const from = opts.from ?? 0;
    return new Promise((resolve, reject) => {
      const check = (): void => {
        const found = this.records.slice(from).find(pred);
        if (found) {
          done();
          resolve(found);
        }
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `no matching service log record within ${opts.timeoutMs ?? 5000} ms; records since mark:\n${this.records
              .slice(from)
              .map((r) => JSON.stringify(r))
              .join('\n')}`,
          ),
        );
      }, opts.timeoutMs ?? 5000);
      const done = (): void => {
        clearTimeout(timer);
        this.#listeners.delete(check);
      };
      this.#listeners.add(check);
      check();
    });
  }

  /** The first authorization decision logged at or after `from`. */
  nextDecision(from: number, timeoutMs = 5000): Promise<LogRecord> {
    return this.waitFor((r) => r.msg === 'authorization', { from, timeoutMs });
  }
}

export const seedOf = (kp: KeyPair): string => new TextDecoder().decode(kp.getSeed());

/** nats-server configuration text for auth_callout in server-config mode (accounts AUTH, APP, SYS). */
export function calloutServerConfig(opts: { issuer: string; xkey?: string | undefined; password: string; authTimeoutSeconds?: number }): string {
  return [
    'max_control_line: 65536',
    'accounts {',
    `  AUTH { users: [ { user: auth, password: "${opts.password}" } ] }`,
    '  APP {}',
    '  SYS {}',
    '}',
    'system_account: SYS',
    'authorization {',
    `  timeout: ${opts.authTimeoutSeconds ?? 5}`,
    '  auth_callout {',
    `    issuer: ${opts.issuer}`,
    '    auth_users: [ auth ]',
    '    account: AUTH',
    ...(opts.xkey ? [`    xkey: ${opts.xkey}`] : []),
    '  }',
    '}',
  ].join('\n');
}

export interface CalloutFixtureOptions {
  /** nats-server binary. */
  bin: string;
  /** Encrypt callout traffic (auth_callout.xkey + callout.xkey_seed). */
  xkey: boolean;
  /** The `issuers` section, as in the YAML. */
  issuers: Record<string, unknown>[];
  /** `policy.rules`, as in the YAML. */
  rules: Record<string, unknown>[];
  /** The `token` section. */
  token?: Record<string, unknown>;
  /** The `cache` section. */
  cache?: Record<string, unknown>;
  /** authorization.timeout of the server (also the request's exp - iat). Default 5. */
  authTimeoutSeconds?: number;
  /** More nats-server configuration, appended (e.g. a `websocket` listener on 127.0.0.1, port -1). */
  serverConfig?: string;
}

/** A running nats-server with the callout service attached. */
export interface CalloutFixture extends AsyncDisposable {
  readonly nats: RunningNats;
  readonly url: string;
  readonly service: CalloutService;
  readonly runner: CalloutRunner;
  readonly log: LogCapture;
  /** The raw configuration document the service was built from (to build variants). */
  readonly doc: Record<string, any>;
  /** The service's curve key (xkey on only). */
  readonly xkey: KeyPair | undefined;
  /** The service user's password on the server. */
  readonly password: string;
  /** Builds another service from `doc` (e.g. to swap in a variant); shares the log capture. */
  newService(doc: Record<string, any>): CalloutService;
  stop(): Promise<void>;
}

/** Starts nats-server with auth_callout and the service listening on it. */
export async function startCalloutFixture(opts: CalloutFixtureOptions): Promise<CalloutFixture> {
  const account = createAccount();
  const xkey = opts.xkey ? createCurve() : undefined;
  const password = randomBytes(12).toString('hex');
  const nats = await startNatsServer({
    bin: opts.bin,
    config: [
      calloutServerConfig({ issuer: account.getPublicKey(), xkey: xkey?.getPublicKey(), password, authTimeoutSeconds: opts.authTimeoutSeconds }),
      opts.serverConfig ?? '',
    ].join('\n'),
  });
  const log = new LogCapture();
  const logger = createLogger('debug', log.write);
  const doc: Record<string, any> = {
    nats: { servers: [nats.url], user: 'auth', password },
    callout: { account: 'AUTH', issuer_seed: seedOf(account), ...(xkey ? { xkey_seed: seedOf(xkey) } : {}) },
    issuers: opts.issuers,
    policy: { rules: opts.rules },
    ...(opts.token ? { token: opts.token } : {}),
    ...(opts.cache ? { cache: opts.cache } : {}),
  };
  const newService = (d: Record<string, any>): CalloutService => new CalloutService(buildConfig(d, {}), logger);
  let runner: CalloutRunner | undefined;
  try {
    const service = newService(doc);
    runner = new CalloutRunner(await connectAll(service.config, { maxReconnectAttempts: 0 }), service, logger);
    await runner.start();
  } catch (err) {
    await nats.stop();
    throw err;
  }
  const started = runner;
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      await started.stop().catch(() => undefined);
      await nats.stop();
    })());
  return {
    nats,
    url: nats.url,
    get service() {
      return started.service;
    },
    runner: started,
    log,
    doc,
    xkey,
    password,
    newService,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/** Rejects after `ms` with a message naming `what`, unless `promise` settles first. */
export async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Connects a client; no reconnects, so a closed connection stays closed. */
export function connectClient(url: string, opts: Partial<NodeConnectionOptions> = {}): Promise<NatsConnection> {
  const sub = subOf(typeof opts.token === 'string' ? opts.token : typeof opts.pass === 'string' ? opts.pass : undefined);
  // Clients use the private inbox the rules grant (`_INBOX.{{sub}}.>`), never a shared one.
  return connect({ servers: url, reconnect: false, timeout: 10_000, ...(sub ? { inboxPrefix: `_INBOX.${sub}` } : {}), ...opts });
}

/** The `sub` of a JWT-shaped token, read without verifying (to name the client's inbox). */
export function subOf(token: string | undefined): string | undefined {
  const payload = token?.split('.')[1];
  if (!payload) return undefined;
  try {
    const sub = (JSON.parse(Buffer.from(payload, 'base64url').toString('utf8')) as { sub?: unknown }).sub;
    return typeof sub === 'string' && /^[^.*>\s]+$/.test(sub) ? sub : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Asserts the server refuses the connection the way a client sees it: connect() rejects with
 * "Authorization Violation". A connection that unexpectedly succeeds is closed, then fails.
 */
export async function expectAuthorizationViolation(url: string, opts: Partial<NodeConnectionOptions> = {}): Promise<void> {
  let nc: NatsConnection;
  try {
    nc = await connectClient(url, opts);
  } catch (err) {
    assert.match(String((err as Error).message), /authorization violation/i, `expected Authorization Violation, got ${String(err)}`);
    return;
  }
  await nc.close();
  assert.fail('the client was let in, expected Authorization Violation');
}

/** What `$SYS.REQ.USER.INFO` answers about the calling connection. */
export interface UserInfo {
  user: string;
  account: string;
  permissions?: {
    publish?: { allow?: string[]; deny?: string[] };
    subscribe?: { allow?: string[]; deny?: string[] };
    responses?: { max: number; ttl: number };
  };
  expires?: number;
}

export async function userInfo(nc: NatsConnection): Promise<UserInfo> {
  const reply = await nc.request('$SYS.REQ.USER.INFO', '', { timeout: 5000 });
  const body = reply.json<{ data?: UserInfo; error?: unknown }>();
  assert.ok(body.data, `USER.INFO answered ${reply.string()}`);
  return body.data;
}

/** Collects the asynchronous errors the server reports on a connection (e.g. permission violations). */
export function watchErrors(nc: NatsConnection): { errors: Error[]; waitFor(pred: (e: Error) => boolean, timeoutMs?: number): Promise<Error> } {
  const errors: Error[] = [];
  const listeners = new Set<() => void>();
  void (async () => {
    for await (const s of nc.status()) {
      if (s.type === 'error') {
        errors.push(s.error);
        for (const l of listeners) l();
      }
    }
  })();
  return {
    errors,
    waitFor(pred, timeoutMs = 5000) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const e = errors.find(pred);
          if (e) {
            done();
            resolve(e);
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(new Error(`no matching connection error within ${timeoutMs} ms; seen: ${errors.map(String).join('; ') || 'none'}`));
        }, timeoutMs);
        const done = (): void => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
  };
}
