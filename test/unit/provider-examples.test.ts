/**
 * The provider examples in conf/examples/ are configurations users copy: each must load with the
 * real loader, keep production settings, give every user a private inbox, and decide tokens
 * shaped like its provider's exactly as its fixture says. Decisions are asked of the real
 * command line (`explain --jwks --now`), offline: the example keeps the provider's real issuer
 * URL, and the fixture's token is signed with a local key given as the key set.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createAccount, createCurve, createUser } from '@nats-io/nkeys';
import { type CryptoKey, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { loadConfig } from '../../src/config.js';
import {
  EXAMPLES_DIR,
  exampleDoc,
  exampleText,
  FIXTURES_DIR,
  inboxPrefix,
  PROVIDERS,
  type Provider,
  ROOT,
  readFixture,
  tokenOf,
  type Variant,
} from '../helpers/provider-fixtures.js';

const MAIN = join(ROOT, 'dist', 'src', 'main.js');
const SCHEMA_LINE = '# yaml-language-server: $schema=../oidc-callout.schema.json';
const KID = 'provider-examples-1';

interface Explained {
  readonly code: number | null;
  readonly out: Record<string, any>;
  readonly stderr: string;
}

function explainCli(args: string[]): Promise<Explained> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [MAIN, 'explain', ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('error', reject);
    child.on('close', (code) => {
      try {
        resolve({ code, out: JSON.parse(stdout) as Record<string, any>, stderr });
      } catch {
        reject(new Error(`explain exited ${code} without JSON: ${stdout}${stderr}`));
      }
    });
  });
}

/** Every permission set of the example (its roles and its rules' own permissions), with where it is. */
function permissionSets(doc: Record<string, any>): { where: string; perms: Record<string, any> }[] {
  const sets = Object.entries((doc.policy.roles ?? {}) as Record<string, any>).map(([name, perms]) => ({ where: `policy.roles.${name}`, perms }));
  (doc.policy.rules as Record<string, any>[]).forEach((r, i) => {
    if (r.permissions) sets.push({ where: `policy.rules[${i}].permissions`, perms: r.permissions });
  });
  return sets;
}

describe('provider examples', () => {
  let dir: string;
  let jwksFile: string;
  let privateKey: CryptoKey;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'oc-examples-'));
    // The example's secrets, stood in by real keys of the right kind.
    writeFileSync(join(dir, 'issuer.nk'), new TextDecoder().decode(createAccount().getSeed()));
    writeFileSync(join(dir, 'xkey.nk'), new TextDecoder().decode(createCurve().getSeed()));
    writeFileSync(join(dir, 'service.nk'), new TextDecoder().decode(createUser().getSeed()));
    const pair = await generateKeyPair('RS256', { extractable: true });
    privateKey = pair.privateKey;
    jwksFile = join(dir, 'jwks.json');
    writeFileSync(jwksFile, JSON.stringify({ keys: [{ ...(await exportJWK(pair.publicKey)), kid: KID, alg: 'RS256', use: 'sig' }] }));
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  /** The example as shipped (explain reads none of its secrets). */
  function configFile(provider: Provider): string {
    const file = join(dir, `${provider}.yaml`);
    writeFileSync(file, exampleText(provider));
    return file;
  }

  async function sign(header: Record<string, unknown>, claims: Record<string, unknown>): Promise<string> {
    return new SignJWT(claims).setProtectedHeader({ ...header, alg: 'RS256', kid: KID }).sign(privateKey);
  }

  let tokens = 0;
  async function explain(provider: Provider, config: string, variant?: Variant): Promise<Explained> {
    const fixture = readFixture(provider);
    const { header, claims } = tokenOf(fixture, variant);
    const tokenFile = join(dir, `token-${++tokens}`);
    writeFileSync(tokenFile, await sign(header, claims));
    return explainCli(['--config', config, '--token', `@${tokenFile}`, '--jwks', jwksFile, '--now', fixture.now]);
  }

  it('has a fixture for every example and an example for every fixture', () => {
    const examples = readdirSync(EXAMPLES_DIR).filter((f) => f.endsWith('.yaml'));
    const fixtures = readdirSync(FIXTURES_DIR).filter((f) => f.endsWith('.json'));
    assert.deepEqual(examples.map((f) => f.replace(/\.yaml$/, '')).sort(), [...PROVIDERS].sort());
    assert.deepEqual(fixtures.map((f) => f.replace(/\.json$/, '')).sort(), [...PROVIDERS].sort());
  });

  for (const provider of PROVIDERS) {
    // Each explain is a process of its own: run them side by side.
    describe(provider, { concurrency: true }, () => {
      const fixture = readFixture(provider);
      const doc = exampleDoc(provider);
      let config: string;
      before(() => {
        config = configFile(provider);
      });

      it('is a complete server_config configuration that the real loader accepts', () => {
        const text = exampleText(provider);
        assert.equal(text.split('\n')[0], SCHEMA_LINE);
        assert.equal(fixture.example, `${provider}.yaml`);
        assert.equal(doc.callout.mode, 'server_config');
        assert.equal(doc.callout.account, 'AUTH');
        // Secrets come from systemd credentials (LoadCredential= in the unit), never inline.
        assert.deepEqual(doc.callout.issuer_seed, { credential: 'issuer.nk' });
        assert.deepEqual(doc.callout.xkey_seed, { credential: 'xkey.nk' });
        assert.deepEqual(doc.nats.nkey_seed, { credential: 'service.nk' });
        assert.equal(doc.nats.password, undefined, 'no password: an nkey login has no secret on the server side');
        for (const issuer of doc.issuers as Record<string, any>[]) {
          assert.match(issuer.issuer, /^https:\/\//);
          assert.equal(issuer.allow_insecure_http, undefined);
        }

        const loaded = loadConfig(config, { CREDENTIALS_DIRECTORY: dir }, { natsSecrets: false });
        assert.equal(loaded.callout.mode, 'server_config');
        assert.ok(loaded.keys.xkey, 'callout traffic is encrypted');
        assert.deepEqual(
          loaded.policy.ruleNames,
          (doc.policy.rules as { name: string }[]).map((r) => r.name),
        );
        // Every rule is bound to the issuer, as the README asks when there could be several.
        for (const rule of doc.policy.rules as Record<string, any>[]) assert.ok(rule.issuer, `rule ${rule.name} names its issuer`);
      });

      it('gives every permission set a private inbox, and nobody every inbox or every subject', () => {
        for (const { where, perms } of permissionSets(doc)) {
          for (const dirn of ['pub', 'sub'] as const) {
            for (const subject of (perms[dirn]?.allow ?? []) as string[]) {
              assert.notEqual(subject, '>', `${where}.${dirn} grants every subject`);
              assert.doesNotMatch(subject, /^_INBOX\.[*>]/, `${where}.${dirn} grants every inbox`);
              if (subject.startsWith('_INBOX')) {
                assert.equal(dirn, 'sub', `${where} publishes into inboxes (use resp)`);
                assert.match(subject, /^_INBOX\.\{\{[^{}]+\}\}\.>$/, `${where}: ${subject} is not a private inbox`);
              }
            }
          }
          const inboxes = ((perms.sub?.allow ?? []) as string[]).filter((s) => s.startsWith('_INBOX.'));
          assert.equal(inboxes.length, 1, `${where} carries exactly one private inbox`);
        }
      });

      for (const variant of [{ name: 'the base token', expect: fixture.expect } as Variant, ...fixture.variants]) {
        it(`explain: ${variant.name}: ${variant.expect.decision}${variant.expect.code ? ` ${variant.expect.code}` : ''}`, async () => {
          const r = await explain(provider, config, variant.name === 'the base token' ? undefined : variant);
          const e = variant.expect;
          const detail = JSON.stringify(r.out, null, 2);
          assert.equal(r.code, e.decision === 'allow' ? 0 : 1, `${r.stderr}${detail}`);
          for (const key of ['decision', 'code', 'rule', 'account', 'user_name', 'roles', 'permissions', 'expires'] as const) {
            if (e[key] !== undefined) assert.deepEqual(r.out[key], e[key], `${key} in ${detail}`);
          }
          if (e.required_claims !== undefined) {
            assert.ok(r.out.required_claims, `required_claims in ${detail}`);
            assert.deepEqual(Object.fromEntries(Object.keys(e.required_claims).map((k) => [k, r.out.required_claims[k]])), e.required_claims);
          }
          if (e.reason !== undefined) assert.match(r.out.reason, new RegExp(e.reason));
          for (const line of e.rules ?? []) {
            const actual = (r.out.rules as Record<string, unknown>[]).find((t) => t.rule === line.rule);
            assert.ok(actual, `no trace line for rule ${String(line.rule)} in ${detail}`);
            assert.deepEqual(Object.fromEntries(Object.keys(line).map((k) => [k, actual[k]])), line, `trace of ${String(line.rule)}`);
          }
          if (e.decision === 'allow') {
            // The token was verified against the provider's real issuer URL.
            assert.equal(r.out.issuer, doc.issuers[0].issuer);
            assert.ok(inboxPrefix(r.out.permissions.sub.allow), `a private inbox in ${JSON.stringify(r.out.permissions.sub)}`);
            for (const s of [...(r.out.permissions.pub.allow ?? []), ...(r.out.permissions.sub.allow ?? [])]) assert.notEqual(s, '>');
          }
        });
      }
    });
  }
});
