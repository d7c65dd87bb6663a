import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { decodeNatsJwt } from '../../src/nats-jwt.js';
import { isPublicKey, publicKeyObject, verifySignature } from '../../src/nkey.js';
import { systemClock } from '../../src/clock.js';
import { CalloutService } from '../../src/service.js';
import { authRequestJwt, fakeServer, newUserNkey, sealRequest } from '../helpers/auth-request.js';
import { FakeClock } from '../helpers/fake-clock.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';

const text = (b: Uint8Array) => new TextDecoder().decode(b);
const enc = (s: string) => new TextEncoder().encode(s);
const now = () => Math.floor(Date.now() / 1000);

function verifiedClaims(jwt: string, signerKey: string): Record<string, any> {
  const d = decodeNatsJwt(jwt);
  assert.ok(typeof d !== 'string', d as string);
  assert.ok(verifySignature(publicKeyObject(signerKey, 'account'), d.signingInput, d.signature), 'signature');
  return d.claims as Record<string, any>;
}

describe('callout service', () => {
  let idp: LocalIssuer;
  const account = createAccount();
  const issuerPub = account.getPublicKey();
  const server = fakeServer();
  const lines: any[] = [];
  let service: CalloutService;
  let fixedNow: number | undefined;

  function make(extra: Record<string, any> = {}): CalloutService {
    const config = buildConfig({
      nats: {},
      callout: { account: 'AUTH', issuer_seed: text(account.getSeed()), max_in_flight: 4, ...(extra.callout ?? {}) },
      token: { fields: ['auth_token', 'pass'], max_bytes: 8192 },
      issuers: [{ issuer: idp.issuer, audiences: ['nats'], allow_insecure_http: true, ...(extra.issuer ?? {}) }],
      policy: {
        rules: [
          {
            name: 'devs',
            match: { groups: 'dev' },
            when: [{ claim: 'tenant', present: true }],
            account: 'APP',
            user_name_claim: 'name',
            max_lifetime: '10m',
            permissions: { pub: { allow: ['app.{{claims.tenant}}.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] }, resp: { max: 1, ttl: '2s' } },
          },
        ],
      },
      ...(extra.cache ? { cache: extra.cache } : {}),
    });
    return new CalloutService(
      config,
      createLogger('debug', (l) => lines.push(JSON.parse(l))),
      { clock: { ...systemClock, now: () => fixedNow ?? Date.now() } },
    );
  }

  before(async () => {
    idp = await startLocalIssuer();
    service = make();
  });
  after(() => idp.stop());

  const lastDecision = () => lines.filter((l) => l.msg === 'authorization').at(-1);

  it('issues a user JWT bound to the user key, capped lifetime, rendered permissions, in a signed response', async () => {
    const userNkey = newUserNkey();
    const token = await idp.sign({ sub: 'alice', aud: 'nats', exp: now() + 3600, groups: ['dev'], tenant: 'acme', name: 'Zoë 山田' });
    const reply = await service.handle(enc(authRequestJwt(server, { userNkey, connectOpts: { auth_token: token } })), undefined);
    assert.ok(reply);
    const res = verifiedClaims(text(reply), issuerPub);
    assert.equal(res.sub, userNkey);
    assert.equal(res.aud, server.id);
    assert.equal(res.iss, issuerPub);
    assert.equal(res.nats.type, 'authorization_response');
    assert.equal(res.nats.error, undefined);
    const user = verifiedClaims(res.nats.jwt, issuerPub);
    assert.equal(user.sub, userNkey);
    assert.equal(user.aud, 'APP');
    assert.equal(user.name, 'Zoë 山田');
    assert.ok(user.exp <= now() + 600 && user.exp >= now() + 598, `exp capped by max_lifetime: ${user.exp - now()}`);
    assert.deepEqual(user.nats.pub, { allow: ['app.acme.>'] });
    assert.deepEqual(user.nats.sub, { allow: ['_INBOX.alice.>'] });
    assert.deepEqual(user.nats.resp, { max: 1, ttl: 2_000_000_000 });
    assert.equal(user.nats.issuer_account, undefined);
    const d = lastDecision();
    assert.equal(d.result, 'allow');
    assert.equal(d.rule, 'devs');
    assert.equal(d.cached, false);
    assert.ok(!JSON.stringify(lines).includes(token), 'the token never reaches the log');
  });

  it("never lets the user outlive the token's exp", async () => {
    const exp = now() + 90;
    const token = await idp.sign({ sub: 'a', aud: 'nats', exp, groups: ['dev'], tenant: 't' });
    const reply = await service.handle(enc(authRequestJwt(server, { connectOpts: { auth_token: token } })), undefined);
    const user = verifiedClaims(verifiedClaims(text(reply!), issuerPub).nats.jwt, issuerPub);
    assert.equal(user.exp, exp);
  });

  it('serves a repeated token from the cache, still bound to the new user key', async () => {
    const token = await idp.sign({ sub: 'bob', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 't' });
    await service.handle(enc(authRequestJwt(server, { connectOpts: { auth_token: token } })), undefined);
    const fetches = idp.jwksFetches;
    const userNkey = newUserNkey();
    const reply = await service.handle(enc(authRequestJwt(server, { userNkey, connectOpts: { auth_token: token } })), undefined);
    assert.equal(lastDecision().cached, true);
    const user = verifiedClaims(verifiedClaims(text(reply!), issuerPub).nats.jwt, issuerPub);
    assert.equal(user.sub, userNkey);
    assert.equal(idp.jwksFetches, fetches);
  });

  it('does not serve a cached decision past the token expiry', async () => {
    const svc = make({ cache: { ttl: '1h' } });
    const token = await idp.sign({ sub: 'c', aud: 'nats', exp: now() + 2, groups: ['dev'], tenant: 't' });
    assert.ok(await svc.handle(enc(authRequestJwt(server, { connectOpts: { auth_token: token } })), undefined));
    assert.equal(svc.cache.size, 1);
    fixedNow = Date.now() + 3000;
    try {
      const reply = await svc.handle(enc(authRequestJwt(server, { now: now() + 3, connectOpts: { auth_token: token } })), undefined);
      const res = verifiedClaims(text(reply!), issuerPub);
      assert.equal(res.nats.error, 'not authorized');
      assert.equal(lastDecision().code, 'TOKEN_EXPIRED');
    } finally {
      fixedNow = undefined;
    }
  });

  it('reads the token from pass when configured', async () => {
    const token = await idp.sign({ sub: 'p', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 't' });
    assert.ok(await service.handle(enc(authRequestJwt(server, { connectOpts: { user: 'x', pass: token } })), undefined));
    assert.equal(lastDecision().result, 'allow');
  });

  it('rejects with a signed generic error and logs the real code', async () => {
    const userNkey = newUserNkey();
    const reply = await service.handle(enc(authRequestJwt(server, { userNkey, connectOpts: {} })), undefined);
    const res = verifiedClaims(text(reply!), issuerPub);
    assert.equal(res.sub, userNkey);
    assert.equal(res.nats.error, 'not authorized');
    assert.equal(res.nats.jwt, undefined);
    assert.equal(lastDecision().code, 'TOKEN_MISSING');
    assert.equal(lastDecision().subject, undefined);
    const noMatch = await idp.sign({ sub: 'q', aud: 'nats', exp: now() + 300, groups: ['qa'] });
    const cached = service.cache.size;
    await service.handle(enc(authRequestJwt(server, { connectOpts: { auth_token: noMatch } })), undefined);
    assert.equal(lastDecision().code, 'POLICY_NO_MATCH');
    // A refused verified token names whose it was; a missing or unverified one names no one.
    assert.equal(lastDecision().issuer, idp.issuer);
    assert.equal(lastDecision().subject, 'q');
    // The verified token is cached although the policy refused it (a missing token is not).
    assert.equal(service.cache.size, cached + 1);
    // Refused again from the cache: still named.
    await service.handle(enc(authRequestJwt(server, { connectOpts: { auth_token: noMatch } })), undefined);
    assert.equal(lastDecision().code, 'POLICY_NO_MATCH');
    assert.equal(lastDecision().subject, 'q');
  });

  it('aborts (no answer) on a request it cannot trust', async () => {
    const other = fakeServer();
    assert.equal(await service.handle(enc(authRequestJwt(server, { signer: other.signer })), undefined), undefined);
    assert.equal(lastDecision().result, 'abort');
    assert.equal(lastDecision().code, 'REQUEST_SIGNATURE_INVALID');
    assert.equal(await service.handle(enc('garbage'), undefined), undefined);
    assert.equal(lastDecision().code, 'REQUEST_MALFORMED');
  });

  it('sheds new verifications beyond max_in_flight at once, while cached tokens still get in', async () => {
    const svc = make({ callout: { max_in_flight: 1 }, issuer: { jwks_cooldown: '0s' } });
    const request = (token: string) => svc.handle(enc(authRequestJwt(server, { connectOpts: { auth_token: token } })), undefined);
    const known = await idp.sign({ sub: 'known', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 't' });
    assert.ok(await request(known));
    idp.faults.jwks = { delayMs: 1000 };
    try {
      // An unknown kid makes the verification wait on a (slow) JWKS refetch: it holds the slot.
      const slow = request(await idp.sign({ sub: 'slow', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 't' }, { key: 'unknown' }));
      await new Promise((r) => setImmediate(r));
      const fetches = idp.jwksFetches;
      const shed = await request(await idp.sign({ sub: 'new', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 't' }));
      assert.equal(verifiedClaims(text(shed!), issuerPub).nats.error, 'not authorized');
      assert.equal(lastDecision().code, 'OVERLOADED');
      assert.equal(idp.jwksFetches, fetches, 'a shed request does no work');
      const hit = await request(known);
      assert.ok(verifiedClaims(text(hit!), issuerPub).nats.jwt);
      assert.equal(lastDecision().cached, true);
      await slow;
      assert.equal(lastDecision().code, 'TOKEN_KEY_UNKNOWN');
      // Connects presenting a token already being verified join it instead of taking a slot.
      const same = await idp.sign({ sub: 'same', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 't' }, { key: 'unknown', kid: 'another-unknown' });
      const both = await Promise.all([request(same), request(same)]);
      assert.deepEqual(
        both.map((r) => verifiedClaims(text(r!), issuerPub).nats.error),
        ['not authorized', 'not authorized'],
      );
      assert.deepEqual(
        lines
          .filter((l) => l.msg === 'authorization')
          .slice(-2)
          .map((l) => l.code),
        ['TOKEN_KEY_UNKNOWN', 'TOKEN_KEY_UNKNOWN'],
      );
    } finally {
      idp.faults.jwks = undefined;
    }
  });

  it('aborts when the deadline passes while the token is verified', async () => {
    const svc = make();
    const token = await idp.sign({ sub: 'slow', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 't' });
    // The deadline (exp = now + 1, whole seconds) has surely passed once 2.5 s went by.
    idp.faults.discovery = { delayMs: 2500 };
    try {
      const data = enc(authRequestJwt(server, { now: now() - 1, connectOpts: { auth_token: token } }));
      assert.equal(await svc.handle(data, undefined), undefined);
      assert.equal(lastDecision().code, 'REQUEST_EXPIRED');
    } finally {
      idp.faults.discovery = undefined;
    }
  });

  it('sheds on a fake clock: logs the reason, counts it, and learns the clock of a new server from its first request', async () => {
    const fake = new FakeClock(1_900_000_000_000, 1_900_000_000_000);
    let clock = fake.mono;
    const shedLines: any[] = [];
    const shedReasons: string[] = [];
    const observer = { decided() {}, jwksFetched() {}, shed: (r: string) => void shedReasons.push(r) };
    const svc = new CalloutService(
      service.config,
      createLogger('debug', (l) => shedLines.push(JSON.parse(l))),
      { clock: fake, observer },
    );
    const srv = fakeServer();
    const at = (ms: number) => enc(authRequestJwt(srv, { now: Math.floor(ms / 1000) }));
    // The first request of a server whose clock is 30 s behind ours: admission verifies it at
    // once and learns the offset from it, so it is judged fresh, not dropped as stale.
    const first = svc.admit(at(clock - 30_000), undefined, clock)!;
    assert.equal(svc.requestClock.calibrated(srv.id, clock), true);
    assert.ok(first.verified, 'verified at admission');
    assert.ok(first.timing!.deadlineMs - clock > 1000, `deadline in ${first.timing!.deadlineMs - clock}ms`);
    // A request of that server really 3 s old is stale.
    fake.advance(100);
    clock = fake.mono;
    const stale = svc.admit(at(clock - 33_000), undefined, clock)!;
    assert.ok(stale.timing!.deadlineMs <= clock);
    assert.equal(stale.verified, undefined, 'a known server is not verified at admission');
    svc.shed(stale, 'expired');
    const logged = shedLines.at(-1);
    assert.equal(logged.code, 'REQUEST_EXPIRED');
    assert.equal(logged.shed, 'expired');
    assert.equal(logged.claimed_server_id, srv.id, 'unverified: logged as a claim');
    assert.equal(logged.server_id, undefined);
    assert.equal(logged.latency_ms, undefined, 'no answer, no latency');
    svc.shed(stale, 'too_late', 'connection 3 750ms behind');
    assert.equal(shedLines.at(-1).code, 'REQUEST_TOO_LATE');
    assert.equal(shedLines.at(-1).reason, 'connection 3 750ms behind');
    svc.shed(stale, 'queue_full');
    assert.equal(shedLines.at(-1).code, 'REQUEST_QUEUE_FULL');
    assert.deepEqual(shedReasons, ['expired', 'too_late', 'queue_full']);
    // A forged request (naming a server, signed by another key) never teaches the clock, and a
    // claimed server id that is not a server key is not logged.
    const victim = fakeServer();
    const forged = svc.admit(enc(authRequestJwt(victim, { now: Math.floor(clock / 1000) - 30, signer: fakeServer().signer })), undefined, clock)!;
    assert.equal(forged.verified, undefined);
    assert.equal(forged.opened.claimedServer, victim.id);
    assert.equal(svc.requestClock.calibrated(victim.id, clock), false);
    const junk = svc.admit(enc(authRequestJwt(victim, { edit: (c) => (c.iss = 'x'.repeat(5000)) })), undefined, clock)!;
    svc.shed(junk, 'expired');
    assert.equal(shedLines.at(-1).claimed_server_id, undefined);
  });

  it('seals the response to the server xkey when the request came sealed', async () => {
    const curve = createCurve();
    const svc = make({ callout: { xkey_seed: text(curve.getSeed()) } });
    assert.equal(svc.xkeyPublicKey, curve.getPublicKey());
    const token = await idp.sign({ sub: 'x', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 't' });
    const data = sealRequest(server, authRequestJwt(server, { xkey: true, connectOpts: { auth_token: token } }), curve.getPublicKey());
    const reply = await svc.handle(data, server.curve.getPublicKey());
    assert.ok(reply && text(reply).startsWith('xkv1'));
    const opened = server.curve.open(reply, curve.getPublicKey());
    assert.ok(opened);
    const res = verifiedClaims(text(opened), issuerPub);
    assert.ok(isPublicKey(verifiedClaims(res.nats.jwt, issuerPub).sub, 'user'));
  });

  it('keeps the loaded keys of unchanged issuers across a reload', () => {
    const next = new CalloutService(service.config, createLogger('error'), { previous: service });
    assert.equal(next.issuers[0], service.issuers[0]);
    const changed = make({ issuer: { leeway: '5s' } });
    assert.notEqual(new CalloutService(changed.config, createLogger('error'), { previous: service }).issuers[0], service.issuers[0]);
  });

  it('explains a decision without any request', async () => {
    const e = await service.explain(await idp.sign({ sub: 'e', aud: 'nats', exp: now() + 300, groups: ['dev'], tenant: 'acme' }));
    assert.ok(e.decision === 'allow');
    assert.equal(e.grant.rule, 'devs');
    assert.deepEqual(e.grant.pub, { allow: ['app.acme.>'] });
    // Refused by the policy after the token verified: the claims it saw come along.
    const refused = await service.explain(await idp.sign({ sub: 'r', aud: 'nats', exp: now() + 300, groups: ['ops'] }));
    assert.ok(refused.decision === 'refuse');
    assert.equal(refused.failure.code, 'POLICY_NO_MATCH');
    assert.deepEqual(refused.claims?.groups, ['ops']);
    // Refused before verification: no claims (they are not to be trusted).
    const forged = await service.explain('eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJ4In0.c2ln');
    assert.ok(forged.decision === 'refuse');
    assert.equal(forged.claims, undefined);
  });
});
