/**
 * `proxy_required`: a rule's demand that its users come through a trusted NATS protocol-aware
 * proxy. The authorization request does not say whether they did, so the service writes the
 * demand into the user JWT for nats-server (2.12+) to enforce, and refuses where the server would
 * silently ignore it.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import type { AccountSigner } from '../../src/accounts.js';
import { buildConfig } from '../../src/config.js';
import { AuthFailure, ConfigError } from '../../src/errors.js';
import type { NkeySigner } from '../../src/nkey.js';
import { admitServer } from '../../src/policy.js';
import { userClaims } from '../../src/user-jwt.js';
import { policyOf, TEST_ISSUER as ISS } from '../helpers/policy.js';

const base = { account: 'APP', permissions: { sub: { allow: ['_INBOX.{{sub}}.>'] } } };
const policy = policyOf([
  { name: 'via-proxy', match: { g: 'proxied' }, ...base, proxy_required: true },
  { name: 'direct', match: { g: 'direct' }, ...base },
]);
const viaProxy = policy.decide(ISS, { sub: 'u1', g: 'proxied' });
const direct = policy.decide(ISS, { sub: 'u2', g: 'direct' });

const account: AccountSigner = {
  signer: { publicKey: createAccount().getPublicKey() } as NkeySigner,
  issuerAccount: undefined,
  audience: 'APP',
};
const USER = 'UAZ6ZL3WBXXWRQH3TJJVMX6VOXMNJYX2RKXYBUPKOSTBVTO3QY2LA3OQ';

function refusedOn(version: string | undefined, message: RegExp): void {
  assert.throws(
    () => admitServer(viaProxy, version),
    (e: unknown) => e instanceof AuthFailure && e.code === 'POLICY_CONNECTION_REFUSED' && message.test(e.message),
    `version ${String(version)}`,
  );
}

describe('proxy_required', () => {
  it('is off unless a rule says so, and goes into the grant', () => {
    assert.equal(viaProxy.proxyRequired, true);
    assert.equal(direct.proxyRequired, false);
  });

  it('is written into the user JWT only when required', () => {
    const nats = (g: typeof viaProxy) => userClaims(g, USER, account, 1_000, 2_000)['nats'] as Record<string, unknown>;
    assert.equal(nats(viaProxy)['proxy_required'], true);
    assert.equal('proxy_required' in nats(direct), false, 'no field at all for other rules');
  });

  it('is admitted on nats-server 2.12 and later, which enforce it', () => {
    for (const version of ['2.12.0', '2.12.2', '2.15.1', 'v2.14.0', '3.0.0', '2.12.0-RC.1']) admitServer(viaProxy, version);
  });

  it('is refused on older servers, which ignore it, and where the version is unknown', () => {
    refusedOn('2.10.27', /rule via-proxy requires a trusted proxy, which nats-server 2\.10\.27 does not enforce \(2\.12 or later does\)/);
    refusedOn('2.11.9', /2\.11\.9/);
    refusedOn('1.99.0', /1\.99\.0/);
    refusedOn('', /version unknown/);
    refusedOn(undefined, /version unknown/);
    refusedOn('latest', /latest/);
  });

  it('lets any server answer a rule that does not require a proxy', () => {
    for (const version of ['2.10.27', '', undefined]) admitServer(direct, version);
  });

  it('must be a boolean when the configuration loads', () => {
    const doc = (value: unknown) => ({
      nats: { servers: ['nats://127.0.0.1:4222'], user: 'auth', password: 'pw' },
      callout: { account: 'AUTH', issuer_seed: new TextDecoder().decode(createAccount().getSeed()) },
      issuers: [{ issuer: ISS, audiences: ['nats'] }],
      policy: { rules: [{ name: 'r', match: { g: 'x' }, ...base, proxy_required: value }] },
    });
    assert.equal(buildConfig(doc(true)).policy.decide(ISS, { sub: 'u', g: 'x' }).proxyRequired, true);
    for (const bad of ['yes', 1, null]) {
      assert.throws(
        () => buildConfig(doc(bad)),
        (e: unknown) => e instanceof ConfigError && e.path === 'policy.rules[0].proxy_required',
        JSON.stringify(bad),
      );
    }
  });
});
