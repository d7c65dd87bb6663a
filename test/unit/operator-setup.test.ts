import assert from 'node:assert/strict';
import { chmodSync, lstatSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { type Account, decode, type Operator, type User } from '@nats-io/jwt';
import { fromSeed } from '@nats-io/nkeys';
import { parse } from 'yaml';
import { loadConfig } from '../../src/config.js';
import { ACCOUNT_LIMITS, generateOperatorSetup, type OperatorSetup, setupOptions, writeOperatorSetup } from '../../src/operator-setup.js';
import { UsageError } from '../../src/usage-error.js';

const DEFAULTS = setupOptions({});
const file = (setup: OperatorSetup, name: string) => setup.files.find((f) => f.name === name)!.text;
/** Account JWTs by public key, from the resolver_preload of the generated nats-server.conf. */
function preloaded(setup: OperatorSetup): Map<string, string> {
  const block = /resolver_preload: \{\n([\s\S]*?)\n\}/.exec(file(setup, 'nats-server.conf'))![1]!;
  return new Map([...block.matchAll(/^ {2}(A[A-Z0-9]{55}): (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
}
const credsJwt = (creds: string) => /-----BEGIN NATS USER JWT-----\n(\S+)\n/.exec(creds)![1]!;
const seedKey = (seed: string) => fromSeed(new TextEncoder().encode(seed.trim())).getPublicKey();

describe('setup operator: what it generates', async () => {
  const setup = await generateOperatorSetup(DEFAULTS);
  const jwts = preloaded(setup);
  const operatorJwt = /^operator: (\S+)$/m.exec(file(setup, 'nats-server.conf'))![1]!;
  const operator = decode<Operator>(operatorJwt);
  const signingKey = seedKey(file(setup, 'operator-signing.nk'));

  it('signs every account JWT with the operator signing key, which the operator requires', () => {
    assert.equal(operator.sub, setup.operator);
    assert.equal(operator.sub, seedKey(file(setup, 'operator.nk')));
    assert.deepEqual(operator.nats.signing_keys, [signingKey]);
    assert.equal((operator.nats as Record<string, unknown>).strict_signing_key_usage, true);
    assert.equal(operator.nats.system_account, setup.systemAccount);
    assert.deepEqual(new Set(jwts.keys()), new Set([setup.systemAccount, setup.calloutAccount, ...setup.accounts.map((a) => a.publicKey)]));
    for (const jwt of jwts.values()) assert.equal(decode(jwt).iss, signingKey);
  });

  it('gives every account explicit limits (none would allow no connection) and JetStream off', () => {
    for (const jwt of jwts.values()) {
      const limits = decode<Account>(jwt).nats.limits!;
      assert.deepEqual(limits, ACCOUNT_LIMITS);
      assert.equal(limits.conn, -1);
      assert.equal(limits.mem_storage, 0);
      assert.equal(limits.disk_storage, 0);
    }
  });

  it("delegates AUTH's logins to the service's user, into the application accounts, encrypted", () => {
    const auth = decode<Account>(jwts.get(setup.calloutAccount)!);
    assert.equal(auth.name, 'AUTH');
    assert.equal(file(setup, 'auth.jwt').trim(), jwts.get(setup.calloutAccount), 'the startup check reads the JWT nats-server has');
    assert.deepEqual(auth.nats.authorization, {
      auth_users: [setup.serviceUser],
      allowed_accounts: setup.accounts.map((a) => a.publicKey),
      xkey: seedKey(file(setup, 'xkey.nk')),
    });
    // Users and answers are signed by AUTH's signing key: the operator requires signing keys.
    const authSigning = seedKey(file(setup, 'auth-signing.nk'));
    assert.deepEqual(auth.nats.signing_keys, [authSigning]);
    const service = decode<User>(credsJwt(file(setup, 'service.creds')));
    assert.equal(service.sub, setup.serviceUser);
    assert.equal(service.iss, authSigning);
    assert.equal(service.nats.issuer_account, setup.calloutAccount);
  });

  it('makes a sentinel of AUTH that needs its key (not a bearer token) and may do nothing', () => {
    const sentinel = decode<User>(credsJwt(file(setup, 'sentinel.creds')));
    assert.equal(sentinel.sub, setup.sentinelUser);
    assert.equal(sentinel.iss, seedKey(file(setup, 'auth-signing.nk')));
    assert.equal(sentinel.nats.issuer_account, setup.calloutAccount);
    assert.ok(!sentinel.nats.bearer_token);
    assert.deepEqual(sentinel.nats.pub?.deny, ['>']);
    assert.deepEqual(sentinel.nats.sub?.deny, ['>']);
    assert.ok(!decode<Account>(jwts.get(setup.calloutAccount)!).nats.authorization!.auth_users!.includes(setup.sentinelUser));
  });

  it('gives each application account a signing key, the last one scoped with templates', () => {
    assert.deepEqual(
      setup.accounts.map((a) => [a.name, a.scoped]),
      [
        ['APP1', false],
        ['APP2', true],
      ],
    );
    const app1 = decode<Account>(jwts.get(setup.accounts[0]!.publicKey)!);
    assert.deepEqual(app1.nats.signing_keys, [setup.accounts[0]!.signingKey]);
    assert.equal(seedKey(file(setup, 'app1-signing.nk')), setup.accounts[0]!.signingKey);
    const app2 = decode<Account>(jwts.get(setup.accounts[1]!.publicKey)!);
    assert.equal(app2.name, 'APP2');
    assert.deepEqual(app2.nats.signing_keys, [
      {
        kind: 'user_scope',
        key: setup.accounts[1]!.signingKey,
        role: 'oidc-callout',
        // No resp: the scope grants no response permissions.
        template: {
          pub: { allow: ['{{account-name()}}.>', '$SYS.REQ.USER.INFO'], deny: [] },
          sub: { allow: ['{{account-name()}}.>', '_INBOX.{{name()}}.>'], deny: [] },
        },
      },
    ]);
    assert.equal(seedKey(file(setup, 'app2-signing.nk')), setup.accounts[1]!.signingKey);
  });

  it('writes a service configuration with one rule per account and only private inboxes', () => {
    const config = parse(file(setup, 'oidc-callout.yaml')) as Record<string, any>;
    assert.equal(config.callout.mode, 'operator');
    assert.deepEqual(config.callout.issuer_seed, { file: 'auth-signing.nk' });
    assert.equal(config.callout.issuer_account, setup.calloutAccount);
    assert.deepEqual(config.callout.xkey_seed, { file: 'xkey.nk' });
    assert.equal(config.callout.system_account, setup.systemAccount);
    assert.deepEqual(config.accounts.APP2, { public_key: setup.accounts[1]!.publicKey, signing_seed: { file: 'app2-signing.nk' }, scoped: true });
    assert.deepEqual(config.accounts.APP1, { public_key: setup.accounts[0]!.publicKey, signing_seed: { file: 'app1-signing.nk' } });
    assert.deepEqual(
      config.policy.rules.map((r: any) => [r.account, r.permissions !== undefined]),
      [
        ['APP1', true],
        ['APP2', false],
      ],
    );
    assert.deepEqual(config.policy.rules[0].permissions.sub.allow, ['APP1.>', '_INBOX.{{sub}}.>']);
    assert.match(file(setup, 'oidc-callout.yaml'), /# EDIT: your OpenID provider's exact issuer/);
  });

  it('asks nats-server for a large control line, an auth timeout and a loopback listener', () => {
    const conf = file(setup, 'nats-server.conf');
    assert.match(conf, /^max_control_line: 65536$/m);
    assert.match(conf, /^authorization \{ timeout: 5 \}$/m);
    assert.match(conf, /^listen: 127\.0\.0\.1:4222$/m);
    assert.match(conf, /^resolver: MEMORY$/m);
  });

  it('with --no-xkey and --accounts 1: no xkey anywhere, and the one account unscoped', async () => {
    const small = await generateOperatorSetup(setupOptions({ accounts: '1', 'no-xkey': true }));
    assert.ok(!small.files.some((f) => f.name === 'xkey.nk'));
    assert.equal(decode<Account>(preloaded(small).get(small.calloutAccount)!).nats.authorization!.xkey, undefined);
    assert.doesNotMatch(file(small, 'oidc-callout.yaml'), /xkey/);
    assert.deepEqual(
      small.accounts.map((a) => [a.name, a.scoped]),
      [['APP1', false]],
    );
  });

  it('writes the given issuer and audience, allowing http only on loopback', async () => {
    const s = await generateOperatorSetup(setupOptions({ issuer: 'http://127.0.0.1:8080/realms/x', audience: 'nats' }));
    const config = parse(file(s, 'oidc-callout.yaml')) as Record<string, any>;
    assert.deepEqual(config.issuers, [{ issuer: 'http://127.0.0.1:8080/realms/x', audiences: ['nats'], allow_insecure_http: true }]);
    const https = parse(
      file(await generateOperatorSetup(setupOptions({ issuer: 'https://idp.example.org', audience: 'api://nats' })), 'oidc-callout.yaml'),
    ) as Record<string, any>;
    assert.deepEqual(https.issuers, [{ issuer: 'https://idp.example.org', audiences: ['api://nats'] }]);
  });
});

describe('setup operator: options', () => {
  const refuses = (raw: Parameters<typeof setupOptions>[0], message: RegExp) =>
    assert.throws(
      () => setupOptions(raw),
      (err: Error) => err instanceof UsageError && message.test(err.message),
    );

  it('defaults to two accounts and an xkey', () => {
    assert.deepEqual(setupOptions({}), { accounts: 2, xkey: true, issuer: undefined, audience: undefined });
  });

  it('refuses bad --accounts, a lone --issuer or --audience, and insecure issuers', () => {
    for (const accounts of ['0', '101', '1.5', 'two', '', '-1']) refuses({ accounts }, /--accounts must be a whole number from 1 to 100/);
    refuses({ issuer: 'https://idp.example.org' }, /--issuer and --audience go together/);
    refuses({ audience: 'nats' }, /--issuer and --audience go together/);
    refuses({ issuer: 'idp.example.org', audience: 'nats' }, /is not a URL/);
    refuses({ issuer: 'http://idp.example.org', audience: 'nats' }, /must be an https:\/\/ URL/);
    refuses({ issuer: 'https://idp.example.org', audience: 'a b' }, /cannot be empty or contain spaces/);
    refuses({ issuer: 'https://idp.example.org', audience: '' }, /cannot be empty/);
  });
});

describe('setup operator: writing', async () => {
  const root = mkdtempSync(join(tmpdir(), 'oc-setup-'));
  const setup = await generateOperatorSetup(DEFAULTS);

  it('writes every seed and creds file with mode 0600, into a new directory of mode 0700', () => {
    const dir = join(root, 'new', 'setup');
    const paths = writeOperatorSetup(dir, setup, false);
    assert.equal(lstatSync(dir).mode & 0o777, 0o700);
    assert.deepEqual(readdirSync(dir).sort(), setup.files.map((f) => f.name).sort());
    assert.equal(paths.length, setup.files.length);
    for (const f of setup.files) {
      const mode = lstatSync(join(dir, f.name)).mode & 0o777;
      if (f.secret) assert.equal(mode, 0o600, `${f.name} is a secret`);
      else assert.equal(mode & 0o077 & ~0o044, 0, `${f.name} is writable only by its owner`);
      assert.equal(readFileSync(join(dir, f.name), 'utf8'), f.text);
    }
    const secrets = setup.files.filter((f) => f.secret).map((f) => f.name);
    for (const name of [
      'auth-signing.nk',
      'xkey.nk',
      'app1-signing.nk',
      'app2-signing.nk',
      'service.creds',
      'sentinel.creds',
      'sys.creds',
      'operator.nk',
      'operator-signing.nk',
    ]) {
      assert.ok(secrets.includes(name), `${name} is written as a secret`);
    }
    // The configuration the service reads is complete and consistent as written.
    const config = loadConfig(join(dir, 'oidc-callout.yaml'));
    assert.equal(config.callout.mode, 'operator');
    assert.deepEqual(Object.keys(config.accounts).sort(), ['APP1', 'APP2']);
  });

  it('refuses a non-empty directory without --force, and replaces the files with it', async () => {
    const dir = join(root, 'full');
    mkdirSync(dir, { mode: 0o700 });
    writeFileSync(join(dir, 'notes.txt'), 'mine\n');
    assert.throws(
      () => writeOperatorSetup(dir, setup, false),
      (err: Error) => err instanceof UsageError && /is not empty; pass --force/.test(err.message),
    );
    assert.deepEqual(readdirSync(dir), ['notes.txt']);
    writeOperatorSetup(dir, setup, true);
    const again = await generateOperatorSetup(DEFAULTS);
    writeOperatorSetup(dir, again, true);
    assert.equal(readFileSync(join(dir, 'auth-signing.nk'), 'utf8'), file(again, 'auth-signing.nk'));
    assert.equal(readFileSync(join(dir, 'notes.txt'), 'utf8'), 'mine\n');
    assert.ok(!readdirSync(dir).some((f) => f.endsWith('.tmp')));
  });

  it('never writes a seed through a symlink', () => {
    const dir = join(root, 'link');
    mkdirSync(dir, { mode: 0o700 });
    const victim = join(root, 'victim.txt');
    writeFileSync(victim, 'keep me\n', { mode: 0o644 });
    symlinkSync(victim, join(dir, 'auth-signing.nk'));
    writeOperatorSetup(dir, setup, true);
    assert.equal(readFileSync(victim, 'utf8'), 'keep me\n');
    const st = lstatSync(join(dir, 'auth-signing.nk'));
    assert.ok(st.isFile() && !st.isSymbolicLink());
    assert.equal(st.mode & 0o777, 0o600);
  });

  it('refuses a directory others can write to, even with --force', () => {
    const dir = join(root, 'shared');
    mkdirSync(dir);
    chmodSync(dir, 0o777);
    for (const force of [false, true]) {
      assert.throws(
        () => writeOperatorSetup(dir, setup, force),
        (err: Error) => err instanceof UsageError && /writable by others/.test(err.message),
      );
    }
    assert.deepEqual(readdirSync(dir), []);
  });
});
