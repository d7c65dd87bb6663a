/**
 * How clients reach the callout in operator mode, on the oldest and the newest server: with the
 * callout account's sentinel credentials plus their token (every version), and with the token
 * alone through README's `default_sentinel` (2.11.2 and later). The clients are
 * examples/operator-mode/connect.js, which README shows; the service's startup line about
 * token-only clients is checked against what the server really does.
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
import { connect, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectNats } from '../../src/nats-connection.js';
import { CalloutRunner } from '../../src/runner.js';
import { logSentinelSupport, sentinelSupport } from '../../src/sentinel-support.js';
import { CalloutService } from '../../src/service.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';
import { newestAndOldest } from '../helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../helpers/nats-server.js';
import { ROOT } from '../helpers/provider-fixtures.js';
import { codeBlocks, oneBlock, readmeSection, replaceOnce } from '../helpers/readme-snippets.js';

const seed = (kp: KeyPair) => new TextDecoder().decode(kp.getSeed());
const now = () => Math.floor(Date.now() / 1000);
const UNLIMITED = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 };

const blocks = codeBlocks(readmeSection('### Sentinels and token-only clients'));
const defaultSentinelBlock = oneBlock(blocks, 'the default_sentinel option', (b) => b.lang === '' && b.text.startsWith('default_sentinel:'));
const connectFile = join(ROOT, 'examples', 'operator-mode', 'connect.js');
type TokenFn = () => string;
type Options = Partial<NodeConnectionOptions>;
const { connectWithSentinel, connectWithToken } = (await import(pathToFileURL(connectFile).href)) as {
  connectWithSentinel: (servers: string, creds: Uint8Array, sub: string, token: TokenFn, options?: Options) => Promise<NatsConnection>;
  connectWithToken: (servers: string, sub: string, token: TokenFn, options?: Options) => Promise<NatsConnection>;
};

describe('README Sentinels and token-only clients', () => {
  it('shows examples/operator-mode/connect.js', async () => {
    assert.equal(
      oneBlock(blocks, 'the client example', (b) => b.lang === 'js'),
      await readFile(connectFile, 'utf8'),
    );
  });

  it('quotes the startup line the service logs for 2.10.27', () => {
    const section = readmeSection('### Sentinels and token-only clients').replace(/\s+/g, ' ');
    assert.ok(section.includes(sentinelSupport('2.10.27').summary), 'README quotes sentinelSupport(2.10.27).summary');
  });
});

for (const bin of await newestAndOldest()) {
  const supported = sentinelSupport(bin.version).defaultSentinel;
  describe(`sentinels, nats-server ${bin.version}`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'oc-sentinel-'));
    const operator = createOperator();
    const sign = { signer: operator };
    const sys = createAccount();
    const auth = createAccount();
    const app = createAccount();
    const xkey = createCurve();
    const serviceUser = createUser();
    const sentinel = createUser();
    let sentinelCreds: Uint8Array;
    // The server's configuration without default_sentinel.
    let base: string;
    let bearerSentinel: string;
    let idp: LocalIssuer;
    let nats: RunningNats;
    let runner: CalloutRunner;
    const servers: RunningNats[] = [];
    const lines: Record<string, any>[] = [];
    const log = createLogger('info', (l) => lines.push(JSON.parse(l)));
    const decisions = () => lines.filter((l) => l.msg === 'authorization');

    /** README's default_sentinel line carrying `jwt`. */
    const withDefaultSentinel = (jwt: string) => `${replaceOnce(defaultSentinelBlock, 'eyJ0eXAi...', jwt)}${base}`;

    async function server(config: string): Promise<RunningNats> {
      const s = await startNatsServer({ bin: bin.path, config });
      servers.push(s);
      return s;
    }

    before(async () => {
      idp = await startLocalIssuer();
      const operatorJwt = await encodeOperator('OP', operator, { system_account: sys.getPublicKey() });
      const accounts = [
        [sys, await encodeAccount('SYS', sys, { limits: UNLIMITED }, sign)],
        [
          auth,
          await encodeAccount(
            'AUTH',
            auth,
            {
              limits: UNLIMITED,
              authorization: { auth_users: [serviceUser.getPublicKey()], allowed_accounts: [app.getPublicKey()], xkey: xkey.getPublicKey() },
            },
            sign,
          ),
        ],
        [app, await encodeAccount('APP', app, { limits: UNLIMITED }, sign)],
      ] as const;
      base = `max_control_line: 65536
authorization { timeout: 2 }
operator: ${operatorJwt}
system_account: ${sys.getPublicKey()}
resolver: MEMORY
resolver_preload: {
${accounts.map(([kp, jwt]) => `  ${kp.getPublicKey()}: ${jwt}`).join('\n')}
}
`;
      // Denied everything: whoever comes in with it can only reach the callout.
      const deny = { pub: { deny: ['>'] }, sub: { deny: ['>'] } };
      sentinelCreds = fmtCreds(await encodeUser('sentinel', sentinel, auth, deny), sentinel);
      bearerSentinel = await encodeUser('sentinel', createUser(), auth, { ...deny, bearer_token: true });
      nats = await server(supported ? withDefaultSentinel(bearerSentinel) : base);

      writeFileSync(join(dir, 'service.creds'), fmtCreds(await encodeUser('callout', serviceUser, auth, {}), serviceUser));
      const config = buildConfig({
        nats: { servers: [nats.url], creds_file: join(dir, 'service.creds') },
        callout: { mode: 'operator', issuer_seed: seed(auth), xkey_seed: seed(xkey), system_account: sys.getPublicKey() },
        accounts: { APP: { public_key: app.getPublicKey(), signing_seed: seed(app) } },
        issuers: [{ issuer: idp.issuer, audiences: ['nats'], allow_insecure_http: true }],
        policy: {
          rules: [
            {
              name: 'app',
              match: { groups: 'dev' },
              account: 'APP',
              permissions: { pub: { allow: ['$SYS.REQ.USER.INFO', 'app.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } },
            },
          ],
        },
      });
      const nc = await connectNats(config);
      runner = new CalloutRunner(nc, new CalloutService(config, log), log);
      await runner.start();
      // What `run` logs right after the runner starts in operator mode.
      logSentinelSupport(log, nc);
    });

    after(async () => {
      await runner?.stop();
      for (const s of servers) await s.stop();
      await idp?.stop();
      rmSync(dir, { recursive: true, force: true });
    });

    /** A token function for `sub` in group dev, counting how often nats.js asks for it. */
    async function tokenFor(sub: string): Promise<TokenFn & { asked: number }> {
      const token = await idp.sign({ sub, aud: 'nats', exp: now() + 300, groups: ['dev'] });
      const fn = Object.assign(
        () => {
          fn.asked++;
          return token;
        },
        { asked: 0 },
      );
      return fn;
    }

    async function accountOf(nc: NatsConnection): Promise<string> {
      return JSON.parse((await nc.request('$SYS.REQ.USER.INFO', '', { timeout: 2000 })).string()).data.account;
    }

    it('lets clients in with the sentinel credentials plus their token', async () => {
      const token = await tokenFor('alice');
      const nc = await connectWithSentinel(nats.url, sentinelCreds, 'alice', token, { reconnect: false });
      try {
        assert.equal(await accountOf(nc), app.getPublicKey());
        assert.equal(token.asked, 1);
        assert.equal(decisions().at(-1)?.result, 'allow');
      } finally {
        await nc.close();
      }
    });

    it(`logs at startup that token-only clients are ${supported ? 'accepted with default_sentinel' : 'refused'}`, () => {
      const line = lines.find((l) => l.token_only_clients !== undefined);
      assert.equal(line?.level, 'info');
      assert.equal(line?.nats_server, bin.version);
      assert.equal(line?.token_only_clients, supported ? 'with default_sentinel' : 'refused');
      assert.equal(line?.msg, sentinelSupport(bin.version).summary);
    });

    it('refuses a token-only client where no default_sentinel is set, before any callout', async () => {
      const plain = supported ? await server(base) : nats;
      const before = decisions().length;
      const from = plain.logs().length;
      const token = await tokenFor('bob');
      await assert.rejects(connectWithToken(plain.url, 'alice', token, { reconnect: false }), (err: Error) => {
        assert.match(err.message, /Authorization Violation/);
        return true;
      });
      // 2.10 logs no more than this; 2.15 adds the (redacted) token.
      const logged = await plain.waitForLog(/\[ERR\] .* - authentication error/, 5000, from);
      if (supported) assert.match(logged, /authentication error - Token "\[REDACTED\]"/);
      else assert.match(logged, /authentication error$/);
      assert.equal(decisions().length, before, 'the service never saw the client');
    });

    if (supported) {
      it('lets a token-only client in through README default_sentinel, asking the token function on connect', async () => {
        const token = await tokenFor('carol');
        const nc = await connectWithToken(nats.url, 'carol', token, { reconnect: false });
        try {
          assert.equal(await accountOf(nc), app.getPublicKey());
          assert.equal(token.asked, 1);
          assert.equal(decisions().at(-1)?.result, 'allow');
        } finally {
          await nc.close();
        }
      });

      it('sends clients without any credentials to the callout too', async () => {
        await assert.rejects(connect({ servers: nats.url, reconnect: false }), /Authorization Violation/);
        assert.equal(decisions().at(-1)?.code, 'TOKEN_MISSING');
      });

      it('refuses to start with a default_sentinel that is not a bearer JWT', async () => {
        const notBearer = await encodeUser('sentinel', createUser(), auth, { pub: { deny: ['>'] }, sub: { deny: ['>'] } });
        await assert.rejects(server(withDefaultSentinel(notBearer)), /default sentinel must be a bearer token/);
      });

      it('lets every client in without the callout when default_sentinel is a bearer user of another account', async () => {
        const open = await server(withDefaultSentinel(await encodeUser('anyone', createUser(), app, { bearer_token: true })));
        const before = decisions().length;
        const nc = await connectWithToken(open.url, 'nobody', () => 'not even a token', { reconnect: false });
        try {
          assert.equal(await accountOf(nc), app.getPublicKey());
          assert.equal(decisions().length, before, 'no callout');
        } finally {
          await nc.close();
        }
      });
    } else {
      it('refuses to start with default_sentinel: the option does not exist', async () => {
        await assert.rejects(server(withDefaultSentinel(bearerSentinel)), /unknown field "default_sentinel"/);
      });
    }
  });
}
