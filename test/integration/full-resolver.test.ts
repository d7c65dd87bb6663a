/**
 * Operator mode on a full (nats-based) resolver, on the oldest and the newest server: README's
 * "Live resolver" configuration with only the system account preloaded, every other account JWT
 * pushed at runtime with examples/operator-mode/push-account.js, and changes to the callout
 * account and to a target account pushed while nats-server and the service keep running. What a
 * push does to connections already in is asserted, not assumed.
 */
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { encodeAccount, encodeOperator, encodeUser, fmtCreds } from '@nats-io/jwt';
import { createAccount, createCurve, createOperator, createUser, type KeyPair } from '@nats-io/nkeys';
import { connect, credsAuthenticator, type Msg, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { inspectCalloutAccount } from '../../src/account-check.js';
import { buildConfig, type Config } from '../../src/config.js';
import { buildService } from '../../src/lifecycle.js';
import { createLogger } from '../../src/log.js';
import { connectNats } from '../../src/nats-connection.js';
import { CalloutRunner } from '../../src/runner.js';
import type { CalloutService } from '../../src/service.js';
import { XkeyBox } from '../../src/xkey.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';
import { newestAndOldest } from '../helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../helpers/nats-server.js';
import { ROOT } from '../helpers/provider-fixtures.js';
import { codeBlocks, oneBlock, readmeSection, replaceOnce } from '../helpers/readme-snippets.js';

const seed = (kp: KeyPair) => new TextDecoder().decode(kp.getSeed());
const now = () => Math.floor(Date.now() / 1000);
const UNLIMITED = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 };
const refusal = (err: Error) => /Authorization Violation|connection reset|ECONNRESET/i.test(`${err.message} ${String(err.cause)}`);

const blocks = codeBlocks(readmeSection('### Live resolver'));
const resolverBlock = oneBlock(blocks, 'the full resolver configuration', (b) => b.lang === '' && b.text.startsWith('resolver {'));
const pushFile = join(ROOT, 'examples', 'operator-mode', 'push-account.js');
type PushAccountJwt = (system: NatsConnection, jwt: string) => Promise<{ account: string; code: number; message: string }>;
const { pushAccountJwt } = (await import(pathToFileURL(pushFile).href)) as { pushAccountJwt: PushAccountJwt };
type ConnectWithSentinel = (
  servers: string,
  creds: Uint8Array,
  sub: string,
  token: () => string,
  options?: Partial<NodeConnectionOptions>,
) => Promise<NatsConnection>;
const { connectWithSentinel } = (await import(pathToFileURL(join(ROOT, 'examples', 'operator-mode', 'connect.js')).href)) as {
  connectWithSentinel: ConnectWithSentinel;
};

describe('README Live resolver', () => {
  it('shows examples/operator-mode/push-account.js', async () => {
    assert.equal(
      oneBlock(blocks, 'the push example', (b) => b.lang === 'js'),
      await readFile(pushFile, 'utf8'),
    );
  });
});

for (const bin of await newestAndOldest()) {
  describe(`live (full) resolver, nats-server ${bin.version}`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'oc-full-resolver-'));
    const operator = createOperator();
    const sign = { signer: operator };
    const sys = createAccount();
    const auth = createAccount();
    const app = createAccount();
    // OPS's users are signed by a signing key, rotated below.
    const ops = createAccount();
    const opsOld = createAccount();
    const opsNew = createAccount();
    // An account the callout account does not allow at first.
    const neu = createAccount();
    const xkeyOld = createCurve();
    const xkeyNew = createCurve();
    const sysUser = createUser();
    const serviceUser = createUser();
    const sentinel = createUser();
    let sentinelCreds: Uint8Array;
    let idp: LocalIssuer;
    let nats: RunningNats;
    let system: NatsConnection;
    let runner: CalloutRunner;
    let service: CalloutService;
    let config: Config;
    const decisions: Record<string, any>[] = [];
    const log = createLogger('info', (l) => decisions.push(JSON.parse(l)));
    const pushed: { account: string; code: number; message: string }[] = [];
    const clients: NatsConnection[] = [];
    const jwts = new Map<string, string>();
    let newUser: NatsConnection | undefined;

    const authJwt = (allowed: KeyPair[], xkey: KeyPair) =>
      encodeAccount(
        'AUTH',
        auth,
        {
          limits: UNLIMITED,
          authorization: { auth_users: [serviceUser.getPublicKey()], allowed_accounts: allowed.map((a) => a.getPublicKey()), xkey: xkey.getPublicKey() },
        },
        sign,
      );
    const opsJwt = (keys: KeyPair[]) => encodeAccount('OPS', ops, { limits: UNLIMITED, signing_keys: keys.map((k) => k.getPublicKey()) }, sign);

    async function push(jwt: string): Promise<void> {
      pushed.push(await pushAccountJwt(system, jwt));
    }

    /** The service's configuration with OPS's signing key and the xkey it holds. */
    function configWith(opsSigning: KeyPair, xkey: KeyPair): Config {
      const rule = (name: string, account: string) => ({
        name,
        match: { groups: name },
        account,
        permissions: { pub: { allow: ['$SYS.REQ.USER.INFO', `${name}.>`] }, sub: { allow: ['_INBOX.{{sub}}.>'] } },
      });
      return buildConfig({
        nats: { servers: [nats.url], creds_file: join(dir, 'service.creds') },
        callout: { mode: 'operator', issuer_seed: seed(auth), xkey_seed: seed(xkey), system_account: sys.getPublicKey() },
        accounts: {
          APP: { public_key: app.getPublicKey(), signing_seed: seed(app) },
          OPS: { public_key: ops.getPublicKey(), signing_seed: seed(opsSigning) },
          NEW: { public_key: neu.getPublicKey(), signing_seed: seed(neu) },
        },
        issuers: [{ issuer: idp.issuer, audiences: ['nats'], allow_insecure_http: true }],
        policy: { rules: [rule('dev', 'APP'), rule('ops', 'OPS'), rule('new', 'NEW')] },
      });
    }

    /** A configuration reload as `run` does it on SIGHUP: a new service, swapped in. */
    function reload(next: Config): void {
      config = next;
      service = buildService(next, log, undefined, service);
      runner.swap(service);
    }

    before(async () => {
      idp = await startLocalIssuer();
      const operatorJwt = await encodeOperator('OP', operator, { system_account: sys.getPublicKey() });
      const sysJwt = await encodeAccount('SYS', sys, { limits: UNLIMITED }, sign);
      const resolver = replaceOnce(
        replaceOnce(resolverBlock, '"/var/lib/nats/jwt"', JSON.stringify(join(dir, 'jwt'))),
        'ADSY...: eyJ0eXAi...',
        `${sys.getPublicKey()}: ${sysJwt}`,
      );
      nats = await startNatsServer({
        bin: bin.path,
        // Debug: the reason nats-server closes a connection is a debug line.
        debug: true,
        config: `max_control_line: 65536
authorization { timeout: 2 }
operator: ${operatorJwt}
system_account: ${sys.getPublicKey()}
${resolver}`,
      });
      system = await connect({
        servers: nats.url,
        reconnect: false,
        authenticator: credsAuthenticator(fmtCreds(await encodeUser('sys', sysUser, sys, {}), sysUser)),
      });
      jwts.set('AUTH', await authJwt([app, ops], xkeyOld));
      jwts.set('APP', await encodeAccount('APP', app, { limits: UNLIMITED }, sign));
      jwts.set('OPS', await opsJwt([opsOld]));
      jwts.set('NEW', await encodeAccount('NEW', neu, { limits: UNLIMITED }, sign));
      for (const jwt of jwts.values()) await push(jwt);

      writeFileSync(join(dir, 'service.creds'), fmtCreds(await encodeUser('callout', serviceUser, auth, {}), serviceUser));
      sentinelCreds = fmtCreds(await encodeUser('sentinel', sentinel, auth, { pub: { deny: ['>'] }, sub: { deny: ['>'] } }), sentinel);
      config = configWith(opsOld, xkeyOld);
      service = buildService(config, log);
      runner = new CalloutRunner(await connectNats(config), service, log);
      await runner.start();
    });

    after(async () => {
      for (const nc of clients) await nc.close().catch(() => undefined);
      await system?.close();
      await runner?.stop();
      await nats?.stop();
      await idp?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    /** Logs in with README's client (sentinel creds plus a token function); counts token requests. */
    async function login(group: string, options: Partial<NodeConnectionOptions> = {}): Promise<NatsConnection & { tokensAsked: () => number }> {
      const sub = `user-${group}-${clients.length}`;
      const token = await idp.sign({ sub, aud: 'nats', exp: now() + 300, groups: [group] });
      let asked = 0;
      const nc = await connectWithSentinel(
        nats.url,
        sentinelCreds,
        sub,
        () => {
          asked++;
          return token;
        },
        { reconnect: false, ...options },
      );
      clients.push(nc);
      return Object.assign(nc, { tokensAsked: () => asked });
    }

    async function accountOf(nc: NatsConnection): Promise<string> {
      return JSON.parse((await nc.request('$SYS.REQ.USER.INFO', '', { timeout: 2000 })).string()).data.account;
    }

    const lastDecision = () => decisions.filter((d) => d.msg === 'authorization').at(-1);

    it('starts with only the system account preloaded and takes the other accounts pushed at runtime', async () => {
      assert.deepEqual(
        pushed.map((p) => [p.code, p.message]),
        [...jwts.keys()].map(() => [200, 'jwt updated']),
      );
      assert.deepEqual(
        pushed.map((p) => p.account),
        [auth, app, ops, neu].map((a) => a.getPublicKey()),
      );
      // The per-account subject refuses a JWT of another account; the example says which.
      const wrong = JSON.parse((await system.request(`$SYS.REQ.ACCOUNT.${app.getPublicKey()}.CLAIMS.UPDATE`, jwts.get('NEW')!)).string());
      assert.deepEqual(wrong.error, {
        account: app.getPublicKey(),
        code: 500,
        description: 'jwt update resulted in error - subject does not match jwt content',
      });
      await assert.rejects(pushAccountJwt(system, 'not a jwt'), /jwt update resulted in error/);
    });

    it('issues users into an account pushed at runtime', async () => {
      const dev = await login('dev');
      assert.equal(await accountOf(dev), app.getPublicKey());
    });

    it("the startup check reads every JWT through the resolver's CLAIMS.LOOKUP, target accounts nobody has logged into included", async () => {
      const asked: string[] = [];
      const recording = new Proxy(system, {
        get(target, prop) {
          if (prop === 'request') {
            return (subject: string, ...rest: unknown[]) => {
              asked.push(subject);
              return (target.request as (...a: unknown[]) => Promise<Msg>)(subject, ...rest);
            };
          }
          const value = Reflect.get(target, prop);
          return typeof value === 'function' ? value.bind(target) : value;
        },
      });
      const found = await inspectCalloutAccount(config, recording, now());
      assert.equal(found?.source, 'the servers (admin.system)');
      // NEW is pushed but not yet allowed; OPS's signing key is checked against its pushed JWT.
      assert.deepEqual(found?.problems, [
        `account NEW (${neu.getPublicKey()}) is not in authorization.allowed_accounts: nats-server refuses every user the service places into it`,
      ]);
      assert.deepEqual(found?.warnings, [], 'no target is reported as not checked');
      assert.deepEqual(
        asked.sort(),
        [auth, app, ops, neu].map((a) => `$SYS.REQ.ACCOUNT.${a.getPublicKey()}.CLAIMS.LOOKUP`).sort(),
        'no ACCOUNT.INFO fallback was needed',
      );
      assert.equal((await system.request(`$SYS.REQ.ACCOUNT.${neu.getPublicKey()}.CLAIMS.LOOKUP`, '')).string(), jwts.get('NEW'));
    });

    it('(a) admits logins into an account once the callout account allowing it is pushed; live connections stay', async () => {
      const dev = clients[0]!;
      await assert.rejects(login('new'), refusal);
      assert.equal(lastDecision()?.result, 'allow', 'the service granted it: nats-server refused the user');

      await push(await authJwt([app, ops, neu], xkeyOld));
      newUser = await login('new');
      assert.equal(await accountOf(newUser), neu.getPublicKey());
      assert.equal(await accountOf(dev), app.getPublicKey(), 'a connection from before the push still works');
      assert.deepEqual((await inspectCalloutAccount(config, system, now()))?.problems, []);
    });

    it('(b) signs users with a signing key once the account listing it is pushed; removing a key disconnects its users, who come back through the callout', async () => {
      const before = await login('ops', { reconnect: true, maxReconnectAttempts: 20, reconnectTimeWait: 100 });
      assert.equal(await accountOf(before), ops.getPublicKey());

      // The service signs with the new key before OPS's JWT lists it: refused, and the check says why.
      reload(configWith(opsNew, xkeyOld));
      await assert.rejects(login('ops'), refusal);
      assert.equal(lastDecision()?.result, 'allow', 'the service signed it: nats-server refused the user');
      const stale = await inspectCalloutAccount(config, system, now());
      assert.match(
        stale?.problems.join('\n') ?? '',
        new RegExp(`account OPS: ${opsNew.getPublicKey()} \\(accounts.OPS.signing_seed\\) is not one of its signing keys`),
      );

      await push(await opsJwt([opsOld, opsNew]));
      const after = await login('ops');
      assert.equal(await accountOf(after), ops.getPublicKey());
      assert.deepEqual((await inspectCalloutAccount(config, system, now()))?.problems, []);
      assert.equal(await accountOf(before), ops.getPublicKey(), 'adding a key leaves its users connected');

      // Retiring the old key: its user is disconnected at once, reconnects with a fresh token
      // through the callout, and is signed by the new key this time.
      const reconnected = (async () => {
        for await (const s of before.status()) if (s.type === 'reconnect') return;
      })();
      const mark = nats.logs().length;
      await push(await opsJwt([opsNew]));
      await nats.waitForLog(/Client connection closed: Authentication Failure/, 5000, mark);
      await reconnected;
      assert.equal(before.tokensAsked(), 2, 'the token function was asked again for the reconnect');
      assert.equal(await accountOf(before), ops.getPublicKey());
      assert.equal(await accountOf(after), ops.getPublicKey(), "the new key's user stayed");
    });

    it('(c) seals requests to a new xkey once the callout account is pushed and the service reloaded; logins in between go unanswered', async () => {
      // A second subscriber as the service's user sees the raw requests.
      const tap = await connect({
        servers: nats.url,
        reconnect: false,
        authenticator: credsAuthenticator(fmtCreds(await encodeUser('tap', serviceUser, auth, {}), serviceUser)),
      });
      clients.push(tap);
      const requests: Msg[] = [];
      tap.subscribe('$SYS.REQ.USER.AUTH', {
        callback: (_err, m) => {
          requests.push(m);
        },
      });
      await tap.flush();

      await push(await authJwt([app, ops, neu], xkeyNew));
      // The service still holds the old key: it cannot open the request and leaves it unanswered.
      await assert.rejects(login('dev'), refusal);
      assert.equal(lastDecision()?.code, 'REQUEST_DECRYPT_FAILED');

      reload(configWith(opsNew, xkeyNew));
      const dev = await login('dev');
      assert.equal(await accountOf(dev), app.getPublicKey());
      const last = requests.at(-1)!;
      const serverXkey = last.headers?.get('Nats-Server-Xkey') ?? '';
      assert.notEqual(new XkeyBox(seed(xkeyNew)).open(last.data, serverXkey), null, 'sealed to the new xkey');
      assert.equal(new XkeyBox(seed(xkeyOld)).open(last.data, serverXkey), null, 'not to the old one');
      assert.deepEqual((await inspectCalloutAccount(config, system, now()))?.problems, []);
      for (const nc of clients) assert.equal(nc.isClosed(), false, 'every connection from before the new xkey is still open');
      assert.equal(await accountOf(clients[0]!), app.getPublicKey());
    });

    it('keeps users of an account removed from allowed_accounts connected, and refuses new ones', async () => {
      const inNew = newUser!;
      await push(await authJwt([app, ops], xkeyNew));
      await assert.rejects(login('new'), refusal);
      assert.equal(await accountOf(inNew), neu.getPublicKey());
    });
  });
}
