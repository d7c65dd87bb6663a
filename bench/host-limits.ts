/**
 * What the host must allow for tens of thousands of loopback connections from one process: open
 * files (the load generator and nats-server each hold one socket per client), ephemeral ports
 * (spread over several loopback source addresses), and a fixed server port that no client socket
 * can take while the server is down.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

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

/** net.ipv4.ip_local_port_range: the ports the kernel hands to client sockets. */
export function ephemeralPortRange(): { low: number; high: number } {
  const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  return { low: low!, high: high! };
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

/**
 * A port that is free on 127.0.0.1 now (and not in `except`: ports picked but not bound yet) and
 * lies below the ephemeral range, so that no client socket (and no outgoing connection of the
 * service) can be given it while the server that owns it is down between a stop and a restart.
 */
export async function freeServerPort(except: readonly number[] = []): Promise<number> {
  const { low } = ephemeralPortRange();
  const floor = 10_000;
  if (low - floor < 1000) throw new Error(`ip_local_port_range starts at ${low}: no room for a fixed server port below it`);
  for (let i = 0; i < 50; i++) {
    const port = floor + Math.floor(Math.random() * (low - floor));
    if (!except.includes(port) && (await canListen(port))) return port;
  }
  throw new Error(`no free port found between ${floor} and ${low}`);
}

function canListen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.once('error', () => resolve(false));
    server.listen(port, '127.0.0.1', () => server.close(() => resolve(true)));
  });
}
