/**
 * Runs a real HAProxy (Debian's `haproxy` package) in the foreground for integration tests: a TCP
 * load balancer on 127.0.0.1 in front of a nats-server, prepending the PROXY protocol header that
 * names the client's address.
 *
 * The configuration is the shipped example, conf/examples/haproxy.cfg, with its example addresses
 * replaced by loopback ones, so the file users copy is the file the tests run.
 */
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { connect as tcpConnect, createServer, type Server, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { freeServerPort } from './free-port.js';

/** The shipped example configuration, as users copy it. */
export const HAPROXY_EXAMPLE = join(repoRoot(), 'conf', 'examples', 'haproxy.cfg');
/** The example's listening address and nats-server address, which tests replace. */
export const EXAMPLE_BIND = 'bind 0.0.0.0:4222';
export const EXAMPLE_SERVER = 'server nats1 10.0.0.11:4222 send-proxy-v2';

/** The haproxy binary on PATH (or /usr/sbin), undefined when it is not installed. */
export function haproxyBinary(): string | undefined {
  for (const candidate of ['/usr/sbin/haproxy', '/usr/bin/haproxy']) if (existsSync(candidate)) return candidate;
  try {
    return execFileSync('sh', ['-c', 'command -v haproxy'], { encoding: 'utf8' }).trim() || undefined;
  } catch {
    return undefined;
  }
}

/** How HAProxy tells nats-server who the client is. */
export type ProxyHeader = 'send-proxy-v2' | 'send-proxy' | 'none';

/**
 * The example configuration with HAProxy listening on 127.0.0.1:`listenPort` and forwarding to
 * nats-server on 127.0.0.1:`natsPort`, sending `header` (`none`: no PROXY header at all, as in
 * front of a nats-server that does not read one).
 */
export function haproxyConfig(opts: { listenPort: number; natsPort: number; header: ProxyHeader }): string {
  const text = readFileSync(HAPROXY_EXAMPLE, 'utf8');
  const replaceOnce = (s: string, from: string, to: string): string => {
    const at = s.indexOf(from);
    if (at < 0 || s.indexOf(from, at + 1) >= 0) throw new Error(`${HAPROXY_EXAMPLE} must hold "${from}" exactly once`);
    return s.slice(0, at) + to + s.slice(at + from.length);
  };
  const server = `server nats1 127.0.0.1:${opts.natsPort}${opts.header === 'none' ? '' : ` ${opts.header}`}`;
  return replaceOnce(replaceOnce(text, EXAMPLE_BIND, `bind 127.0.0.1:${opts.listenPort}`), EXAMPLE_SERVER, server);
}

/** A started HAProxy. Stop it with `stop()` or `await using`. */
export interface RunningHaproxy extends AsyncDisposable {
  /** Where clients connect: "nats://127.0.0.1:PORT". */
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  /** Everything HAProxy wrote (its log goes to stdout). */
  logs(): string;
  /** SIGTERM to its pid, SIGKILL after 2 s; removes the temporary directory. Idempotent. */
  stop(): Promise<void>;
}

/**
 * Starts `haproxy -db` (foreground, no daemon) in front of nats-server port `natsPort`, with the
 * example configuration (see haproxyConfig). Rejects with HAProxy's output if it exits first.
 */
export async function startHaproxy(opts: { natsPort: number; header: ProxyHeader; bin?: string }): Promise<RunningHaproxy> {
  const bin = opts.bin ?? haproxyBinary();
  if (!bin) throw new Error('haproxy is not installed (Debian: apt-get install haproxy)');
  const port = await freeServerPort();
  const dir = await mkdtemp(join(tmpdir(), 'haproxy-'));
  const configPath = join(dir, 'haproxy.cfg');
  const text = haproxyConfig({ listenPort: port, natsPort: opts.natsPort, header: opts.header });
  await writeFile(configPath, text);
  // -db: stay in the foreground, so the pid we hold is HAProxy's and SIGTERM stops it.
  const child = spawn(bin, ['-db', '-f', configPath], { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
  let exited = false;
  const gone = new Promise<void>((resolve) => {
    child.once('close', () => {
      exited = true;
      resolve();
    });
    child.once('error', (err) => {
      output += `failed to start: ${err.message}\n`;
      exited = true;
      resolve();
    });
  });
  // A test process that dies without stop() must not leave HAProxy holding its port.
  const killOnExit = (): void => {
    if (!exited) child.kill('SIGKILL');
  };
  process.once('exit', killOnExit);
  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= (async () => {
      process.removeListener('exit', killOnExit);
      if (!exited && child.pid !== undefined) {
        process.kill(child.pid, 'SIGTERM');
        const timer = setTimeout(() => !exited && child.pid !== undefined && process.kill(child.pid, 'SIGKILL'), 2_000);
        await gone;
        clearTimeout(timer);
      }
      await rm(dir, { recursive: true, force: true });
    })());
  const deadline = Date.now() + 10_000;
  while (!(await acceptsTcp(port))) {
    if (exited || Date.now() > deadline) {
      await stop();
      throw new Error(`haproxy ${exited ? 'exited' : 'did not listen in time'}\n--- ${configPath} ---\n${text}\n--- output ---\n${output}`);
    }
    await sleep(20);
  }
  return { url: `nats://127.0.0.1:${port}`, port, pid: child.pid ?? -1, logs: () => output, stop, [Symbol.asyncDispose]: stop };
}

/** A loopback relay whose connections leave from one local address. Close it with `close()`. */
export interface SourceRelay extends AsyncDisposable {
  /** Connect here ("nats://127.0.0.1:PORT") to reach the target from `source`. */
  readonly url: string;
  close(): Promise<void>;
}

/**
 * Listens on 127.0.0.1 and forwards every connection to 127.0.0.1:`targetPort` from local address
 * `source` (any 127.x.y.z works on Linux loopback). nats.js's Node transport cannot bind its
 * socket to a local address; connecting through this relay gives a real client a chosen source
 * address as HAProxy (the target) sees it.
 */
export async function sourceRelay(source: string, targetPort: number): Promise<SourceRelay> {
  const sockets = new Set<Socket>();
  const server: Server = createServer((inbound) => {
    const outbound = tcpConnect({ host: '127.0.0.1', port: targetPort, localAddress: source });
    for (const s of [inbound, outbound]) {
      sockets.add(s);
      s.once('close', () => sockets.delete(s));
      // Either side failing ends both: the client sees the connection close, as it would.
      s.once('error', () => {
        inbound.destroy();
        outbound.destroy();
      });
    }
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address() as { port: number };
  const close = async (): Promise<void> => {
    for (const s of sockets) s.destroy();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  return { url: `nats://127.0.0.1:${port}`, close, [Symbol.asyncDispose]: close };
}

function acceptsTcp(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

function repoRoot(): string {
  // dist/test/helpers/haproxy.js or test/helpers/haproxy.ts: the root is three levels up from dist.
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) dir = dirname(dir);
  return dir;
}
