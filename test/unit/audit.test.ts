import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createAccount } from '@nats-io/nkeys';
import { errors as natsErrors } from '@nats-io/transport-node';
import { AuditBuffer, type AuditDropReason } from '../../src/audit/buffer.js';
import { auditEventJsonSchemaText, auditEventSchema, buildAuditEvent, type DecisionRecord, MAX_FIELD_CHARS, MAX_REASON_CHARS } from '../../src/audit/event.js';
import { AuditPublisher } from '../../src/audit/publisher.js';
import { AuditSubject } from '../../src/audit/subject.js';
import { buildConfig, DEFAULTS } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { type AuthRequest, RequestVerifier } from '../../src/request.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { LogCapture, seedOf } from '../helpers/callout-fixture.js';
import { FakeNats, settle } from '../helpers/fake-nats.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const TOKEN = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2VjcmV0LXNpZ25hdHVyZQ';
const NOW = Date.parse('2026-03-01T12:00:00.123Z');

function request(extra: Partial<AuthRequest> = {}): AuthRequest {
  return {
    serverId: 'NBROCDVPYOTWDFWLK4WP3KTB4GVXQ7UZVO6QNYK6SM2I4XAZFZOXTTL6',
    serverName: 'n1',
    serverVersion: '2.10.27',
    serverXkey: undefined,
    userNkey: 'UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4',
    issuedAt: NOW / 1000,
    clientHost: '10.0.0.7',
    clientKind: 'Client',
    clientType: 'websocket',
    clientId: 42,
    clientName: 'orders-worker',
    // Everything a client sends in CONNECT, the token first: none of it may reach an event.
    connectOpts: { auth_token: TOKEN, pass: `pw-${TOKEN}`, jwt: 'eyJuser-jwt', sig: 'sig-secret', user: 'alice', lang: 'nats.js' },
    ...extra,
  };
}

const allowed = (req = request()): DecisionRecord => ({
  decision: {
    result: 'allow',
    issuer: 'https://idp.example.com',
    subject: 'alice',
    account: 'APP',
    rule: 'developers',
    expires: Math.floor(NOW / 1000) + 3600,
    cached: false,
  },
  request: req,
  seconds: 0.000412,
  timeMs: NOW,
});

describe('audit events', () => {
  it('carries every field of an allowed decision, and validates against the shipped schema', () => {
    const event = buildAuditEvent(allowed(), 'oidc-callout@host-a#12');
    assert.deepEqual(event, {
      version: 1,
      time: '2026-03-01T12:00:00.123Z',
      result: 'allow',
      outcome: 'allow',
      code: null,
      reason: null,
      shed: null,
      issuer: 'https://idp.example.com',
      subject: 'alice',
      account: 'APP',
      rule: 'developers',
      expires: '2026-03-01T13:00:00.000Z',
      cached: false,
      user_nkey: 'UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4',
      client_host: '10.0.0.7',
      client_port: null,
      client_start: null,
      client_id: 42,
      client_name: 'orders-worker',
      connection_type: 'WEBSOCKET',
      server_id: 'NBROCDVPYOTWDFWLK4WP3KTB4GVXQ7UZVO6QNYK6SM2I4XAZFZOXTTL6',
      server_name: 'n1',
      request_verified: true,
      replica: 'oidc-callout@host-a#12',
      latency_ms: 0.412,
    });
    auditEventSchema.parse(event);
  });

  it('never carries the token, the password, or anything else of CONNECT', () => {
    for (const record of [
      allowed(),
      {
        decision: { result: 'reject' as const, code: 'TOKEN_EXPIRED' as const, reason: 'token expired 312s ago' },
        request: request(),
        seconds: 0.001,
        timeMs: NOW,
      },
    ]) {
      const json = JSON.stringify(buildAuditEvent(record, 'r'));
      for (const secret of [TOKEN, 'pw-', 'eyJuser-jwt', 'sig-secret', 'signature', 'auth_token', 'connect_opts']) {
        assert.ok(!json.includes(secret), `an event holds ${secret}: ${json}`);
      }
    }
  });

  it('names a refusal deny and a shed request shed, with the code and reason', () => {
    const rejected = buildAuditEvent(
      { decision: { result: 'reject', code: 'POLICY_NO_MATCH', reason: 'no rule' }, request: request(), seconds: 0.002, timeMs: NOW },
      'r',
    );
    assert.equal(rejected.result, 'deny');
    assert.equal(rejected.outcome, 'reject');
    assert.equal(rejected.code, 'POLICY_NO_MATCH');
    const aborted = buildAuditEvent(
      { decision: { result: 'abort', code: 'REQUEST_SIGNATURE_INVALID', reason: 'x' }, request: undefined, seconds: 0, timeMs: NOW },
      'r',
    );
    assert.equal(aborted.result, 'deny');
    assert.equal(aborted.request_verified, false);
    const shed = buildAuditEvent(
      { decision: { result: 'abort', code: 'REQUEST_EXPIRED', reason: 'late', shed: 'expired' }, request: request(), seconds: undefined, timeMs: NOW },
      'r',
    );
    assert.equal(shed.result, 'shed');
    assert.equal(shed.shed, 'expired');
    assert.equal(shed.latency_ms, null);
    auditEventSchema.parse(shed);
  });

  it('marks a request shed before verification as unverified and reads the client from its claims, never its CONNECT', () => {
    const server = fakeServer();
    const jwt = authRequestJwt(server, {
      connectOpts: { auth_token: TOKEN },
      edit: (c) => {
        c.nats.client_info = { host: '192.0.2.10', id: 7, name: 'edge', kind: 'Client', type: 'nats', user: TOKEN };
      },
    });
    const opened = new RequestVerifier(undefined).open(new TextEncoder().encode(jwt), undefined);
    const event = buildAuditEvent(
      {
        decision: { result: 'abort', code: 'REQUEST_QUEUE_FULL', reason: 'full', shed: 'queue_full' },
        request: undefined,
        opened,
        seconds: undefined,
        timeMs: NOW,
      },
      'r',
    );
    assert.equal(event.request_verified, false);
    assert.equal(event.result, 'shed');
    assert.equal(event.client_host, '192.0.2.10');
    assert.equal(event.client_id, 7);
    assert.equal(event.client_name, 'edge');
    assert.equal(event.connection_type, 'STANDARD');
    assert.equal(event.server_id, server.id);
    assert.equal(event.server_name, 'test-server');
    // nats-server 2.10 copies the token into client_info.user: no event field reads it.
    assert.ok(!JSON.stringify(event).includes(TOKEN));
    auditEventSchema.parse(event);
  });

  it('bounds every field a client or a token chooses, without splitting a character', () => {
    const huge = 'x'.repeat(20_000);
    const emoji = `${'a'.repeat(MAX_FIELD_CHARS - 1)}😀tail`;
    const event = buildAuditEvent(
      {
        decision: { result: 'allow', issuer: huge, subject: emoji, account: huge, rule: huge, expires: Math.floor(NOW / 1000) + 60, cached: true },
        request: request({ clientName: huge, clientHost: huge, userNkey: huge, serverName: huge, clientKind: huge, clientType: huge }),
        seconds: 1,
        timeMs: NOW,
      },
      huge,
    );
    for (const [key, value] of Object.entries(event)) {
      if (typeof value === 'string') assert.ok(value.length <= MAX_FIELD_CHARS, `${key} has ${value.length} characters`);
    }
    assert.equal(event.subject, 'a'.repeat(MAX_FIELD_CHARS - 1), 'the cut drops a whole surrogate pair');
    const refused = buildAuditEvent({ decision: { result: 'reject', code: 'INTERNAL', reason: huge }, request: request(), seconds: 0, timeMs: NOW }, 'r');
    assert.equal(refused.reason!.length, MAX_REASON_CHARS);
    assert.ok(JSON.stringify(event).length < 8192);
    auditEventSchema.parse(event);
    auditEventSchema.parse(refused);
  });

  it('is shipped as conf/audit-event.schema.json, generated from the event schema', () => {
    const shipped = readFileSync(join(root, 'conf', 'audit-event.schema.json'), 'utf8');
    assert.ok(shipped === auditEventJsonSchemaText(), 'conf/audit-event.schema.json differs from src/audit/event.ts: run `npm run schema`');
    const schema = JSON.parse(shipped);
    assert.equal(schema.additionalProperties, false);
    assert.deepEqual(Object.keys(schema.properties).sort(), Object.keys(auditEventSchema.shape).sort());
  });
});

describe('audit subject', () => {
  it('appends the result and the account as whole tokens', () => {
    const s = AuditSubject.compile('audit.{result}.{account}');
    assert.equal(s.render({ result: 'allow', account: 'APP' }), 'audit.allow.APP');
    assert.equal(s.render({ result: 'deny', account: null }), 'audit.deny._');
    // An account name that is no plain token never makes a wildcard or an extra token.
    assert.equal(s.render({ result: 'allow', account: 'a.b' }), 'audit.allow._');
    assert.equal(s.render({ result: 'allow', account: '>' }), 'audit.allow._');
    assert.equal(s.pattern, 'audit.*.*');
    assert.ok(s.matches('audit.deny._'));
    assert.ok(!s.matches('audit.deny'));
    assert.ok(!s.matches('other.deny._'));
    assert.equal(AuditSubject.compile(DEFAULTS.audit.subject).render({ result: 'shed', account: null }), 'oidc-callout.audit.shed');
  });

  it('refuses wildcards, partial placeholders, reserved namespaces and malformed subjects, naming the key', () => {
    const load = (subject: string) =>
      buildConfig(
        {
          callout: { account: 'AUTH', issuer_seed: seedOf(createAccount()) },
          issuers: [{ issuer: 'https://idp.example.com', audiences: ['nats'] }],
          policy: { rules: [{ name: 'all', allow_broad: true, account: 'APP', permissions: { pub: { allow: ['app.>'] } } }] },
          audit: { subject },
        },
        {},
      );
    for (const [subject, message] of [
      ['audit.>', /no wildcards/],
      ['audit.*', /no wildcards/],
      ['audit.x{result}', /placeholders are \{result\} and \{account\}/],
      ['audit.{sub}', /placeholders/],
      ['$SYS.audit', /reserved/],
      ['audit..x', /empty token/],
      ['audit x', /whitespace/],
    ] as const) {
      assert.throws(
        () => load(subject),
        (e: unknown) => e instanceof ConfigError && e.path === 'audit.subject' && message.test(e.message),
        subject,
      );
    }
    const config = load('audit.{result}');
    assert.equal(config.audit?.bufferEvents, DEFAULTS.audit.buffer_events);
    assert.equal(config.audit?.bufferBytes, DEFAULTS.audit.buffer_bytes);
  });
});

describe('audit buffer', () => {
  it('holds events first in, first out, bounded in count', () => {
    const b = new AuditBuffer<number>(3, 1_000_000);
    assert.ok(b.push(1, 10) && b.push(2, 10) && b.push(3, 10));
    assert.equal(b.push(4, 10), false);
    assert.deepEqual(b.take(2), [1, 2]);
    assert.ok(b.push(5, 10));
    assert.deepEqual(b.take(10), [3, 5]);
    assert.equal(b.length, 0);
    assert.equal(b.bytes, 0);
  });

  it('is bounded in bytes', () => {
    const b = new AuditBuffer<string>(1000, 100);
    assert.ok(b.push('a', 60));
    assert.equal(b.push('b', 41), false);
    assert.ok(b.push('c', 40));
    assert.equal(b.bytes, 100);
    b.take(1);
    assert.equal(b.bytes, 40);
  });

  it('keeps working through many cycles (its storage is compacted)', () => {
    const b = new AuditBuffer<number>(10, 1000);
    for (let i = 0; i < 5000; i++) {
      assert.ok(b.push(i, 1));
      assert.deepEqual(b.take(1), [i]);
    }
    assert.equal(b.length, 0);
  });
});

/** Counters as Metrics would see them. */
function counters() {
  const dropped = new Map<AuditDropReason, number>();
  let sent = 0;
  return {
    dropped,
    get sent() {
      return sent;
    },
    auditSent: (n: number) => {
      sent += n;
    },
    auditDropped: (reason: AuditDropReason, n: number) => dropped.set(reason, (dropped.get(reason) ?? 0) + n),
  };
}

describe('audit publisher', () => {
  const settings = { subject: AuditSubject.compile('audit.{result}'), bufferEvents: 3, bufferBytes: 1_000_000 };

  it('buffers while it has no connection, drops and counts what does not fit, then publishes in order', async () => {
    const log = new LogCapture();
    const c = counters();
    const publisher = new AuditPublisher(settings, 'r', createLogger('debug', log.write), c);
    for (let i = 0; i < 5; i++) publisher.recorded(allowed(request({ clientId: i })));
    assert.equal(publisher.buffered, 3);
    assert.equal(c.dropped.get('buffer_full'), 2);
    assert.equal(log.records.filter((r) => r.msg.startsWith('audit buffer full')).length, 1, 'logged once');
    const nc = new FakeNats();
    publisher.attach(nc.asNats());
    await settle();
    assert.deepEqual(
      nc.published.map((p) => [p.subject, JSON.parse(new TextDecoder().decode(p.data)).client_id]),
      [
        ['audit.allow', 0],
        ['audit.allow', 1],
        ['audit.allow', 2],
      ],
    );
    assert.equal(c.sent, 3);
  });

  it('never holds more than one unconfirmed batch: a server that does not answer PINGs fills the buffer, not memory', async () => {
    const c = counters();
    const publisher = new AuditPublisher(
      { ...settings, bufferEvents: 300 },
      'r',
      createLogger('error', () => {}),
      c,
    );
    const nc = new FakeNats();
    nc.flushMode = 'never';
    publisher.attach(nc.asNats());
    // Recorded in one turn: the buffer takes 300, then the first batch leaves it.
    for (let i = 0; i < 1000; i++) publisher.recorded(allowed());
    await settle();
    assert.equal(nc.published.length, 256, 'one batch');
    assert.equal(publisher.buffered, 300 - 256);
    assert.equal(c.dropped.get('buffer_full'), 700);
    // Its PONG never comes: nothing more is sent, the buffer fills and the rest is dropped.
    for (let i = 0; i < 1000; i++) publisher.recorded(allowed());
    await settle();
    assert.equal(nc.published.length, 256);
    assert.equal(publisher.buffered, 300);
    assert.equal(c.dropped.get('buffer_full'), 700 + 1000 - 256);
  });

  it('logs a publish permission violation on its subject once, clearly, and counts each', async () => {
    const log = new LogCapture();
    const c = counters();
    const publisher = new AuditPublisher(settings, 'r', createLogger('debug', log.write), c);
    const nc = new FakeNats();
    publisher.attach(nc.asNats());
    publisher.recorded(allowed());
    await settle();
    const violation = (subject: string) =>
      new natsErrors.PermissionViolationError(`Permissions Violation for Publish to "${subject}"`, 'publish', subject, undefined);
    nc.emitStatus({ type: 'error', error: violation('audit.allow') } as never);
    nc.emitStatus({ type: 'error', error: violation('audit.deny') } as never);
    // Someone else's violation on this connection is not the audit's.
    nc.emitStatus({ type: 'error', error: violation('other.subject') } as never);
    await settle();
    assert.equal(c.dropped.get('permission_denied'), 2);
    const errors = log.records.filter((r) => r.level === 'error');
    assert.equal(errors.length, 1);
    assert.match(errors[0]!.msg, /may not publish on the audit subject/);
    assert.equal(errors[0]!.subject, 'audit.allow');
    assert.match(String(errors[0]!.needs), /publish permission on audit\.\*/);
  });

  it('waits while disconnected and sends after the reconnect', async () => {
    const c = counters();
    const publisher = new AuditPublisher(
      settings,
      'r',
      createLogger('error', () => {}),
      c,
    );
    const nc = new FakeNats();
    publisher.attach(nc.asNats());
    nc.emitStatus({ type: 'disconnect' });
    await settle();
    publisher.recorded(allowed());
    await settle();
    assert.equal(nc.published.length, 0);
    nc.emitStatus({ type: 'reconnect' });
    await settle();
    assert.equal(nc.published.length, 1);
  });

  it('fills in the port and accept time a lookup finds, and publishes without them when it fails', async () => {
    const publisher = new AuditPublisher(
      settings,
      'r',
      createLogger('error', () => {}),
      counters(),
    );
    const nc = new FakeNats();
    publisher.attach(nc.asNats(), async (_server, cid) => {
      if (cid === 1) return { port: 51234, start: '2026-03-01T12:00:00.100Z' };
      throw new Error('timeout');
    });
    publisher.recorded(allowed(request({ clientId: 1 })));
    publisher.recorded(allowed(request({ clientId: 2 })));
    await settle();
    const events = nc.published.map((p) => JSON.parse(new TextDecoder().decode(p.data)));
    assert.deepEqual(
      events.map((e) => [e.client_id, e.client_port, e.client_start]),
      [
        [1, 51234, '2026-03-01T12:00:00.100Z'],
        [2, null, null],
      ],
    );
    for (const e of events) auditEventSchema.parse(e);
  });

  it('does not hold events longer than a second for lookups that never answer', async () => {
    const publisher = new AuditPublisher(
      settings,
      'r',
      createLogger('error', () => {}),
      counters(),
    );
    const nc = new FakeNats();
    publisher.attach(nc.asNats(), () => new Promise(() => {}));
    publisher.recorded(allowed());
    await settle(500);
    assert.equal(nc.published.length, 0, 'still waiting for the lookup');
    await settle(700);
    assert.equal(nc.published.length, 1);
    assert.equal(JSON.parse(new TextDecoder().decode(nc.published[0]!.data)).client_port, null);
  });
});
