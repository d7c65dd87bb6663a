import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { parse } from 'yaml';
import { buildConfig } from '../../src/config.js';
import { FAILURES } from '../../src/errors.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const readme = readFileSync(join(root, 'README.md'), 'utf8');

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
    doc.nats.password = 'pw';
    doc.callout.issuer_seed = new TextDecoder().decode(createAccount().getSeed());
    doc.callout.xkey_seed = new TextDecoder().decode(createCurve().getSeed());
    const config = buildConfig(doc);
    assert.equal(config.issuers.length, 1);
    assert.ok(config.policy.ruleNames.length > 0);
  });

  it('ships a nats-server configuration that nats-server accepts', async () => {
    for (const { path } of await natsServerBinaries()) {
      // -t exits non-zero on any configuration error; the verdict goes to stderr.
      const out = execFileSync(path, ['-t', '-c', join(root, 'conf', 'nats-server.conf')], {
        env: { ...process.env, OIDC_CALLOUT_NATS_PASSWORD: 'x' },
        encoding: 'utf8',
        stdio: ['ignore', 'pipe', 'pipe'],
      });
      assert.doesNotMatch(out, /error/i);
    }
  });

  it('shows the two commands a new user needs', () => {
    assert.match(readme, /npm ci && npm run demo/);
    assert.match(readme, /^npm test/m);
  });

  it('ships no example that opens every inbox of a shared account', () => {
    // Replies travel to _INBOX.<random>: granting _INBOX.> (or _INBOX.*) to users of one account
    // lets each read the others' replies. Examples grant a private prefix, _INBOX.{{sub}}.>.
    for (const file of [join(root, 'conf', 'oidc-callout.yaml'), join(root, 'scripts', 'demo.ts')]) {
      const text = readFileSync(file, 'utf8')
        .split('\n')
        .filter((l) => !l.trim().startsWith('#') && !l.trim().startsWith('//'))
        .join('\n');
      assert.doesNotMatch(text, /["']_INBOX\.[>*]/, `${file} grants every inbox`);
      assert.match(text, /_INBOX\.\{\{sub\}\}\.>/, `${file} shows the private inbox`);
    }
  });
});
