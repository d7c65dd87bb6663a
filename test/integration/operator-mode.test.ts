import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { encodeAccount, encodeOperator, encodeUser, fmtCreds, newScopedSigner } from '@nats-io/jwt';
import { createAccount, createCurve, createOperator, createUser, type KeyPair } from '@nats-io/nkeys';
import { connect, credsAuthenticator, tokenAuthenticator, type NatsConnection } from '@nats-io/transport-node';
import { inspectCalloutAccount } from '../../src/account-check.js';
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
    // An account whose users are signed by a scoped key: the scope in its JWT is their grant.
    const tenant = createAccount();
    const tenantScoped = createAccount();
    // Configured for the service, but missing from the callout account's allowed_accounts.
    const outside = createAccount();
    const sysUser = createUser();
    let sysCreds: Uint8Array;
    let authJwtText: string;
    let config: ReturnType<typeof buildConfig>;
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
      authJwtText = await encodeAccount(
        'AUTH',
        auth,
        {
          limits: UNLIMITED,
          authorization: {
            auth_users: [serviceUser.getPublicKey()],
            allowed_accounts: [app.getPublicKey(), ops.getPublicKey(), tenant.getPublicKey()],
            xkey: xkey.getPublicKey(),
          },
        },
        sign,
      );
      const appJwt = await encodeAccount('APP', app, { limits: UNLIMITED }, sign);
      const opsJwt = await encodeAccount('OPS', ops, { limits: UNLIMITED, signing_keys: [opsSigning.getPublicKey()] }, sign);
      const scope = newScopedSigner(tenantScoped, 'tenant-user', {
        pub: { allow: ['$SYS.REQ.USER.INFO', 'tenant.{{name()}}.>'] },
        sub: { allow: ['_INBOX.{{name()}}.>'] },
        subs: -1,
        data: -1,
        payload: -1,
      });
      const tenantJwt = await encodeAccount('TENANT', tenant, { limits: UNLIMITED, signing_keys: [scope] }, sign);
      const outsideJwt = await encodeAccount('OUTSIDE', outside, { limits: UNLIMITED }, sign);
      sysCreds = fmtCreds(await encodeUser('sys', sysUser, sys, {}), sysUser);
      nats = await startNatsServer({
        bin: bin.path,
        config: `max_control_line: 65536
authorization { timeout: 2 }
operator: ${operatorJwt}
system_account: ${sys.getPublicKey()}
resolver: MEMORY
resolver_preload: {
  ${sys.getPublicKey()}: ${sysJwt}
  ${auth.getPublicKey()}: ${authJwtText}
  ${app.getPublicKey()}: ${appJwt}
  ${ops.getPublicKey()}: ${opsJwt}
  ${tenant.getPublicKey()}: ${tenantJwt}
  ${outside.getPublicKey()}: ${outsideJwt}
}`,
      });
      const serviceJwt = await encodeUser('callout', serviceUser, auth, {});
      writeFileSync(join(dir, 'service.creds'), fmtCreds(serviceJwt, serviceUser));
      // The sentinel only carries clients into the callout; by itself it may do nothing.
      const sentinelJwt = await encodeUser('sentinel', sentinel, auth, { pub: { deny: ['>'] }, sub: { deny: ['>'] } });
      sentinelCreds = fmtCreds(sentinelJwt, sentinel);

      config = buildConfig({
        nats: { servers: [nats.url], creds_file: join(dir, 'service.creds') },
        callout: { mode: 'operator', issuer_seed: seed(auth), xkey_seed: seed(xkey), system_account: sys.getPublicKey() },
        accounts: {
          APP: { public_key: app.getPublicKey(), signing_seed: seed(app) },
          OPS: { public_key: ops.getPublicKey(), signing_seed: seed(opsSigning) },
          TENANT: { public_key: tenant.getPublicKey(), signing_seed: seed(tenantScoped), scoped: true },
          OUTSIDE: { public_key: outside.getPublicKey(), signing_seed: seed(outside) },
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
            // No permissions of its own: the scope grants them.
            { name: 'tenant', match: { groups: 'tenant' }, account: 'TENANT' },
            {
              name: 'outside',
              match: { groups: 'outside' },
              account: 'OUTSIDE',
              permissions: { pub: { allow: ['outside.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } },
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

    it("gives a user of an account with a scoped signing key the scope's permissions, rendered for the user", async () => {
      const nc = await clientWith(['tenant']);
      try {
        const info = await userInfo(nc);
        assert.equal(info.account, tenant.getPublicKey());
        // The user JWT's name is the token's sub (user_name_claim): {{name()}} renders it.
        assert.deepEqual(info.permissions.publish.allow.sort(), ['$SYS.REQ.USER.INFO', 'tenant.user-tenant.>']);
        assert.deepEqual(info.permissions.subscribe.allow, ['_INBOX.user-tenant.>']);
      } finally {
        await nc.close();
      }
    });

    it('refuses users of an account missing from allowed_accounts, which the startup check reports from the JWT file and from the servers', async () => {
      await assert.rejects(clientWith(['outside']), (err: Error) =>
        /Authorization Violation|connection reset|ECONNRESET/i.test(`${err.message} ${String(err.cause)}`),
      );
      const missing = new RegExp(`account OUTSIDE \\(${outside.getPublicKey()}\\) is not in authorization.allowed_accounts`);
      // From the account JWT given in the configuration ...
      const fromFile = await inspectCalloutAccount({ ...config, callout: { ...config.callout, accountJwt: authJwtText } }, undefined, now());
      assert.equal(fromFile?.source, 'callout.account_jwt');
      assert.deepEqual(
        fromFile?.problems.map((p) => missing.test(p)),
        [true],
        JSON.stringify(fromFile),
      );
      // ... and from the servers, through a system-account login, which also checks every target account's signing key.
      const system = await connect({ servers: nats.url, reconnect: false, authenticator: credsAuthenticator(sysCreds) });
      try {
        const fromServers = await inspectCalloutAccount(config, system, now());
        assert.equal(fromServers?.source, 'the servers (admin.system)');
        assert.deepEqual(fromServers?.problems.length, 1, JSON.stringify(fromServers));
        assert.match(fromServers!.problems[0]!, missing);
        // A MEMORY resolver's account is known to the servers once a user of it has connected:
        // OUTSIDE never had one (refused above), so its JWT cannot be read back, and that is said.
        assert.deepEqual(
          fromServers?.warnings.filter((w) => !/^account OUTSIDE: its JWT could not be checked: not loaded by the servers yet/.test(w)),
          [],
          'the scoped and signing keys match their account JWTs',
        );
        // A wrong belief about a scope is caught: OPS's signing key is not scoped.
        const wrong = { ...config, accounts: { ...config.accounts, OPS: { ...config.accounts.OPS!, scoped: true } } };
        const found = await inspectCalloutAccount(wrong, system, now());
        assert.ok(
          found?.problems.some((p) => /accounts\.OPS\.scoped is true but its signing key .* has no scope/.test(p)),
          JSON.stringify(found),
        );
      } finally {
        await system.close();
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
