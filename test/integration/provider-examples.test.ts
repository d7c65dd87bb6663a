/**
 * Provider examples end to end: a real nats-server with auth_callout (encrypted with an xkey),
 * the service running the example's own policy, and a NATS client logging in with a token
 * shaped like the provider's. Only what cannot run here is replaced, in the parsed document
 * (the example file is not touched): the provider's issuer by a local one on 127.0.0.1
 * (allow_insecure_http), the NATS settings and secrets by the test server's. The accounts the
 * example places users into are created on the server.
 *
 * For each example: the client gets its private inbox, a publish it is granted arrives (as a
 * request answered on that inbox where the example grants responses), a publish it is not
 * granted is a permissions violation, and a token the example refuses cannot log in.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { errors as natsErrors, type NatsConnection } from '@nats-io/transport-node';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectAll } from '../../src/nats-connection.js';
import { CalloutRunner } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { connectClient, expectAuthorizationViolation, LogCapture, seedOf, watchErrors, within } from '../helpers/callout-fixture.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';
import { newestAndOldest } from '../helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../helpers/nats-server.js';
import { accountsOf, exampleDoc, inboxPrefix, type Provider, readFixture, tokenOf } from '../helpers/provider-fixtures.js';

const binaries = await newestAndOldest();
const PROVIDERS: readonly Provider[] = ['keycloak', 'github-actions', 'kubernetes'];

/** nats-server in server_config callout mode with the example's accounts. */
function serverConfig(opts: { issuer: string; xkey: string; password: string; accounts: readonly string[] }): string {
  return [
    'max_control_line: 65536',
    'accounts {',
    `  AUTH { users: [ { user: auth, password: "${opts.password}" } ] }`,
    ...opts.accounts.map((a) => `  ${a} {}`),
    '  SYS {}',
    '}',
    'system_account: SYS',
    'authorization {',
    '  timeout: 5',
    '  auth_callout {',
    `    issuer: ${opts.issuer}`,
    `    xkey: ${opts.xkey}`,
    '    account: AUTH',
    '    auth_users: [ auth ]',
    '  }',
    '}',
  ].join('\n');
}

/** The example with the provider's issuer replaced by `local`, and NATS settings and secrets by the test server's. */
function localized(provider: Provider, local: LocalIssuer, nats: { url: string; password: string; issuerSeed: string; xkeySeed: string }): Record<string, any> {
  const doc = exampleDoc(provider);
  assert.equal(doc.issuers.length, 1, 'one issuer per example');
  const real: string = doc.issuers[0].issuer;
  doc.issuers[0] = {
    ...doc.issuers[0],
    issuer: local.issuer,
    allow_insecure_http: true,
    ...(doc.issuers[0].jwks_uri ? { jwks_uri: local.jwksUri } : {}),
  };
  for (const rule of doc.policy.rules as Record<string, any>[]) {
    if (rule.issuer === real) rule.issuer = local.issuer;
    else if (Array.isArray(rule.issuer)) rule.issuer = rule.issuer.map((i: string) => (i === real ? local.issuer : i));
  }
  // The test server knows the service by a password; the examples' nkey login is dropped for it.
  const { nkey_seed: _nkey, ...rest } = doc.nats;
  doc.nats = { ...rest, servers: [nats.url], user: 'auth', password: nats.password };
  doc.callout = { ...doc.callout, issuer_seed: nats.issuerSeed, xkey_seed: nats.xkeySeed };
  delete doc.http;
  return doc;
}

for (const { version, path: bin } of binaries) {
  for (const provider of PROVIDERS) {
    describe(`nats-server ${version}: ${provider} example`, () => {
      const fixture = readFixture(provider);
      const plan = fixture.integration;
      assert.ok(plan, `${provider}.json has an integration plan`);
      let idp: LocalIssuer;
      let nats: RunningNats;
      let runner: CalloutRunner | undefined;
      const log = new LogCapture();
      const dir = mkdtempSync(join(tmpdir(), `oc-${provider}-`));

      before(async () => {
        idp = await startLocalIssuer();
        const issuerKey = createAccount();
        const xkey = createCurve();
        const password = randomBytes(12).toString('hex');
        const accounts = accountsOf(exampleDoc(provider));
        nats = await startNatsServer({ bin, config: serverConfig({ issuer: issuerKey.getPublicKey(), xkey: xkey.getPublicKey(), password, accounts }) });
        const doc = localized(provider, idp, { url: nats.url, password, issuerSeed: seedOf(issuerKey), xkeySeed: seedOf(xkey) });
        const logger = createLogger('debug', log.write);
        const service = new CalloutService(buildConfig(doc, {}, dir), logger);
        runner = new CalloutRunner(await connectAll(service.config, { maxReconnectAttempts: 0 }), service, logger);
        await runner.start();
      });

      after(async () => {
        await runner?.stop().catch(() => undefined);
        await nats?.stop();
        await idp?.stop();
        rmSync(dir, { recursive: true, force: true });
      });

      /** A token like the fixture's (base or the named variant), issued now by the local issuer. */
      async function token(variantName?: string): Promise<string> {
        const variant = variantName === undefined ? undefined : fixture.variants.find((v) => v.name === variantName);
        assert.ok(variantName === undefined || variant, `no variant ${variantName}`);
        const { header, claims } = tokenOf(fixture, variant);
        const now = Math.floor(Date.now() / 1000);
        const lifetime = (claims.exp as number) - (claims.iat as number);
        const times = { iat: now, exp: now + lifetime, ...(claims.nbf !== undefined ? { nbf: now - ((claims.iat as number) - (claims.nbf as number)) } : {}) };
        const { typ, alg: _alg, kid: _kid, ...rest } = header;
        return idp.sign({ ...claims, ...times, iss: idp.issuer }, { typ: typeof typ === 'string' ? typ : null, header: rest });
      }

      it(`logs in as the example's rule decides (${fixture.expect.rule} in ${fixture.expect.account}), with its private inbox`, async () => {
        const prefix = inboxPrefix(fixture.expect.permissions?.sub.allow);
        assert.ok(prefix, 'the fixture expects a private inbox');
        const mark = log.mark();
        const nc = await connectClient(nats.url, { token: await token(), inboxPrefix: prefix });
        try {
          const decision = await log.nextDecision(mark);
          assert.equal(decision.result, 'allow', JSON.stringify(decision));
          assert.equal(decision.rule, fixture.expect.rule);
          assert.equal(decision.account, fixture.expect.account);
          await grantedAndRefused(nc, prefix);
        } finally {
          await nc.close();
        }
      });

      /**
       * The granted publish arrives (as a request answered on the private inbox when the plan
       * says so); then the forbidden publish is a permissions violation. nats-server handles a
       * connection's protocol in order, so the violation arriving alone proves that the
       * subscriptions and the publish before it were accepted.
       */
      async function grantedAndRefused(nc: NatsConnection, prefix: string): Promise<void> {
        const errs = watchErrors(nc);
        // The private inbox is granted (a request's reply subscription lives under it).
        const inbox = nc.subscribe(`${prefix}.probe`);
        const sub = nc.subscribe(plan!.subscribe);
        const received = (async () => {
          for await (const m of sub) {
            if (plan!.request) m.respond(`pong ${m.string()}`);
            return m;
          }
          return undefined;
        })();
        await nc.flush();
        if (plan!.request) {
          const reply = await nc.request(plan!.publish, 'ping', { timeout: 5000 });
          assert.equal(reply.string(), 'pong ping');
          assert.ok(reply.subject.startsWith(`${prefix}.`), `the reply came on ${reply.subject}`);
        } else {
          nc.publish(plan!.publish, 'hello');
        }
        const m = await within(received, 5000, `the message on ${plan!.publish}`);
        assert.equal(m?.subject, plan!.publish);

        nc.publish(plan!.forbidden_publish, 'not allowed');
        const err = await errs.waitFor((e) => e instanceof natsErrors.PermissionViolationError && e.subject === plan!.forbidden_publish);
        assert.equal((err as InstanceType<typeof natsErrors.PermissionViolationError>).operation, 'publish');
        assert.deepEqual(errs.errors, [err], 'only the forbidden publish was refused');
        // A violation does not end the connection, nor the subscriptions that were granted.
        await nc.flush();
        assert.equal(nc.isClosed(), false);
        assert.equal(inbox.isClosed(), false);
      }

      it(`refuses the login of ${plan.refused}`, async () => {
        const expected = fixture.variants.find((v) => v.name === plan.refused)?.expect;
        assert.ok(expected?.decision === 'refuse' && expected.code, `${plan.refused} is a refused variant`);
        const mark = log.mark();
        await expectAuthorizationViolation(nats.url, { token: await token(plan.refused) });
        const decision = await log.nextDecision(mark);
        assert.equal(decision.result, 'reject');
        assert.equal(decision.code, expected.code, JSON.stringify(decision));
      });
    });
  }
}
