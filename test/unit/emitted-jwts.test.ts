/**
 * Every JWT the service emits decodes and verifies with the NATS JavaScript JWT library
 * (@nats-io/jwt): authorization responses (allowed, refused; plain and sealed), the user JWTs
 * inside them in both configuration styles, signed by an account's identity key, by a signing
 * key (issuer_account) and by a scoped signing key, and administrative revoke requests.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { decode } from '@nats-io/jwt';
import { createAccount, createCurve, createUser } from '@nats-io/nkeys';
import { signRevokeRequest } from '../../src/admin-request.js';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { NkeySigner } from '../../src/nkey.js';
import { CalloutService } from '../../src/service.js';
import { authRequestJwt, fakeServer, newUserNkey, sealRequest } from '../helpers/auth-request.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';

const seedOf = (kp: { getSeed(): Uint8Array }) => new TextDecoder().decode(kp.getSeed());
const now = () => Math.floor(Date.now() / 1000);
const text = (b: Uint8Array) => new TextDecoder().decode(b);

interface Response {
  type?: string;
  sub?: string;
  aud?: string;
  nats?: { type?: string; jwt?: string; error?: string; issuer_account?: string };
}
interface User {
  iss?: string;
  sub?: string;
  aud?: string;
  nats?: Record<string, unknown>;
}

describe('every JWT the service emits decodes with @nats-io/jwt', () => {
  let idp: LocalIssuer;
  const server = fakeServer();
  before(async () => {
    idp = await startLocalIssuer();
  });
  after(() => idp.stop());

  const issuerEntry = () => ({ issuer: idp.issuer, audiences: ['nats'], jwks_uri: idp.jwksUri, allow_insecure_http: true });
  const token = (groups: string[]) => idp.sign({ sub: `user-${groups.join('-')}`, aud: 'nats', exp: now() + 600, groups });

  /** The decoded response and, when allowed, the decoded user JWT; both verified by @nats-io/jwt. */
  async function answer(service: CalloutService, groups: string[], xkey?: string) {
    const userNkey = newUserNkey();
    const request = authRequestJwt(server, { userNkey, xkey: xkey !== undefined, connectOpts: { auth_token: await token(groups) } });
    const reply = await service.handle(
      xkey ? sealRequest(server, request, xkey) : new TextEncoder().encode(request),
      xkey ? server.curve.getPublicKey() : undefined,
    );
    assert.ok(reply, 'an answer');
    const opened = xkey ? server.curve.open(reply, xkey) : reply;
    assert.ok(opened, 'the sealed answer opens with the server xkey');
    const response = decode<unknown>(text(opened)) as Response;
    assert.equal(response.nats?.type, 'authorization_response');
    assert.equal(response.sub, userNkey);
    assert.equal(response.aud, server.id);
    const user = response.nats?.jwt ? (decode<unknown>(response.nats.jwt) as User) : undefined;
    if (user) {
      assert.equal(user.sub, userNkey);
      assert.equal(user.nats?.type, 'user');
      assert.equal(user.nats?.version, 2);
    }
    return { response, user };
  }

  it('in server_config mode: allowed (plain and sealed) and refused answers, the user named by aud', async () => {
    const issuer = createAccount();
    const curve = createCurve();
    const config = buildConfig({
      callout: { account: 'AUTH', issuer_seed: seedOf(issuer), xkey_seed: seedOf(curve) },
      issuers: [issuerEntry()],
      policy: { rules: [{ name: 'dev', match: { groups: 'dev' }, account: 'APP', permissions: { pub: { allow: ['app.>'] } } }] },
    });
    const service = new CalloutService(config, createLogger('error'));
    const allowed = await answer(service, ['dev'], curve.getPublicKey());
    assert.equal(allowed.user?.iss, issuer.getPublicKey());
    assert.equal(allowed.user?.aud, 'APP');
    assert.deepEqual(allowed.user?.nats?.pub, { allow: ['app.>'] });
    const refused = await answer(service, ['guest'], curve.getPublicKey());
    assert.equal(refused.user, undefined);
    assert.ok(refused.response.nats?.error, 'a refusal carries an error');
  });

  it('in operator mode: identity key, signing key with issuer_account, scoped signing key', async () => {
    const auth = createAccount();
    const app = createAccount();
    const ops = createAccount();
    const opsSigning = createAccount();
    const tenant = createAccount();
    const tenantScoped = createAccount();
    const config = buildConfig({
      callout: { mode: 'operator', issuer_seed: seedOf(auth), system_account: createAccount().getPublicKey() },
      accounts: {
        APP: { public_key: app.getPublicKey(), signing_seed: seedOf(app) },
        OPS: { public_key: ops.getPublicKey(), signing_seed: seedOf(opsSigning) },
        TENANT: { public_key: tenant.getPublicKey(), signing_seed: seedOf(tenantScoped), scoped: true },
      },
      issuers: [issuerEntry()],
      policy: {
        rules: [
          { name: 'app', match: { groups: 'app' }, account: 'APP', permissions: { pub: { allow: ['app.>'] } } },
          { name: 'ops', match: { groups: 'ops' }, account: 'OPS', permissions: { pub: { allow: ['ops.>'] } } },
          { name: 'tenant', match: { groups: 'tenant' }, account: 'TENANT' },
        ],
      },
    });
    const service = new CalloutService(config, createLogger('error'));
    const byIdentity = await answer(service, ['app']);
    assert.equal(byIdentity.user?.iss, app.getPublicKey());
    assert.equal(byIdentity.user?.nats?.issuer_account, undefined);
    const bySigningKey = await answer(service, ['ops']);
    assert.equal(bySigningKey.user?.iss, opsSigning.getPublicKey());
    assert.equal(bySigningKey.user?.nats?.issuer_account, ops.getPublicKey());
    const scoped = await answer(service, ['tenant']);
    assert.equal(scoped.user?.iss, tenantScoped.getPublicKey());
    assert.deepEqual(Object.keys(scoped.user?.nats ?? {}).sort(), ['issuer_account', 'type', 'version']);
    assert.equal((await answer(service, ['nobody'])).user, undefined);
  });

  it('administrative revoke requests', () => {
    const admin = createUser();
    const request = signRevokeRequest({ issuer: 'https://idp.example.com', subject: 'alice' }, new NkeySigner(seedOf(admin), 'user'), now());
    const claims = decode<unknown>(request) as { iss?: string };
    assert.equal(claims.iss, admin.getPublicKey());
  });
});
