import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createAccount, createUser, fromSeed } from '@nats-io/nkeys';
import { connect, nkeyAuthenticator } from '@nats-io/transport-node';
import { signRevokeRequest } from '../../src/admin-request.js';
import { NkeySigner } from '../../src/nkey.js';
import { freeServerPort } from '../helpers/free-port.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../helpers/nats-server.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';

const MAIN = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'src', 'main.js');
const now = () => Math.floor(Date.now() / 1000);

interface Result {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** `run --config FILE` as its own process, its log on stdout. */
function spawnRun(file: string): ChildProcess {
  return spawn(process.execPath, [MAIN, 'run', '--config', file], { env: { ...process.env, TEST_NATS_PASSWORD: 'pw' }, stdio: ['ignore', 'pipe', 'inherit'] });
}

function cli(args: string[], opts: { input?: string; env?: Record<string, string> } = {}): Promise<Result> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [MAIN, ...args], { env: { ...process.env, ...opts.env }, stdio: ['pipe', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.stdin.end(opts.input ?? '');
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

function configYaml(o: { url: string; issuer: string; seedFile: string; rules: string }): string {
  return `nats:
  servers: [${o.url}]
  user: auth
  password: { env: TEST_NATS_PASSWORD }
callout:
  account: AUTH
  issuer_seed: { file: ${o.seedFile} }
issuers:
  - issuer: ${o.issuer}
    audiences: [nats]
    allow_insecure_http: true
    jwks_cooldown: 0s
policy:
  rules:
${o.rules}
`;
}

const RULE_APP = `    - name: app
      match: { groups: dev }
      when: [{ claim: tenant, present: true }]
      account: APP
      permissions:
        pub: { allow: ["app.{{claims.tenant}}.>", "$SYS.REQ.USER.INFO"] }
        sub: { allow: ["_INBOX.{{sub}}.>"] }`;
const RULE_OTHER = `    - name: other
      match: { groups: dev }
      account: OTHER
      permissions:
        pub: { allow: ["$SYS.REQ.USER.INFO"] }
        sub: { allow: ["_INBOX.{{sub}}.>"] }`;

describe('command line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'oc-cli-'));
  const issuerKey = createAccount();
  let idp: LocalIssuer;
  let nats: RunningNats;
  let configFile: string;
  let serverBlock: string;

  before(async () => {
    idp = await startLocalIssuer();
    const [bin] = (await natsServerBinaries()).slice(-1);
    serverBlock = `max_control_line: 65536
accounts {
  AUTH { users: [ { user: auth, password: pw } ] }
  APP {}
  OTHER {}
  SYS {}
}
system_account: SYS
authorization { timeout: 2, auth_callout { issuer: ${issuerKey.getPublicKey()}, auth_users: [ auth ], account: AUTH } }`;
    nats = await startNatsServer({ bin: bin!.path, config: serverBlock });
    writeFileSync(join(dir, 'issuer.nk'), new TextDecoder().decode(issuerKey.getSeed()));
    configFile = join(dir, 'config.yaml');
    writeFileSync(configFile, configYaml({ url: nats.url, issuer: idp.issuer, seedFile: 'issuer.nk', rules: RULE_APP }));
  });
  after(async () => {
    await nats?.stop();
    await idp?.stop();
  });

  describe('keys', () => {
    it('writes 0600 seed files and prints a block nats-server accepts', async () => {
      const out = join(dir, 'keys');
      const r = await cli(['keys', '--dir', out]);
      assert.equal(r.code, 0, r.stderr);
      const issuerSeed = readFileSync(join(out, 'issuer.nk'), 'utf8').trim();
      const xkeySeed = readFileSync(join(out, 'xkey.nk'), 'utf8').trim();
      const serviceSeed = readFileSync(join(out, 'service.nk'), 'utf8').trim();
      assert.match(issuerSeed, /^SA/);
      assert.match(xkeySeed, /^SX/);
      assert.match(serviceSeed, /^SU/);
      for (const f of ['issuer.nk', 'xkey.nk', 'service.nk']) assert.equal(statSync(join(out, f)).mode & 0o777, 0o600);
      const publicKey = (seed: string) => fromSeed(new TextEncoder().encode(seed)).getPublicKey();
      assert.ok(r.stdout.includes(`issuer: ${publicKey(issuerSeed)}`));
      assert.ok(r.stdout.includes(`xkey: ${publicKey(xkeySeed)}`));
      assert.ok(r.stdout.includes(`users: [ { nkey: ${publicKey(serviceSeed)} } ]`), 'the service logs in with its nkey');
      assert.ok(r.stdout.includes(`auth_users: [ ${publicKey(serviceSeed)} ]`), 'and bypasses the callout');
      assert.doesNotMatch(r.stdout, /password/, 'no shared secret on the server side');
      for (const seed of [issuerSeed, xkeySeed, serviceSeed]) assert.ok(!r.stdout.includes(seed), 'seeds are never printed');
      assert.match(r.stdout, /^ {2}timeout: 5 /m, 'the authorization timeout a restart storm needs');
      // startNatsServer rejects, with the server's own message, unless nats-server starts with the
      // printed configuration as it is; the service's seed then logs in past the callout.
      await using srv = await startNatsServer({ bin: (await natsServerBinaries()).at(-1)!.path, config: r.stdout });
      const nc = await connect({ servers: srv.url, authenticator: nkeyAuthenticator(new TextEncoder().encode(serviceSeed)), reconnect: false });
      await nc.flush();
      await nc.close();
    });

    it('refuses to overwrite existing seeds without --force', async () => {
      const out = join(dir, 'keys-twice');
      assert.equal((await cli(['keys', '--dir', out])).code, 0);
      const before = readFileSync(join(out, 'issuer.nk'), 'utf8');
      const again = await cli(['keys', '--dir', out]);
      assert.equal(again.code, 2);
      assert.match(again.stderr, /issuer.nk exists; pass --force/);
      assert.equal(readFileSync(join(out, 'issuer.nk'), 'utf8'), before);
      assert.equal((await cli(['keys', '--dir', out, '--force'])).code, 0);
      assert.notEqual(readFileSync(join(out, 'issuer.nk'), 'utf8'), before);
    });

    it('never writes a seed through a symlink, dangling or not', async () => {
      const out = join(dir, 'keys-link');
      mkdirSync(out);
      const victim = join(dir, 'victim.txt');
      writeFileSync(victim, 'keep me\n', { mode: 0o644 });
      symlinkSync(victim, join(out, 'issuer.nk'));
      symlinkSync(join(dir, 'nowhere.nk'), join(out, 'xkey.nk'));
      const refused = await cli(['keys', '--dir', out]);
      assert.equal(refused.code, 2, 'a dangling symlink counts as an existing file');
      assert.equal((await cli(['keys', '--dir', out, '--force'])).code, 0);
      assert.equal(readFileSync(victim, 'utf8'), 'keep me\n', 'the symlink target is untouched');
      assert.ok(!existsSync(join(dir, 'nowhere.nk')), 'nothing was created through the dangling symlink');
      for (const f of ['issuer.nk', 'xkey.nk']) {
        const st = lstatSync(join(out, f));
        assert.ok(st.isFile() && !st.isSymbolicLink(), `${f} is a file of its own`);
        assert.equal(st.mode & 0o777, 0o600);
      }
    });
  });

  describe('check', () => {
    it('passes and prints the effective configuration with secrets redacted', async () => {
      const r = await cli(['check', '--config', configFile], { env: { TEST_NATS_PASSWORD: 'pw' } });
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout);
      assert.equal(out.issuer_public_key, issuerKey.getPublicKey());
      assert.equal(out.issuers[0].keysLoaded, true);
      assert.equal(out.config.nats.password, '<secret from env:TEST_NATS_PASSWORD>');
      assert.ok(!r.stdout.includes(new TextDecoder().decode(issuerKey.getSeed())));
      assert.ok(!r.stdout.includes('"pw"'));
    });

    it('prints server URLs without their credentials', async () => {
      const withUrlSecret = join(dir, 'url-secret.yaml');
      writeFileSync(withUrlSecret, readFileSync(configFile, 'utf8').replace(/servers: \[nats:\/\//, 'servers: [nats://someone:url-secret@'));
      assert.match(readFileSync(withUrlSecret, 'utf8'), /nats:\/\/someone:url-secret@/, 'the configuration carries the secret in its URL');
      const r = await cli(['check', '--config', withUrlSecret], { env: { TEST_NATS_PASSWORD: 'pw' } });
      assert.ok(!r.stdout.includes('url-secret') && !r.stderr.includes('url-secret'), r.stdout + r.stderr);
      // The URL is printed, with its credentials replaced.
      assert.ok(r.stdout.includes(`nats://<redacted>@${nats.url.slice('nats://'.length)}`), r.stdout + r.stderr);
    });

    it('fails naming the issuer whose keys cannot be loaded, and NATS when it is unreachable', async () => {
      const down = join(dir, 'down.yaml');
      writeFileSync(down, configYaml({ url: 'nats://127.0.0.1:1', issuer: 'http://127.0.0.1:1/idp', seedFile: 'issuer.nk', rules: RULE_APP }));
      const r = await cli(['check', '--config', down], { env: { TEST_NATS_PASSWORD: 'pw' } });
      assert.equal(r.code, 1);
      assert.match(r.stderr, /issuers: http:\/\/127\.0\.0\.1:1\/idp: discovery/);
      assert.match(r.stderr, /nats: cannot connect to nats:\/\/127\.0\.0\.1:1/);
    });

    it('exits 2 with the offending key on a bad configuration', async () => {
      const bad = join(dir, 'bad.yaml');
      writeFileSync(bad, readFileSync(configFile, 'utf8').replace('audiences: [nats]', 'audiences: [nats]\n    audience: nats'));
      const r = await cli(['check', '--config', bad], { env: { TEST_NATS_PASSWORD: 'pw' } });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /configuration error: issuers\[0\]: Unrecognized key: "audience"/);
      const noEnv = await cli(['check', '--config', configFile], { env: { TEST_NATS_PASSWORD: '' } });
      assert.equal(noEnv.code, 2);
      assert.match(noEnv.stderr, /nats.password: environment variable TEST_NATS_PASSWORD is not set/);
    });
  });

  describe('explain', () => {
    it('prints the decision for a token given inline, from a file and on stdin', async () => {
      const token = await idp.sign({ sub: 'alice', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 'acme' });
      writeFileSync(join(dir, 'token'), `${token}\n`);
      for (const [arg, input] of [
        [token, ''],
        [`@${join(dir, 'token')}`, ''],
        ['-', token],
      ] as const) {
        const r = await cli(['explain', '--config', configFile, '--token', arg], { input, env: { TEST_NATS_PASSWORD: 'pw' } });
        assert.equal(r.code, 0, r.stderr + r.stdout);
        const out = JSON.parse(r.stdout);
        assert.equal(out.decision, 'allow');
        assert.equal(out.rule, 'app');
        assert.equal(out.account, 'APP');
        assert.deepEqual(out.permissions.pub, { allow: ['app.acme.>', '$SYS.REQ.USER.INFO'] });
        assert.equal(out.claims.sub, 'alice');
      }
    });

    it('prints the code and reason of a refusal', async () => {
      const expired = await idp.sign({ sub: 'a', aud: 'nats', exp: now() - 600, groups: ['dev'], tenant: 'acme' });
      const r = await cli(['explain', '--config', configFile, '--token', expired], { env: { TEST_NATS_PASSWORD: 'pw' } });
      assert.equal(r.code, 1);
      assert.equal(JSON.parse(r.stdout).code, 'TOKEN_EXPIRED');
      const unsafe = await idp.sign({ sub: 'a', aud: 'nats', exp: now() + 600, groups: ['dev'], tenant: 'a.>' });
      const u = await cli(['explain', '--config', configFile, '--token', unsafe], { env: { TEST_NATS_PASSWORD: 'pw' } });
      assert.equal(JSON.parse(u.stdout).code, 'POLICY_CLAIM_UNSAFE');
      // A token that verified but matches no rule: the verified claims are shown.
      const stranger = await idp.sign({ sub: 's', aud: 'nats', exp: now() + 600, groups: ['ops'] });
      const n = JSON.parse((await cli(['explain', '--config', configFile, '--token', stranger], { env: { TEST_NATS_PASSWORD: 'pw' } })).stdout);
      assert.equal(n.code, 'POLICY_NO_MATCH');
      assert.deepEqual(n.claims.groups, ['ops']);
      assert.equal(n.issuer, idp.issuer);
    });

    it('needs no NATS secret: it never connects', async () => {
      const token = await idp.sign({ sub: 'alice', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 'acme' });
      const r = await cli(['explain', '--config', configFile, '--token', token], { env: {} });
      assert.equal(r.code, 0, r.stderr + r.stdout);
      assert.equal(JSON.parse(r.stdout).decision, 'allow');
    });

    it('reads no signing seed either: a copied configuration whose seed files are elsewhere works', async () => {
      const copy = join(dir, 'copied.yaml');
      writeFileSync(copy, readFileSync(configFile, 'utf8').replace(/issuer_seed: \{ file: [^}]+\}/, 'issuer_seed: { file: /nonexistent/issuer.nk }'));
      const token = await idp.sign({ sub: 'alice', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 'acme' });
      const r = await cli(['explain', '--config', copy, '--token', token], { env: {} });
      assert.equal(r.code, 0, r.stderr + r.stdout);
      const out = JSON.parse(r.stdout);
      assert.match(out.user_jwt.iss, /explain does not read it/);
      assert.match(out.now, /^\d{4}-\d\d-\d\dT/);
    });

    it('says what went wrong with its options', async () => {
      const tokenFile = join(dir, 'token.jwt');
      writeFileSync(tokenFile, 'x.y.z');
      const noAt = await cli(['explain', '--config', configFile, '--token', tokenFile]);
      assert.equal(noAt.code, 2);
      assert.match(noAt.stderr, /is a file: write --token @/);
      const missing = await cli(['explain', '--config', configFile, '--token', '@/nonexistent/token']);
      assert.equal(missing.code, 2);
      assert.match(missing.stderr, /cannot read --token @\/nonexistent\/token: ENOENT/);
      const zone = await cli(['explain', '--config', configFile, '--token', 'a.b.c', '--now', '2026-12-23 04:30']);
      assert.equal(zone.code, 2);
      assert.match(zone.stderr, /give the time zone/);
      const help = await cli(['explain', '--help']);
      assert.equal(help.code, 0);
      assert.match(help.stdout, /usage:/);
    });
  });

  describe('run', () => {
    let service: ChildProcess | undefined;
    let log = '';
    after(() => service?.kill('SIGKILL'));

    const waitForLog = (re: RegExp, from: number) =>
      new Promise<void>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`timed out waiting for ${re} in:\n${log}`)), 10_000);
        const check = () => {
          if (re.test(log.slice(from))) {
            clearTimeout(timer);
            service!.stdout!.off('data', check);
            resolve();
          }
        };
        service!.stdout!.on('data', check);
        check();
      });

    async function account(): Promise<string> {
      const token = await idp.sign({ sub: 'bob', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 'acme' });
      const nc = await connect({ servers: nats.url, token, reconnect: false, inboxPrefix: '_INBOX.bob' });
      try {
        return JSON.parse(new TextDecoder().decode((await nc.request('$SYS.REQ.USER.INFO', '')).data)).data.account;
      } finally {
        await nc.close();
      }
    }

    it('revokes an identity on the running service from the command line', async () => {
      const adminKey = createUser();
      const seedFile = join(dir, 'admin.nk');
      writeFileSync(seedFile, new TextDecoder().decode(adminKey.getSeed()), { mode: 0o600 });
      const file = join(dir, 'admin.yaml');
      writeFileSync(
        file,
        `${configYaml({ url: nats.url, issuer: idp.issuer, seedFile: 'issuer.nk', rules: RULE_APP })}admin:\n  public_keys: [${adminKey.getPublicKey()}]\n`,
      );
      const running = spawnRun(file);
      let out = '';
      running.stdout!.on('data', (d) => (out += d));
      try {
        for (let i = 0; i < 200 && !/"msg":"admin requests"/.test(out); i++) await new Promise((r) => setTimeout(r, 25));
        assert.match(out, /"msg":"admin requests".*"subject":"oidc-callout.admin.revoke"/);
        const r = await cli(['revoke', '--config', file, '--admin-seed', seedFile, '--subject', 'alice', '--wait', '500ms'], {
          env: { TEST_NATS_PASSWORD: 'pw' },
        });
        assert.equal(r.code, 0, r.stderr + r.stdout);
        const body = JSON.parse(r.stdout);
        assert.equal(body.replicas.length, 1);
        assert.equal(body.replicas[0].ok, true);
        const wrongKey = join(dir, 'not-admin.nk');
        writeFileSync(wrongKey, new TextDecoder().decode(createUser().getSeed()), { mode: 0o600 });
        const refused = await cli(['revoke', '--config', file, '--admin-seed', wrongKey, '--subject', 'alice', '--wait', '500ms'], {
          env: { TEST_NATS_PASSWORD: 'pw' },
        });
        assert.equal(refused.code, 1);
        assert.equal(JSON.parse(refused.stdout).replicas[0].code, 'ADMIN_REQUEST_INVALID');
        const badWait = await cli(['revoke', '--config', file, '--admin-seed', seedFile, '--subject', 'a', '--wait', 'soon'], {
          env: { TEST_NATS_PASSWORD: 'pw' },
        });
        assert.equal(badWait.code, 2);
        assert.match(badWait.stderr, /--wait "soon": a duration/);
        const usage = await cli(['revoke', '--config', file, '--admin-seed', seedFile], { env: { TEST_NATS_PASSWORD: 'pw' } });
        assert.equal(usage.code, 2);
        assert.match(usage.stderr, /needs --issuer URL, --subject SUB or both/);
        // With no replica listening, nats-server answers "no responders": said in words, not a crash.
        running.kill('SIGKILL');
        await new Promise((r) => running.once('exit', r));
        const alone = await cli(['revoke', '--config', file, '--admin-seed', seedFile, '--subject', 'alice', '--wait', '300ms'], {
          env: { TEST_NATS_PASSWORD: 'pw' },
        });
        assert.equal(alone.code, 1, alone.stderr);
        assert.match(alone.stderr, /no replica answered/);
        assert.doesNotMatch(alone.stderr, /SyntaxError/);
      } finally {
        running.kill('SIGKILL');
      }
    });

    it('with workers, any worker takes a revoke request, the replica answers it once, and a replay is refused by every worker', async () => {
      const adminKey = createUser();
      const signer = new NkeySigner(new TextDecoder().decode(adminKey.getSeed()), 'user');
      const file = join(dir, 'admin-workers.yaml');
      writeFileSync(
        file,
        `${configYaml({ url: nats.url, issuer: idp.issuer, seedFile: 'issuer.nk', rules: RULE_APP })}workers: 3\nadmin:\n  public_keys: [${adminKey.getPublicKey()}]\n`,
      );
      const running = spawnRun(file);
      let out = '';
      running.stdout!.on('data', (d) => (out += d));
      const nc = await connect({ servers: nats.url, user: 'auth', pass: 'pw' });
      try {
        // Three threads start, each loading keys and connecting: allow a busy machine its time.
        for (let i = 0; i < 800 && (out.match(/"msg":"admin requests"/g)?.length ?? 0) < 3; i++) await new Promise((r) => setTimeout(r, 25));
        assert.equal(out.match(/"msg":"admin requests"/g)?.length, 3, 'every worker listens');
        // Collects every answer within the wait: one replica must answer each request exactly once.
        const ask = async (data: Uint8Array): Promise<Record<string, unknown>[]> => {
          const inbox = nc.subscribe(`_INBOX.admin-test.${randomBytes(6).toString('hex')}`);
          nc.publish('oidc-callout.admin.revoke', data, { reply: inbox.getSubject() });
          const answers: Record<string, unknown>[] = [];
          const timer = setTimeout(() => inbox.unsubscribe(), 700);
          for await (const m of inbox) answers.push(m.json());
          clearTimeout(timer);
          return answers;
        };
        const answeredBy = new Set<string>();
        for (let i = 0; i < 12; i++) {
          const answers = await ask(new TextEncoder().encode(signRevokeRequest({ subject: `user-${i}` }, signer, now())));
          assert.equal(answers.length, 1, JSON.stringify(answers));
          assert.equal(answers[0]!.ok, true, JSON.stringify(answers[0]));
          answeredBy.add(String(answers[0]!.replica));
        }
        // nats-server hands the queue group's requests to the workers at random: 12 to one worker has odds of 3^-11.
        assert.ok(answeredBy.size > 1, `every request was taken by ${[...answeredBy]}`);
        // One captured request sent again and again: refused whichever worker takes it.
        const captured = new TextEncoder().encode(signRevokeRequest({ subject: 'mallory' }, signer, now()));
        const first = await ask(captured);
        assert.equal(first[0]!.ok, true);
        for (let i = 0; i < 6; i++) {
          const again = await ask(captured);
          assert.equal(again.length, 1);
          assert.equal(again[0]!.code, 'ADMIN_REQUEST_INVALID', JSON.stringify(again[0]));
          assert.match(String(again[0]!.error), /already used/);
        }
      } finally {
        await nc.close();
        running.kill('SIGKILL');
      }
    });

    it('keeps authorizing when its system login fails, saying that revocation cannot disconnect', async () => {
      const file = join(dir, 'bad-system.yaml');
      writeFileSync(
        file,
        `${configYaml({ url: nats.url, issuer: idp.issuer, seedFile: 'issuer.nk', rules: RULE_APP })}admin:\n  public_keys: [${createUser().getPublicKey()}]\n  system: { user: sys, password: wrong }\n`,
      );
      const running = spawnRun(file);
      let out = '';
      running.stdout!.on('data', (d) => (out += d));
      try {
        for (let i = 0; i < 400 && !/"msg":"admin requests"/.test(out); i++) await new Promise((r) => setTimeout(r, 25));
        assert.match(out, /"msg":"admin.system login failed: revocation will refuse new logins but cannot disconnect live connections"/);
        assert.match(out, /"msg":"admin requests".*"kicks":false/);
        assert.equal(running.exitCode, null, 'still running');
        const check = await cli(['check', '--config', file], { env: { TEST_NATS_PASSWORD: 'pw' } });
        assert.equal(check.code, 1);
        assert.match(check.stderr, /admin.system: cannot log in to the system account/);
      } finally {
        running.kill('SIGKILL');
      }
    });

    it('waits for NATS when started before nats-server, saying why, then serves', async () => {
      const port = await freeServerPort();
      const file = join(dir, 'before-nats.yaml');
      writeFileSync(file, configYaml({ url: `nats://127.0.0.1:${port}`, issuer: idp.issuer, seedFile: 'issuer.nk', rules: RULE_APP }));
      const early = spawnRun(file);
      let out = '';
      early.stdout!.on('data', (d) => (out += d));
      try {
        for (let i = 0; i < 200 && !/"msg":"NATS not reachable yet; retrying"/.test(out); i++) await new Promise((r) => setTimeout(r, 25));
        assert.match(out, /"msg":"NATS not reachable yet; retrying".*"servers":\["nats:\/\/127\.0\.0\.1:\d+"\]/);
        assert.equal(early.exitCode, null, 'still running, not exited');
        await using late = await startNatsServer({ bin: (await natsServerBinaries()).at(-1)!.path, config: serverBlock, port });
        for (let i = 0; i < 200 && !/"msg":"listening"/.test(out); i++) await new Promise((r) => setTimeout(r, 25));
        assert.match(out, /"msg":"listening"/);
        const token = await idp.sign({ sub: 'late', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 'acme' });
        const nc = await connect({ servers: late.url, token, reconnect: false });
        await nc.close();
      } finally {
        early.kill('SIGKILL');
      }
    });

    it('survives a SIGHUP while it is still starting, and applies it once up', async () => {
      await using slow = await startLocalIssuer();
      slow.faults.discovery = { delayMs: 1500 };
      const file = join(dir, 'early.yaml');
      writeFileSync(file, configYaml({ url: nats.url, issuer: slow.issuer, seedFile: 'issuer.nk', rules: RULE_APP }));
      const early = spawnRun(file);
      let out = '';
      early.stdout!.on('data', (d) => (out += d));
      try {
        // "starting" comes once the handlers are in place, while discovery keeps it from being up.
        for (let i = 0; i < 200 && !/"msg":"starting"/.test(out); i++) await new Promise((r) => setTimeout(r, 25));
        assert.doesNotMatch(out, /"msg":"listening"/);
        early.kill('SIGHUP');
        for (let i = 0; i < 100 && !/"msg":"configuration reloaded"/.test(out); i++) await new Promise((r) => setTimeout(r, 100));
        assert.match(out, /"msg":"listening"[\s\S]*"msg":"configuration reloaded"/);
        assert.equal(early.exitCode, null, 'still running');
      } finally {
        early.kill('SIGKILL');
      }
    });

    it('serves, reloads on SIGHUP, keeps the running config on a bad reload, drains on SIGTERM', async () => {
      const file = join(dir, 'run.yaml');
      writeFileSync(file, configYaml({ url: nats.url, issuer: idp.issuer, seedFile: 'issuer.nk', rules: RULE_APP }));
      service = spawnRun(file);
      service.stdout!.on('data', (d) => (log += d));
      await waitForLog(/"msg":"listening"/, 0);
      assert.equal(await account(), 'APP');

      writeFileSync(file, `${configYaml({ url: nats.url, issuer: idp.issuer, seedFile: 'issuer.nk', rules: RULE_OTHER })}log:\n  level: debug\n`);
      let mark = log.length;
      service.kill('SIGHUP');
      await waitForLog(/"msg":"configuration reloaded".*"issuers_kept":1/, mark);
      assert.match(log.slice(mark), /"msg":"these settings changed but need a restart to apply","keys":\["log"\]/);
      assert.equal(await account(), 'OTHER');

      writeFileSync(file, 'nats: {}\nbogus: true\n');
      mark = log.length;
      service.kill('SIGHUP');
      await waitForLog(/"msg":"reload failed; keeping the running configuration"/, mark);
      assert.equal(await account(), 'OTHER');

      const exited = new Promise<number | null>((resolve) => service!.once('exit', resolve));
      service.kill('SIGTERM');
      assert.equal(await exited, 0);
      assert.match(log, /"msg":"stopping","signal":"SIGTERM"/);
      assert.ok(!log.includes(new TextDecoder().decode(issuerKey.getSeed())), 'no seed in the log');
      service = undefined;
    });
  });

  describe('monitoring endpoints', () => {
    let service: ChildProcess | undefined;
    // Every process started here, so a test failing before its stopRun leaves none behind.
    const spawned: ChildProcess[] = [];
    after(() => {
      for (const child of spawned) if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
    });

    /** Starts `run` and resolves with the monitoring port it logged. */
    /** Starts `run`; resolves with its monitoring port. `onOutput` sees everything it writes to stdout. */
    function startRun(file: string, onOutput?: (chunk: string) => void): Promise<number> {
      service = spawnRun(file);
      spawned.push(service);
      let out = '';
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`no monitoring line in:\n${out}`)), 10_000);
        service!.stdout!.on('data', (d) => {
          out += d;
          onOutput?.(String(d));
          const m = /"msg":"monitoring","host":"127\.0\.0\.1","port":(\d+)/.exec(out);
          if (m && /"msg":"listening"/.test(out)) {
            clearTimeout(timer);
            resolve(Number(m[1]));
          }
        });
      });
    }

    async function stopRun(): Promise<void> {
      const exited = new Promise((resolve) => service!.once('exit', resolve));
      service!.kill('SIGTERM');
      await exited;
      service = undefined;
    }

    it('answers /healthz, /readyz and /metrics with decisions, fetches and reloads counted', async () => {
      const file = join(dir, 'monitored.yaml');
      // One worker: the second connect with the same token is a cache hit (caches are per worker).
      writeFileSync(
        file,
        `${configYaml({ url: nats.url, issuer: idp.issuer, seedFile: 'issuer.nk', rules: RULE_APP })}workers: 1\nhttp:\n  listen: 127.0.0.1:0\n`,
      );
      const port = await startRun(file);
      const base = `http://127.0.0.1:${port}`;
      assert.equal((await fetch(`${base}/healthz`)).status, 200);
      const ready = await fetch(`${base}/readyz`);
      assert.equal(ready.status, 200);
      assert.deepEqual(await ready.json(), { ready: true, problems: [] });

      const token = await idp.sign({ sub: 'm', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 'acme' });
      await (await connect({ servers: nats.url, token, reconnect: false })).close();
      await (await connect({ servers: nats.url, token, reconnect: false })).close();
      await assert.rejects(connect({ servers: nats.url, token: 'nope', reconnect: false }));
      service!.kill('SIGHUP');
      let text = '';
      for (let i = 0; i < 50 && !/oidc_callout_config_reloads_total\{result="ok"\} 1/.test(text); i++) {
        text = await (await fetch(`${base}/metrics`)).text();
        await new Promise((r) => setTimeout(r, 100));
      }
      assert.match(text, /oidc_callout_requests_total\{result="allow",code=""\} 2/);
      assert.match(text, /oidc_callout_requests_total\{result="reject",code="TOKEN_MALFORMED"\} 1/);
      assert.match(text, /oidc_callout_allowed_from_cache_total\{result="hit"\} 1/);
      assert.match(text, /oidc_callout_allowed_from_cache_total\{result="miss"\} 1/);
      assert.match(text, new RegExp(`oidc_callout_jwks_fetches_total\\{issuer="${idp.issuer}",result="ok"\\} [1-9]`));
      assert.match(text, /oidc_callout_request_duration_seconds_count\{result="allow"\} 2/);
      assert.match(text, /oidc_callout_config_reloads_total\{result="ok"\} 1/);
      assert.match(text, /oidc_callout_build_info\{version="\d+\.\d+\.\d+",node="v\d+/);
      assert.equal((await fetch(`${base}/nothing`)).status, 404);
      assert.equal((await fetch(`${base}/healthz`, { method: 'POST' })).status, 405);
      await stopRun();
    });

    it('probe logs in through nats-server and the callout, prints the latency, and exits 1 on a refusal', async () => {
      // The service's own credentials written into the URL: the probe must present the token alone.
      const withPassword = nats.url.replace('nats://', 'nats://auth:pw@');
      const file = join(dir, 'probed.yaml');
      writeFileSync(file, `${configYaml({ url: withPassword, issuer: idp.issuer, seedFile: 'issuer.nk', rules: RULE_APP })}http:\n  listen: 127.0.0.1:0\n`);
      await startRun(file);
      const tokenFile = join(dir, 'probe.jwt');
      writeFileSync(tokenFile, await idp.sign({ sub: 'monitor', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 'ops' }), { mode: 0o600 });
      const good = await cli(['probe', '--config', file, '--token', `@${tokenFile}`]);
      assert.equal(good.code, 0, good.stdout + good.stderr);
      const result = JSON.parse(good.stdout.trim()) as Record<string, unknown>;
      assert.equal(result.ok, true);
      assert.equal(result.server, nats.url, 'the password is not in the output');
      assert.ok(typeof result.login_ms === 'number' && result.login_ms > 0, good.stdout);
      assert.match(String(result.server_id), /^N[A-Z2-7]{55}$/);

      // A token the policy refuses (no tenant claim matches no rule): refused, exit 1, the code says why.
      writeFileSync(tokenFile, await idp.sign({ sub: 'monitor', aud: 'nats', exp: now() + 300, groups: ['ops'] }));
      const refused = await cli(['probe', '--config', file, '--token', '-'], { input: readFileSync(tokenFile, 'utf8') });
      assert.equal(refused.code, 1);
      const r = JSON.parse(refused.stdout.trim()) as Record<string, unknown>;
      assert.equal(r.ok, false);
      assert.equal(r.code, 'PROBE_REFUSED', refused.stdout);
      assert.ok(!refused.stdout.includes('pw@'), 'no password in the output');

      const port = await freeServerPort();
      const down = await cli(['probe', '--config', file, '--token', `@${tokenFile}`, '--server', `nats://127.0.0.1:${port}`, '--timeout', '2s']);
      assert.equal(down.code, 1);
      assert.equal((JSON.parse(down.stdout.trim()) as Record<string, unknown>).code, 'PROBE_UNREACHABLE', down.stdout);

      const usage = await cli(['probe', '--config', file, '--token', `@${tokenFile}`, '--timeout', 'soon']);
      assert.equal(usage.code, 2);
      assert.match(usage.stderr, /--timeout/);
      assert.equal((await cli(['probe', '--config', file])).code, 2);
      await stopRun();
    });

    it('runs two workers as one replica: both serve, /metrics adds them up, revocations and reloads reach both', async () => {
      const file = join(dir, 'workers.yaml');
      writeFileSync(
        file,
        `${configYaml({ url: nats.url, issuer: idp.issuer, seedFile: 'issuer.nk', rules: RULE_APP })}workers: 2\nhttp:\n  listen: 127.0.0.1:0\n`,
      );
      let out = '';
      const port = await startRun(file, (d) => (out += d));
      const base = `http://127.0.0.1:${port}`;
      const connects = 40;
      for (let i = 0; i < connects; i++) {
        const token = await idp.sign({ sub: `w-${i}`, aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 'acme' });
        await (await connect({ servers: nats.url, token, reconnect: false })).close();
      }
      const decisionLines = () => out.split('\n').filter((l) => l.includes('"msg":"authorization"'));
      // A worker thread's stdout reaches the process's through the main thread: the last line can
      // arrive after its client is in.
      for (let i = 0; i < 100 && decisionLines().length < connects; i++) await new Promise((r) => setTimeout(r, 20));
      const decisions = decisionLines().map((l) => JSON.parse(l) as { worker?: number; result: string });
      assert.equal(decisions.length, connects);
      // nats-server spreads the queue group's requests over both workers' connections.
      assert.deepEqual([...new Set(decisions.map((d) => d.worker))].sort(), [0, 1]);
      const text = await (await fetch(`${base}/metrics`)).text();
      assert.match(text, new RegExp(`oidc_callout_requests_total\\{result="allow",code=""\\} ${connects}`));
      assert.match(text, /oidc_callout_workers 2/);
      assert.match(text, /oidc_callout_build_info\{version="\d+\.\d+\.\d+",node="v\d+[^"]*"\} 1/);
      assert.equal((await fetch(`${base}/readyz`)).status, 200);
      const mark = out.length;
      service!.kill('SIGHUP');
      for (let i = 0; i < 100 && !/"msg":"configuration reloaded"/.test(out.slice(mark)); i++) await new Promise((r) => setTimeout(r, 100));
      assert.match(out.slice(mark), /"msg":"configuration reloaded"/);
      await stopRun();
      // Both workers drained.
      assert.equal(out.match(/"msg":"stopping"/g)?.length ?? 0, 1);
    });

    it("reports not ready, with the reason, while an issuer's keys are missing", async () => {
      const file = join(dir, 'unready.yaml');
      const yaml = configYaml({
        url: nats.url,
        issuer: idp.issuer,
        seedFile: 'issuer.nk',
        rules: RULE_APP.replace('match:', `issuer: ${idp.issuer}\n      match:`),
      }).replace('policy:', '  - issuer: http://127.0.0.1:1/gone\n    audiences: [nats]\n    allow_insecure_http: true\npolicy:');
      writeFileSync(file, `${yaml}http:\n  listen: 127.0.0.1:0\n`);
      const port = await startRun(file);
      const res = await fetch(`http://127.0.0.1:${port}/readyz`);
      assert.equal(res.status, 503);
      const body = (await res.json()) as { ready: boolean; problems: string[] };
      assert.equal(body.ready, false);
      assert.equal(body.problems.length, 1);
      assert.match(body.problems[0]!, /keys of http:\/\/127\.0\.0\.1:1\/gone not loaded: discovery/);
      await stopRun();
    });
  });

  it('explains usage errors', async () => {
    const r = await cli(['explain', '--config', configFile]);
    assert.equal(r.code, 2);
    assert.match(r.stderr, /explain needs --token/);
    assert.equal((await cli(['frobnicate'])).code, 2);
  });
});
