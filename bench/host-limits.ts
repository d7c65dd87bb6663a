/**
 * What the host must allow for tens of thousands of loopback connections: open files (the load
 * generator and each nats-server hold one socket per client), ephemeral ports (each server's
 * whole range, or several loopback source addresses beyond it), and a fixed server port that no client socket can take
 * while the server is down.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { ephemeralPortRange } from '../test/helpers/free-port.js';

/** The soft and hard open-file limits of this process. */
export function openFileLimit(): { soft: number; hard: number } {
  const m = /^Max open files\s+(\d+|unlimited)\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  const n = (v: string | undefined) => (v === undefined || v === 'unlimited' ? Number.POSITIVE_INFINITY : Number(v));
  return { soft: n(m?.[1]), hard: n(m?.[2]) };
}

/** Open files a process needs besides one socket per client (listeners, pipes, the service's connection). */
export const OPEN_FILES_BESIDES_CLIENTS = 1000;

/**
 * Raises this process's open-file limit to `needed` (soft and, when needed, hard) with prlimit;
 * undefined when it is that high now, else why not. Raising the soft limit up to the hard one
 * needs no privilege.
 */
function raiseOpenFiles(needed: number): string | undefined {
  const { soft, hard } = openFileLimit();
  if (soft >= needed) return undefined;
  const nrOpen = Number(readFileSync('/proc/sys/fs/nr_open', 'utf8').trim());
  if (needed > nrOpen) return `more than fs.nr_open (${nrOpen})`;
  try {
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${needed}:${Math.max(needed, hard)}`], { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    return (err as { stderr?: Buffer }).stderr?.toString().trim() || String(err);
  }
  const after = openFileLimit().soft;
  return after >= needed ? undefined : `the limit is ${after} after prlimit`;
}

/** How the storm's sockets are spread over processes, from {@link planOpenFiles}. */
export interface OpenFilesPlan {
  /** The open-file limit of this process after raising it; children started later inherit it. */
  readonly nofile: number;
  /** Client sockets of each nats-server at most: ceil(clients / servers). */
  readonly perServer: number;
  /** 1: the fleet runs in this process; more: in that many child processes. */
  readonly fleetProcesses: number;
  /** Clients of each fleet process, in client order (they add up to `clients`). */
  readonly fleetSizes: readonly number[];
}

/**
 * Spreads a storm of `clients` over `servers` nats-servers (client i on server i % servers) and
 * over fleet processes, within the open-file limit. First the limit is raised so that one
 * process can hold every client socket (and each nats-server its share); where the hard limit
 * does not allow that and cannot be raised (no CAP_SYS_RESOURCE), the soft limit goes up to the
 * hard one and the fleet is split into as few child processes as fit under it, each holding at
 * most `hard - OPEN_FILES_BESIDES_CLIENTS` sockets. A nats-server cannot be split: a run whose
 * share per server does not fit is refused. `clientsPerProcess` caps a fleet process lower
 * (to exercise the split with few clients).
 */
export function planOpenFiles(opts: { clients: number; servers: number; clientsPerProcess?: number | undefined }): OpenFilesPlan {
  const { clients, servers } = opts;
  const perServer = Math.ceil(clients / servers);
  const needServer = perServer + OPEN_FILES_BESIDES_CLIENTS;
  const cap = opts.clientsPerProcess;
  const single = cap === undefined || clients <= cap;
  // One process for the whole fleet when the limit can be raised that far (and no cap asks otherwise).
  const wanted = Math.max(needServer, single ? clients + OPEN_FILES_BESIDES_CLIENTS : 0);
  const why = raiseOpenFiles(wanted);
  if (why === undefined && single) return { nofile: openFileLimit().soft, perServer, fleetProcesses: 1, fleetSizes: [clients] };
  // As high as it goes without privilege: the hard limit.
  const { hard } = openFileLimit();
  raiseOpenFiles(Number.isFinite(hard) ? hard : wanted);
  const nofile = openFileLimit().soft;
  if (needServer > nofile) {
    const fit = Math.max(0, nofile - OPEN_FILES_BESIDES_CLIENTS);
    throw new Error(
      `${clients.toLocaleString('en-US')} clients over ${servers} nats-server${servers === 1 ? '' : 's'} are ${perServer.toLocaleString('en-US')} per server, ` +
        `which need ${needServer.toLocaleString('en-US')} open files in each; the limit is ${nofile.toLocaleString('en-US')} and cannot be raised here` +
        `${why === undefined ? '' : ` (${why})`}: one nats-server holds at most ${fit.toLocaleString('en-US')} clients, so use ` +
        `--cluster ${Math.ceil(clients / Math.max(1, fit))} or more, or raise the hard limit from outside (CAP_SYS_RESOURCE, docker --ulimit nofile=N:N)`,
    );
  }
  const perProcess = Math.min(cap ?? Number.POSITIVE_INFINITY, nofile - OPEN_FILES_BESIDES_CLIENTS);
  if (perProcess < 1) throw new Error(`the open-file limit ${nofile} leaves no room for client sockets`);
  if (clients <= perProcess) return { nofile, perServer, fleetProcesses: 1, fleetSizes: [clients] };
  const k = Math.ceil(clients / perProcess);
  const fleetSizes = Array.from({ length: k }, (_, i) => Math.floor(clients / k) + (i < clients % k ? 1 : 0));
  return { nofile, perServer, fleetProcesses: k, fleetSizes };
}

/**
 * The local addresses the clients bind to before connecting, or none. A client that does not
 * bind gets its source port from connect(), which may give one port to sockets bound for
 * different servers and so has the whole ephemeral range per server; and connect() finds a free
 * port cheaply, where bind() searches the bind table, which with 10,000 sockets open on one address
 * cost the load generator ~200 µs of kernel time per attempt (a third of its CPU in a storm).
 * So only when one server has more clients than the range holds are they spread over source
 * addresses 127.0.0.2, 127.0.0.3, ... with at most `perAddress` clients each (a client bound to a
 * local address takes a port of that address alone, for every destination). 127.0.0.1 is left out:
 * a client socket bound there could take the server's port while the server restarts.
 */
export function loopbackSources(clients: number, clientsPerServer: number, perAddress: number): string[] {
  const { low, high } = ephemeralPortRange();
  if (clientsPerServer * 1.2 <= high - low + 1) return [];
  const count = Math.max(1, Math.ceil(clients / perAddress));
  if (count > 250) throw new Error(`${clients} clients need ${count} loopback source addresses`);
  if (high - low + 1 < Math.min(clients, perAddress) * 1.2) {
    throw new Error(`ip_local_port_range ${low}-${high} is too small for ${perAddress} clients per source address`);
  }
  return Array.from({ length: count }, (_, i) => `127.0.0.${i + 2}`);
}
