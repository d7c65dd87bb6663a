/**
 * The shipped systemd unit: systemd accepts it, and its exposure score (systemd-analyze security)
 * stays at or below what it is today.
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';

const root = join(fileURLToPath(new URL('.', import.meta.url)), '..', '..', '..');
const unit = readFileSync(join(root, 'conf', 'oidc-callout.service'), 'utf8');
const haveSystemd = spawnSync('systemd-analyze', ['--version']).status === 0;
const MAX_EXPOSURE = 1.5;

describe('the systemd unit', () => {
  // CI installs systemd (.ci/run); elsewhere the test says why it did not run.
  const skip = haveSystemd ? false : 'systemd-analyze is not installed';

  /** The unit as shipped, with ExecStart pointing at this machine's node (verify checks it exists). */
  function localCopy(): string {
    const dir = mkdtempSync(join(tmpdir(), 'oc-unit-'));
    const file = join(dir, 'oidc-callout.service');
    writeFileSync(file, unit.replace(/^ExecStart=\S+/m, `ExecStart=${process.execPath}`));
    return file;
  }

  it('passes systemd-analyze verify', { skip }, () => {
    const r = spawnSync('systemd-analyze', ['verify', localCopy()], { encoding: 'utf8' });
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stderr.trim(), '', r.stderr);
  });

  it(`scores an exposure of at most ${MAX_EXPOSURE} in systemd-analyze security`, { skip }, () => {
    const out = execFileSync('systemd-analyze', ['security', '--offline=true', localCopy()], { encoding: 'utf8' });
    const m = /Overall exposure level for \S+: ([\d.]+)/.exec(out);
    assert.ok(m, out);
    assert.ok(Number(m[1]) <= MAX_EXPOSURE, `exposure ${m[1]}`);
  });

  it('hardens what Node tolerates and bounds memory and tasks', () => {
    for (const line of [
      'DynamicUser=yes',
      'NoNewPrivileges=yes',
      'ProtectSystem=strict',
      'SystemCallFilter=@system-service',
      'SystemCallFilter=~@privileged',
      'ProcSubset=pid',
      'MemoryMax=',
      'TasksMax=',
      'CapabilityBoundingSet=',
      'UMask=0077',
    ]) {
      assert.match(unit, new RegExp(`^${line.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`, 'm'), line);
    }
    // V8's JIT writes and executes its own code: this one would stop Node.
    assert.doesNotMatch(unit, /^MemoryDenyWriteExecute=yes/m);
    // Secrets come as credentials; the xkey line says when it is needed.
    assert.match(unit, /# Only with auth_callout\.xkey[^\n]*\nLoadCredential=xkey\.nk:/);
  });
});
