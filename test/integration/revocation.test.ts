/**
 * Revocation on a real nats-server: a signed request on the admin subject drops the identity's
 * cached decisions, refuses its tokens issued until then, and disconnects its live connections
 * through nats-server's kick request; other identities are untouched; forged and replayed
 * requests do nothing.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { createAccount, createCurve, createUser } from '@nats-io/nkeys';
import type { NatsConnection } from '@nats-io/transport-node';
import { AdminListener, type RevokeResult } from '../../src/admin.js';
import { signRevokeRequest } from '../../src/admin-request.js';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectAll, connectAs } from '../../src/nats-connection.js';
import { NkeySigner } from '../../src/nkey.js';
import { CalloutRunner } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { calloutServerConfig, connectClient, expectAuthorizationViolation, LogCapture, seedOf } from '../helpers/callout-fixture.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { type RunningNats, startNatsServer } from '../helpers/nats-server.js';

const binaries = await natsServerBinaries();
const now = () => Math.floor(Date.now() / 1000);

for (const { version, path } of binaries) {
  describe(`revocation on nats-server ${version}`, () => {
    let idp: LocalIssuer;
    let nats: RunningNats;
    let runner: CalloutRunner;
    let system: NatsConnection;
    let admin: NatsConnection;
    const log = new LogCapture();
    const adminKey = createUser();
    const signer = new NkeySigner(seedOf(adminKey), 'user');

    before(async () => {
      idp = await startLocalIssuer();
      const account = createAccount();
      const xkey = createCurve();
      const password = randomBytes(12).toString('hex');
      nats = await startNatsServer({
        bin: path,
        config: calloutServerConfig({ issuer: account.getPublicKey(), xkey: xkey.getPublicKey(), password })
          .replace('  SYS {}', '  SYS { users: [ { user: sys, password: "sys-password" } ] }')
          .replace('auth_users: [ auth ]', 'auth_users: [ auth, sys ]'),
      });
      const config = buildConfig(
        {
          nats: { servers: [nats.url], user: 'auth', password, connections: 2 },
          callout: { account: 'AUTH', issuer_seed: seedOf(account), xkey_seed: seedOf(xkey) },
          issuers: [{ issuer: idp.issuer, audiences: ['nats'], jwks_uri: idp.jwksUri, allow_insecure_http: true, leeway: '1s' }],
          policy: {
            rules: [
              { name: 'staff', match: { groups: 'staff' }, account: 'APP', permissions: { pub: { allow: ['app.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } } },
            ],
          },
          admin: { public_keys: [adminKey.getPublicKey()], system: { user: 'sys', password: 'sys-password' } },
        },
        {},
      );
      const logger = createLogger('debug', log.write);
      const service = new CalloutService(config, logger);
      const connections = await connectAll(config, { maxReconnectAttempts: 0 });
      runner = new CalloutRunner(connections, service, logger);
      await runner.start();
      system = await connectAs(config, config.admin!.system!, { maxReconnectAttempts: 0 });
      await new AdminListener(connections[0]!, system, () => runner.service, logger, 'replica-1').start();
      admin = await connectClient(nats.url, { user: 'auth', pass: password });
    });
    after(async () => {
      await admin?.close();
      await system?.close();
      await runner?.stop();
      await nats?.stop();
      await idp?.stop();
    });

    const token = (sub: string, iat = now()) => idp.sign({ sub, aud: 'nats', groups: ['staff'], iat, exp: now() + 600 });
    const revoke = async (body: string | Uint8Array): Promise<RevokeResult> =>
      (await admin.request('oidc-callout.admin.revoke', body, { timeout: 5000 })).json<RevokeResult>();

    it("disconnects the revoked identity's connections, refuses its tokens, and leaves others alone", async () => {
      const aliceToken = await token('alice');
      const alice = await connectClient(nats.url, { token: aliceToken, inboxPrefix: '_INBOX.alice' });
      const bob = await connectClient(nats.url, { token: await token('bob'), inboxPrefix: '_INBOX.bob' });
      const aliceClosed = alice.closed();
      try {
        // The revocation is recorded at this second or a later one.
        const revokedAt = now();
        const result = await revoke(signRevokeRequest({ issuer: idp.issuer, subject: 'alice' }, signer, now()));
        assert.equal(result.ok, true, JSON.stringify(result));
        assert.equal(result.connections_found, 1);
        assert.equal(result.connections_kicked, 1);
        assert.equal(result.cache_entries_dropped, 1);
        // nats-server closes alice's connection; bob's stays.
        await aliceClosed;
        bob.publish('app.still-here');
        await bob.flush();
        // The token alice still holds is refused; so is any issued before the revocation.
        await expectAuthorizationViolation(nats.url, { token: aliceToken });
        assert.equal(log.decisions().at(-1)?.code, 'TOKEN_REVOKED');
        // So is one stamped within the issuer's leeway (1 s here) after it: the IdP's clock may be ahead.
        await expectAuthorizationViolation(nats.url, { token: await token('alice', revokedAt + 1) });
        // Once the leeway has passed, a new token (the IdP let her log in again) gets in.
        while (now() <= revokedAt + 3) await new Promise((r) => setTimeout(r, 100));
        const again = await connectClient(nats.url, { token: await token('alice', now()), inboxPrefix: '_INBOX.alice' });
        await again.close();
      } finally {
        await alice.close().catch(() => undefined);
        await bob.close();
      }
    });

    it('ignores requests not signed by an admin key, replayed, or naming nobody', async () => {
      const stranger = new NkeySigner(seedOf(createUser()), 'user');
      const forged = await revoke(signRevokeRequest({ subject: 'bob' }, stranger, now()));
      assert.equal(forged.ok, false);
      assert.equal(forged.code, 'ADMIN_REQUEST_INVALID');
      const request = signRevokeRequest({ subject: 'carol' }, signer, now());
      assert.equal((await revoke(request)).ok, true);
      const replay = await revoke(request);
      assert.equal(replay.ok, false);
      assert.match(String(replay.error), /replay/);
      assert.match(String((await revoke(signRevokeRequest({}, signer, now()))).error), /name an issuer, a subject or both/);
      assert.match(String((await revoke('garbage')).code), /ADMIN_REQUEST_INVALID/);
      // Bob was never revoked: he still gets in.
      const bob = await connectClient(nats.url, { token: await token('bob'), inboxPrefix: '_INBOX.bob' });
      await bob.close();
    });
  });
}
