import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { availableParallelism, tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import { autoWorkers, buildConfig, DEFAULTS, loadConfig, parseDuration, redactedConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';

const SEED = new TextDecoder().decode(createAccount().getSeed());

function minimal(): Record<string, any> {
  return {
    nats: { servers: ['nats://127.0.0.1:4222'], user: 'auth', password: 'pw' },
    callout: { account: 'AUTH', issuer_seed: SEED },
    issuers: [{ issuer: 'https://idp.example.com', audiences: ['nats'] }],
    policy: { rules: [{ name: 'all', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['>'] } } }] },
  };
}

function configError(doc: unknown, path: string, message: RegExp, env: NodeJS.ProcessEnv = {}): void {
  assert.throws(
    () => buildConfig(doc, env, '/nonexistent'),
    (e: unknown) => e instanceof ConfigError && e.path === path && message.test(e.message),
  );
}

describe('config', () => {
  it('fills defaults from one place and freezes the result', () => {
    const c = buildConfig(minimal());
    assert.equal(c.nats.queueGroup, DEFAULTS.nats.queue_group);
    assert.deepEqual(c.token.fields, ['auth_token']);
    assert.deepEqual(c.issuers[0]!.algorithms, ['RS256']);
    assert.equal(c.issuers[0]!.leewaySeconds, 60);
    assert.equal(c.issuers[0]!.allowMissingExp, false);
    assert.equal(c.cache.ttlMs, 60_000);
    assert.equal(c.callout.mode, 'server_config');
    assert.ok(Object.isFrozen(c) && Object.isFrozen(c.issuers[0]));
  });

  it('refuses unknown keys and names them', () => {
    configError({ ...minimal(), extra: 1 }, '', /Unrecognized key: "extra"/);
    const doc = minimal();
    doc.issuers[0].audience = 'nats';
    configError(doc, 'issuers[0]', /Unrecognized key: "audience"/);
  });

  it('requires audiences and refuses symmetric or none algorithms', () => {
    const doc = minimal();
    delete doc.issuers[0].audiences;
    configError(doc, 'issuers[0].audiences', /expected array/);
    for (const alg of ['HS256', 'none']) {
      const d = minimal();
      d.issuers[0].algorithms = [alg];
      configError(d, 'issuers[0].algorithms[0]', /Invalid option/);
    }
  });

  it('refuses http issuers unless explicitly allowed', () => {
    const doc = minimal();
    doc.issuers[0].issuer = 'http://127.0.0.1:8080';
    configError(doc, 'issuers[0].issuer', /http:\/\/ is refused/);
    doc.issuers[0].allow_insecure_http = true;
    assert.equal(buildConfig(doc).issuers[0]!.allowInsecureHttp, true);
    const j = minimal();
    j.issuers[0].jwks_uri = 'http://idp/jwks';
    configError(j, 'issuers[0].jwks_uri', /http:\/\/ is refused/);
  });

  it('requires every rule to name its issuers when several are configured', () => {
    const doc = minimal();
    doc.issuers.push({ issuer: 'https://ci.example.com', audiences: ['nats'] });
    configError(doc, 'policy.rules[0].issuer', /required when several issuers are configured/);
    doc.policy.rules[0].issuer = ['https://idp.example.com', 'https://ci.example.com'];
    assert.equal(buildConfig(doc).policy.ruleNames.length, 1);
    doc.policy.rules[0].issuer = ['https://idp.example.com', 'https://nope.example.com'];
    configError(doc, 'policy.rules[0].issuer', /https:\/\/nope.example.com is not one of the configured issuers/);
  });

  it('refuses duplicate issuers and rules naming an unconfigured issuer', () => {
    const doc = minimal();
    doc.issuers.push({ ...doc.issuers[0] });
    configError(doc, 'issuers[1].issuer', /duplicate issuer/);
    const r = minimal();
    r.policy.rules[0].issuer = 'https://other';
    configError(r, 'policy.rules[0].issuer', /not one of the configured issuers/);
  });

  it('reads secrets from files and the environment, and says which is missing', () => {
    const dir = mkdtempSync(join(tmpdir(), 'oc-config-'));
    writeFileSync(join(dir, 'issuer.nk'), `${SEED}\n`);
    const doc = minimal();
    doc.callout.issuer_seed = { file: 'issuer.nk' };
    doc.nats.password = { env: 'NATS_PW' };
    const c = buildConfig(doc, { NATS_PW: 'secret' }, dir);
    assert.equal(c.callout.issuerSeed.value, SEED);
    assert.equal(c.nats.password?.value, 'secret');
    configError(doc, 'nats.password', /environment variable NATS_PW is not set/);
    const missing = minimal();
    missing.callout.issuer_seed = { file: '/nonexistent/issuer.nk' };
    configError(missing, 'callout.issuer_seed', /cannot read secret file \/nonexistent\/issuer.nk: ENOENT/);
    // systemd credentials: $CREDENTIALS_DIRECTORY/NAME, named by the unit's LoadCredential=.
    const credential = minimal();
    credential.callout.issuer_seed = { credential: 'issuer.nk' };
    assert.equal(buildConfig(credential, { CREDENTIALS_DIRECTORY: dir }, '/elsewhere').callout.issuerSeed.value, SEED);
    configError(credential, 'callout.issuer_seed', /CREDENTIALS_DIRECTORY is not set \(run under systemd with LoadCredential=issuer.nk:FILE/);
    credential.callout.issuer_seed = { credential: '../issuer.nk' };
    configError(credential, 'callout.issuer_seed.credential', /a credential name/);
  });

  it('never prints secret values in the redacted view', () => {
    const c = buildConfig({ ...minimal(), nats: { user: 'auth', password: { env: 'PW' } } }, { PW: 'hunter2' });
    const text = JSON.stringify(redactedConfig(c));
    assert.ok(!text.includes('hunter2') && !text.includes(SEED));
    assert.match(text, /<secret from env:PW>/);
    assert.match(text, /<secret from inline>/);
  });

  it('refuses two ways to authenticate to NATS and a user without password', () => {
    configError({ ...minimal(), nats: { user: 'a', password: 'b', token: 'c' } }, 'nats', /choose one way/);
    configError({ ...minimal(), nats: { user: 'a' } }, 'nats', /go together/);
  });

  it('checks operator-mode accounts against the rules', () => {
    configError({ ...minimal(), accounts: { APP: { public_key: 'A', signing_seed: SEED } } }, 'accounts', /only used in callout.mode: operator/);
    configError({ ...minimal(), callout: { mode: 'operator', issuer_seed: SEED } }, 'callout.system_account', /required in operator mode/);
    configError({ ...minimal(), callout: { mode: 'operator', issuer_seed: SEED, system_account: 'SYS' } }, 'callout.system_account', /public key/);
    configError({ ...minimal(), callout: { account: 'AUTH ', issuer_seed: SEED } }, 'callout.account', /no whitespace/);
    const doc = { ...minimal(), callout: { mode: 'operator', issuer_seed: SEED, system_account: createAccount().getPublicKey() } };
    configError(doc, 'policy.rules[0].account', /not listed under accounts/);
    const proto = { ...doc, policy: { rules: [{ name: 'r', allow_broad: true, account: 'toString', permissions: { sub: { allow: ['x'] } } }] } };
    configError(proto, 'policy.rules[0].account', /not listed under accounts/);
  });

  it('parses the monitoring listen address, IPv6 included, and refuses a bare port', () => {
    assert.equal(buildConfig(minimal()).http, undefined);
    assert.deepEqual(buildConfig({ ...minimal(), http: { listen: '127.0.0.1:9464' } }).http, { host: '127.0.0.1', port: 9464, readyMaxLatencyMs: 1000 });
    assert.deepEqual(buildConfig({ ...minimal(), http: { listen: '[::1]:0', ready_max_latency: '250ms' } }).http, {
      host: '::1',
      port: 0,
      readyMaxLatencyMs: 250,
    });
    configError({ ...minimal(), http: { listen: '[::1]:0', ready_max_latency: '5ms' } }, 'http.ready_max_latency', /at least|between|10/);
    configError({ ...minimal(), http: { listen: '9464' } }, 'http.listen', /expected host:port/);
    configError({ ...minimal(), http: { listen: 'localhost:70000' } }, 'http.listen', /expected host:port/);
  });

  it("resolves workers: 'auto' leaves a core to nats-server (at least 1, at most 8); a number is taken as given", () => {
    assert.deepEqual([1, 2, 3, 4, 16].map(autoWorkers), [1, 1, 2, 3, 8]);
    assert.equal(buildConfig({ ...minimal(), workers: 3 }).workers, 3);
    assert.equal(buildConfig(minimal()).workers, autoWorkers(availableParallelism()));
    configError({ ...minimal(), workers: 0 }, 'workers', /./);
  });

  it('refuses durations that could never work', () => {
    const rule = minimal();
    rule.policy.rules[0].max_lifetime = '500ms';
    assert.throws(() => buildConfig(rule), /policy.rules\[0\].max_lifetime: must be at least 1s/);
    const t = minimal();
    t.issuers[0].http_timeout = 0;
    configError(t, 'issuers[0].http_timeout', /must be at least 100ms/);
    const l = minimal();
    l.issuers[0].leeway = '1h';
    configError(l, 'issuers[0].leeway', /must be at most 600s/);
  });

  it('reads creds_file relative to the configuration file', () => {
    const c = buildConfig({ ...minimal(), nats: { creds_file: 'svc.creds' } }, {}, '/etc/oidc-callout');
    assert.equal(c.nats.credsFile, '/etc/oidc-callout/svc.creds');
    assert.ok(Object.isFrozen(DEFAULTS.issuer) && Object.isFrozen(DEFAULTS.token.fields));
  });

  it('parses durations and names the key of a bad one', () => {
    assert.equal(parseDuration('250ms', 'x'), 250);
    assert.equal(parseDuration('1.5m', 'x'), 90_000);
    assert.equal(parseDuration(2, 'x'), 2000);
    const doc = minimal();
    doc.issuers[0].leeway = 'soon';
    configError(doc, 'issuers[0].leeway', /invalid duration "soon"/);
  });

  it('loads YAML files and reports duplicate keys and bad syntax', () => {
    const dir = mkdtempSync(join(tmpdir(), 'oc-config-'));
    const file = join(dir, 'c.yaml');
    writeFileSync(
      file,
      `nats: {user: auth, password: pw}\ncallout: {account: AUTH, issuer_seed: ${SEED}}\nissuers: [{issuer: "https://i", audiences: [a]}]\npolicy: {rules: [{name: r, account: APP, allow_broad: true, permissions: {sub: {allow: [public.>]}}}]}\n`,
    );
    assert.equal(loadConfig(file).policy.ruleNames[0], 'r');
    writeFileSync(file, 'nats: {}\nnats: {}\n');
    assert.throws(() => loadConfig(file), /not valid YAML: Map keys must be unique \(line 2, column 1\)/);
    // The parser quotes the bad line; an inline secret on it must not reach the message.
    writeFileSync(file, 'nats:\n  password: hunter2-Secret: x\n');
    assert.throws(
      () => loadConfig(file),
      (e: Error) => /not valid YAML.*\(line 2, column \d+\)$/.test(e.message) && !e.message.includes('hunter2'),
    );
    assert.throws(() => loadConfig(join(dir, 'missing.yaml')), /cannot read .*ENOENT/);
  });

  it('takes the nats section as optional: every key has a default', () => {
    const doc = {
      callout: { account: 'AUTH', issuer_seed: SEED },
      issuers: [{ issuer: 'https://idp.example.com', audiences: ['nats'] }],
      policy: { rules: [{ name: 'r', allow_broad: true, account: 'A', permissions: { sub: { allow: ['x'] } } }] },
    };
    const config = buildConfig(doc, {});
    assert.deepEqual(config.nats.servers, ['nats://127.0.0.1:4222']);
    assert.equal(config.nats.connections, 24);
    assert.equal(config.nats.queueGroup, 'oidc-callout');
  });
});
