import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { encodeAccount, encodeOperator, encodeUser, fmtCreds } from '@nats-io/jwt';
import { createAccount, createCurve, createOperator, createUser, type KeyPair } from '@nats-io/nkeys';
import { connect, credsAuthenticator, tokenAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectNats } from '../../src/nats-connection.js';
import { CalloutRunner } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../helpers/nats-server.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';

const seed = (kp: KeyPair) => new TextDecoder().decode(kp.getSeed());
const now = () => Math.floor(Date.now() / 1000);
const UNLIMITED = { subs: -1, data: -1, payload: -1, imports: -1, exports: -1, wildcards: true, conn: -1, leaf: -1 };

for (const bin of await natsServerBinaries()) {
  describe(`operator mode, nats-server ${bin.version}`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'oc-operator-'));
    const operator = createOperator();
    const sys = createAccount();
    const auth = createAccount();
    const app = createAccount();
    const ops = createAccount();
    const opsSigning = createAccount();
    const xkey = createCurve();
    const serviceUser = createUser();
    const sentinel = createUser();
    let sentinelCreds: Uint8Array;
    let idp: LocalIssuer;
    let nats: RunningNats;
    let runner: CalloutRunner;
    const decisions: Record<string, any>[] = [];

    before(async () => {
      idp = await startLocalIssuer();
      const sign = { signer: operator };
      const operatorJwt = await encodeOperator('OP', operator, { system_account: sys.getPublicKey() });
      const sysJwt = await encodeAccount('SYS', sys, { limits: UNLIMITED }, sign);
      const authJwt = await encodeAccount(
        'AUTH',
        auth,
        {
          limits: UNLIMITED,
          authorization: { auth_users: [serviceUser.getPublicKey()], allowed_accounts: [app.getPublicKey(), ops.getPublicKey()], xkey: xkey.getPublicKey() },
        },
        sign,
      );
      const appJwt = await encodeAccount('APP', app, { limits: UNLIMITED }, sign);
      const opsJwt = await encodeAccount('OPS', ops, { limits: UNLIMITED, signing_keys: [opsSigning.getPublicKey()] }, sign);
      nats = await startNatsServer({
        bin: bin.path,
        config: `max_control_line: 65536
authorization { timeout: 2 }
operator: ${operatorJwt}
system_account: ${sys.getPublicKey()}
resolver: MEMORY
resolver_preload: {
  ${sys.getPublicKey()}: ${sysJwt}
  ${auth.getPublicKey()}: ${authJwt}
  ${app.getPublicKey()}: ${appJwt}
  ${ops.getPublicKey()}: ${opsJwt}
}`,
      });
      const serviceJwt = await encodeUser('callout', serviceUser, auth, {});
      writeFileSync(join(dir, 'service.creds'), fmtCreds(serviceJwt, serviceUser));
      // The sentinel only carries clients into the callout; by itself it may do nothing.
      const sentinelJwt = await encodeUser('sentinel', sentinel, auth, { pub: { deny: ['>'] }, sub: { deny: ['>'] } });
      sentinelCreds = fmtCreds(sentinelJwt, sentinel);

      const config = buildConfig({
        nats: { servers: [nats.url], creds_file: join(dir, 'service.creds') },
        callout: { mode: 'operator', issuer_seed: seed(auth), xkey_seed: seed(xkey), system_account: sys.getPublicKey() },
        accounts: {
          APP: { public_key: app.getPublicKey(), signing_seed: seed(app) },
          OPS: { public_key: ops.getPublicKey(), signing_seed: seed(opsSigning) },
        },
        issuers: [{ issuer: idp.issuer, audiences: ['nats'], allow_insecure_http: true }],
        policy: {
          rules: [
            {
              name: 'ops',
              match: { groups: 'ops' },
              account: 'OPS',
              permissions: { pub: { allow: ['$SYS.REQ.USER.INFO', 'ops.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } },
            },
            {
              name: 'app',
              match: { groups: 'dev' },
              account: 'APP',
              permissions: { pub: { allow: ['$SYS.REQ.USER.INFO', 'app.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } },
            },
          ],
        },
      });
      const log = createLogger('info', (l) => decisions.push(JSON.parse(l)));
      const service = new CalloutService(config, log);
      runner = new CalloutRunner(await connectNats(config), service, log);
      await runner.start();
    });

    after(async () => {
      await runner?.stop();
      await nats?.stop();
      await idp?.stop();
    });

    async function clientWith(groups: string[]): Promise<NatsConnection> {
      const token = await idp.sign({ sub: `user-${groups.join('-')}`, aud: 'nats', exp: now() + 300, groups });
      return connect({
        servers: nats.url,
        reconnect: false,
        inboxPrefix: `_INBOX.user-${groups.join('-')}`,
        authenticator: [credsAuthenticator(sentinelCreds), tokenAuthenticator(token)],
      });
    }

    async function userInfo(nc: NatsConnection): Promise<Record<string, any>> {
      return JSON.parse(new TextDecoder().decode((await nc.request('$SYS.REQ.USER.INFO', '')).data)).data;
    }

    it("issues users into an account signed with the account's identity key", async () => {
      const nc = await clientWith(['dev']);
      try {
        const info = await userInfo(nc);
        assert.equal(info.account, app.getPublicKey());
        assert.deepEqual(info.permissions.publish.allow.sort(), ['$SYS.REQ.USER.INFO', 'app.>']);
      } finally {
        await nc.close();
      }
    });

    it('issues users into another account through its signing key', async () => {
      const nc = await clientWith(['ops']);
      try {
        const info = await userInfo(nc);
        assert.equal(info.account, ops.getPublicKey());
        assert.deepEqual(info.permissions.publish.allow.sort(), ['$SYS.REQ.USER.INFO', 'ops.>']);
      } finally {
        await nc.close();
      }
    });

    it('refuses a token no rule grants', async () => {
      await assert.rejects(clientWith(['guests']), (err: Error) =>
        /Authorization Violation|connection reset|ECONNRESET/i.test(`${err.message} ${String(err.cause)}`),
      );
      assert.equal(decisions.filter((d) => d.msg === 'authorization').at(-1)?.code, 'POLICY_NO_MATCH');
    });
  });
}
