/**
 * Interoperability with a real OpenID Provider (oidc-provider): client_credentials access tokens
 * (RS256, typ at+jwt, RFC 9068) with custom claims, keys found through OpenID discovery (no
 * jwks_uri configured), presented to a real nats-server with auth_callout.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { startOidcProvider, type RunningOidcProvider } from '../helpers/oidc-provider.js';
import { connectClient, expectAuthorizationViolation, startCalloutFixture, userInfo, type CalloutFixture } from '../helpers/callout-fixture.js';

const binaries = await natsServerBinaries();

for (const { version, path } of binaries) {
  describe(`nats-server ${version} with tokens from oidc-provider`, () => {
    let idp: RunningOidcProvider;
    let fx: CalloutFixture;

    before(async () => {
      idp = await startOidcProvider({
        clients: [
          { clientId: 'billing-worker', clientSecret: 'billing-secret', claims: { groups: ['dev'], tenant: 'acme', name: 'Billing Worker' } },
          { clientId: 'ops-bot', clientSecret: 'ops-secret', claims: { groups: ['ops'], tenant: 'acme' } },
        ],
      });
      fx = await startCalloutFixture({
        bin: path,
        xkey: true,
        // No jwks_uri: the keys are found through the provider's discovery document.
        issuers: [{ issuer: idp.issuer, audiences: ['urn:nats'], token_types: ['at+jwt'], allow_insecure_http: true }],
        rules: [
          {
            name: 'developers',
            issuer: idp.issuer,
            match: { groups: 'dev' },
            when: [{ claim: 'tenant', present: true }],
            account: 'APP',
            user_name_claim: 'name',
            permissions: {
              pub: { allow: ['app.{{claims.tenant}}.>', '$SYS.REQ.USER.INFO'] },
              sub: { allow: ['_INBOX.{{sub}}.>', 'svc.{{sub}}.>'] },
            },
          },
        ],
      });
    });

    after(async () => {
      await fx?.stop();
      await idp?.stop();
    });

    it('lets a client whose token carries the right claims in, with the permissions rendered from them', async () => {
      assert.equal(fx.service.issuerStatus()[0]?.jwksUri, undefined, 'the JWKS location should not be known before discovery');
      const mark = fx.log.mark();
      const nc = await connectClient(fx.url, { token: await idp.token('billing-worker') });
      try {
        const info = await userInfo(nc);
        assert.equal(info.account, 'APP');
        assert.equal(info.user, 'Billing Worker');
        assert.deepEqual([...(info.permissions?.publish?.allow ?? [])].sort(), ['$SYS.REQ.USER.INFO', 'app.acme.>']);
        // oidc-provider's sub for client_credentials is the client id.
        assert.deepEqual([...(info.permissions?.subscribe?.allow ?? [])].sort(), ['_INBOX.billing-worker.>', 'svc.billing-worker.>']);
        assert.equal(info.permissions?.publish?.deny, undefined);
        assert.equal(info.permissions?.subscribe?.deny, undefined);
      } finally {
        await nc.close();
      }
      const decision = await fx.log.nextDecision(mark);
      assert.equal(decision.result, 'allow');
      assert.equal(decision.subject, 'billing-worker');
      // Discovery found the provider's JWKS.
      const jwksUri = fx.service.issuerStatus()[0]?.jwksUri;
      assert.ok(jwksUri?.startsWith(`${idp.issuer}/`), `JWKS location after discovery: ${jwksUri}`);
    });

    it('refuses a client whose claims match no rule (POLICY_NO_MATCH)', async () => {
      const mark = fx.log.mark();
      await expectAuthorizationViolation(fx.url, { token: await idp.token('ops-bot') });
      const decision = await fx.log.nextDecision(mark);
      assert.equal(decision.result, 'reject');
      assert.equal(decision.code, 'POLICY_NO_MATCH');
    });
  });
}
