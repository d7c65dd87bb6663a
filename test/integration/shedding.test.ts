/**
 * The scheduler end to end: requests the server has already given up on are dropped without an
 * answer, the ones still waited for are answered, over the service's several NATS connections.
 * Requests come from a fake server through a nats-server without callout (the only way to
 * choose their timestamps), as in forged-request.test.ts.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import type { NatsConnection } from '@nats-io/transport-node';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { Metrics } from '../../src/metrics.js';
import { connectAll } from '../../src/nats-connection.js';
import { AUTH_SUBJECT, CalloutRunner } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { connectClient, LogCapture, seedOf } from '../helpers/callout-fixture.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../helpers/nats-server.js';

const binaries = await natsServerBinaries();
const newest = binaries[binaries.length - 1]!;
const PASSWORD = 'shedding-password';
const rules = [{ name: 'all', allow_broad: true, account: 'APP', permissions: { pub: { allow: ['app.>'] } } }];

describe('shedding requests the server no longer waits for', () => {
  let issuer: LocalIssuer;
  let nats: RunningNats;
  let runner: CalloutRunner;
  let requester: NatsConnection;
  let metrics: Metrics;
  const log = new LogCapture();

  before(async () => {
    issuer = await startLocalIssuer();
    nats = await startNatsServer({ bin: newest.path, config: `accounts {\n  AUTH { users: [ { user: auth, password: "${PASSWORD}" } ] }\n}` });
    metrics = new Metrics('test');
    const config = buildConfig(
      {
        // One connection: it delivers in order, so the stale requests mixed into the burst below
        // are each contradicted by the next prompt one and never taken for a clock step.
        nats: { servers: [nats.url], user: 'auth', password: PASSWORD, connections: 1 },
        callout: { account: 'AUTH', issuer_seed: seedOf(createAccount()) },
        issuers: [{ issuer: issuer.issuer, audiences: ['nats'], jwks_uri: issuer.jwksUri, allow_insecure_http: true }],
        policy: { rules },
      },
      {},
    );
    const service = new CalloutService(config, createLogger('debug', log.write), { observer: metrics });
    runner = new CalloutRunner(await connectAll(config, { maxReconnectAttempts: 0 }), service, createLogger('debug', log.write));
    await runner.start();
    metrics.attach(runner.metricsSources());
    requester = await connectClient(nats.url, { user: 'auth', pass: PASSWORD });
  });

  after(async () => {
    await requester?.close();
    await runner?.stop();
    await nats?.stop();
    await issuer?.stop();
  });

  it('listens and reports its reply lane', () => {
    assert.equal(runner.replyLaneDelays().length, 1);
    assert.deepEqual(runner.problems(), []);
  });

  it('answers fresh requests and drops, unanswered and logged, those already past their deadline', async () => {
    const server = fakeServer();
    const token = await issuer.sign({ sub: 'storm', aud: 'nats', exp: Math.floor(Date.now() / 1000) + 300 });
    const ask = (ageSeconds: number, timeoutMs: number) =>
      requester
        .request(AUTH_SUBJECT, authRequestJwt(server, { now: Math.floor(Date.now() / 1000) - ageSeconds, connectOpts: { auth_token: token } }), {
          timeout: timeoutMs,
        })
        .then(
          () => 'answered',
          () => 'none',
        );
    // Calibration: the service learns this server's clock from requests it verified.
    for (let i = 0; i < 5; i++) assert.equal(await ask(0, 2000), 'answered');

    const mark = log.mark();
    // A burst mixing requests 4 s old (past their 2 s budget) with fresh ones.
    const outcomes = await Promise.all(Array.from({ length: 60 }, (_, i) => ask(i % 2 === 0 ? 4 : 0, 1500).then((o) => [i % 2 === 0 ? 'stale' : 'fresh', o])));
    assert.deepEqual(
      outcomes.filter(([kind]) => kind === 'fresh').map(([, o]) => o),
      Array(30).fill('answered'),
    );
    assert.deepEqual(
      outcomes.filter(([kind]) => kind === 'stale').map(([, o]) => o),
      Array(30).fill('none'),
    );
    const shed = log.decisions(mark).filter((d) => d.result === 'abort');
    assert.equal(shed.length, 30);
    for (const d of shed) {
      assert.equal(d.code, 'REQUEST_EXPIRED');
      assert.equal(d.shed, 'expired');
      // Unverified, a request names the server it claims; one verified on arrival (its stamps
      // jumped back against the fresh ones around it, which the step detection checks) its server.
      assert.equal(d.server_id ?? d.claimed_server_id, server.id, 'logged with its server, claimed or verified');
      assert.match(d.reason ?? '', /gave up on it \d+ms ago/);
    }
    const text = await metrics.registry.metrics();
    assert.match(text, /oidc_callout_shed_total\{reason="expired"\} 30/);
    assert.match(text, /oidc_callout_requests_total\{result="abort",code="REQUEST_EXPIRED"\} 30/);
    assert.match(text, /oidc_callout_reply_lane_delay_seconds\{connection="0"\}/);
    assert.equal(runner.inFlight, 0);
  });
});
