/**
 * Audit events end to end: a real JetStream-enabled nats-server with auth_callout, the service
 * publishing its events in the callout account (AUTH), exported to an AUDIT account whose stream
 * captures them (the layout the README shows: auditors never sit in the account that sees every
 * token). Clients connect through a TCP forwarder standing in for a load balancer, which knows
 * the source port of each connection it opened to nats-server: the events must name exactly
 * that address and port. Runs for every fetched nats-server version.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, connect as tcpConnect, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { jetstreamManager, type JetStreamManager } from '@nats-io/jetstream';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { auditEventSchema, type AuditEvent } from '../../src/audit/event.js';
import { AuditPublisher, connzLookup } from '../../src/audit/publisher.js';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { allOf, Metrics } from '../../src/metrics.js';
import { connectAll, connectNats } from '../../src/nats-connection.js';
import { CalloutRunner } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { connectClient, expectAuthorizationViolation, LogCapture, seedOf, within } from '../helpers/callout-fixture.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../helpers/nats-server.js';

const binaries = await natsServerBinaries();
const SUBJECT = 'oidc-callout.audit';

/** A TCP forwarder (a load balancer): remembers, per accepted client, the source port of its upstream connection. */
class Forwarder {
  readonly upstreamPorts: number[] = [];
  readonly #server: Server;
  readonly #sockets = new Set<Socket>();

  private constructor(server: Server) {
    this.#server = server;
  }

  static async start(targetPort: number): Promise<Forwarder> {
    const server = createServer();
    const fwd = new Forwarder(server);
    server.on('connection', (client) => {
      const upstream = tcpConnect({ host: '127.0.0.1', port: targetPort });
      fwd.#sockets.add(client).add(upstream);
      upstream.on('connect', () => fwd.upstreamPorts.push(upstream.localPort!));
      client.pipe(upstream).pipe(client);
      const close = () => {
        client.destroy();
        upstream.destroy();
      };
      client.on('error', close).on('close', close);
      upstream.on('error', close).on('close', close);
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    return fwd;
  }

  get url(): string {
    const a = this.#server.address();
    return `nats://127.0.0.1:${typeof a === 'object' && a ? a.port : 0}`;
  }

  async stop(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    await new Promise((r) => this.#server.close(r));
  }
}

function serverConfig(o: { issuer: string; xkey: string; password: string; storeDir: string; deniedAudit: boolean }): string {
  // The service's user may publish anywhere in AUTH, unless the test takes the audit subject away.
  const permissions = o.deniedAudit ? `, permissions: { publish: { deny: ["${SUBJECT}.>"] } }` : '';
  return `max_control_line: 65536
jetstream { store_dir: "${o.storeDir}" }
accounts {
  AUTH {
    users: [ { user: auth, password: "${o.password}"${permissions} } ]
    exports: [ { stream: "${SUBJECT}.>" } ]
  }
  AUDIT {
    jetstream: enabled
    users: [ { user: audit, password: "${o.password}" } ]
    imports: [ { stream: { account: AUTH, subject: "${SUBJECT}.>" } } ]
  }
  APP {}
  SYS { users: [ { user: sys, password: "${o.password}" } ] }
}
system_account: SYS
authorization {
  timeout: 5
  auth_callout {
    issuer: ${o.issuer}
    xkey: ${o.xkey}
    auth_users: [ auth, audit, sys ]
    account: AUTH
  }
}`;
}

/** nats-server with callout and JetStream, the service with audit events as lifecycle.ts wires it. */
async function startAudited(bin: string, issuer: LocalIssuer, deniedAudit: boolean) {
  const account = createAccount();
  const xkey = createCurve();
  const password = randomBytes(12).toString('hex');
  const storeDir = mkdtempSync(join(tmpdir(), 'audit-js-'));
  const nats: RunningNats = await startNatsServer({
    bin,
    config: serverConfig({ issuer: account.getPublicKey(), xkey: xkey.getPublicKey(), password, storeDir, deniedAudit }),
  });
  const log = new LogCapture();
  const logger = createLogger('debug', log.write);
  const config = buildConfig(
    {
      nats: { servers: [nats.url], user: 'auth', password, connections: 2 },
      callout: { account: 'AUTH', issuer_seed: seedOf(account), xkey_seed: seedOf(xkey) },
      issuers: [{ issuer: issuer.issuer, audiences: ['nats'], allow_insecure_http: true, jwks_uri: issuer.jwksUri }],
      policy: {
        rules: [
          { name: 'developers', match: { groups: 'dev' }, account: 'APP', permissions: { pub: { allow: ['app.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } } },
        ],
      },
      audit: { subject: `${SUBJECT}.{result}.{account}` },
    },
    {},
  );
  const metrics = new Metrics('test');
  const audit = new AuditPublisher(config.audit!, 'audit-test@host#1', logger, metrics);
  const service = new CalloutService(config, logger, { observer: allOf(metrics, audit) });
  const runner = new CalloutRunner(await connectAll(config, { maxReconnectAttempts: 0 }), service, logger);
  await runner.start();
  const auditNc = await connectNats(config, { name: 'oidc-callout (audit)', maxReconnectAttempts: 0 });
  const system = await connect({ servers: nats.url, user: 'sys', pass: password });
  audit.attach(auditNc, connzLookup(system));
  const auditor = await connect({ servers: nats.url, user: 'audit', pass: password });
  const jsm = await jetstreamManager(auditor);
  await jsm.streams.add({ name: 'AUDIT', subjects: [`${SUBJECT}.>`] });
  const forwarder = await Forwarder.start(nats.port);
  return {
    nats,
    log,
    metrics,
    jsm,
    forwarder,
    async stop() {
      await forwarder.stop();
      await runner.stop();
      await audit.drain(1000);
      for (const nc of [auditNc, system, auditor]) await nc.close().catch(() => undefined);
      await nats.stop();
      rmSync(storeDir, { recursive: true, force: true });
    },
  };
}

/** The events in the stream from sequence `from` on, waiting until there are `count`. */
async function readEvents(jsm: JetStreamManager, from: number, count: number): Promise<{ subject: string; event: AuditEvent }[]> {
  const deadline = Date.now() + 10_000;
  while ((await jsm.streams.info('AUDIT')).state.last_seq < from + count - 1) {
    assert.ok(Date.now() < deadline, `fewer than ${count} audit events arrived in the stream`);
    await new Promise((r) => setTimeout(r, 50));
  }
  const out: { subject: string; event: AuditEvent }[] = [];
  for (let seq = from; seq < from + count; seq++) {
    const m = await jsm.streams.getMessage('AUDIT', { seq });
    assert.ok(m, `no message ${seq}`);
    out.push({ subject: m.subject, event: auditEventSchema.parse(m.json()) });
  }
  return out;
}

for (const { version, path } of binaries) {
  describe(`audit events, nats-server ${version}`, () => {
    let issuer: LocalIssuer;
    let env: Awaited<ReturnType<typeof startAudited>>;

    before(async () => {
      issuer = await startLocalIssuer();
      env = await startAudited(path, issuer, false);
    });

    after(async () => {
      await env?.stop();
      await issuer?.stop();
    });

    it('publishes one event per decision, allowed and refused, each naming the address and port the connection really came from', async () => {
      const start = (await env.jsm.streams.info('AUDIT')).state.last_seq + 1;
      const before = Date.now();
      const token = await issuer.sign({ sub: 'alice', aud: 'nats', groups: ['dev'] });
      const nc: NatsConnection = await connectClient(env.forwarder.url, { token, name: 'audit-allowed' });
      await nc.close();
      const refusedToken = await issuer.sign({ sub: 'mallory', aud: 'nats', groups: ['guests'] });
      await expectAuthorizationViolation(env.forwarder.url, { token: refusedToken, name: 'audit-refused' });
      const events = await readEvents(env.jsm, start, 2);
      const [allowed, refused] = events;
      assert.equal(env.forwarder.upstreamPorts.length, 2);
      const [allowedPort, refusedPort] = env.forwarder.upstreamPorts;

      assert.equal(allowed!.subject, `${SUBJECT}.allow.APP`);
      const a = allowed!.event;
      assert.equal(a.result, 'allow');
      assert.equal(a.outcome, 'allow');
      assert.equal(a.code, null);
      assert.equal(a.issuer, issuer.issuer);
      assert.equal(a.subject, 'alice');
      assert.equal(a.account, 'APP');
      assert.equal(a.rule, 'developers');
      assert.equal(a.cached, false);
      assert.match(a.user_nkey!, /^U[A-Z2-7]{55}$/);
      assert.equal(a.client_host, '127.0.0.1');
      assert.equal(a.client_port, allowedPort, 'the port of the connection the forwarder opened');
      assert.equal(a.client_name, 'audit-allowed');
      assert.equal(a.connection_type, 'STANDARD');
      assert.equal(typeof a.client_id, 'number');
      assert.match(a.server_id!, /^N[A-Z2-7]{55}$/);
      assert.equal(a.server_name, a.server_id, 'an unnamed nats-server is named by its id');
      assert.equal(a.request_verified, true);
      assert.equal(a.replica, 'audit-test@host#1');
      assert.ok(a.latency_ms! > 0 && a.latency_ms! < 5000, `latency ${a.latency_ms}`);
      const t = Date.parse(a.time);
      assert.ok(t >= before - 5 && t <= Date.now(), `time ${a.time}`);
      assert.match(a.time, /\.\d{3}Z$/);
      assert.ok(Date.parse(a.client_start!) <= t, 'nats-server accepted the connection before the decision');
      assert.ok(Date.parse(a.expires!) > t);

      assert.equal(refused!.subject, `${SUBJECT}.deny._`);
      const r = refused!.event;
      assert.equal(r.result, 'deny');
      assert.equal(r.outcome, 'reject');
      assert.equal(r.code, 'POLICY_NO_MATCH');
      // The token verified: the event says whom the policy refused, and grants no account.
      assert.equal(r.subject, 'mallory');
      assert.equal(r.issuer, issuer.issuer);
      assert.equal(r.account, null);
      assert.equal(r.client_host, '127.0.0.1');
      assert.equal(r.client_port, refusedPort);
      assert.equal(r.client_name, 'audit-refused');
      assert.notEqual(r.client_id, a.client_id);

      // No event carries a token.
      const raw = JSON.stringify(events);
      assert.ok(!raw.includes(token) && !raw.includes(refusedToken));
      assert.ok(!raw.includes(token.split('.')[2]!));
    });
  });

  describe(`audit events the service may not publish, nats-server ${version}`, () => {
    let issuer: LocalIssuer;
    let env: Awaited<ReturnType<typeof startAudited>>;

    before(async () => {
      issuer = await startLocalIssuer();
      env = await startAudited(path, issuer, true);
    });

    after(async () => {
      await env?.stop();
      await issuer?.stop();
    });

    it('logs the permission error once, clearly, counts the lost events, and keeps authorizing', async () => {
      for (let i = 0; i < 3; i++) {
        const nc = await connectClient(env.forwarder.url, { token: await issuer.sign({ sub: `user${i}`, aud: 'nats', groups: ['dev'] }) });
        await nc.close();
      }
      const logged = await env.log.waitFor((r) => r.msg.startsWith('audit events refused by nats-server'), { timeoutMs: 5000 });
      assert.equal(logged.level, 'error');
      assert.equal(logged.subject, `${SUBJECT}.allow.APP`);
      assert.match(String(logged.needs), new RegExp(`publish permission on ${SUBJECT.replaceAll('.', '\\.')}\\.\\*\\.\\*`));
      assert.match(String(logged.server_error), /Permissions Violation for Publish/i);
      const counted = async () => {
        const text = await env.metrics.registry.metrics();
        return Number(/oidc_callout_audit_dropped_total\{reason="permission_denied"\} (\d+)/.exec(text)?.[1] ?? 0);
      };
      await within(
        (async () => {
          while ((await counted()) < 3) await new Promise((r) => setTimeout(r, 50));
        })(),
        5000,
        'three refused events counted',
      );
      assert.equal(env.log.records.filter((r) => r.msg.startsWith('audit events refused')).length, 1, 'logged once');
      assert.equal(env.log.decisions().filter((d) => d.result === 'allow').length, 3, 'every client was let in');
      assert.equal((await env.jsm.streams.info('AUDIT')).state.messages, 0);
    });
  });
}
