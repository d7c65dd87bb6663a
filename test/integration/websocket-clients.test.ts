/**
 * WebSocket clients, browsers and Cloudflare Workers against the callout on nats-server's
 * websocket listener, on the oldest and the newest server. The README's "WebSocket and browser
 * clients" and "Serverless edge functions" subsections show blocks and example files that this
 * test runs as they are: the listener (its port moved to loopback), both policies, the nats.js
 * client of examples/websocket, and the Worker and workerd configuration of
 * examples/cloudflare-worker.
 */
import assert from 'node:assert/strict';
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { copyFile, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { type NatsConnection, wsconnect } from '@nats-io/nats-core';
import { WebSocket as UndiciWebSocket } from 'undici';
import { parse } from 'yaml';
import { type CalloutFixture, connectClient, startCalloutFixture, watchErrors, within } from '../helpers/callout-fixture.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';
import { newestAndOldest } from '../helpers/nats-server-bin.js';
import { startNatsServer } from '../helpers/nats-server.js';
import { ROOT as root } from '../helpers/provider-fixtures.js';
import { codeBlocks, oneBlock, readmeSection, replaceOnce } from '../helpers/readme-snippets.js';

const run = promisify(execFile);
const workerDir = join(root, 'examples', 'cloudflare-worker');
const now = () => Math.floor(Date.now() / 1000);

const wsBlocks = codeBlocks(readmeSection('### WebSocket and browser clients'));
const edgeBlocks = codeBlocks(readmeSection('### Serverless edge functions (Cloudflare Workers)'));
const listenerBlock = oneBlock(wsBlocks, 'the websocket listener', (b) => b.lang === '' && b.text.startsWith('websocket {'));
const rulesOf = (text: string): Record<string, unknown>[] => (parse(text) as { policy: { rules: Record<string, unknown>[] } }).policy.rules;
const wsRules = rulesOf(oneBlock(wsBlocks, 'the WebSocket policy', (b) => b.lang === 'yaml'));
const edgeRules = rulesOf(oneBlock(edgeBlocks, 'the Worker policy', (b) => b.lang === 'yaml'));

/** README's listener, moved to a free loopback port; `withCookie` false drops the 2.11+ key. */
function listener(withCookie: boolean): string {
  const text = replaceOnce(listenerBlock, '  port: 8080\n', '  host: 127.0.0.1\n  port: -1\n');
  return withCookie ? text : text.replace(/^ {2}token_cookie: .*\n/m, '');
}

/** Whether `version` (e.g. "2.10.27") is at least major.minor. */
const atLeast = (version: string, major: number, minor: number): boolean => {
  const [a = 0, b = 0] = version.split('.').map(Number);
  return a > major || (a === major && b >= minor);
};

type ConnectWithOidc = (url: string, currentToken: () => string, sub: string, options?: Record<string, unknown>) => Promise<NatsConnection>;
const { connectWithOidc } = (await import(pathToFileURL(join(root, 'examples', 'websocket', 'connect.js')).href)) as { connectWithOidc: ConnectWithOidc };

/** What README tells Node.js 20 users to pass: undici's WebSocket, here with extra upgrade headers. */
function wsFactory(headers?: Record<string, string>) {
  return async (url: string) => ({
    socket: new UndiciWebSocket(url, headers ? { headers } : undefined) as unknown as WebSocket,
    encrypted: url.startsWith('wss:'),
  });
}

/** The messages `nc` receives on `subject` while `act` runs (and a moment after, for stragglers). */
async function received(nc: NatsConnection, subject: string, act: () => Promise<void>): Promise<string[]> {
  const sub = nc.subscribe(subject);
  await nc.flush();
  const got: string[] = [];
  const done = (async () => {
    for await (const m of sub) got.push(`${m.subject} ${m.string()}`);
  })();
  await act();
  // Other connections' messages are not ordered with this client's PING: allow them a moment.
  await nc.flush();
  await new Promise((r) => setTimeout(r, 100));
  sub.unsubscribe();
  await done;
  return got;
}

/** A running `workerd serve` of the example, with the port it bound. */
interface RunningWorker {
  readonly url: string;
  stderr(): string;
  stop(): Promise<void>;
}

/** Starts workerd on the example's config in `dir` on a free loopback port (reported on --control-fd). */
async function startWorker(dir: string, env: { NATS_URL: string; NATS_TOKEN: string }): Promise<RunningWorker> {
  const bin = join(root, 'node_modules', '.bin', 'workerd');
  const child: ChildProcess = spawn(bin, ['serve', join(dir, 'config.capnp'), '--socket-addr', 'http=127.0.0.1:0', '--control-fd', '3'], {
    stdio: ['ignore', 'pipe', 'pipe', 'pipe'],
    env: { ...process.env, ...env },
  });
  const kill = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  process.once('exit', kill);
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => {
    stderr += c.toString('utf8');
  });
  child.stdout!.resume();
  const exited = new Promise<void>((resolve) => child.once('close', () => resolve()));
  const listening = within(
    new Promise<number>((resolve, reject) => {
      let control = '';
      (child.stdio[3] as NodeJS.ReadableStream).on('data', (c: Buffer) => {
        control += c.toString('utf8');
        for (const line of control.split('\n')) {
          const m = /"event":"listen","socket":"http","port":(\d+)/.exec(line);
          if (m) resolve(Number(m[1]));
        }
      });
      void exited.then(() => reject(new Error(`workerd exited before listening:\n${stderr}`)));
    }),
    15_000,
    'workerd to listen',
  );
  const port = await listening.catch((err: unknown) => {
    kill();
    throw err;
  });
  return {
    url: `http://127.0.0.1:${port}`,
    stderr: () => stderr,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) {
        process.kill(child.pid!, 'SIGTERM');
        const timer = setTimeout(kill, 2_000);
        await exited;
        clearTimeout(timer);
      }
      process.off('exit', kill);
    },
  };
}

/** The example's README command, run on a copy: the bundle goes to `out`/dist/worker.js. */
async function bundleWorker(out: string): Promise<void> {
  const command = 'npx esbuild worker.js --bundle --format=esm --outfile=dist/worker.js';
  assert.ok((await readFile(join(workerDir, 'README.md'), 'utf8')).includes(command), 'the example README builds with this command');
  const args = command.split(' ').slice(2, -1);
  await run(join(root, 'node_modules', '.bin', 'esbuild'), [...args, `--outfile=${join(out, 'dist', 'worker.js')}`, '--log-level=warning'], { cwd: workerDir });
  await copyFile(join(workerDir, 'config.capnp'), join(out, 'config.capnp'));
}

describe('the README shows the example files as they are', () => {
  it('shows examples/websocket/connect.js', async () => {
    const file = await readFile(join(root, 'examples', 'websocket', 'connect.js'), 'utf8');
    assert.ok(wsBlocks.some((b) => b.lang === 'js' && b.text === file));
  });
  it('shows examples/cloudflare-worker/config.capnp', async () => {
    const file = await readFile(join(workerDir, 'config.capnp'), 'utf8');
    assert.ok(edgeBlocks.some((b) => b.lang === 'capnp' && b.text === file));
  });
});

/** The example, bundled once for every workerd this file starts: the directory of its config. */
let bundling: Promise<string> | undefined;
const bundled = (): Promise<string> =>
  (bundling ??= (async () => {
    const dir = await mkdtemp(join(tmpdir(), 'cf-worker-'));
    await mkdir(join(dir, 'dist'));
    await bundleWorker(dir);
    return dir;
  })());
after(async () => {
  if (bundling) await rm(await bundling, { recursive: true, force: true });
});

for (const { version, path } of await newestAndOldest()) {
  const cookies = atLeast(version, 2, 11);

  describe(`nats-server ${version}: WebSocket clients through the callout`, () => {
    let idp: LocalIssuer;
    let fx: CalloutFixture;
    let wsUrl: string;

    before(async () => {
      idp = await startLocalIssuer();
      fx = await startCalloutFixture({
        bin: path,
        xkey: true,
        issuers: [{ issuer: idp.issuer, audiences: ['nats'], jwks_uri: idp.jwksUri, allow_insecure_http: true }],
        rules: [...wsRules, ...edgeRules],
        serverConfig: listener(cookies),
      });
      assert.ok(fx.nats.websocketUrl, 'the ports file names the websocket listener');
      wsUrl = fx.nats.websocketUrl;
    });
    after(async () => {
      await fx?.stop();
      await idp?.stop();
    });

    const token = (sub: string, claims: Record<string, unknown> = {}) => idp.sign({ sub, aud: 'nats', exp: now() + 300, ...claims });

    it('grants a WebSocket client its WebSocket rule, and the same token over TCP its TCP rule', async () => {
      const alice = await token('alice', { groups: ['app-users'] });
      const from = fx.log.mark();
      const ws = await connectWithOidc(wsUrl, () => alice, 'alice', { wsFactory: wsFactory(), reconnect: false });
      const tcp = await connectClient(fx.url, { token: alice });
      try {
        const decisions = fx.log.decisions(from);
        assert.deepEqual(
          decisions.map((d) => [d.result, d.rule]),
          [
            ['allow', 'app-in-browser'],
            ['allow', 'app-services'],
          ],
          JSON.stringify(decisions),
        );
        const wsErrors = watchErrors(ws);
        const got = await received(tcp, 'app.>', async () => {
          ws.publish('app.ui.alice.click', 'a');
          ws.publish('app.orders.created', 'b');
          tcp.publish('app.orders.created', 'c');
          await ws.flush();
          await tcp.flush();
        });
        assert.deepEqual(got.sort(), ['app.orders.created c', 'app.ui.alice.click a']);
        const refused = await wsErrors.waitFor((e) => /Permissions Violation for Publish to "app\.orders\.created"/.test(e.message));
        assert.ok(refused);
      } finally {
        await ws.close();
        await tcp.close();
      }
    });

    it('refuses a WebSocket client whose rule lists only STANDARD, and lets it in over TCP', async () => {
      const job = await token('nightly', { groups: ['batch'] });
      const from = fx.log.mark();
      await assert.rejects(wsconnect({ servers: wsUrl, token: job, wsFactory: wsFactory(), reconnect: false }), /authorization violation/i);
      const refusal = await fx.log.nextDecision(from);
      assert.equal(refusal.code, 'POLICY_CONNECTION_REFUSED', JSON.stringify(refusal));
      assert.match(String(refusal.reason), /rule batch-jobs allows/);
      const tcp = await connectClient(fx.url, { token: job });
      await tcp.close();
    });

    it('refuses a WebSocket client without a token (TOKEN_MISSING)', async () => {
      const from = fx.log.mark();
      await assert.rejects(wsconnect({ servers: wsUrl, wsFactory: wsFactory(), reconnect: false }), /authorization violation/i);
      assert.equal((await fx.log.nextDecision(from)).code, 'TOKEN_MISSING');
    });

    it('comes back with a fresh token from its token function when its NATS user expires', async () => {
      let current = await token('bob', { groups: ['app-users'], exp: now() + 3 });
      const fresh = await token('bob', { groups: ['app-users'], exp: now() + 300 });
      let calls = 0;
      const from = fx.log.mark();
      const ws = await connectWithOidc(
        wsUrl,
        () => {
          calls++;
          return current;
        },
        'bob',
        { wsFactory: wsFactory(), reconnectTimeWait: 100 },
      );
      try {
        current = fresh; // the page's OIDC library refreshed the token meanwhile
        const seen: string[] = [];
        const reconnected = (async () => {
          for await (const s of ws.status()) {
            seen.push(s.type === 'error' ? `error: ${s.error.message}` : s.type);
            if (s.type === 'reconnect') return;
          }
        })();
        await within(reconnected, 15_000, 'the client to reconnect after its user expired');
        assert.match(seen.join('\n'), /error: .*user authentication expired/i, 'the server closed the connection at the expiry');
        assert.equal(calls, 2, 'nats.js asked the token function again for the reconnect');
        const decisions = fx.log.decisions(from);
        assert.deepEqual(
          decisions.map((d) => [d.result, d.rule]),
          [
            ['allow', 'app-in-browser'],
            ['allow', 'app-in-browser'],
          ],
        );
        ws.publish('app.ui.bob.after-reconnect');
        await ws.flush();
      } finally {
        await ws.close();
      }
    });

    it('refuses at the upgrade a page whose origin is not allowed, and admits an allowed one', async () => {
      const alice = await token('alice', { groups: ['app-users'] });
      const mark = fx.nats.logs().length;
      await assert.rejects(wsconnect({ servers: wsUrl, token: alice, wsFactory: wsFactory({ Origin: 'https://evil.example.com' }), reconnect: false }));
      await fx.nats.waitForLog(/origin not allowed/, 5_000, mark);
      const nc = await wsconnect({ servers: wsUrl, token: alice, wsFactory: wsFactory({ Origin: 'https://app.example.com' }), reconnect: false });
      await nc.close();
    });

    if (cookies) {
      it('takes the token from the token_cookie when CONNECT carries none (a page that can only send cookies)', async () => {
        const carol = await token('carol', { groups: ['app-users'] });
        const from = fx.log.mark();
        const headers = { Origin: 'https://app.example.com', Cookie: `other=1; nats_token=${carol}` };
        const nc = await wsconnect({ servers: wsUrl, wsFactory: wsFactory(headers), inboxPrefix: '_INBOX.carol', reconnect: false });
        try {
          const d = await fx.log.nextDecision(from);
          assert.deepEqual([d.result, d.rule], ['allow', 'app-in-browser'], JSON.stringify(d));
          nc.publish('app.ui.carol.hello');
          await nc.flush();
        } finally {
          await nc.close();
        }
      });
    } else {
      it(`refuses token_cookie: nats-server ${version} does not know it`, async () => {
        await assert.rejects(startNatsServer({ bin: path, config: listener(true) }), /unknown field "token_cookie"/);
      });
    }

    describe('a Cloudflare Worker run by workerd', () => {
      let worker: RunningWorker;
      before(async () => {
        worker = await startWorker(await bundled(), { NATS_URL: wsUrl, NATS_TOKEN: await token('edge-orders', { client_id: 'edge-orders' }) });
      });
      after(async () => {
        await worker?.stop();
      });

      const post = async (subject: string, body: string) => {
        const res = await fetch(`${worker.url}/?subject=${encodeURIComponent(subject)}`, { method: 'POST', body });
        return { status: res.status, body: (await res.json()) as { subject: string; published: boolean; error?: string } };
      };

      it('publishes where its identity allows and is refused where it does not', async () => {
        const watcher = await connectClient(fx.url, { token: await token('ops', { groups: ['app-users'] }) });
        try {
          const from = fx.log.mark();
          let allowed: Awaited<ReturnType<typeof post>> | undefined;
          let refused: Awaited<ReturnType<typeof post>> | undefined;
          const got = await received(watcher, 'app.>', async () => {
            allowed = await post('app.orders.created', '{"id":1}');
            refused = await post('app.billing.refund', '{"id":2}');
          });
          assert.deepEqual(allowed, { status: 200, body: { subject: 'app.orders.created', published: true } });
          assert.equal(refused?.status, 403);
          assert.deepEqual({ ...refused?.body, error: undefined }, { subject: 'app.billing.refund', published: false, error: undefined });
          assert.match(String(refused?.body.error), /Permissions Violation for Publish to "app\.billing\.refund"/);
          assert.deepEqual(got, ['app.orders.created {"id":1}']);
          const decisions = fx.log.decisions(from);
          assert.deepEqual(
            decisions.filter((d) => d.rule === 'edge-orders').map((d) => d.result),
            ['allow', 'allow'],
            JSON.stringify(decisions),
          );
        } finally {
          await watcher.close();
        }
      });

      it('answers 400 to a request without a subject', async () => {
        const res = await fetch(worker.url);
        assert.equal(res.status, 400);
        await res.body?.cancel();
      });
    });

    it('a Worker whose token is refused answers 502 with the Authorization Violation', async () => {
      const worker = await startWorker(await bundled(), { NATS_URL: wsUrl, NATS_TOKEN: await token('edge-orders', { client_id: 'someone-else' }) });
      try {
        const from = fx.log.mark();
        const res = await fetch(`${worker.url}/?subject=app.orders.created`, { method: 'POST', body: 'x' });
        const body = (await res.json()) as { error: string };
        assert.equal(res.status, 502, JSON.stringify(body));
        assert.match(body.error, /authorization violation/i, `${JSON.stringify(body)}\n${worker.stderr()}`);
        assert.equal((await fx.log.nextDecision(from)).code, 'POLICY_NO_MATCH');
      } finally {
        await worker.stop();
      }
    });
  });
}

describe('the example workerd configuration', () => {
  it('lets the Worker reach loopback only', async () => {
    // 192.0.2.1 (TEST-NET-1) is never routed: a Worker allowed out would hang, not fail at once.
    const worker = await startWorker(await bundled(), { NATS_URL: 'ws://192.0.2.1:4222', NATS_TOKEN: 'x' });
    try {
      const res = await fetch(`${worker.url}/?subject=app.orders.created`, { method: 'POST', body: 'x' });
      assert.equal(res.status, 502);
      await res.body?.cancel();
      assert.match(worker.stderr(), /connecting to 192\.0\.2\.1:4222 is not allowed/);
    } finally {
      await worker.stop();
    }
  });
});
