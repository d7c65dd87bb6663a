/**
 * Checks that the oidc-provider test helper issues the RFC 9068 access tokens the service is
 * built for, so that integration tests failing later point at the service, not at the fixture.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { startOidcProvider } from '../helpers/oidc-provider.js';

const claims = { groups: ['ops', 'dev'], nats_account: 'APP', email: 'svc@example.test' };

test('oidc-provider helper issues RS256 at+jwt access tokens with custom claims', async () => {
  await using op = await startOidcProvider({
    clients: [
      { clientId: 'svc', clientSecret: 'svc-secret-with:colon & space', claims },
      { clientId: 'other', clientSecret: 'other-secret', claims: { groups: [] } },
    ],
    ttlSeconds: 120,
  });
  assert.match(op.issuer, /^http:\/\/127\.0\.0\.1:\d+$/);
  assert.equal(op.resource, 'urn:nats');

  const token = await op.token('svc');
  const header = decodeProtectedHeader(token);
  assert.equal(header.typ, 'at+jwt');
  assert.equal(header.alg, 'RS256');
  assert.equal(typeof header.kid, 'string');

  // Verify through discovery and the published JWKS, as the service will.
  const discovery = (await (await fetch(`${op.issuer}/.well-known/openid-configuration`)).json()) as {
    issuer: string;
    jwks_uri: string;
    token_endpoint: string;
  };
  assert.equal(discovery.issuer, op.issuer);
  assert.equal(discovery.token_endpoint, op.tokenEndpoint);
  const { payload } = await jwtVerify(token, createRemoteJWKSet(new URL(discovery.jwks_uri)), {
    issuer: op.issuer,
    audience: 'urn:nats',
    typ: 'at+jwt',
    algorithms: ['RS256'],
  });
  assert.equal(payload.iss, op.issuer);
  assert.equal(payload.aud, 'urn:nats');
  assert.equal(payload['client_id'], 'svc');
  assert.equal(payload.sub, 'svc');
  assert.equal(typeof payload.exp, 'number');
  assert.equal(typeof payload.iat, 'number');
  assert.equal(payload.exp! - payload.iat!, 120);
  assert.deepEqual(payload['groups'], claims.groups);
  assert.equal(payload['nats_account'], 'APP');
  assert.equal(payload['email'], claims.email);

  // Claims are per client.
  const other = await jwtVerify(await op.token('other'), createRemoteJWKSet(new URL(discovery.jwks_uri)));
  assert.deepEqual(other.payload['groups'], []);
  assert.equal(other.payload['nats_account'], undefined);
});

test('oidc-provider helper grants requested scopes and reports endpoint errors', async () => {
  await using op = await startOidcProvider({
    clients: [{ clientId: 'svc', clientSecret: 'secret', claims: {} }],
    resource: 'https://nats.example.test',
    scopes: ['nats', 'admin'],
  });
  const scoped = await op.token('svc', { scope: 'nats' });
  const payload = JSON.parse(Buffer.from(scoped.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;
  assert.equal(payload['scope'], 'nats');
  assert.equal(payload['aud'], 'https://nats.example.test');

  await assert.rejects(op.token('svc', { clientSecret: 'wrong' }), /401.*invalid_client/);
  await assert.rejects(op.token('svc', { resource: 'urn:elsewhere' }), /400.*invalid_target/);
  await assert.rejects(op.token('nobody'), /unknown client/);
});

test('oidc-provider helper refuses claims the provider would overwrite', async () => {
  await assert.rejects(startOidcProvider({ clients: [{ clientId: 'svc', clientSecret: 's', claims: { sub: 'alice' } }] }), /overrides the claims sub/);
});
