/**
 * `npm run bench -- --only capacity`: the service alone, without nats-server's callout work.
 * Valid authorization requests, recorded beforehand (signed by a stand-in server key; sealed to
 * the service's xkey or not; cache hits: 8 tokens, unique tokens: one RS256 token each) are sent
 * at the service through a plain nats-server, 64 in flight, as request/reply; every answer is
 * opened and checked (an allow, for that request's user key). Reported: authorizations per
 * second and the service process's CPU per authorization, for each worker count asked for.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { connect, type MsgHdrs, headers as natsHeaders } from '@nats-io/transport-node';
import { encodePublicKey } from '../src/nkey.js';
import { AUTH_SUBJECT } from '../src/runner.js';
import { XkeyBox } from '../src/xkey.js';
import { authRequestJwt, fakeServer, sealRequest } from '../test/helpers/auth-request.js';
import { startLocalIssuer } from '../test/helpers/local-issuer.js';
import { startNatsServer } from '../test/helpers/nats-server.js';
import { configDoc, signTokens } from './fixtures.js';
import { type BenchResult, processCpuMicros } from './lib.js';
import { makeWorkDir, pickServers, removeWorkDir, startService } from './processes.js';

export interface CapacityOptions {
  /** Worker counts to measure (`workers` of the service). */
  readonly workers: readonly number[];
  /** Requests per measured run. */
  readonly requests: number;
  readonly concurrency: number;
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
            extra: { serviceCpuUsPerAuthorization: Math.round(r.serviceCpuUs / r.answers), workers, xkey, kind },
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
}): Promise<{ answers: number; seconds: number; serviceCpuUs: number }> {
  // A plain nats-server: the service and the sender are users of one account, nothing calls out.
  const nats = await startNatsServer({
    bin: o.bin,
    config: `max_control_line: 65536
accounts { AUTH { users: [ { user: auth, password: bench-password }, { user: sender, password: sender } ] } }`,
  });
  const account = createAccount();
  const curve = createCurve();
  writeFileSync(join(o.work, 'issuer.nk'), new TextDecoder().decode(account.getSeed()), { mode: 0o600 });
  writeFileSync(join(o.work, 'xkey.nk'), new TextDecoder().decode(curve.getSeed()), { mode: 0o600 });
  const doc = configDoc({
    natsUrl: nats.url,
    issuer: o.issuer,
    issuerSeed: { file: 'issuer.nk' },
    xkeySeed: o.xkey ? { file: 'xkey.nk' } : undefined,
    logLevel: 'warn',
    workers: o.workers,
  });
  // Recorded before the service starts (the local IdP, in this process, must then be free to
  // answer it), with a long-lived exp, so none is dropped as stale while it waits its turn.
  const server = fakeServer();
  const recorded = Array.from({ length: o.opts.requests }, (_, i) => {
    const userNkey = encodePublicKey(randomBytes(32), 'user');
    const jwt = authRequestJwt(server, {
      userNkey,
      xkey: o.xkey,
      connectOpts: { auth_token: o.tokens[i % o.tokens.length] },
      edit: (c) => (c.exp = c.iat + 600),
    });
    return { userNkey, data: o.xkey ? sealRequest(server, jwt, curve.getPublicKey()) : new TextEncoder().encode(jwt) };
  });
  const file = join(o.work, 'oidc-callout.yaml');
  writeFileSync(file, `${JSON.stringify(doc, null, 2)}\n`);
  const service = await startService(file, join(o.work, 'service.log'));
  // The sender opens answers as nats-server does: the shared key computed once (not a full box each time).
  const serverBox = new XkeyBox(new TextDecoder().decode(server.curve.getSeed()));
  const sender = await connect({ servers: nats.url, user: 'sender', pass: 'sender' });
  try {
    const ask = async (i: number): Promise<void> => {
      const r = recorded[i]!;
      const opts = o.xkey ? { timeout: 10_000, headers: xkeyHeader(server.curve.getPublicKey()) } : { timeout: 10_000 };
      const msg = await sender.request(AUTH_SUBJECT, r.data, opts);
      const body = o.xkey ? serverBox.open(msg.data, curve.getPublicKey()) : msg.data;
      assert.ok(body, 'the answer opens with the server xkey');
      const claims = JSON.parse(Buffer.from(new TextDecoder().decode(body).split('.')[1]!, 'base64url').toString()) as {
        sub?: string;
        nats?: { jwt?: string; error?: string };
      };
      assert.equal(claims.sub, r.userNkey);
      assert.ok(claims.nats?.jwt, `allowed: ${claims.nats?.error ?? ''}`);
    };
    // Until the service answers (subscribed, keys loaded): the warm-up also teaches it the clock.
    for (let tries = 0; ; tries++) {
      try {
        await ask(0);
        break;
      } catch (err) {
        if (tries > 100) {
          const tail = readFileSync(join(o.work, 'service.log'), 'utf8').trim().split('\n').slice(-2).join('\n');
          throw new Error(`${(err as Error).message}; the service's last log lines:\n${tail}`);
        }
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    let next = 1;
    const cpu0 = processCpuMicros(service.pid);
    const t0 = performance.now();
    try {
      await Promise.all(
        Array.from({ length: o.opts.concurrency }, async () => {
          while (next < recorded.length) await ask(next++);
        }),
      );
    } catch (err) {
      // The service's log says why it refused.
      const tail = readFileSync(join(o.work, 'service.log'), 'utf8').trim().split('\n').slice(-3).join('\n');
      throw new Error(`${(err as Error).message}; the service's last log lines:\n${tail}`);
    }
    const seconds = (performance.now() - t0) / 1000;
    const serviceCpuUs = processCpuMicros(service.pid) - cpu0;
    return { answers: recorded.length - 1, seconds, serviceCpuUs };
  } finally {
    await sender.close();
    await service.stop();
    await nats.stop();
  }
}

/** nats-server names its xkey in the request's Nats-Server-Xkey header. */
function xkeyHeader(publicKey: string): MsgHdrs {
  const h = natsHeaders();
  h.set('Nats-Server-Xkey', publicKey);
  return h;
}
