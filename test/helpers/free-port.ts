/**
 * Fixed loopback ports for servers a test or benchmark stops and starts again on the same port.
 */
import { readFileSync } from 'node:fs';
import { createServer } from 'node:net';

/** net.ipv4.ip_local_port_range: the ports the kernel hands to client sockets. */
export function ephemeralPortRange(): { low: number; high: number } {
  const [low, high] = readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/).map(Number);
  return { low: low!, high: high! };
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
