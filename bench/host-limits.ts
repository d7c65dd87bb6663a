/**
 * What the host must allow for tens of thousands of loopback connections from one process: open
 * files (the load generator and nats-server each hold one socket per client), ephemeral ports
 * (spread over several loopback source addresses), and a fixed server port that no client socket
 * can take while the server is down.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ephemeralPortRange } from '../test/helpers/free-port.js';

/** The soft and hard open-file limits of this process. */
function openFileLimit(): { soft: number; hard: number } {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const n = (v: string | undefined) => (v === undefined || v === 'unlimited' ? Number.POSITIVE_INFINITY : Number(v));
  return { soft: n(m?.[1]), hard: n(m?.[2]) };
}

/** Open files a process needs besides one socket per client (listeners, pipes, the service's connection). */
export const OPEN_FILES_BESIDES_CLIENTS = 1000;

/**
 * Makes sure this process (the load generator) and the children it starts afterwards (they
 * inherit the limit: nats-server, which holds one socket per client too) may open `clients`
 * sockets, raising the limit with `prlimit` (Node has no setrlimit) when needed. Raising the hard
 * limit needs CAP_SYS_RESOURCE (root outside a container; in a container, e.g.
 * `docker run --ulimit nofile=N:N`); the limit cannot exceed fs.nr_open.
 */
export function ensureOpenFiles(clients: number): number {
  const needed = clients + OPEN_FILES_BESIDES_CLIENTS;
  const { soft, hard } = openFileLimit();
  if (soft >= needed) return soft;
  const nrOpen = Number(readFileSync('/proc/sys/fs/nr_open', 'utf8').trim());
  if (needed > nrOpen) throw new Error(`${clients} clients need ${needed} open files per process, more than fs.nr_open (${nrOpen})`);
  try {
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${needed}:${Math.max(needed, hard)}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const why = (err as { stderr?: Buffer }).stderr?.toString().trim() || String(err);
    throw new Error(
      `${clients} clients need ${needed} open files in this process and in nats-server; the limit is ${soft} (hard ${hard}) and prlimit ` +
        `could not raise it (${why}): run as root with CAP_SYS_RESOURCE, or raise the limit from outside; at most ` +
        `${Math.max(0, hard - OPEN_FILES_BESIDES_CLIENTS)} clients fit here`,
    );
  }
  const after = openFileLimit().soft;
  if (after < needed) throw new Error(`the open-file limit is ${after} after prlimit, ${needed} needed`);
  return after;
}

/**
 * Source addresses 127.0.0.2, 127.0.0.3, ... with at most `perAddress` clients each. A client
 * bound to a local address takes an ephemeral port of that address alone, so each address has
 * the whole range. 127.0.0.1 is left out: a client socket there could take the server's port
 * while the server restarts.
 */
export function loopbackSources(clients: number, perAddress: number): string[] {
  const count = Math.max(1, Math.ceil(clients / perAddress));
  if (count > 250) throw new Error(`${clients} clients need ${count} loopback source addresses`);
  const { low, high } = ephemeralPortRange();
  if (high - low + 1 < Math.min(clients, perAddress) * 1.2) {
    throw new Error(`ip_local_port_range ${low}-${high} is too small for ${perAddress} clients per source address`);
  }
  return Array.from({ length: count }, (_, i) => `127.0.0.${i + 2}`);
}
