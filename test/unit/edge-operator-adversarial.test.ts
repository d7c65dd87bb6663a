/**
 * Adversarial tests of the edge and decentralized-mode features: scoped accounts (user names and
 * tags rendered by nats-server into scope templates), proxy_required on old servers, the audit
 * publisher (secrets, subject injection, a bounded buffer), the operator-mode startup check fed
 * hostile account JWTs, `setup operator` file handling, `probe` and the shipped configurations.
 *
 * Each test states what a defender needs; a failing one is a weakness.
 */
import assert from 'node:assert/strict';
import { lstatSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync, chmodSync, mkdirSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createAccount, createOperator } from '@nats-io/nkeys';
import { checkCalloutAccount, inspectCalloutAccount, readAccountJwt } from '../../src/account-check.js';
import { buildAuditEvent, type DecisionRecord } from '../../src/audit/event.js';
import { AuditPublisher } from '../../src/audit/publisher.js';
import { AuditSubject } from '../../src/audit/subject.js';
import { buildConfig, type Config } from '../../src/config.js';
import { AuthFailure } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import { withoutCredentials, withoutUserinfo } from '../../src/nats-connection.js';
import { encodeNatsJwt } from '../../src/nats-jwt.js';
import { NkeySigner } from '../../src/nkey.js';
import { generateOperatorSetup, SCOPE_PERMISSIONS, writeOperatorSetup } from '../../src/operator-setup.js';
import { admitServer, type Grant } from '../../src/policy.js';
import { probe } from '../../src/probe.js';
import type { AuthRequest } from '../../src/request.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const seedOf = (kp: { getSeed(): Uint8Array }) => new TextDecoder().decode(kp.getSeed());
const ISSUER = 'https://idp.example.com';

/** An operator-mode configuration with a scoped account TENANT and the given rules. */
function scopedConfig(rules: Record<string, unknown>[], extra: Record<string, unknown> = {}): Config {
  const app = createAccount();
  const tenant = createAccount();
  return buildConfig(
    {
      callout: { mode: 'operator', issuer_seed: seedOf(createAccount()), system_account: createAccount().getPublicKey(), ...extra },
      accounts: {
        APP: { public_key: app.getPublicKey(), signing_seed: seedOf(app) },
        TENANT: { public_key: tenant.getPublicKey(), signing_seed: seedOf(createAccount()), scoped: true },
      },
      issuers: [{ issuer: ISSUER, audiences: ['nats'] }],
      policy: { rules },
    },
    {},
    '/nonexistent',
  );
}

function refusedUnsafe(fn: () => unknown, what: string): void {
  assert.throws(fn, (e: unknown) => e instanceof AuthFailure && e.code === 'POLICY_CLAIM_UNSAFE', what);
}

describe('scoped accounts: names and tags nats-server renders into the scope', () => {
  it("never lets a name with invisible or control characters become another user's name (it is refused, not cleaned)", () => {
    // The scope grants `_INBOX.{{name()}}.>`: a user whose name renders as "alice" reads alice's replies.
    // The name is stripped of \p{Cc}\p{Cf} (userName) *before* the plain-token check, so
    // "ali\u00ADce" (soft hyphen) or "ali\u200Bce" (zero-width space) silently becomes "alice".
    const config = scopedConfig([{ name: 'tenant', match: { groups: 'dev' }, account: 'TENANT', user_name_claim: 'preferred_username' }]);
    const legit = config.policy.decide(ISSUER, { sub: 'u-1', groups: ['dev'], preferred_username: 'alice' });
    assert.equal(legit.name, 'alice');
    for (const hostile of ['ali\u00ADce', 'ali\u200Bce', 'alice\u2060', '\u200Ealice', 'ali\u0000ce', 'alice\u007F', '\uFEFFalice']) {
      let name: string | undefined;
      try {
        name = config.policy.decide(ISSUER, { sub: 'u-2', groups: ['dev'], preferred_username: hostile }).name;
      } catch (err) {
        assert.ok(err instanceof AuthFailure && err.code === 'POLICY_CLAIM_UNSAFE', `${JSON.stringify(hostile)}: ${String(err)}`);
        continue;
      }
      assert.notEqual(name, 'alice', `${JSON.stringify(hostile)} was admitted as the scoped user "alice" (gets _INBOX.alice.>)`);
    }
  });

  it('refuses the same for the default user_name_claim (sub)', () => {
    const config = scopedConfig([{ name: 'tenant', match: { groups: 'dev' }, account: 'TENANT' }]);
    let name: string | undefined;
    try {
      name = config.policy.decide(ISSUER, { sub: 'ali\u200Bce', groups: ['dev'] }).name;
    } catch (err) {
      assert.ok(err instanceof AuthFailure && err.code === 'POLICY_CLAIM_UNSAFE');
      return;
    }
    assert.notEqual(name, 'alice', 'sub "ali\\u200Bce" became the scoped user "alice"');
  });

  it('refuses a scoped user name that is a reserved subject token (_R_, _GR_), as subject templates do', () => {
    // A scope `{{name()}}.>` (a per-user subject tree) would hand a user named `_R_` the subjects
    // nats-server maps service-import replies to (`_R_.>`), i.e. other accounts' responses.
    // subject-template.ts refuses `_INBOX`, `_R_`, `_GR_` and `$...` in inserted tokens
    // (RESERVED_TOKEN); the scoped name check (plainToken) only refuses `$...` and `_INBOX`.
    const config = scopedConfig([{ name: 'tenant', match: { groups: 'dev' }, account: 'TENANT' }]);
    for (const reserved of ['_R_', '_GR_']) {
      refusedUnsafe(() => config.policy.decide(ISSUER, { sub: reserved, groups: ['dev'] }), `a scoped user named ${reserved}`);
    }
  });

  it('refuses names that change the shape of the scope (wildcards, separators, reserved namespaces, lengths)', () => {
    const config = scopedConfig([{ name: 'tenant', match: { groups: 'dev' }, account: 'TENANT' }]);
    for (const hostile of ['*', '>', 'a.b', 'a*', 'x>', '$SYS', '$JS', '_INBOX', 'a b', 'a\u2028b', 'a\u00A0b', 'a\u3000b', 'x'.repeat(129), '\uD800x']) {
      refusedUnsafe(() => config.policy.decide(ISSUER, { sub: hostile, groups: ['dev'] }), JSON.stringify(hostile.slice(0, 20)));
    }
    // Full-width look-alikes are not wildcards to nats-server: plain tokens, kept as they are.
    assert.equal(config.policy.decide(ISSUER, { sub: '\uFF0A', groups: ['dev'] }).name, '\uFF0A');
  });

  it('refuses tag values with invisible characters rather than cleaning them', () => {
    const config = scopedConfig([
      { name: 'tenant', match: { groups: 'dev' }, account: 'TENANT', tags: ['tenant:{{claims.tenant}}'], when: [{ claim: 'tenant', present: true }] },
    ]);
    assert.deepEqual(config.policy.decide(ISSUER, { sub: 'a', groups: ['dev'], tenant: 'acme' }).tags, ['tenant:acme']);
    for (const hostile of ['ac\u00ADme', 'acme\u200B', '\u0000acme', '*', '>', 'ac.me', '$SYS', '_INBOX', 'x'.repeat(300)]) {
      refusedUnsafe(() => config.policy.decide(ISSUER, { sub: 'a', groups: ['dev'], tenant: hostile }), JSON.stringify(hostile.slice(0, 20)));
    }
  });
});

describe('proxy_required on servers that do not enforce it', () => {
  const grant = { rule: 'behind-proxy', proxyRequired: true } as unknown as Grant;
  it('refuses when the version is missing, unreadable or older than 2.12', () => {
    for (const v of [undefined, '', 'garbage', '2.12', '2', 'v2.11.99', '2.11.9', '1.99.0', ' 2.12.0', '02.9.0x']) {
      assert.throws(
        () => admitServer(grant, v),
        (e: unknown) => e instanceof AuthFailure && e.code === 'POLICY_CONNECTION_REFUSED',
        `version ${JSON.stringify(v)} must be refused`,
      );
    }
  });
  it('admits 2.12 and later', () => {
    for (const v of ['2.12.0', 'v2.12.2', '2.15.1', '2.12.0-RC.1', '3.0.0']) admitServer(grant, v);
  });
});

const NOW = Date.parse('2026-03-01T12:00:00.123Z');
const TOKEN = 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2VjcmV0LXNpZ25hdHVyZQ';

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
    clientType: 'nats',
    clientId: 42,
    clientName: 'worker',
    connectOpts: { auth_token: TOKEN, pass: TOKEN, user: 'alice' },
    ...extra,
  };
}

describe('audit events', () => {
  it('holds the buffer to audit.buffer_bytes in the bytes it publishes (UTF-8), not in UTF-16 units', () => {
    // Client names and claims are chosen by clients: 256 CJK characters are 256 units but 768 bytes.
    const bufferBytes = 16 * 1024;
    const publisher = new AuditPublisher(
      { subject: AuditSubject.compile('oidc-callout.audit.{result}'), bufferEvents: 1_000_000, bufferBytes },
      'r',
      createLogger('error'),
    );
    const record: DecisionRecord = {
      decision: { result: 'reject', code: 'TOKEN_EXPIRED', reason: '\u754C'.repeat(1024) },
      request: request({ clientName: '\u754C'.repeat(256), clientHost: '10.0.0.7', serverName: '\u754C'.repeat(256) }),
      seconds: 0.001,
      timeMs: NOW,
    };
    const published = Buffer.byteLength(JSON.stringify(buildAuditEvent(record, 'r')), 'utf8');
    for (let i = 0; i < 1000; i++) publisher.recorded(record);
    assert.ok(
      publisher.buffered * published <= bufferBytes,
      `${publisher.buffered} events of ${published} bytes each (${publisher.buffered * published} bytes) are held under buffer_bytes ${bufferBytes}`,
    );
  });

  it('never carries the token, whatever the decision says about the CONNECT it came with', () => {
    for (const decision of [
      { result: 'allow' as const, issuer: ISSUER, subject: 'alice', account: 'APP', rule: 'r', expires: NOW / 1000 + 60, cached: true },
      { result: 'reject' as const, code: 'TOKEN_ISSUER_UNKNOWN' as const, reason: 'issuer "https://evil" is not configured' },
      { result: 'abort' as const, code: 'REQUEST_EXPIRED' as const, reason: 'expired', shed: 'expired' as const },
    ]) {
      const text = JSON.stringify(buildAuditEvent({ decision, request: request(), seconds: 0.001, timeMs: NOW }, 'r'));
      assert.ok(!text.includes(TOKEN) && !text.includes('c2VjcmV0'), text);
    }
  });

  it('renders {account} as one plain token: a hostile account name cannot widen or reshape the audit subject', () => {
    const s = AuditSubject.compile('oidc-callout.audit.{result}.{account}');
    for (const account of ['*', '>', 'a.b', 'a b', '', 'a\u0000b', 'x.>', null]) {
      const subject = s.render({ result: 'allow', account });
      assert.equal(subject, 'oidc-callout.audit.allow._', JSON.stringify(account));
    }
    for (const bad of ['audit.>', 'audit.*', 'audit.{account}x', '$SYS.audit', '_INBOX.audit', 'a..b', 'audit.{acc}']) {
      assert.throws(() => AuditSubject.compile(bad), bad);
    }
  });
});

/** An account JWT signed by an operator key of its own, with `nats` and extra claims as given. */
function accountJwt(account: string, claims: Record<string, unknown>): string {
  const op = new NkeySigner(seedOf(createOperator()), 'operator');
  return encodeNatsJwt({ iat: Math.floor(NOW / 1000), iss: op.publicKey, sub: account, name: 'AUTH', ...claims }, op);
}

describe('startup check: hostile callout account JWTs', () => {
  const auth = createAccount();
  const authKey = auth.getPublicKey();
  const nats = { type: 'account', version: 2, authorization: { auth_users: [createAccount().getPublicKey()], allowed_accounts: ['*'] } };

  for (const exp of [-1e20, -8.64e15 - 1, 9e15]) {
    it(`reports an account JWT with exp ${exp} as a problem instead of throwing`, () => {
      const claims = readAccountJwt(accountJwt(authKey, { exp, nats }), authKey);
      assert.equal(typeof claims, 'object', String(claims));
      const config = { accounts: {}, keys: { accounts: { forAccount: () => undefined } }, nats: { connections: 24 }, workers: 1 } as unknown as Config;
      let findings: ReturnType<typeof checkCalloutAccount>;
      assert.doesNotThrow(() => {
        findings = checkCalloutAccount(config, claims as Exclude<typeof claims, string>, {
          serviceUser: undefined,
          xkey: undefined,
          nowSeconds: Math.floor(NOW / 1000),
        });
      });
      if (exp < 0)
        assert.ok(
          findings!.problems.some((p) => /expired/.test(p)),
          JSON.stringify(findings!),
        );
    });
  }

  it('check and run get findings, not an exception, from callout.account_jwt with an absurd exp', async () => {
    const config = scopedConfig([{ name: 'app', match: { groups: 'dev' }, account: 'APP', permissions: { sub: { allow: ['x'] } } }], {
      issuer_seed: seedOf(auth),
      account_jwt: accountJwt(authKey, { exp: -1e20, nats }),
    });
    const result = await inspectCalloutAccount(config, undefined, Math.floor(NOW / 1000)).then(
      (r) => r,
      (err: Error) => err,
    );
    assert.ok(!(result instanceof Error), `inspectCalloutAccount threw: ${(result as Error).message}`);
    assert.ok(result && result.problems.length > 0);
  });

  it('survives account JWTs of the wrong shape (null, strings, numbers where objects are expected)', () => {
    const config = { accounts: {}, keys: { accounts: { forAccount: () => undefined } }, nats: { connections: 24 }, workers: 1 } as unknown as Config;
    for (const shape of [
      { nats: { type: 'account', authorization: null } },
      { nats: { type: 'account', authorization: 'x' } },
      { nats: { type: 'account', authorization: { auth_users: 'U', allowed_accounts: 5, xkey: 7 } } },
      { nats: { type: 'account', authorization: { auth_users: [null, 1, {}] } }, exp: 'soon' },
      { nats: { type: 'account', signing_keys: [null, 1, { key: 5 }], authorization: { auth_users: ['U'] } } },
    ]) {
      const claims = readAccountJwt(accountJwt(authKey, shape), authKey);
      if (typeof claims === 'string') continue;
      assert.doesNotThrow(() => checkCalloutAccount(config, claims, { serviceUser: 'U', xkey: 'X', nowSeconds: 1, targets: new Map([['APP', claims]]) }));
    }
  });
});

describe('credentials in server URLs', () => {
  // nats.js, like the WHATWG URL parser, ends the user information at the *last* `@`.
  const url = 'nats://auth:p@ss-word-tail@127.0.0.1:4222';

  it('withoutUserinfo and withoutCredentials remove the whole password, also one holding "@"', () => {
    assert.equal(new URL(url).hostname, '127.0.0.1');
    assert.ok(!withoutUserinfo(url).includes('word-tail'), withoutUserinfo(url));
    assert.ok(!withoutCredentials(url).includes('word-tail'), withoutCredentials(url));
  });

  it('probe sends only the token and prints no part of a password written into the server URL', async () => {
    const connects: string[] = [];
    const server = net.createServer((socket) => {
      socket.write('INFO {"server_id":"NTEST","server_name":"t","version":"2.10.27","proto":1,"max_payload":1048576,"auth_required":true}\r\n');
      socket.on('data', (d) => {
        connects.push(d.toString());
        socket.end("-ERR 'Authorization Violation'\r\n");
      });
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    const port = (server.address() as net.AddressInfo).port;
    try {
      for (const u of [`nats://auth:secret-pass@127.0.0.1:${port}`, `nats://auth:p@ss-word-tail@127.0.0.1:${port}`]) {
        const result = await probe(u, 'PROBE.TOKEN.VALUE', 2000);
        assert.equal(result.ok, false);
        const printed = JSON.stringify(result);
        assert.ok(!printed.includes('secret-pass') && !printed.includes('word-tail'), `probe printed ${printed}`);
        assert.ok(!printed.includes('PROBE.TOKEN.VALUE'), printed);
      }
      assert.equal(connects.length, 2);
      for (const c of connects) {
        const opts = JSON.parse(c.slice('CONNECT '.length, c.indexOf('\r\n'))) as Record<string, unknown>;
        assert.equal(opts.auth_token, 'PROBE.TOKEN.VALUE');
        assert.equal(opts.user, undefined);
        assert.equal(opts.pass, undefined);
        assert.equal(opts.jwt, undefined);
      }
    } finally {
      server.close();
    }
  });
});

describe('shipped configurations', () => {
  it('conf/nats-server.conf exports the audit stream to the AUDIT account only, not to every account', () => {
    // A public export lets any account that adds an import read every login's identity and address.
    const conf = readFileSync(join(root, 'conf', 'nats-server.conf'), 'utf8')
      .split('\n')
      .filter((l) => !l.trim().startsWith('#'))
      .join('\n');
    const exp = /exports:\s*\[\s*\{\s*stream:\s*"oidc-callout\.audit\.>"([^}]*)\}/.exec(conf);
    assert.ok(exp, 'the audit export is there');
    assert.match(exp[1]!, /accounts:\s*\[\s*AUDIT\s*\]/, `export ${exp[0]} is public`);
  });

  it('never grants _INBOX.> (or >) to subscribe in the shipped service configuration, the setup or the scope', async () => {
    const yaml = readFileSync(join(root, 'conf', 'oidc-callout.yaml'), 'utf8')
      .split('\n')
      .filter((l) => !l.trim().startsWith('#'))
      .join('\n');
    assert.doesNotMatch(yaml, /"_INBOX\.>"|"_INBOX\.\*|allow:\s*\[\s*">"/);
    assert.ok(!SCOPE_PERMISSIONS.sub.includes('_INBOX.>') && !SCOPE_PERMISSIONS.sub.includes('>'));
    const setup = await generateOperatorSetup({ accounts: 2, xkey: true, issuer: undefined, audience: undefined });
    const generated = setup.files.find((f) => f.name === 'oidc-callout.yaml')!.text;
    assert.doesNotMatch(generated, /"_INBOX\.>"|"_INBOX\.\*|">"/);
    const conf = setup.files.find((f) => f.name === 'nats-server.conf')!.text;
    assert.doesNotMatch(conf, /default_sentinel|no_auth_user/);
  });
});

describe('setup operator: files', () => {
  it('with --force replaces a symlink rather than writing a seed through it, and writes seeds 0600', async () => {
    const base = mkdtempSync(join(tmpdir(), 'edge-setup-'));
    try {
      const dir = join(base, 'op');
      mkdirSync(dir, { mode: 0o700 });
      const victim = join(base, 'victim');
      writeFileSync(victim, 'precious\n', { mode: 0o644 });
      symlinkSync(victim, join(dir, 'operator.nk'));
      symlinkSync(join(base, 'dangling'), join(dir, 'xkey.nk'));
      const setup = await generateOperatorSetup({ accounts: 2, xkey: true, issuer: undefined, audience: undefined });
      writeOperatorSetup(dir, setup, true);
      assert.equal(readFileSync(victim, 'utf8'), 'precious\n');
      assert.equal(statSync(victim).mode & 0o777, 0o644);
      assert.ok(!lstatSync(join(base, 'dangling'), { throwIfNoEntry: false }), 'nothing was written through the dangling link');
      for (const f of setup.files) {
        const st = lstatSync(join(dir, f.name));
        assert.ok(st.isFile(), f.name);
        if (f.secret) assert.equal(st.mode & 0o077, 0, `${f.name} mode ${(st.mode & 0o777).toString(8)}`);
        assert.ok(!f.secret || !/SO|SA|SX|SU/.test(f.text) || f.text.includes('\n'), f.name);
      }
      // A non-secret file must hold no seed.
      for (const f of setup.files.filter((x) => !x.secret)) assert.doesNotMatch(f.text, /\bS[OAUXC][A-Z2-7]{50,}/, `${f.name} holds a seed`);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });

  it('refuses a directory others can write to, and a symlink to one', async () => {
    const base = mkdtempSync(join(tmpdir(), 'edge-setup-'));
    try {
      const shared = join(base, 'shared');
      mkdirSync(shared);
      chmodSync(shared, 0o777);
      const setup = await generateOperatorSetup({ accounts: 1, xkey: false, issuer: undefined, audience: undefined });
      assert.throws(() => writeOperatorSetup(shared, setup, false), /writable by others/);
      const link = join(base, 'link');
      symlinkSync(shared, link);
      assert.throws(() => writeOperatorSetup(link, setup, false), /writable by others/);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });

  it('refuses a new directory inside one others can write to (without the sticky bit they can swap it for their own)', async () => {
    // mkdir creates `sub` with mode 0700, which passes refuseSharedDirectory; but anyone who may
    // write to `shared` can rename `sub` away and put a directory of their own seeds in its place.
    const base = mkdtempSync(join(tmpdir(), 'edge-setup-'));
    try {
      const shared = join(base, 'shared');
      mkdirSync(shared);
      chmodSync(shared, 0o777);
      const setup = await generateOperatorSetup({ accounts: 1, xkey: false, issuer: undefined, audience: undefined });
      assert.throws(() => writeOperatorSetup(join(shared, 'sub'), setup, false), /writable by others|shared/);
    } finally {
      rmSync(base, { recursive: true, force: true });
    }
  });
});
