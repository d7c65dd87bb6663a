/**
 * README "Leaf nodes", run as written: a hub nats-server with auth_callout and the README's
 * `leafnodes` block, the service with the README's rule, and leaf nats-servers configured with
 * the README's leaf configuration, whose remote file is written by the README's script. Only
 * site-specific values are replaced (issuer URL, host and port, paths).
 *
 * nats-server hands a leaf connection without `leafnodes.authorization` users to the callout
 * (server/auth.go isLeafNodeAuthorized -> isClientAuthorized), 2.10 and 2.15 alike; the request's
 * client_info.kind is "Leafnode" and the remote URL's password arrives in connect_opts.pass.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { parse } from 'yaml';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectAll } from '../../src/nats-connection.js';
import { CalloutRunner } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { calloutServerConfig, connectClient, LogCapture, seedOf, within } from '../helpers/callout-fixture.js';
import { freeServerPort } from '../helpers/free-port.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { type RunningNats, startNatsServer } from '../helpers/nats-server.js';
import { codeBlocks, oneBlock, readmeSection, replaceOnce } from '../helpers/readme-snippets.js';

const binaries = await natsServerBinaries();
const now = () => Math.floor(Date.now() / 1000);

const blocks = codeBlocks(readmeSection('### Leaf nodes'));
const HUB_BLOCK = oneBlock(blocks, "the hub's leafnodes block", (b) => b.lang === '' && b.text.includes('port: 7422'));
const RULES_YAML = oneBlock(blocks, 'the service configuration', (b) => b.lang === 'yaml');
const LEAF_CONF = oneBlock(blocks, "the leaf's configuration", (b) => b.lang === '' && b.text.includes('remotes'));
const RENEW_SCRIPT = oneBlock(blocks, 'the renewal script', (b) => b.lang === 'sh');
const README_ISSUER = 'https://idp.example.com/realms/edge';

/** Whether this nats-server reloads changed leaf remotes (nats-io/nats-server#7937, 2.14). */
function reloadsRemotes(version: string): boolean {
  const [major = 0, minor = 0] = version.split('.').map(Number);
  return major > 2 || (major === 2 && minor >= 14);
}

/** A leaf nats-server run from the README's configuration, its remote file written by the README's script. */
interface Leaf {
  readonly server: RunningNats;
  /** Runs the README's script with `token` in the token file. */
  renew(token: string): void;
  stop(): Promise<void>;
}

for (const { version, path: bin } of binaries) {
  describe(`nats-server ${version}: leaf nodes log in through the callout`, () => {
    let idp: LocalIssuer;
    let hub: RunningNats;
    let runner: CalloutRunner | undefined;
    let leafPort: number;
    const log = new LogCapture();
    const leaves: Leaf[] = [];

    before(async () => {
      idp = await startLocalIssuer();
      const issuerKey = createAccount();
      const xkey = createCurve();
      const password = randomBytes(12).toString('hex');
      leafPort = await freeServerPort();
      hub = await startNatsServer({
        bin,
        debug: true,
        config: [
          calloutServerConfig({ issuer: issuerKey.getPublicKey(), xkey: xkey.getPublicKey(), password }),
          // Trace shows every CONNECT: the token must not be among them.
          'trace: true',
          replaceOnce(HUB_BLOCK, 'port: 7422', `host: 127.0.0.1\n  port: ${leafPort}`),
        ].join('\n'),
      });
      const readme = parse(RULES_YAML) as { token: Record<string, unknown>; policy: { rules: Record<string, any>[] } };
      const rules = readme.policy.rules.map((r) => ({ ...r, issuer: r.issuer === README_ISSUER ? idp.issuer : r.issuer }));
      const doc = {
        nats: { servers: [hub.url], user: 'auth', password },
        callout: { account: 'AUTH', issuer_seed: seedOf(issuerKey), xkey_seed: seedOf(xkey) },
        token: readme.token,
        issuers: [{ issuer: idp.issuer, audiences: ['nats'], jwks_uri: idp.jwksUri, allow_insecure_http: true, leeway: '0s' }],
        policy: {
          rules: [
            ...rules,
            // The hub's own service: reads what sites send, broadcasts, answers their requests.
            {
              name: 'hub-service',
              match: { groups: 'hub-service' },
              account: 'APP',
              permissions: {
                pub: { allow: ['hub.broadcast.>'] },
                sub: { allow: ['site.>', 'hub.>', 'other.>', '_INBOX.{{sub}}.>'] },
                resp: { max: 1, ttl: '5s' },
              },
            },
            // An ordinary rule: default connection types.
            { name: 'apps', match: { groups: 'app' }, account: 'APP', permissions: { pub: { allow: ['site.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } } },
          ],
        },
      };
      const logger = createLogger('debug', log.write);
      const service = new CalloutService(buildConfig(doc, {}), logger);
      runner = new CalloutRunner(await connectAll(service.config, { maxReconnectAttempts: 0 }), service, logger);
      await runner.start();
    });

    after(async () => {
      for (const leaf of leaves) await leaf.stop();
      await runner?.stop().catch(() => undefined);
      await hub?.stop();
      await idp?.stop();
    });

    const siteToken = (sub: string, groups: string[], lifetime = 300) => idp.sign({ sub, aud: 'nats', groups, exp: now() + lifetime });

    async function startLeaf(token: string): Promise<Leaf> {
      const dir = mkdtempSync(join(tmpdir(), 'oc-leaf-'));
      const tokenFile = join(dir, 'token');
      const pidFile = join(dir, 'leaf.pid');
      const renew = (t: string): void => {
        writeFileSync(tokenFile, t, { mode: 0o600 });
        execFileSync('sh', ['-c', RENEW_SCRIPT], {
          env: { PATH: process.env['PATH'] ?? '/usr/bin:/bin', TOKEN_FILE: tokenFile, HUB: `127.0.0.1:${leafPort}`, CONF_DIR: dir, PID_FILE: pidFile },
        });
      };
      renew(token);
      // nats-server resolves include paths against the directory of its configuration file,
      // which the helper makes next to ours in the temporary directory.
      let config = replaceOnce(LEAF_CONF, '"/var/run/nats/leaf.pid"', JSON.stringify(pidFile));
      config = replaceOnce(config, 'include "hub-remote.conf"', `include "../${basename(dir)}/hub-remote.conf"`);
      const server = await startNatsServer({ bin, debug: true, config });
      const leaf: Leaf = {
        server,
        renew,
        stop: async () => {
          await server.stop();
          rmSync(dir, { recursive: true, force: true });
        },
      };
      leaves.push(leaf);
      return leaf;
    }

    /** Publishes `subject` from `from` until `to`'s subscription on it receives one (interest crosses the link asynchronously). */
    async function untilDelivered(from: NatsConnection, to: NatsConnection, subject: string): Promise<void> {
      const sub = to.subscribe(subject, { max: 1 });
      await to.flush();
      const got = (async () => {
        for await (const _ of sub) return true;
        return false;
      })();
      const deadline = Date.now() + 5000;
      let done = false;
      void got.then(() => (done = true));
      while (!done && Date.now() < deadline) {
        from.publish(subject, 'probe');
        await from.flush();
        await sleep(50);
      }
      assert.ok(await within(got, 100, `a message on ${subject} across the link`));
    }

    let linked: Leaf;
    let linkedToken: string;

    it('admits the leaf by the rule for LEAFNODE connections, and the token is in no log', async () => {
      const mark = log.mark();
      linkedToken = await siteToken('site-1', ['edge-site']);
      linked = await startLeaf(linkedToken);
      const d = await log.nextDecision(mark, 10_000);
      assert.equal(d.result, 'allow', JSON.stringify(d));
      assert.equal(d.rule, 'edge-sites');
      assert.equal(d.account, 'APP');
      await linked.server.waitForLog(/Leafnode connection created for account/, 5000);
      // The leaf's CONNECT was traced, with its password redacted.
      assert.match(await hub.waitForLog(/CONNECT \{"version":[^\n]*"user":"leaf","pass":"\[REDACTED\]"/), /REDACTED/);
      assert.equal(hub.logs().includes(linkedToken), false, 'the hub logged the token');
      assert.equal(linked.server.logs().includes(linkedToken), false, 'the leaf logged the token');
    });

    it("carries messages across the link only where the leaf's permissions allow", async () => {
      const hubNc = await connectClient(hub.url, { token: await siteToken('hub-svc', ['hub-service']) });
      const leafNc = await connect({ servers: linked.server.url, reconnect: false, inboxPrefix: '_INBOX.site-1' });
      try {
        const seen: string[] = [];
        for (const [nc, side] of [
          [hubNc, 'hub'],
          [leafNc, 'leaf'],
        ] as const) {
          for (const s of ['site.site-1.temp', 'site.site-2.temp', 'hub.broadcast.news', 'other.thing'])
            nc.subscribe(s, {
              callback: (err, m) => {
                if (!err && m.string() !== 'probe') seen.push(`${side} got ${m.subject} ${m.string()}`);
              },
            });
        }
        await hubNc.flush();
        await leafNc.flush();
        // Allowed both ways once interest has crossed.
        await untilDelivered(leafNc, hubNc, 'site.site-1.ready');
        await untilDelivered(hubNc, leafNc, 'hub.broadcast.ready');

        for (const s of ['site.site-2.temp', 'hub.broadcast.news', 'other.thing', 'site.site-1.temp']) leafNc.publish(s, 'from leaf');
        for (const s of ['site.site-1.temp', 'other.thing', 'hub.broadcast.news']) hubNc.publish(s, 'from hub');
        await hubNc.flush();
        await leafNc.flush();
        // Each side's last publish is allowed: messages of one connection cross in order, so once
        // both arrived, anything refused before them would have arrived too.
        const deadline = Date.now() + 5000;
        while (!(seen.includes('hub got site.site-1.temp from leaf') && seen.includes('leaf got hub.broadcast.news from hub')) && Date.now() < deadline)
          await sleep(20);
        const crossed = seen.filter((s) => (s.startsWith('hub') && s.endsWith('from leaf')) || (s.startsWith('leaf') && s.endsWith('from hub')));
        assert.deepEqual(crossed.sort(), ['hub got site.site-1.temp from leaf', 'leaf got hub.broadcast.news from hub']);

        // A request from the leaf's client, answered on the hub, its reply back in the leaf's inbox.
        hubNc.subscribe('site.*.status', {
          callback: (err, m) => {
            if (!err) m.respond(`ok ${m.subject}`);
          },
        });
        await hubNc.flush();
        await untilDelivered(leafNc, hubNc, 'site.site-1.ping');
        const reply = await leafNc.request('site.site-1.status', '', { timeout: 5000 });
        assert.equal(reply.string(), 'ok site.site-1.status');
      } finally {
        await leafNc.close();
        await hubNc.close();
      }
    });

    it('refuses a leaf with an invalid token, with a clear line in every log', async () => {
      const mark = log.mark();
      const hubMark = hub.logs().length;
      const leaf = await startLeaf(await idp.sign({ sub: 'site-9', aud: 'nats', groups: ['edge-site'] }, { key: 'unknown' }));
      try {
        const d = await log.nextDecision(mark, 10_000);
        assert.equal(d.result, 'reject', JSON.stringify(d));
        assert.match(String(d.code), /^TOKEN_/);
        await leaf.server.waitForLog(/Leafnode Error 'Authorization Violation'/, 5000);
        await hub.waitForLog(/authentication error - User "leaf"/, 5000, hubMark);
      } finally {
        await leaf.stop();
      }
    });

    it('refuses a leaf matched by a rule with the default connection types', async () => {
      const mark = log.mark();
      const leaf = await startLeaf(await siteToken('site-3', ['app']));
      try {
        const d = await log.nextDecision(mark, 10_000);
        assert.equal(d.code, 'POLICY_CONNECTION_REFUSED', JSON.stringify(d));
        assert.match(String(d.reason), /rule apps allows/);
        await leaf.server.waitForLog(/Leafnode Error 'Authorization Violation'/, 5000);
      } finally {
        await leaf.stop();
      }
    });

    it('closes the link when the user JWT expires; the same token is refused from then on', async () => {
      const leaf = await startLeaf(await siteToken('site-4', ['edge-site'], 3));
      await leaf.server.waitForLog(/Leafnode connection created for account/, 5000);
      try {
        await leaf.server.waitForLog(/Leafnode Error 'User Authentication Expired'/, 8000);
        const mark = log.mark();
        const d = await log.nextDecision(mark, 5000);
        assert.equal(d.code, 'TOKEN_EXPIRED', JSON.stringify(d));
        await leaf.server.waitForLog(/Leafnode Error 'Authorization Violation'/, 5000);
      } finally {
        await leaf.stop();
      }
    });

    if (reloadsRemotes(version)) {
      it('renews the token of a live link: the script rewrites the remote and the reload re-links with it', async () => {
        const mark = log.mark();
        const renewed = await siteToken('site-1', ['edge-site'], 600);
        const pid = linked.server.pid;
        linked.renew(renewed);
        const d = await log.waitFor((r) => r.msg === 'authorization' && r.subject === 'site-1', { from: mark, timeoutMs: 10_000 });
        assert.equal(d.result, 'allow', JSON.stringify(d));
        assert.equal(d.expires, JSON.parse(Buffer.from(renewed.split('.')[1]!, 'base64url').toString()).exp);
        await linked.server.waitForLog(/Reloaded: LeafNode Remote/, 5000);
        assert.equal(linked.server.pid, pid, 'the same leaf process');
        assert.equal(linked.server.logs().includes(renewed), false, 'the leaf logged the token');
        // The link works again.
        const hubNc = await connectClient(hub.url, { token: await siteToken('hub-svc', ['hub-service']) });
        const leafNc = await connect({ servers: linked.server.url, reconnect: false });
        try {
          await untilDelivered(leafNc, hubNc, 'site.site-1.after-renewal');
        } finally {
          await leafNc.close();
          await hubNc.close();
        }
      });
    } else {
      it('cannot renew the token of a live link by reload: the leaf refuses to reload its remotes', async () => {
        const mark = log.mark();
        const leafMark = linked.server.logs().length;
        linked.renew(await siteToken('site-1', ['edge-site'], 600));
        await linked.server.waitForLog(/config reload not supported for LeafNode/, 5000, leafMark);
        await sleep(500);
        assert.deepEqual(
          log.decisions(mark).filter((d) => d.result === 'allow'),
          [],
          'the link was not re-made',
        );
      });
    }
  });
}
