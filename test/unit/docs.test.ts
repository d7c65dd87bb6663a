import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createAccount, createCurve, createUser } from '@nats-io/nkeys';
import { parse } from 'yaml';
import { buildConfig, configSchema, DEFAULTS } from '../../src/config.js';
import type { ConnectionFacts } from '../../src/conditions.js';
import { AuthFailure, FAILURES } from '../../src/errors.js';
import { Metrics } from '../../src/metrics.js';
import { generateOperatorSetup, SCOPE_PERMISSIONS, setupOptions } from '../../src/operator-setup.js';
import { CONNECTION_TYPES, conditionSchema, ruleSchema } from '../../src/policy-schema.js';
import { shortHash, SubjectTemplate } from '../../src/subject-template.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');

/** README from the heading line `heading` to the next heading of the same or a higher level. */
function section(heading: string): string {
  const level = /^#+/.exec(heading)![0].length;
  const lines = readme.split('\n');
  const start = lines.indexOf(heading);
  assert.ok(start >= 0, `README has no heading ${JSON.stringify(heading)}`);
  const rest = lines.slice(start + 1);
  const end = rest.findIndex((l) => {
    const m = /^(#+) /.exec(l);
    return m !== null && m[1]!.length <= level;
  });
  return (end < 0 ? rest : rest.slice(0, end)).join('\n');
}

/** The cells of the body rows of the first table in `text` (`\|` inside a cell is a literal bar). */
function firstTable(text: string): string[][] {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.startsWith('|'));
  assert.ok(start >= 0, 'no table');
  const end = lines.findIndex((l, i) => i > start && !l.startsWith('|'));
  const rows = lines.slice(start, end < 0 ? undefined : end);
  assert.match(rows[1] ?? '', /^\|(?:-+\|)+$/, 'a table has a header and a separator row');
  return rows.slice(2).map((row) =>
    row
      .slice(1, -1)
      .split(/(?<!\\)\|/)
      .map((c) => c.trim().replaceAll('\\|', '|')),
  );
}

/** The `code` spans of a table cell. */
function codes(cell: string): string[] {
  return [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);
}

function sorted(values: Iterable<string>): string[] {
  return [...new Set(values)].sort();
}

/**
 * Every key a configuration file can hold, as the Configuration table writes it: `issuers[].leeway`,
 * `accounts.NAME.public_key`. The policy's own keys have tables of their own (`policy.rules[]`,
 * `policy.roles.NAME` stand for them).
 */
function configKeys(schema: any, path: string, out: string[]): string[] {
  const def = schema._zod.def;
  if (def.type === 'optional') return configKeys(schema.unwrap(), path, out);
  if (path === 'policy.rules[]' || path === 'policy.roles.NAME') {
    out.push(path);
  } else if (def.type === 'object') {
    for (const [key, value] of Object.entries(schema.shape)) configKeys(value, path ? `${path}.${key}` : key, out);
  } else if (def.type === 'array' && schema.element._zod.def.type === 'object') {
    configKeys(schema.element, `${path}[]`, out);
  } else if (def.type === 'record' && def.valueType._zod.def.type === 'object') {
    configKeys(def.valueType, `${path}.NAME`, out);
  } else {
    out.push(path);
  }
  return out;
}

/** Whether an allow could match another user's inbox `_INBOX.<someone else>.<...>`. */
function opensOthersInboxes(subject: string): boolean {
  const [first, second] = subject.split('.');
  if (first === '>') return true;
  if (first !== '_INBOX' && first !== '*') return false;
  if (second === undefined) return false;
  return second === '>' || second === '*';
}

describe('documentation stays true', () => {
  it('lists every failure code with its outcome, and no others', () => {
    for (const [code, { outcome }] of Object.entries(FAILURES)) {
      assert.match(readme, new RegExp(`\\| \`${code}\` \\| ${outcome} \\|`), `${code} (${outcome}) missing from README`);
    }
    const documented = [...readme.matchAll(/^\| `([A-Z_]+)` \| (?:reject|abort) \|/gm)].map((m) => m[1]);
    assert.deepEqual(documented.sort(), Object.keys(FAILURES).sort());
  });

  it('ships an example configuration that loads', () => {
    const doc = parse(readFileSync(join(root, 'conf', 'oidc-callout.yaml'), 'utf8'));
    // Secrets point at systemd credentials; stand them in with real keys of the right kind.
    doc.nats.nkey_seed = new TextDecoder().decode(createUser().getSeed());
    doc.callout.issuer_seed = new TextDecoder().decode(createAccount().getSeed());
    doc.callout.xkey_seed = new TextDecoder().decode(createCurve().getSeed());
    const config = buildConfig(doc);
    assert.equal(config.issuers.length, 1);
    assert.ok(config.policy.ruleNames.length > 0);
  });

  it('ships a nats-server configuration that nats-server accepts', async () => {
    const binaries = await natsServerBinaries();
    assert.ok(binaries.length > 0, 'no nats-server binary to check the configuration with');
    for (const { path } of binaries) {
      // -t exits non-zero on any configuration error; the verdict goes to stderr.
      const r = spawnSync(path, ['-t', '-c', join(root, 'conf', 'nats-server.conf')], {
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /configuration file \S+ is valid/);
    }
  });

  it('shows the two commands a new user needs', () => {
    assert.match(readme, /npm ci && npm run demo/);
    assert.match(readme, /^npm test/m);
  });

  it('ships no example that opens every inbox of a shared account', () => {
    // Replies travel to _INBOX.<random>: a grant covering other users' inboxes (`>`, `*.>`,
    // `_INBOX.>`, `_INBOX.*.>`) lets users of one account read, or forge, each other's replies.
    // Every allow of every shipped configuration is checked; the only inbox grants are private
    // ones (a placeholder right after `_INBOX.`).
    const files = [
      join(root, 'conf', 'oidc-callout.yaml'),
      ...readdirSync(join(root, 'conf', 'examples'))
        .filter((f) => f.endsWith('.yaml'))
        .map((f) => join(root, 'conf', 'examples', f)),
    ];
    const docs = files.map((f) => ({ name: f, doc: parse(readFileSync(f, 'utf8')) as Record<string, any> }));
    const demo = readFileSync(join(root, 'scripts', 'demo.ts'), 'utf8');
    docs.push({ name: 'scripts/demo.ts', doc: parse(/`(nats:\n[\s\S]*?)`,\n/.exec(demo)![1]!.replace(/\$\{[^}]*\}/g, 'x')) });
    for (const { name, doc } of docs) {
      const sets = [...Object.values(doc.policy?.roles ?? {}), ...(doc.policy?.rules ?? []).map((r: any) => r.permissions ?? {})] as any[];
      const allows = sets.flatMap((p) => [...(p.pub?.allow ?? []), ...(p.sub?.allow ?? [])]) as string[];
      assert.ok(allows.length > 0, `${name}: no allow entries found`);
      for (const subject of allows) assert.ok(!opensOthersInboxes(subject), `${name} grants other users' inboxes: ${subject}`);
      assert.ok(
        allows.some((a) => /^_INBOX\.\{\{[^}]*\}\}\.>$/.test(a)),
        `${name} shows no private inbox`,
      );
    }
    assert.equal(opensOthersInboxes('>'), true);
    assert.equal(opensOthersInboxes('*.>'), true);
    assert.equal(opensOthersInboxes('_INBOX.*.>'), true);
    assert.equal(opensOthersInboxes('_INBOX.{{sub}}.>'), false);
    assert.equal(opensOthersInboxes('orders.>'), false);
  });

  it("shows no allow list anywhere (README, conf/, examples/, setup operator) that opens other users' inboxes", async () => {
    // Every `allow: [...]` written in a shipped text, whatever its section or format.
    // README's prose names bad grants to warn against them: only its code blocks are examples.
    const texts: { name: string; text: string }[] = [...readme.matchAll(/^```[a-z]*\n([\s\S]*?)^```$/gm)].map((m) => ({ name: 'README.md', text: m[1]! }));
    const walk = (dir: string): string[] =>
      readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : [join(dir, e.name)]));
    for (const file of [...walk(join(root, 'conf')), ...walk(join(root, 'examples')), join(root, 'scripts', 'demo.ts')]) {
      if (!/\.(ya?ml|conf|js|ts|capnp|cfg|md)$/.test(file)) continue;
      texts.push({ name: file, text: readFileSync(file, 'utf8') });
    }
    const setup = await generateOperatorSetup(setupOptions({}));
    for (const f of setup.files.filter((f) => !f.secret)) texts.push({ name: `setup operator: ${f.name}`, text: f.text });
    // The scoped signing key's template, which the account JWT carries.
    for (const subject of [...SCOPE_PERMISSIONS.pub, ...SCOPE_PERMISSIONS.sub]) {
      assert.ok(!opensOthersInboxes(subject), `the setup's scope grants other users' inboxes: ${subject}`);
    }
    let seen = 0;
    for (const { name, text } of texts) {
      for (const list of text.matchAll(/allow:\s*\[([^\]]*)\]/g)) {
        // Quoted either way (YAML, JS) or bare (YAML flow sequences).
        for (const entry of list[1]!.split(',')) {
          const subject = entry.trim().replace(/^["'`]|["'`]$/g, '');
          if (subject === '' || subject.startsWith('...')) continue;
          seen++;
          assert.ok(!opensOthersInboxes(subject), `${name} grants other users' inboxes: ${subject}`);
        }
      }
    }
    assert.ok(seen > 50, `only ${seen} allow entries found`);
  });

  it('documents every configuration key, and no others', () => {
    const documented = firstTable(section('## Configuration')).flatMap((row) => codes(row[0]!));
    assert.deepEqual(sorted(documented), sorted(configKeys(configSchema, '', [])));
  });

  it('documents every key of a rule, and no others, with the defaults the loader uses', () => {
    const rows = firstTable(section('### Rule keys'));
    assert.deepEqual(sorted(rows.map((r) => codes(r[0]!).join())), sorted(Object.keys(ruleSchema.shape)));
    const defaultOf = (key: string) => rows.find((r) => r[0] === `\`${key}\``)![1];
    assert.equal(defaultOf('max_lifetime'), `\`${DEFAULTS.rule.max_lifetime}\``);
    assert.equal(defaultOf('user_name_claim'), `\`${DEFAULTS.rule.user_name_claim}\``);
    assert.equal(defaultOf('connection_types'), `\`[${DEFAULTS.rule.connection_types.join(', ')}]\``);
  });

  it('documents every condition form, and no others', () => {
    // `{claim: C, equals: V}`, `{all: [conditions]}`, ...: the keys are the words before a colon.
    const documented = firstTable(section('### Conditions')).flatMap((row) => codes(row[0]!).flatMap((c) => [...c.matchAll(/([a-z_]+):/g)].map((m) => m[1]!)));
    assert.deepEqual(sorted(documented), sorted(Object.keys((conditionSchema as any).unwrap().shape)));
  });

  it('documents every template function, and no others, and what hash makes', () => {
    const rows = firstTable(section('### Subject templates'));
    const documented = rows.map((r) => codes(r[0]!).join());
    // The functions subject-template.ts knows are its FUNCTIONS list (not exported).
    const source = readFileSync(join(root, 'src', 'subject-template.ts'), 'utf8');
    const list = /const FUNCTIONS = \[([^\]]*)\] as const/.exec(source);
    assert.ok(list, 'src/subject-template.ts declares its FUNCTIONS');
    const known = [...list[1]!.matchAll(/'([^']+)'/g)].map((m) => m[1]!);
    assert.deepEqual(sorted(documented), sorted(known));
    for (const fn of documented) SubjectTemplate.compile(`a.{{sub | ${fn}}}`, 'test');
    assert.throws(() => SubjectTemplate.compile('a.{{sub | upper}}', 'test'), /unknown template function/);
    // The worked example in the hash row is what the template renders.
    const example = /`(\{\{ claims\.email \| lower \| hash \}\})` turns `([^`]+)` into `([^`]+)`/.exec(rows.map((r) => r.join(' ')).join('\n'));
    assert.ok(example, 'the hash row shows an example');
    assert.equal(SubjectTemplate.compile(`mail.${example[1]}`, 'test').render({ email: example[2] }, 'test'), `mail.${example[3]}`);
  });

  it('lists exactly the connection types a user JWT can allow', () => {
    const documented = firstTable(section('### Connection types')).map((r) => codes(r[0]!).join());
    assert.deepEqual(sorted(documented), sorted(CONNECTION_TYPES));
  });

  it('documents every option of explain', () => {
    const source = readFileSync(join(root, 'src', 'main.ts'), 'utf8');
    const usage = /oidc-callout explain[^\n]*\n[^\n]*\[--connection-type[^\n]*/.exec(source);
    assert.ok(usage, 'src/main.ts shows the explain usage');
    const options = [...usage[0].matchAll(/--[a-z-]+/g)].map((m) => m[0]);
    const row = firstTable(section('## Commands')).find((r) => r[0]!.startsWith('`oidc-callout explain'));
    assert.ok(row, 'the Commands table has a row for explain');
    for (const option of options) assert.ok(row[0]!.includes(option), `${option} missing from the explain row`);
  });

  it('shows policy examples that load and keep every inbox private', () => {
    const examples = policyExamples();
    assert.ok(examples.length >= 4, `only ${examples.length} examples`);
    for (const { text, config } of examples) {
      assert.ok(config.policy.ruleNames.length > 0);
      // Only private inboxes (a placeholder right after `_INBOX.`), never `_INBOX.>` or `_INBOX.*`.
      const code = text
        .split('\n')
        .map((l) => l.replace(/#.*$/, ''))
        .join('\n');
      for (const m of code.matchAll(/_INBOX\.(.{0,2})/g)) assert.equal(m[1], '{{', `an example grants a shared inbox:\n${text}`);
    }
  });

  it('shows policy examples that do what their text says', () => {
    /** Decides with the example that holds rule `name`. */
    const byRule = (name: string) => {
      const found = policyExamples().find((e) => e.config.policy.ruleNames.includes(name));
      assert.ok(found, `no example has a rule ${name}`);
      const issuer = found.config.issuers[0]!.issuer;
      return (claims: Record<string, unknown>, connection?: ConnectionFacts) => found.config.policy.decide(issuer, claims, connection);
    };
    const refusedWith = (code: string) => (err: unknown) => err instanceof AuthFailure && err.code === code;

    const keycloak = byRule('keycloak-roles');
    const writer = keycloak({ sub: 'u1', preferred_username: 'alice', realm_access: { roles: ['offline_access', 'nats-orders-write'] } });
    assert.deepEqual(writer.roles, ['orders-reader', 'orders-writer']);
    assert.deepEqual(writer.pub, { allow: ['orders.>'], deny: ['orders.audit.>'] });
    assert.equal(writer.name, 'alice');
    assert.throws(() => keycloak({ sub: 'u2', realm_access: { roles: ['offline_access'] } }), refusedWith('POLICY_NO_MATCH'));

    const tenants = byRule('tenant-users');
    const user = tenants({ sub: 'u3', tenant: 'globex', email: 'Alice@Example.com' });
    assert.equal(user.account, 'GLOBEX');
    assert.ok(user.sub.allow?.includes(`mail.${shortHash('alice@example.com')}.>`), JSON.stringify(user.sub));
    assert.equal(tenants({ sub: 'u4', tenant: 'acme', roles: ['tenant-admin'] }).rule, 'tenant-admins');
    assert.throws(() => tenants({ sub: 'u5', tenant: 'initech', email: 'a@b.c' }), refusedWith('POLICY_ACCOUNT_UNMAPPED'));
    assert.throws(() => tenants({ sub: 'u6', email: 'a@b.c' }), refusedWith('POLICY_REQUIRED_CLAIMS'));

    const github = byRule('deploy-production');
    const job = { repository: 'my-org/shop', ref: 'refs/heads/main', environment: 'production', run_id: '4711', repository_id: '99' };
    assert.equal(github({ ...job, sub: 'repo:my-org/shop:environment:production', repository_owner_id: '1234567' }).rule, 'deploy-production');
    assert.throws(() => github({ ...job, sub: 'repo:evil/shop:environment:production', repository_owner_id: '666' }), refusedWith('POLICY_REQUIRED_CLAIMS'));
    const build = github({
      sub: 'repo:my-org/web:ref:refs/heads/v1.2',
      repository_owner_id: '1234567',
      repository_id: '42',
      run_id: '4712',
      job_workflow_ref: 'my-org/workflows/.github/workflows/build.yml@refs/heads/main',
    });
    assert.deepEqual(build.pub, { allow: ['ci.events.42'] });
    assert.deepEqual(build.sub, { allow: ['_INBOX.4712.>'] });

    const dashboard = byRule('dashboard-office');
    const person = { sub: 'u7', groups: ['ops-dashboard'] };
    const office = dashboard(person, { type: 'WEBSOCKET', host: '::ffff:10.20.3.4' });
    assert.equal(office.rule, 'dashboard-office');
    assert.deepEqual(office.connectionTypes, ['WEBSOCKET']);
    assert.deepEqual(office.sourceNetworks, ['10.20.0.0/16', '2001:db8:20::/48']);
    const elsewhere = dashboard(person, { type: 'STANDARD', host: '10.20.3.4' });
    assert.equal(elsewhere.rule, 'dashboard-elsewhere');
    assert.deepEqual(elsewhere.connectionTypes, ['WEBSOCKET']);
  });
});

/** The YAML examples of the Policy section, loaded with a callout account and a seed stood in. */
function policyExamples(): { text: string; config: ReturnType<typeof buildConfig> }[] {
  const seed = new TextDecoder().decode(createAccount().getSeed());
  return [...section('## Policy').matchAll(/^```yaml\n([\s\S]*?)^```$/gm)].map((m) => {
    const text = m[1]!;
    const doc = parse(text);
    assert.ok(doc.issuers && doc.policy, `an example is a complete issuers and policy section:\n${text}`);
    doc.callout = { account: 'AUTH', ...doc.callout, issuer_seed: seed };
    return { text, config: buildConfig(doc, {}) };
  });
}

describe('README: Monitoring', () => {
  it('alerts only on metrics the service exports, and the probe command is the one the CLI accepts', async () => {
    const text = section('## Monitoring');
    const [rules] = [...text.matchAll(/^```yaml\n([\s\S]*?)^```$/gm)].map((m) => parse(m[1]!) as { groups: { rules: { alert: string; expr: string }[] }[] });
    assert.ok(rules, 'the Monitoring section shows alert rules');
    const exported = new Set((await new Metrics('0.0.0').registry.getMetricsAsJSON()).map((m) => m.name));
    const alerts = rules.groups.flatMap((g) => g.rules);
    assert.ok(alerts.length >= 3);
    for (const { alert, expr } of alerts) {
      const names = [...expr.matchAll(/oidc_callout_\w+/g)].map((m) => m[0].replace(/_(bucket|sum|count)$/, ''));
      assert.ok(names.length > 0, alert);
      for (const n of names) assert.ok(exported.has(n), `${alert} uses ${n}, which the service does not export`);
    }
    const probe = /^oidc-callout probe (.*)$/m.exec(text);
    assert.ok(probe, 'the Monitoring section shows a probe command');
    const usage = spawnSync(process.execPath, [join(root, 'dist', 'src', 'main.js'), '--help'], { encoding: 'utf8' }).stdout;
    for (const flag of probe[1]!.matchAll(/--[a-z-]+/g)) assert.match(usage, new RegExp(`probe[^\\n]*${flag[0]}`), `probe ${flag[0]} is not in the usage`);
  });
});

describe('shipped configuration and unit', () => {
  it('read the same systemd credentials: every { credential } of the configuration is a LoadCredential= of the unit', () => {
    const yaml = readFileSync(join(root, 'conf', 'oidc-callout.yaml'), 'utf8');
    const unit = readFileSync(join(root, 'conf', 'oidc-callout.service'), 'utf8');
    const wanted = sorted([...yaml.matchAll(/^[^#\n]*\{ credential: ([^ }]+) \}/gm)].map((m) => m[1]!));
    const loaded = sorted([...unit.matchAll(/^LoadCredential=([^:]+):/gm)].map((m) => m[1]!));
    assert.deepEqual(wanted, ['issuer.nk', 'service.nk', 'xkey.nk']);
    assert.deepEqual(loaded, wanted);
  });
});
