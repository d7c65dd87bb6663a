/**
 * Locates nats-server binaries that support auth callout (2.10+) for integration tests.
 *
 * Debian stable ships a nats-server without callout, so the project fetches 2.10.x (trixie) and
 * 2.15.x (sid) with scripts/fetch-nats-server.sh. Tests run against every binary returned here so
 * that behaviour differences between the oldest and newest server show up.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);

/** One runnable nats-server: `version` is the upstream semver ("2.10.27"), `path` is absolute. */
export interface NatsServerBinary {
  version: string;
  path: string;
}

let cached: Promise<NatsServerBinary[]> | undefined;

/**
 * All nats-server binaries to test against, oldest first.
 *
 * With `NATS_SERVER_BIN` set, only that binary is used (CI or a developer can pin one).
 * Otherwise scripts/fetch-nats-server.sh runs once per process; it caches binaries in
 * .cache/nats-server/, so only the first run on a machine touches the network.
 * Versions come from `nats-server --version` rather than the Debian package version
 * ("2.10.27-1+b2"), so they can be compared with upstream release notes.
 */
export function natsServerBinaries(): Promise<NatsServerBinary[]> {
  cached ??= locate().catch((err: unknown) => {
    // Do not memoize a failure: a later test may run after the cause (e.g. apt lock) is gone.
    cached = undefined;
    throw err;
  });
  return cached;
}

/**
 * The oldest and the newest binary (one entry when only one binary is available). Tests that
 * are too slow to repeat for every version should at least cover both ends of the range.
 */
export async function newestAndOldest(): Promise<NatsServerBinary[]> {
  const all = await natsServerBinaries();
  const oldest = all[0];
  const newest = all[all.length - 1];
  if (oldest === undefined || newest === undefined) return [];
  return oldest === newest ? [oldest] : [oldest, newest];
}

async function locate(): Promise<NatsServerBinary[]> {
  const pinned = process.env['NATS_SERVER_BIN'];
  const paths = pinned ? [resolve(pinned)] : await fetchWithScript();
  const found = await Promise.all(paths.map(async (path) => ({ version: await versionOf(path), path })));
  return found.sort((a, b) => compareVersions(a.version, b.version));
}

async function fetchWithScript(): Promise<string[]> {
  const script = join(repoRoot(), 'scripts', 'fetch-nats-server.sh');
  let stdout: string;
  try {
    // apt-get update can take a while on a cold cache; the script prints progress on stderr.
    ({ stdout } = await run('bash', [script], { timeout: 180_000, maxBuffer: 16 << 20 }));
  } catch (err) {
    const stderr = (err as { stderr?: string }).stderr ?? '';
    throw new Error(`${script} failed (set NATS_SERVER_BIN to use an installed nats-server): ${String(err)}\n${stderr}`);
  }
  const paths = stdout
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => line.length > 0)
    .map((line) => line.slice(line.indexOf(' ') + 1));
  if (paths.length === 0) throw new Error(`${script} printed no nats-server binaries`);
  return paths;
}

async function versionOf(path: string): Promise<string> {
  let stdout: string;
  try {
    ({ stdout } = await run(path, ['--version'], { timeout: 10_000 }));
  } catch (err) {
    throw new Error(`cannot run ${path} --version: ${String(err)}`);
  }
  // Prints "nats-server: v2.10.27".
  const match = /v?(\d+\.\d+\.\d+[^\s]*)/.exec(stdout);
  if (!match?.[1]) throw new Error(`unexpected output from ${path} --version: ${stdout}`);
  return match[1];
}

function compareVersions(a: string, b: string): number {
  const pa = a.split(/[.-]/).map((part) => Number.parseInt(part, 10) || 0);
  const pb = b.split(/[.-]/).map((part) => Number.parseInt(part, 10) || 0);
  for (let i = 0; i < Math.max(pa.length, pb.length); i++) {
    const diff = (pa[i] ?? 0) - (pb[i] ?? 0);
    if (diff !== 0) return diff;
  }
  return 0;
}

/** Walks up from this module (test/helpers or dist/test/helpers) to the directory with scripts/. */
function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'scripts', 'fetch-nats-server.sh'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`cannot find scripts/fetch-nats-server.sh above ${fileURLToPath(import.meta.url)}`);
    dir = parent;
  }
}
