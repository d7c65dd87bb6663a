/**
 * oidc-callout behind HAProxy (a TCP load balancer) that sends the PROXY protocol header: a real
 * HAProxy with the shipped conf/examples/haproxy.cfg, a real nats-server with README's listener
 * snippet, the callout service and OIDC tokens of a local issuer. Clients leave from distinct
 * loopback addresses (127.0.0.5, 127.0.0.9) so the address the service sees can be told apart
 * from HAProxy's own (127.0.0.1).
 *
 * nats-server reads the PROXY header from 2.12.2 on (`proxy_protocol: true`); 2.10 refuses the
 * option, and behind HAProxy the service sees HAProxy's address.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type CalloutFixture, connectClient, expectAuthorizationViolation, startCalloutFixture } from '../helpers/callout-fixture.js';
import { HAPROXY_EXAMPLE, haproxyBinary, type RunningHaproxy, sourceRelay, startHaproxy } from '../helpers/haproxy.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';

const binaries = await natsServerBinaries();
const haproxy = haproxyBinary();
const readme = readFileSync(new URL('../../../README.md', import.meta.url), 'utf8');
const now = () => Math.floor(Date.now() / 1000);

/** The fenced blocks of README's load-balancer section, by info string. */
function readmeBlocks(lang: string): string[] {
  const start = readme.indexOf('### Behind a TCP load balancer');
  assert.ok(start >= 0, 'README has a "Behind a TCP load balancer" section');
  const end = readme.indexOf('\n## ', start);
  const section = readme.slice(start, end < 0 ? undefined : end);
  return [...section.matchAll(/^```([a-z]*)\n([\s\S]*?)^```$/gm)].filter((m) => m[1] === lang).map((m) => m[2]!);
}

/** README's nats-server listener snippet: the one block that turns the PROXY protocol on. */
function listenerSnippet(): string {
  const blocks = readmeBlocks('text').filter((b) => b.includes('proxy_protocol'));
  assert.equal(blocks.length, 1, 'README shows one nats-server snippet with proxy_protocol');
  return blocks[0]!;
}

/** Whether nats-server at `bin` accepts README's listener snippet (`-t` checks the configuration). */
function readsProxyProtocol(bin: string): { ok: boolean; why: string } {
  const dir = mkdtempSync(join(tmpdir(), 'pp-check-'));
  try {
    writeFileSync(join(dir, 'n.conf'), listenerSnippet());
    const r = spawnSync(bin, ['-t', '-c', join(dir, 'n.conf')], { encoding: 'utf8' });
    return { ok: r.status === 0, why: r.stderr.trim() };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * A NATS handshake by hand, straight to `port`: `prefix` (a PROXY header, or anything) first, then
 * CONNECT with the token and a PING. Resolves with what the server answered after INFO: `PONG`,
 * an `-ERR` line, or `closed` when it hung up without a word.
 */
function rawConnect(port: number, prefix: string | Buffer, token?: string): Promise<string> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host: '127.0.0.1', port });
    let seen = '';
    const done = (what: string): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(what);
    };
    const timer = setTimeout(() => done(`timeout after ${JSON.stringify(seen)}`), 8_000);
    socket.on('connect', () => {
      socket.write(prefix);
      if (token !== undefined) socket.write(`CONNECT ${JSON.stringify({ verbose: false, protocol: 1, auth_token: token })}\r\nPING\r\n`);
    });
    socket.on('data', (chunk: Buffer) => {
      seen += chunk.toString('utf8');
      const lines = seen.split('\r\n').filter((l) => l && !l.startsWith('INFO '));
      const answer = lines.find((l) => l === 'PONG' || l.startsWith('-ERR'));
      if (answer) done(answer);
    });
    socket.on('close', () => done('closed'));
    socket.on('error', () => done('closed'));
  });
}

it('ships the HAProxy configuration README shows, and README shows one of each snippet', () => {
  const shipped = readFileSync(HAPROXY_EXAMPLE, 'utf8');
  assert.deepEqual(readmeBlocks('haproxy'), [shipped], 'README quotes conf/examples/haproxy.cfg verbatim');
  assert.equal(readmeBlocks('tcl').length, 1, 'README shows one BIG-IP iRule');
  listenerSnippet();
});

const rules = [
  // Chosen by where the client is: only staff connecting from 127.0.0.5 match.
  {
    name: 'office',
    match: { groups: 'staff' },
    when: [{ source_network: '127.0.0.5/32' }],
    account: 'APP',
    permissions: { pub: { allow: ['app.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } },
  },
  // Matched by the token, pinned to an address: the user JWT's `src`, checked by the service.
  {
    name: 'pinned',
    match: { groups: 'pinned' },
    account: 'APP',
    permissions: { pub: { allow: ['app.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } },
    source_networks: ['127.0.0.5'],
  },
];

for (const { version, path } of binaries) {
  const support = readsProxyProtocol(path);
  const skip = !haproxy
    ? 'haproxy is not installed (Debian: apt-get install haproxy; .ci/run installs it)'
    : !support.ok
      ? `nats-server ${version} has no PROXY protocol support (${support.why}); see the test without a PROXY header below`
      : false;

  describe(`nats-server ${version} behind HAProxy with the PROXY protocol`, { skip }, () => {
    let idp: LocalIssuer;
    let fx: CalloutFixture;
    let lb: RunningHaproxy;
    const token = (groups: string, sub = `u-${groups}`) => idp.sign({ sub, aud: 'nats', exp: now() + 300, groups: [groups] });

    before(async () => {
      idp = await startLocalIssuer();
      fx = await startCalloutFixture({
        bin: path,
        xkey: true,
        issuers: [{ issuer: idp.issuer, audiences: ['nats'], jwks_uri: idp.jwksUri, allow_insecure_http: true }],
        rules,
        serverConfig: listenerSnippet(),
      });
      lb = await startHaproxy({ natsPort: fx.nats.port, header: 'send-proxy-v2' });
    });
    after(async () => {
      await lb?.stop();
      await fx?.stop();
      await idp?.stop();
    });

    /** Connects through HAProxy from `source`; returns the decision the service logged. */
    async function through(source: string, groups: string, expect: 'allow' | 'deny', header: RunningHaproxy = lb) {
      await using relay = await sourceRelay(source, header.port);
      const from = fx.log.mark();
      if (expect === 'allow') {
        const nc = await connectClient(relay.url, { token: await token(groups) });
        nc.publish('app.hello');
        await nc.flush();
        await nc.close();
      } else {
        await expectAuthorizationViolation(relay.url, { token: await token(groups) });
      }
      const d = await fx.log.nextDecision(from);
      assert.equal(d.client_host, source, `the service saw ${String(d.client_host)}, not the client's ${source}: ${JSON.stringify(d)}`);
      return d;
    }

    it('sees the client address, not HAProxy, and chooses the rule by it (source_network)', async () => {
      const d = await through('127.0.0.5', 'staff', 'allow');
      assert.equal(d.rule, 'office');
    });

    it('refuses a client from outside the network a rule is chosen by', async () => {
      const d = await through('127.0.0.9', 'staff', 'deny');
      assert.equal(d.code, 'POLICY_NO_MATCH', JSON.stringify(d));
    });

    it('admits a rule pinned to a network (source_networks) from inside it and refuses it from outside', async () => {
      assert.equal((await through('127.0.0.5', 'pinned', 'allow')).rule, 'pinned');
      const d = await through('127.0.0.9', 'pinned', 'deny');
      assert.equal(d.code, 'POLICY_CONNECTION_REFUSED', JSON.stringify(d));
      assert.match(String(d.reason), /rule pinned allows clients from 127\.0\.0\.5\/32, this one is at 127\.0\.0\.9/);
    });

    it('holds at most 200 connections open from one address (the shipped per-source limit), and others still get in', async () => {
      /** Opens a socket from `source`; resolves with it once nats-server's INFO came through, or with 'closed'. */
      const open = (source: string) =>
        new Promise<import('node:net').Socket | 'closed'>((resolve) => {
          const socket = tcpConnect({ host: '127.0.0.1', port: lb.port, localAddress: source });
          socket.once('data', () => resolve(socket));
          socket.once('close', () => resolve('closed'));
          socket.once('error', () => resolve('closed'));
        });
      const held = await Promise.all(Array.from({ length: 200 }, () => open('127.0.0.6')));
      try {
        assert.ok(
          held.every((s) => s !== 'closed'),
          'the first 200 from one address are let through',
        );
        assert.equal(await open('127.0.0.6'), 'closed', 'the 201st from the same address is refused by HAProxy');
        const other = await open('127.0.0.7');
        assert.notEqual(other, 'closed', 'another address is not affected');
        if (other !== 'closed') other.destroy();
      } finally {
        for (const s of held) if (s !== 'closed') s.destroy();
      }
    });

    it('reads the v1 (text) header of send-proxy as well', async () => {
      await using v1 = await startHaproxy({ natsPort: fx.nats.port, header: 'send-proxy' });
      assert.equal((await through('127.0.0.5', 'staff', 'allow', v1)).rule, 'office');
      await through('127.0.0.9', 'staff', 'deny', v1);
    });

    it('refuses a malformed PROXY header sent straight at nats-server, and loses nothing', async () => {
      await using relay = await sourceRelay('127.0.0.5', lb.port);
      const staying = await connectClient(relay.url, { token: await token('staff', 'u-staying') });
      try {
        for (const garbage of [
          'PROXY TCP4 not-an-address 127.0.0.1 1 2\r\n',
          'PROXY TCP4 127.0.0.5\r\n',
          // A BIG-IP route domain suffix (see README): Go's IP parser refuses it.
          'PROXY TCP4 127.0.0.5%2 127.0.0.1 40001 4222\r\n',
          // The v2 signature, then version 1 in the version/command byte.
          Buffer.concat([Buffer.from('\r\n\r\n\0\r\nQUIT\n', 'binary'), Buffer.from([0x11, 0x11, 0x00, 0x0c])]),
        ]) {
          const logFrom = fx.nats.logs().length;
          const decisions = fx.log.mark();
          assert.equal(await rawConnect(fx.nats.port, garbage, await token('staff')), 'closed', 'nats-server hangs up on a bad header');
          await fx.nats.waitForLog(/Error reading PROXY protocol header from 127\.0\.0\.1:\d+: /, 5_000, logFrom);
          assert.equal(fx.log.decisions(decisions).length, 0, 'a connection with a bad header never reaches the callout');
        }
        // The connection that was there still works, and new clients still get in.
        staying.publish('app.still-here');
        await staying.flush();
        assert.equal(staying.isClosed(), false);
        assert.equal((await through('127.0.0.5', 'staff', 'allow')).rule, 'office');
      } finally {
        await staying.close();
      }
    });

    it("believes a PROXY header from anyone who reaches its port (BIG-IP's iRule line, or a forged one)", async () => {
      // The v1 line README's iRule sends for a client at 127.0.0.5, rendered with what BIG-IP's
      // commands return. nats-server cannot tell it from a client forging the same line: only a
      // firewall that lets nothing but the load balancer reach nats-server makes the address true.
      const [irule] = readmeBlocks('tcl');
      const line = /"(PROXY [^"]+)"/.exec(irule!)?.[1];
      assert.ok(line, 'the iRule builds a PROXY line');
      const rendered = line
        .replace('TCP[IP::version]', 'TCP4')
        .replace('[IP::client_addr]', '127.0.0.5')
        .replace('[IP::local_addr]', '127.0.0.1')
        .replace('[TCP::client_port]', '40001')
        .replace('[TCP::local_port]', '4222')
        .replace(/\\r\\n$/, '\r\n');
      assert.match(rendered, /^PROXY TCP4 127\.0\.0\.5 127\.0\.0\.1 40001 4222\r\n$/);
      const from = fx.log.mark();
      // Straight from 127.0.0.1 to nats-server, past HAProxy, claiming to be 127.0.0.5.
      assert.equal(await rawConnect(fx.nats.port, rendered, await token('staff')), 'PONG');
      const d = await fx.log.nextDecision(from);
      assert.equal(d.client_host, '127.0.0.5');
      assert.equal(d.rule, 'office');
    });

    it('still serves clients that send no PROXY header (they are seen at their own address)', async () => {
      const from = fx.log.mark();
      await expectAuthorizationViolation(fx.url, { token: await token('staff') });
      assert.equal((await fx.log.nextDecision(from)).client_host, '127.0.0.1');
    });
  });

  describe(`nats-server ${version} behind HAProxy without a PROXY header`, { skip: haproxy ? false : 'haproxy is not installed' }, () => {
    let idp: LocalIssuer;
    let fx: CalloutFixture;

    before(async () => {
      idp = await startLocalIssuer();
      fx = await startCalloutFixture({
        bin: path,
        xkey: false,
        issuers: [{ issuer: idp.issuer, audiences: ['nats'], jwks_uri: idp.jwksUri, allow_insecure_http: true }],
        rules,
      });
    });
    after(async () => {
      await fx?.stop();
      await idp?.stop();
    });

    it("sees HAProxy's address for every client, so a client inside the network is refused", async () => {
      await using lb = await startHaproxy({ natsPort: fx.nats.port, header: 'none' });
      await using relay = await sourceRelay('127.0.0.5', lb.port);
      const from = fx.log.mark();
      await expectAuthorizationViolation(relay.url, { token: await idp.sign({ sub: 'u-staff', aud: 'nats', exp: now() + 300, groups: ['staff'] }) });
      const d = await fx.log.nextDecision(from);
      assert.equal(d.client_host, '127.0.0.1', 'the address is HAProxy’s, not the client’s 127.0.0.5');
      assert.equal(d.code, 'POLICY_NO_MATCH');
    });

    if (!support.ok) {
      it('cannot read a PROXY header: a client behind send-proxy-v2 fails before the callout', async () => {
        await using lb = await startHaproxy({ natsPort: fx.nats.port, header: 'send-proxy-v2' });
        await using relay = await sourceRelay('127.0.0.5', lb.port);
        const from = fx.log.mark();
        const token = await idp.sign({ sub: 'u-staff', aud: 'nats', exp: now() + 300, groups: ['staff'] });
        // The header is read as the client's first protocol line: not CONNECT, so a server that
        // requires authentication (as with the callout) answers Authorization Violation.
        await assert.rejects(connectClient(relay.url, { token }), /authorization violation/i);
        assert.equal(fx.log.decisions(from).length, 0);
      });
    }
  });
}
