import { randomBytes } from 'node:crypto';
import { closeSync, fsyncSync, lstatSync, openSync, realpathSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { dirname } from 'node:path';
import { UsageError } from './usage-error.js';

/** Whether anything is at `path`, a dangling symlink included. */
export function pathExists(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Writes files (seeds, creds, and the configurations that go with them) as new files of our own,
 * mode 0600 unless a file says otherwise, then renames them into place: an existing file or
 * symlink is replaced, never written through (a symlink would send the seed into its target, which
 * keeps its owner and mode). All are written before any is renamed, and a failure removes what was
 * written: all files are replaced or none, and no stray copy of a seed remains.
 */
export function writeSecretFiles(files: readonly (readonly [path: string, text: string, mode?: number])[]): void {
  const written: [tmp: string, path: string][] = [];
  try {
    for (const [path, text, mode] of files) {
      const tmp = `${path}.${randomBytes(6).toString('hex')}.tmp`;
      const fd = openSync(tmp, 'wx', mode ?? 0o600);
      written.push([tmp, path]);
      try {
        writeSync(fd, text);
        fsyncSync(fd);
      } finally {
        closeSync(fd);
      }
    }
    // A directory in the way fails here, before any seed is replaced.
    for (const [, path] of written) {
      if (pathExists(path) && lstatSync(path).isDirectory()) throw new UsageError(`${path} is a directory`);
    }
    for (const [tmp, path] of written) renameSync(tmp, path);
  } catch (err) {
    for (const [tmp] of written) rmSync(tmp, { force: true });
    throw err;
  }
}

/** Seeds go only into a directory no one else can write to (they could swap a seed of their own in). */
export function refuseSharedDirectory(dir: string): void {
  const st = statSync(dir);
  const uid = typeof process.getuid === 'function' ? process.getuid() : undefined;
  if ((st.mode & 0o022) !== 0 || (uid !== undefined && st.uid !== uid)) {
    throw new UsageError(`${dir} is writable by others or owned by another user: keep seeds in a directory only you can write to`);
  }
  // Whoever can write to a parent can rename this directory away and put their own in its place
  // (as ssh checks): every parent must be ours or root's, and not writable by others unless
  // sticky (/tmp), where only the owner may rename what is ours.
  let child = realpathSync(dir);
  for (let parent = dirname(child); parent !== child; child = parent, parent = dirname(parent)) {
    const p = statSync(parent);
    const sticky = (p.mode & 0o1000) !== 0;
    if (uid !== undefined && p.uid !== uid && p.uid !== 0) {
      throw new UsageError(
        `${parent} (a parent of ${dir}) belongs to another user, who could replace ${dir}: keep seeds under directories only you or root own`,
      );
    }
    if ((p.mode & 0o022) !== 0 && !sticky) {
      throw new UsageError(
        `${parent} (a parent of ${dir}) is writable by others, who could replace ${dir}: keep seeds under directories only you can write to`,
      );
    }
  }
}
