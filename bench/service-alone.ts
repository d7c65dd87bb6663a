/**
 * The service alone, behind a plain nats-server: the setup shared by `--only capacity` and
 * `--only overload`. nats-server runs without a callout; the service and a sender are users of one
 * account, so the sender plays nats-server's part: it publishes authorization requests recorded
 * with a stand-in server's keys on `$SYS.REQ.USER.AUTH` and opens the answers as nats-server
 * would. None of nats-server's own callout work (a key pair, a signature and a box per
 * request) is in the measurement.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { type MsgHdrs, headers as natsHeaders } from '@nats-io/transport-node';
import { encodePublicKey } from '../src/nkey.js';
import { XkeyBox } from '../src/xkey.js';
import { authRequestJwt, type FakeServer } from '../test/helpers/auth-request.js';
import { type RunningNats, startNatsServer } from '../test/helpers/nats-server.js';
import { configDoc } from './fixtures.js';

/** A plain nats-server: the service (`auth`) and the sender are users of one account, nothing calls out. */
export function startPlainNats(bin: string): Promise<RunningNats> {
  return startNatsServer({
    bin,
    config: `max_control_line: 65536
accounts { AUTH { users: [ { user: auth, password: bench-password }, { user: sender, password: sender } ] } }`,
  });
}

/** Connection options of the sender user of {@link startPlainNats}. */
export const SENDER_USER = { user: 'sender', pass: 'sender' } as const;

export interface ServiceFiles {
  /** The configuration file to start the service with. */
  readonly configFile: string;
  /** Where the service's log (stdout) goes. */
  readonly logFile: string;
  /** The service's public xkey, when requests are sealed. */
  readonly serviceXkey: string | undefined;
}

/** Writes the service's keys (issuer seed, xkey seed when sealed) and its configuration into `work`. */
export function writeServiceFiles(o: {
  work: string;
  natsUrl: string;
  issuer: string;
  xkey: boolean;
  workers?: number | 'auto' | undefined;
  logLevel?: 'debug' | 'info' | 'warn' | 'error' | undefined;
  httpListen?: string | undefined;
}): ServiceFiles {
  const account = createAccount();
  const curve = createCurve();
  writeFileSync(join(o.work, 'issuer.nk'), new TextDecoder().decode(account.getSeed()), { mode: 0o600 });
  writeFileSync(join(o.work, 'xkey.nk'), new TextDecoder().decode(curve.getSeed()), { mode: 0o600 });
  const doc = configDoc({
    natsUrl: o.natsUrl,
    issuer: o.issuer,
    issuerSeed: { file: 'issuer.nk' },
    xkeySeed: o.xkey ? { file: 'xkey.nk' } : undefined,
    logLevel: o.logLevel ?? 'warn',
    workers: o.workers,
    httpListen: o.httpListen,
  });
  const configFile = join(o.work, 'oidc-callout.yaml');
  writeFileSync(configFile, `${JSON.stringify(doc, null, 2)}\n`);
  // Computed once: @nats-io/nkeys derives a curve key's public half (an X25519 scalar
  // multiplication in JavaScript, ~0.6 ms) on every getPublicKey() call.
  return { configFile, logFile: join(o.work, 'service.log'), serviceXkey: o.xkey ? curve.getPublicKey() : undefined };
}

/** nats-server names its xkey in the request's Nats-Server-Xkey header. */
export function xkeyHeader(publicKey: string): MsgHdrs {
  const h = natsHeaders();
  h.set('Nats-Server-Xkey', publicKey);
  return h;
}

/** One authorization request as the sender publishes it, and the user key its answer must name. */
export interface RecordedRequest {
  readonly userNkey: string;
  readonly data: Uint8Array;
}

/**
 * Records requests of one stand-in server: each with a user nkey of its own, sealed to the
 * service's xkey when `serviceXkey` is given. The server's curve key is derived and the box key
 * computed once (nkeys' seal() would redo both per request, ~1 ms), so recording costs about one
 * signature per request.
 */
export class RequestRecorder {
  readonly server: FakeServer;
  readonly #serviceXkey: string | undefined;
  /** The server's box: seals requests and opens answers with a precomputed shared key. */
  readonly box: XkeyBox;

  constructor(server: FakeServer, serviceXkey: string | undefined) {
    this.server = server;
    this.#serviceXkey = serviceXkey;
    this.box = new XkeyBox(new TextDecoder().decode(server.curve.getSeed()));
  }

  /** A request carrying `token`, stamped `iat` = `nowS` (default: this second) and `exp` = iat + `lifetimeS`. */
  record(token: string, o: { nowS?: number; lifetimeS?: number } = {}): RecordedRequest {
    const userNkey = encodePublicKey(randomBytes(32), 'user');
    const sealed = this.#serviceXkey !== undefined;
    const serverXkey = this.box.publicKey;
    const jwt = authRequestJwt(this.server, {
      userNkey,
      now: o.nowS,
      connectOpts: { auth_token: token },
      edit: (c) => {
        c.exp = c.iat + (o.lifetimeS ?? 2);
        if (sealed) c.nats.server_id.xkey = serverXkey;
      },
    });
    return { userNkey, data: sealed ? this.box.seal(new TextEncoder().encode(jwt), this.#serviceXkey!) : new TextEncoder().encode(jwt) };
  }

  /**
   * Opens an answer as nats-server does and checks it: an allow for `userNkey`. Returns why it
   * is wrong, or undefined when it is right.
   */
  check(data: Uint8Array, userNkey: string): string | undefined {
    const body = this.#serviceXkey === undefined ? data : this.box.open(data, this.#serviceXkey);
    if (!body) return 'the answer does not open with the server xkey';
    let claims: { sub?: string; nats?: { jwt?: string; error?: string } };
    try {
      claims = JSON.parse(Buffer.from(new TextDecoder().decode(body).split('.')[1]!, 'base64url').toString());
    } catch {
      return 'the answer is not a JWT';
    }
    if (claims.sub !== userNkey) return `the answer is for ${claims.sub}, not ${userNkey}`;
    if (!claims.nats?.jwt) return `refused: ${claims.nats?.error ?? 'no user JWT'}`;
    return undefined;
  }
}

/** The last `lines` lines of the service's log (it says why it refused or failed). */
export function logTail(logFile: string, lines: number): string {
  try {
    return readFileSync(logFile, 'utf8').trim().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Retries `ask` until the service answers (subscribed, keys loaded), for about 10 s. */
export async function untilAnswering(ask: () => Promise<void>, logFile: string): Promise<void> {
  for (let tries = 0; ; tries++) {
    try {
      await ask();
      return;
    } catch (err) {
      if (tries > 100) throw new Error(`${(err as Error).message}; the service's last log lines:\n${logTail(logFile, 2)}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

/**
 * Runs `ask(i)` for i in [first, count), `concurrency` at a time (closed loop: the next starts
 * when one ends), starting none after `untilMs` (performance.now()); returns how many ran.
 */
export async function closedLoop(first: number, count: number, concurrency: number, ask: (i: number) => Promise<void>, untilMs = Infinity): Promise<number> {
  let next = first;
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      while (next < count && performance.now() < untilMs) await ask(next++);
    }),
  );
  return next - first;
}
