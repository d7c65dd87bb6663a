/**
 * A rule's `proxy_required` against real servers. nats-server 2.12+ trusts NATS protocol-aware
 * proxies listed in `proxies { trusted: [{key}] }`: such a proxy signs the server's nonce and puts
 * the signature into CONNECT (`proxy_sig`). The authorization request does not show it, so the
 * service cannot check it; it writes `proxy_required` into the user JWT and nats-server refuses
 * the user without a trusted proxy. nats-server 2.10 ignores the field: the service refuses there.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createUser, type KeyPair } from '@nats-io/nkeys';
import { type CalloutFixture, expectAuthorizationViolation, startCalloutFixture } from '../helpers/callout-fixture.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';

const binaries = await natsServerBinaries();
const now = () => Math.floor(Date.now() / 1000);

/** Whether nats-server at `bin` accepts `config` (`-t`). */
function accepts(bin: string, config: string): boolean {
  const dir = mkdtempSync(join(tmpdir(), 'proxies-check-'));
  try {
    writeFileSync(join(dir, 'n.conf'), config);
    return spawnSync(bin, ['-t', '-c', join(dir, 'n.conf')]).status === 0;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * What a NATS protocol-aware proxy does, by hand: read INFO, sign its nonce with the proxy's key
 * and send CONNECT with the client's token and `proxy_sig`. Resolves with `PONG` or an `-ERR` line.
 */
function connectAsProxy(port: number, token: string, proxy: KeyPair | undefined): Promise<string> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host: '127.0.0.1', port });
    let seen = '';
    let sent = false;
    const done = (what: string): void => {
      clearTimeout(timer);
      socket.destroy();
      resolve(what);
    };
    const timer = setTimeout(() => done(`timeout after ${JSON.stringify(seen)}`), 8_000);
    socket.on('data', (chunk: Buffer) => {
      seen += chunk.toString('utf8');
      const lines = seen.split('\r\n');
      if (!sent && lines.length > 1) {
        sent = true;
        const info = JSON.parse(lines[0]!.slice('INFO '.length)) as { nonce?: string };
        const connect: Record<string, unknown> = { verbose: false, protocol: 1, auth_token: token };
        if (proxy) connect['proxy_sig'] = Buffer.from(proxy.sign(new TextEncoder().encode(info.nonce ?? ''))).toString('base64url');
        socket.write(`CONNECT ${JSON.stringify(connect)}\r\nPING\r\n`);
      }
      const answer = lines.slice(1).find((l) => l === 'PONG' || l.startsWith('-ERR'));
      if (answer) done(answer);
    });
    socket.on('close', () => done(`closed after ${JSON.stringify(seen)}`));
    socket.on('error', () => undefined);
  });
}

for (const { version, path } of binaries) {
  const proxy = createUser();
  const proxies = `proxies { trusted: [ { key: ${proxy.getPublicKey()} } ] }`;
  const trustsProxies = accepts(path, proxies);

  describe(`nats-server ${version}: a rule with proxy_required`, () => {
    let idp: LocalIssuer;
    let fx: CalloutFixture;
    const token = () => idp.sign({ sub: 'u-proxied', aud: 'nats', exp: now() + 300, groups: ['proxied'] });

    before(async () => {
      idp = await startLocalIssuer();
      fx = await startCalloutFixture({
        bin: path,
        xkey: true,
        issuers: [{ issuer: idp.issuer, audiences: ['nats'], jwks_uri: idp.jwksUri, allow_insecure_http: true }],
        rules: [
          {
            name: 'via-proxy',
            match: { groups: 'proxied' },
            account: 'APP',
            permissions: { sub: { allow: ['_INBOX.{{sub}}.>'] } },
            proxy_required: true,
          },
        ],
        ...(trustsProxies ? { serverConfig: proxies } : {}),
      });
    });
    after(async () => {
      await fx?.stop();
      await idp?.stop();
    });

    if (trustsProxies) {
      it('is admitted through a trusted proxy (nats-server checks its nonce signature)', async () => {
        const from = fx.log.mark();
        assert.equal(await connectAsProxy(fx.nats.port, await token(), proxy), 'PONG');
        assert.equal((await fx.log.nextDecision(from)).rule, 'via-proxy');
      });

      it('is refused by nats-server without a proxy', async () => {
        const from = fx.log.mark();
        const logFrom = fx.nats.logs().length;
        assert.match(await connectAsProxy(fx.nats.port, await token(), undefined), /Authorization Violation/);
        const d = await fx.log.nextDecision(from);
        // The service cannot tell: it allows, and nats-server enforces the JWT's proxy_required.
        assert.equal(d.result, 'allow', JSON.stringify(d));
        await fx.nats.waitForLog(/Proxy connection required/, 5_000, logFrom);
      });

      it('is refused by nats-server, before any callout, through a proxy it does not trust', async () => {
        const from = fx.log.mark();
        const logFrom = fx.nats.logs().length;
        assert.match(await connectAsProxy(fx.nats.port, await token(), createUser()), /Authorization Violation/);
        await fx.nats.waitForLog(/authentication error/, 5_000, logFrom);
        assert.equal(fx.log.decisions(from).length, 0);
      });
    } else {
      it('is refused by the service, since this nats-server would ignore it', async () => {
        const from = fx.log.mark();
        await expectAuthorizationViolation(fx.url, { token: await token() });
        const d = await fx.log.nextDecision(from);
        assert.equal(d.code, 'POLICY_CONNECTION_REFUSED', JSON.stringify(d));
        assert.match(String(d.reason), new RegExp(`nats-server ${version.replace(/\./g, '\\.')} does not enforce`));
      });
    }
  });
}
