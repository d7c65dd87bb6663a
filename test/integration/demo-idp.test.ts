/** `npm run demo -- --idp`: the local OpenID provider README tells new users to get tokens from. */
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const DEMO = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'scripts', 'demo.js');

describe('demo --idp', () => {
  it('prints an issuer and a curl line that gets a token, and stops on Ctrl-C', async () => {
    const child = spawn(process.execPath, [DEMO, '--idp'], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const exited = new Promise<number | null>((resolve) => child.on('exit', resolve));
    try {
      for (let i = 0; i < 200 && !out.includes('Ctrl-C stops the provider'); i++) await new Promise((r) => setTimeout(r, 50));
      assert.match(out, /Ctrl-C stops the provider/, out);
      const issuer = /^issuer: +(http:\/\/127\.0\.0\.1:\d+)/m.exec(out)?.[1];
      assert.ok(issuer, out);
      // The printed command, run as a user would (curl and node, in a shell).
      const curl = /^ {2}(curl .*> billing\.jwt)$/m.exec(out)?.[1];
      assert.ok(curl, out);
      const dir = mkdtempSync(join(tmpdir(), 'oc-demo-idp-'));
      execFileSync('sh', ['-c', curl], { cwd: dir });
      const token = readFileSync(join(dir, 'billing.jwt'), 'utf8').trim();
      const claims = JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;
      assert.equal(claims.iss, issuer);
      assert.equal(claims.sub, 'billing');
      assert.deepEqual(claims.groups, ['app1']);
    } finally {
      child.kill('SIGINT');
    }
    assert.equal(await exited, 0);
  });
});
