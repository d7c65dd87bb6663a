/**
 * Adversarial probes of revocation on a real nats-server: what a routine revocation reports
 * once the identity's earlier connections are gone.
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
import { calloutServerConfig, connectClient, LogCapture, seedOf } from '../helpers/callout-fixture.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { type RunningNats, startNatsServer } from '../helpers/nats-server.js';

const binaries = await natsServerBinaries();
const now = () => Math.floor(Date.now() / 1000);

for (const { version, path } of binaries) {
  describe(`adversarial revocation on nats-server ${version}`, () => {
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
          nats: { servers: [nats.url], user: 'auth', password, connections: 1 },
          callout: { account: 'AUTH', issuer_seed: seedOf(account), xkey_seed: seedOf(xkey) },
          issuers: [{ issuer: idp.issuer, audiences: ['nats'], jwks_uri: idp.jwksUri, allow_insecure_http: true }],
          policy: {
            rules: [{ name: 'all', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['_INBOX.{{sub}}.>'] }, pub: { allow: ['app.>'] } } }],
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

    it('reports a revocation as successful when every live connection was kicked, though earlier ones had already closed', async () => {
      const token = await idp.sign({ sub: 'dave', aud: 'nats', iat: now() - 5, exp: now() + 600 });
      // Dave's laptop reconnected once (a network blip): the first connection is long gone.
      const earlier = await connectClient(nats.url, { token });
      await earlier.close();
      const live = await connectClient(nats.url, { token });
      const closed = live.closed();
      try {
        const result = (
          await admin.request('oidc-callout.admin.revoke', signRevokeRequest({ subject: 'dave' }, signer, now()), { timeout: 5000 })
        ).json<RevokeResult>();
        await closed; // his one live connection was disconnected: the revocation did everything it could
        // Observed: ok: false with kick_errors for the connection that had closed on its own, so
        // `oidc-callout revoke` exits 1 and prints an error on every routine revocation of a
        // user who ever reconnected: real kick failures drown in these.
        assert.equal(result.connections_kicked, 1, JSON.stringify(result));
        assert.equal(result.ok, true, `a connection already closed is reported as a failure: ${JSON.stringify(result)}`);
      } finally {
        await live.close().catch(() => undefined);
      }
    });
  });
}
