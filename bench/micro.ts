/**
 * Per-stage micro benchmarks of the callout pipeline, each warmed up and then measured for at
 * least `minMs` (default 1 s) with process.hrtime.bigint. CPU µs/op counts every thread of this
 * process, so work jose pushes to the libuv threadpool (WebCrypto) is included.
 */
import assert from 'node:assert/strict';
import { createPublicKey, verify as cryptoVerify, type KeyObject } from 'node:crypto';
import { closeSync, mkdtempSync, openSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decode, encodeAuthorizationResponse, encodeUser } from '@nats-io/jwt';
import { createAccount, createCurve, fromSeed } from '@nats-io/nkeys';
import { systemClock } from '../src/clock.js';
import { buildConfig, type Config } from '../src/config.js';
import { IssuerKeys } from '../src/issuers.js';
import { decodeNatsJwt, type DecodedNatsJwt } from '../src/nats-jwt.js';
import { NkeySigner, publicKeyObject, verifySignature } from '../src/nkey.js';
import { createLogger, type Logger } from '../src/log.js';
import { RequestVerifier } from '../src/request.js';
import { signResponse } from '../src/response.js';
import { CalloutService } from '../src/service.js';
import { TokenVerifier } from '../src/token.js';
import { signUserJwt } from '../src/user-jwt.js';
import { XkeyBox } from '../src/xkey.js';
import { authRequestJwt, fakeServer, newUserNkey, sealRequest, type FakeServer } from '../test/helpers/auth-request.js';
import { startLocalIssuer, type LocalIssuer, type LocalIssuerAlg } from '../test/helpers/local-issuer.js';
import { benchClaims, configDoc, signTokens, TARGET_ACCOUNT } from './fixtures.js';
import { measureAsync, measureBatched, measureSync, type BenchResult, type MeasureOptions } from './lib.js';

export interface MicroOptions {
  /** Minimum measured time per benchmark, ms. Default 1000. */
  readonly minMs?: number;
  /** Prints each result as it is measured. */
  readonly onResult?: (r: BenchResult) => void;
  /** Only benchmarks whose name contains this text. */
  readonly filter?: string;
}

const IN_FLIGHT = 64;
const text = (b: Uint8Array): string => new TextDecoder().decode(b);

/** Counts the service's decisions so a benchmark can prove it measured the path it claims. */
class DecisionCounter implements Logger {
  allow = 0;
  cached = 0;
  other = 0;
  lastOther: unknown;
  debug(): void {}
  error(): void {}
  info(_msg: string, fields?: Record<string, unknown>): void {
    if (fields?.['result'] === 'allow') {
      this.allow++;
      if (fields['cached']) this.cached++;
    } else this.other++;
  }
  warn(_msg: string, fields?: Record<string, unknown>): void {
    this.other++;
    this.lastOther = fields;
  }
  reset(): void {
    this.allow = this.cached = this.other = 0;
  }
}

/** A pool of distinct requests (one per connection attempt, each with its own user_nkey). */
function requestPool(server: FakeServer, tokens: readonly string[], size: number, sealTo: string | undefined, now: number): Uint8Array[] {
  const pool: Uint8Array[] = [];
  for (let i = 0; i < size; i++) {
    const jwt = authRequestJwt(server, { now, xkey: sealTo !== undefined, connectOpts: { auth_token: tokens[i % tokens.length] } });
    pool.push(sealTo ? sealRequest(server, jwt, sealTo) : Buffer.from(jwt));
  }
  return pool;
}

export async function runMicro(opts: MicroOptions = {}): Promise<BenchResult[]> {
  const results: BenchResult[] = [];
  const m: MeasureOptions = { minMs: opts.minMs ?? 1000 };
  const want = (name: string) => !opts.filter || name.includes(opts.filter);
  const add = (r: BenchResult) => {
    results.push(r);
    opts.onResult?.(r);
  };

  const issuers: Partial<Record<LocalIssuerAlg, LocalIssuer>> = {};
  try {
    const rs = await startLocalIssuer({ alg: 'RS256' });
    issuers.RS256 = rs;
    const es = await startLocalIssuer({ alg: 'ES256' });
    issuers.ES256 = es;
    const account = createAccount();
    const curve = createCurve();
    const issuerSeed = text(account.getSeed());
    const xkeySeed = text(curve.getSeed());
    const config = (iss: LocalIssuer, alg: string, xkey: boolean): Config =>
      buildConfig(configDoc({ natsUrl: 'nats://127.0.0.1:4222', issuer: iss.issuer, issuerSeed, xkeySeed: xkey ? xkeySeed : undefined, algorithms: [alg] }));
    const server = fakeServer();
    const serverXkey = server.curve.getPublicKey();
    const now = Math.floor(Date.now() / 1000);

    // ---- request verification ------------------------------------------------------------
    const token = (await signTokens(rs, 1))[0]!;
    const box = new XkeyBox(xkeySeed);
    {
      const plain = Buffer.from(authRequestJwt(server, { now, connectOpts: { auth_token: token } }));
      const verifier = new RequestVerifier(undefined);
      assert.equal(verifier.verifyMessage(plain, undefined).connectOpts['auth_token'], token);
      if (want('request.verify')) add(measureSync('request.verify (plain)', () => verifier.verifyMessage(plain, undefined), m));

      const sealed = sealRequest(server, authRequestJwt(server, { now, xkey: true, connectOpts: { auth_token: token } }), box.publicKey);
      const xverifier = new RequestVerifier(box);
      assert.equal(xverifier.verifyMessage(sealed, serverXkey).serverXkey, serverXkey);
      if (want('request.verify')) add(measureSync('request.verify (xkey sealed)', () => xverifier.verifyMessage(sealed, serverXkey), m));
    }

    // ---- OIDC token verification (no decision cache) ----------------------------------------
    for (const [alg, iss] of [
      ['RS256', rs],
      ['ES256', es],
    ] as const) {
      const cfg = config(iss, alg, false);
      const keys = new IssuerKeys(cfg.issuers[0]!);
      await keys.load();
      const verifier = new TokenVerifier([keys], cfg.token.maxBytes);
      const tokens = await signTokens(iss, 256);
      const v = await verifier.verify(tokens[0]!);
      assert.equal(v.claims.sub, benchClaims(0).sub);
      if (want('token.verify')) {
        add(await measureAsync(`token.verify ${alg} (1 at a time)`, (i) => verifier.verify(tokens[i % tokens.length]!), m));
        add(await measureBatched(`token.verify ${alg} (${IN_FLIGHT} in flight)`, IN_FLIGHT, (i) => verifier.verify(tokens[i % tokens.length]!), m));
      }
      assert.equal(iss.jwksFetches, 1, 'the JWKS is fetched once and cached');

      // Reference, not our code: a synchronous node:crypto verify with a KeyObject built once
      // from the same JWK. This is the floor a native verification path could reach.
      if (want('reference')) {
        const key: KeyObject = createPublicKey({ key: iss.jwks().keys[0]! as never, format: 'jwk' });
        const parts = tokens.map((t) => {
          const dot = t.lastIndexOf('.');
          return { input: Buffer.from(t.slice(0, dot)), sig: Buffer.from(t.slice(dot + 1), 'base64url') };
        });
        const vf =
          alg === 'RS256'
            ? (i: number) => cryptoVerify('sha256', parts[i % parts.length]!.input, key, parts[i % parts.length]!.sig)
            : (i: number) => cryptoVerify('sha256', parts[i % parts.length]!.input, { key, dsaEncoding: 'ieee-p1363' }, parts[i % parts.length]!.sig);
        assert.equal(vf(0), true);
        add(measureSync(`reference: node:crypto ${alg} verify (sync)`, vf, m));
      }
    }

    // ---- policy --------------------------------------------------------------------------
    const cfg = config(rs, 'RS256', false);
    const policy = cfg.policy;
    const claims = { ...benchClaims(42), iss: rs.issuer, iat: now, exp: now + 3600 };
    const grant = policy.decide(rs.issuer, claims);
    assert.equal(grant.rule, 'tenant-services');
    if (want('policy')) add(measureSync('policy.decide (3 rules, 9 templates)', () => policy.decide(rs.issuer, claims), m));

    // ---- user JWT + response ---------------------------------------------------------------
    {
      const accounts = cfg.keys.accounts;
      const target = accounts.forAccount(TARGET_ACCOUNT)!;
      const userNkeys = Array.from({ length: 1024 }, newUserNkey);
      const request = new RequestVerifier(undefined).verifyMessage(Buffer.from(authRequestJwt(server, { now })), undefined);
      const sealedReq = new RequestVerifier(box).verifyMessage(sealRequest(server, authRequestJwt(server, { now, xkey: true }), box.publicKey), serverXkey);
      const userJwt = signUserJwt(grant, request.userNkey, target, now, now + 900);
      if (want('sign')) {
        add(measureSync('signUserJwt', (i) => signUserJwt(grant, userNkeys[i & 1023]!, target, now, now + 900), m));
        add(measureSync('signResponse (plain)', () => signResponse(request, { jwt: userJwt }, accounts.response, undefined, now), m));
        add(measureSync('signResponse (xkey sealed)', () => signResponse(sealedReq, { jwt: userJwt }, accounts.response, box, now), m));
        add(
          measureSync(
            'signUserJwt + signResponse',
            (i) => {
              const jwt = signUserJwt(grant, userNkeys[i & 1023]!, target, now, now + 900);
              return signResponse(request, { jwt }, accounts.response, undefined, now);
            },
            m,
          ),
        );
      }

      // The pieces: the Ed25519 check alone, one Ed25519 signature, and the xkey box both ways
      // (tweetnacl secretbox, per-server shared key cached) at the sizes of the real messages.
      if (want('pieces')) {
        const requestJwt = authRequestJwt(server, { now, xkey: true, connectOpts: { auth_token: token } });
        const decoded = decodeNatsJwt(requestJwt) as DecodedNatsJwt;
        const key = publicKeyObject(server.id, 'server');
        assert.ok(verifySignature(key, decoded.signingInput, decoded.signature));
        add(
          measureSync(
            `pieces: Ed25519 verify, node:crypto (${decoded.signingInput.length} B)`,
            () => verifySignature(key, decoded.signingInput, decoded.signature),
            m,
          ),
        );
        const signer = new NkeySigner(issuerSeed, 'account');
        const userJwtInput = Buffer.from(userJwt.slice(0, userJwt.lastIndexOf('.')));
        add(measureSync(`pieces: Ed25519 sign, NkeySigner (${userJwtInput.length} B)`, () => signer.sign(userJwtInput), m));
        const sealed = sealRequest(server, requestJwt, box.publicKey);
        add(measureSync(`pieces: xkey open (${sealed.length} B request)`, () => box.open(sealed, serverXkey), m));
        const response = Buffer.from(signResponse(request, { jwt: userJwt }, accounts.response, undefined, now));
        add(measureSync(`pieces: xkey seal (${response.length} B response)`, () => box.seal(response, serverXkey), m));
      }

      // The same two JWTs with @nats-io/jwt (tweetnacl, seed re-derived on every sign).
      if (want('@nats-io/jwt')) {
        const issuerKp = fromSeed(account.getSeed());
        const user = {
          pub: { allow: [...(grant.pub.allow ?? [])], deny: [...(grant.pub.deny ?? [])] },
          sub: { allow: [...(grant.sub.allow ?? [])], deny: [] },
          ...(grant.resp ? { resp: grant.resp } : {}),
        };
        const build = async (i: number): Promise<string> => {
          const userNkey = userNkeys[i & 1023]!;
          // ASCII name: @nats-io/jwt base64-encodes with btoa and throws on "Zoë".
          const jwt = await encodeUser('Zoe Muller', userNkey, issuerKp, user, { aud: TARGET_ACCOUNT, exp: now + 900 });
          return encodeAuthorizationResponse(userNkey, request.serverId, issuerKp, { jwt }, {});
        };
        // Both JWTs verify (decode checks the signature), and the user lands in APP, not "NATS".
        const response = decode<{ jwt: string }>(await build(0));
        assert.equal(response.aud, request.serverId);
        assert.equal(decode(response.nats.jwt!).aud, TARGET_ACCOUNT);
        add(await measureAsync('@nats-io/jwt encodeUser + encodeAuthorizationResponse', build, { minMs: m.minMs ?? 1000, warmupMs: 50, minOps: 5 }));
      }
    }

    // ---- one decision log line at info (what `log.level: info` adds per connect) --------------
    if (want('log')) {
      const dir = mkdtempSync(join(tmpdir(), 'oidc-callout-bench-log-'));
      const fd = openSync(join(dir, 'service.log'), 'a');
      try {
        // process.stdout redirected to a file writes synchronously, as this does.
        const log = createLogger('info', (line) => writeSync(fd, line));
        const fields = {
          result: 'allow',
          issuer: rs.issuer,
          subject: 'svc-00001a',
          account: TARGET_ACCOUNT,
          rule: 'tenant-services',
          expires: now + 900,
          cached: true,
          user_nkey: newUserNkey(),
          client_host: '127.0.0.1',
          client_type: 'nats',
          server: 'bench',
          server_id: server.id,
          latency_ms: 0.412,
        };
        add(measureSync('log: one decision line at info (JSON to a file)', () => log.info('authorization', fields), m));
      } finally {
        closeSync(fd);
        rmSync(dir, { recursive: true, force: true });
      }
    }

    // ---- the whole CalloutService.handle() ----------------------------------------------------
    if (want('handle')) {
      for (const xkey of [false, true]) {
        const label = xkey ? 'xkey' : 'plain';
        const counter = new DecisionCounter();
        // Signed first: a token's iat must not lie ahead of the fixed clock below (this part
        // starts a minute or more after the run's `now`).
        const hitTokens = await signTokens(rs, 8, 100_000);
        const missTokens = await signTokens(rs, 2048, 200_000);
        const handleNow = Math.floor(Date.now() / 1000);
        // A fixed clock: pre-built requests keep their 2 s deadline valid for the whole run.
        const fixedNowMs = handleNow * 1000 + 500;
        const service = new CalloutService(config(rs, 'RS256', xkey), counter, {
          clock: { ...systemClock, now: () => fixedNowMs, monotonic: () => fixedNowMs },
        });
        await service.issuers[0]!.load();
        const sealTo = xkey ? service.xkeyPublicKey! : undefined;
        const hdr = xkey ? serverXkey : undefined;

        // Cache hit: a handful of tokens, each request with its own user_nkey.
        const hitPool = requestPool(server, hitTokens, 512, sealTo, handleNow);
        for (const req of hitPool.slice(0, 8)) assert.ok(await service.handle(req, hdr));
        counter.reset();
        add(await measureAsync(`handle cache hit (${label})`, (i) => service.handle(hitPool[i & 511]!, hdr), m));
        assert.ok(counter.other === 0 && counter.allow === counter.cached, `hit path: ${JSON.stringify(counter.lastOther)}`);

        // Cache miss: distinct tokens; when the pool wraps the cache is cleared, so every
        // handle() verifies its token (jose keeps nothing per token).
        const missPool = requestPool(server, missTokens, missTokens.length, sealTo, handleNow);
        const miss = (i: number): Promise<unknown> => {
          const k = i % missPool.length;
          if (k === 0) service.cache.clear();
          return service.handle(missPool[k]!, hdr);
        };
        counter.reset();
        add(await measureAsync(`handle cache miss (${label})`, miss, m));
        add(await measureBatched(`handle cache miss (${label}, ${IN_FLIGHT} in flight)`, IN_FLIGHT, miss, m));
        assert.ok(counter.other === 0 && counter.cached === 0 && counter.allow > 0, `miss path: ${JSON.stringify(counter.lastOther)}`);
      }
    }
  } finally {
    await Promise.all(Object.values(issuers).map((i) => i.stop()));
  }
  return results;
}
