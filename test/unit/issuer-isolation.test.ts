/**
 * One slow or hostile issuer must not starve the others: each issuer has its own budget of
 * verifications, and while an issuer's keys are being fetched its unknown kids are refused at once.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { CalloutService } from '../../src/service.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { advanceUntilSettled, FakeClock, until } from '../helpers/fake-clock.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';

const now = () => Math.floor(Date.now() / 1000);

describe('isolation between issuers', () => {
  let hanging: LocalIssuer;
  let healthy: LocalIssuer;
  let service: CalloutService;
  const lines: Record<string, unknown>[] = [];
  const server = fakeServer();
  // Request deadlines run on this clock: the flood expires when the test says so, not when a
  // slow machine happens to get there.
  const clock = new FakeClock();

  before(async () => {
    [hanging, healthy] = await Promise.all([startLocalIssuer(), startLocalIssuer()]);
    const issuer = (i: LocalIssuer) => ({ issuer: i.issuer, audiences: ['nats'], jwks_uri: i.jwksUri, allow_insecure_http: true, jwks_cooldown: '0s' });
    const config = buildConfig({
      callout: { account: 'AUTH', issuer_seed: new TextDecoder().decode(createAccount().getSeed()), max_in_flight: 4 },
      issuers: [issuer(hanging), issuer(healthy)],
      policy: {
        rules: [{ name: 'all', issuer: [hanging.issuer, healthy.issuer], allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }],
      },
    });
    service = new CalloutService(
      config,
      createLogger('debug', (l) => lines.push(JSON.parse(l))),
      { clock },
    );
    await Promise.all(service.issuers.map((i) => i.load()));
  });
  after(async () => {
    hanging.faults.jwks = undefined;
    await Promise.all([hanging.stop(), healthy.stop()]);
  });

  const connect = async (token: string) => {
    const from = lines.length;
    await service.handle(new TextEncoder().encode(authRequestJwt(server, { connectOpts: { auth_token: token } })), undefined);
    return lines.slice(from).find((l) => l.msg === 'authorization') as Record<string, unknown>;
  };

  it("leaves another issuer's logins untouched while a flood of junk tokens waits on a hanging IdP", async () => {
    // From now on the hanging IdP answers key set requests only after a minute (or when stopped).
    hanging.faults.jwks = { delayMs: 60_000 };
    const junk = await Promise.all(
      Array.from({ length: 40 }, (_, i) =>
        i % 2 === 0
          ? hanging.sign({ sub: `junk-${i}`, aud: 'nats', exp: now() + 300 }, { key: 'unknown', kid: `junk-${i}` })
          : hanging.sign({ sub: `junk-${i}`, aud: 'nats', exp: now() + 300 }, { key: 'unknown', kid: hanging.kid }),
      ),
    );
    // The first junk token starts a key set fetch (a kid the IdP never published); the rest arrive after.
    const start = lines.length;
    const flood = [connect(junk[0]!)];
    await until(() => service.issuers[0]!.fetching, "the first junk token's key set fetch is under way");
    flood.push(...junk.slice(1).map((t) => connect(t)));
    // The junk is in flight (one key set fetch hangs); now the other issuer's users log in.
    await new Promise((r) => setImmediate(r));
    // One after another, as fast as each is answered: none waits on the hanging IdP.
    for (let i = 0; i < 10; i++) {
      const d = await connect(await healthy.sign({ sub: `user-${i}`, aud: 'nats', exp: now() + 300 }));
      assert.equal(d.result, 'allow', JSON.stringify(d));
    }
    // The junk's deadlines pass; every junk request is refused without an answer from the IdP.
    await advanceUntilSettled(clock, Promise.all(flood), 500);
    // Concurrent connects log in any order: read the flood's decisions from the log itself.
    const refused = lines.slice(start).filter((l) => l.msg === 'authorization' && l.result !== 'allow');
    assert.equal(refused.length, junk.length);
    const codes = new Set(refused.map((d) => d.code));
    for (const c of codes) assert.ok(['TOKEN_KEY_UNKNOWN', 'OVERLOADED', 'REQUEST_EXPIRED', 'TOKEN_SIGNATURE_INVALID'].includes(String(c)), String(c));
    assert.ok(refused.every((d) => d.result !== 'allow'));
    // Unknown kids waited for the fetch without a slot, and junk under the real kid did not wait at all.
    assert.ok(refused.filter((d) => d.code === 'TOKEN_KEY_UNKNOWN' && /being fetched/.test(String(d.reason))).length >= 15, JSON.stringify([...codes]));
    // Junk under the real kid arrived all at once: what did not fit the issuer's budget of 4 was
    // refused OVERLOADED, the rest failed its signature at once instead of waiting on the fetch.
    assert.ok(
      refused.some((d) => d.code === 'TOKEN_SIGNATURE_INVALID' && /keys are being fetched/.test(String(d.reason))),
      JSON.stringify([...codes]),
    );
  });
});
