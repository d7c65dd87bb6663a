/**
 * `oidc-callout setup operator` end to end: the files it writes start a real nats-server and the
 * service as they are (only the listener is the test's), and clients land where the policy and
 * the scope say, on the oldest and the newest server.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { connect, credsAuthenticator, type NatsConnection, tokenAuthenticator } from '@nats-io/transport-node';
import { type CalloutProcess, startCalloutProcess } from '../helpers/callout-process.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { codeBlocks, oneBlock, readmeSection, replaceOnce } from '../helpers/readme-snippets.js';
import { startNatsServer, type RunningNats } from '../helpers/nats-server.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'main.js');
const now = () => Math.floor(Date.now() / 1000);

function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [MAIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

/**
 * The arguments of the README's `oidc-callout setup operator` command, with its directory and
 * issuer replaced: the command the README shows is the one the test runs.
 */
function readmeSetupArgs(dir: string, issuer: string): string[] {
  const block = oneBlock(codeBlocks(readmeSection('### First steps in decentralized mode')), 'the setup command', (b) =>
    b.text.startsWith('oidc-callout setup operator'),
  );
  let command = block.replace(/\\\n/g, ' ').replace(/#.*$/gm, '').trim();
  command = replaceOnce(command, '/etc/oidc-callout/operator', dir);
  command = replaceOnce(command, 'https://idp.example.com/realms/main', issuer);
  const [name, ...args] = command.split(/\s+/);
  assert.equal(name, 'oidc-callout');
  return args;
}

/** The public keys the report prints, by name (`APP1      A...`). */
function keysOf(report: string): Record<string, string> {
  return Object.fromEntries([...report.matchAll(/^ {2}(operator|SYS|AUTH|APP\d+) +([OA][A-Z0-9]{55})/gm)].map((m) => [m[1]!, m[2]!]));
}

async function userInfo(nc: NatsConnection): Promise<Record<string, any>> {
  return JSON.parse(new TextDecoder().decode((await nc.request('$SYS.REQ.USER.INFO', '')).data)).data;
}

/** Whether nats-server refuses a publish on `subject` (a permissions violation comes back as an async error). */
async function publishDenied(nc: NatsConnection, subject: string): Promise<boolean> {
  const violation = (async () => {
    for await (const s of nc.status()) if (s.type === 'error' && /permissions violation/i.test(String(s.error))) return true;
    return false;
  })();
  nc.publish(subject, 'x');
  await nc.flush();
  return Promise.race([violation, new Promise<boolean>((r) => setTimeout(() => r(false), 1000))]);
}

describe('setup operator: usage errors', () => {
  it('exits 2 with a clear message', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'oc-setup-usage-'));
    const cases: [string[], RegExp][] = [
      [['setup'], /setup needs what to set up: setup operator --dir DIR/],
      [['setup', 'cluster', '--dir', dir], /setup needs what to set up/],
      [['setup', 'operator'], /setup operator needs --dir DIR/],
      [['setup', 'operator', '--dir', dir, '--accounts', 'x'], /--accounts must be a whole number/],
      [['setup', 'operator', '--dir', dir, '--issuer', 'https://idp.example.org'], /--issuer and --audience go together/],
      [['setup', 'operator', '--dir', dir, '--xkey', '--no-xkey'], /contradict/],
    ];
    for (const [args, message] of cases) {
      const r = await cli(args);
      assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
      assert.match(r.stderr, message);
    }
    assert.deepEqual(readdirSync(dir), [], 'nothing was written');
    assert.equal((await cli(['setup', 'operator', '--dir', dir])).code, 0);
    const again = await cli(['setup', 'operator', '--dir', dir]);
    assert.equal(again.code, 2);
    assert.match(again.stderr, /is not empty; pass --force/);
  });
});

for (const bin of await natsServerBinaries()) {
  describe(`setup operator, nats-server ${bin.version}`, () => {
    const dir = join(mkdtempSync(join(tmpdir(), 'oc-setup-')), 'nats');
    let report: string;
    let keys: Record<string, string>;
    let idp: LocalIssuer;
    let nats: RunningNats;
    let service: CalloutProcess;
    let sentinelCreds: Uint8Array;

    before(async () => {
      idp = await startLocalIssuer();
      const args = readmeSetupArgs(dir, idp.issuer);
      assert.deepEqual(args, ['setup', 'operator', '--dir', dir, '--issuer', idp.issuer, '--audience', 'nats']);
      const r = await cli(args);
      assert.equal(r.code, 0, r.stderr);
      report = r.stdout;
      keys = keysOf(report);
      // The helper chooses the listener: the generated one (127.0.0.1:4222) goes, the rest stays.
      const conf = readFileSync(join(dir, 'nats-server.conf'), 'utf8');
      assert.match(conf, /^listen: 127\.0\.0\.1:4222$/m);
      nats = await startNatsServer({ bin: bin.path, config: conf.replace(/^listen: .*$/m, '') });
      const config = readFileSync(join(dir, 'oidc-callout.yaml'), 'utf8');
      writeFileSync(join(dir, 'test.yaml'), config.replace('nats://127.0.0.1:4222', nats.url));
      service = await startCalloutProcess(join(dir, 'test.yaml'), { name: `setup-operator ${bin.version}` });
      sentinelCreds = readFileSync(join(dir, 'sentinel.creds'));
    });

    after(async () => {
      await service?.stop();
      await nats?.stop();
      await idp?.stop();
    });

    async function client(sub: string, groups: string[], inbox = sub): Promise<NatsConnection> {
      const token = await idp.sign({ sub, aud: 'nats', exp: now() + 300, groups });
      return connect({
        servers: nats.url,
        reconnect: false,
        inboxPrefix: `_INBOX.${inbox}`,
        authenticator: [credsAuthenticator(sentinelCreds), tokenAuthenticator(token)],
      });
    }

    it('writes every secret with mode 0600 and prints no seed', () => {
      for (const name of [
        'auth-signing.nk',
        'xkey.nk',
        'app1-signing.nk',
        'app2-signing.nk',
        'operator.nk',
        'operator-signing.nk',
        'service.creds',
        'sentinel.creds',
        'sys.creds',
      ]) {
        assert.equal(statSync(join(dir, name)).mode & 0o777, 0o600, name);
        const seed = /\bS[OAUX][A-Z0-9]{56}\b/.exec(readFileSync(join(dir, name), 'utf8'))![0];
        assert.ok(!report.includes(seed), `${name}'s seed is not printed`);
      }
      assert.equal(statSync(dir).mode & 0o777, 0o700);
      assert.deepEqual(Object.keys(keys).sort(), ['APP1', 'APP2', 'AUTH', 'SYS', 'operator']);
      assert.match(report, /nats-server -c \S+nats-server\.conf/);
      assert.match(report, /oidc-callout run --config \S+oidc-callout\.yaml/);
      assert.match(report, /sentinel\.creds/);
    });

    it("lands a client with the sentinel and a token in APP1, with the rule's permissions", async () => {
      const nc = await client('alice', ['app1']);
      try {
        const info = await userInfo(nc);
        assert.equal(info.account, keys.APP1);
        assert.deepEqual(info.permissions.publish.allow.sort(), ['$SYS.REQ.USER.INFO', 'APP1.>']);
        assert.deepEqual(info.permissions.subscribe.allow.sort(), ['APP1.>', '_INBOX.alice.>']);
        assert.equal(await publishDenied(nc, 'APP2.orders'), true);
      } finally {
        await nc.close();
      }
    });

    it("gives a client of the scoped account the scope's permissions, expanded for it", async () => {
      const nc = await client('bob', ['app2']);
      try {
        const info = await userInfo(nc);
        assert.equal(info.account, keys.APP2);
        assert.deepEqual(info.permissions.publish.allow.sort(), ['$SYS.REQ.USER.INFO', 'APP2.>']);
        assert.deepEqual(info.permissions.subscribe.allow.sort(), ['APP2.>', '_INBOX.bob.>']);
        assert.equal(info.permissions.responses, undefined, 'the scope grants no response permissions');
        assert.equal(await publishDenied(nc, 'APP1.orders'), true);
        const sub = nc.subscribe('APP2.ping', { max: 1 });
        nc.publish('APP2.ping', 'pong');
        for await (const m of sub) assert.equal(m.string(), 'pong');
      } finally {
        await nc.close();
      }
      const decision = await service.waitFor((r) => r.msg === 'authorization' && r.result === 'allow' && r.account === 'APP2');
      assert.equal(decision.rule, 'app2');
    });

    it('refuses the sentinel alone, and a token no rule grants', async () => {
      const refused = (err: Error) => /Authorization Violation|connection reset|ECONNRESET/i.test(`${err.message} ${String(err.cause)}`);
      await assert.rejects(connect({ servers: nats.url, reconnect: false, authenticator: credsAuthenticator(sentinelCreds) }), refused);
      await assert.rejects(client('mallory', ['guests']), refused);
      await service.waitFor((r) => r.msg === 'authorization' && r.code === 'POLICY_NO_MATCH');
      // nats-server would put this name into the scope's inbox as _INBOX.*.>: every user's inbox.
      const from = service.records().length;
      await assert.rejects(client('*', ['app2'], 'star'), refused);
      await service.waitFor((r) => r.msg === 'authorization' && r.code === 'POLICY_NO_MATCH', { from });
    });

    it('probes a login with the sentinel and a token (operator mode needs both without default_sentinel)', async () => {
      const tokenFile = join(dir, 'probe.jwt');
      writeFileSync(tokenFile, await idp.sign({ sub: 'monitor', aud: 'nats', exp: now() + 300, groups: ['app1'] }), { mode: 0o600 });
      const ok = await cli(['probe', '--config', join(dir, 'test.yaml'), '--token', `@${tokenFile}`, '--creds', join(dir, 'sentinel.creds')]);
      assert.equal(ok.code, 0, ok.stdout + ok.stderr);
      assert.equal(JSON.parse(ok.stdout.trim()).ok, true);
      const tokenOnly = await cli(['probe', '--config', join(dir, 'test.yaml'), '--token', `@${tokenFile}`]);
      assert.equal(tokenOnly.code, 1);
      assert.equal(JSON.parse(tokenOnly.stdout.trim()).code, 'PROBE_REFUSED');
    });

    it('passes `check` with the written configuration', async () => {
      const r = await cli(['check', '--config', join(dir, 'test.yaml')]);
      assert.equal(r.code, 0, r.stderr);
      assert.match(r.stderr, /check passed/);
    });
  });
}
