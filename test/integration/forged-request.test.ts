/**
 * Requests nobody but nats-server should be able to send. A server with auth_callout forbids
 * every client of the callout account to publish on $SYS.REQ.USER.AUTH, so altered and forged
 * requests are delivered through a second nats-server WITHOUT callout on which the service also
 * listens (the "relay"). A real request is recorded on the callout server by a second,
 * non-queue subscriber in the callout account.
 *
 * A request the service cannot trust gets no answer at all (the server then times the client
 * out); a trusted request with a bad token gets a signed error response.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { createConnection, type Socket } from 'node:net';
import { after, before, describe, it } from 'node:test';
import { createAccount, createCurve, createServer as createServerKey, fromPublic, type KeyPair } from '@nats-io/nkeys';
import { headers as natsHeaders, type Msg, type MsgHdrs, type NatsConnection } from '@nats-io/transport-node';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectNats } from '../../src/nats-connection.js';
import { NkeySigner } from '../../src/nkey.js';
import { CalloutRunner } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { authRequestJwt, fakeServer, newUserNkey, sealRequest, type FakeServer } from '../helpers/auth-request.js';
import { connectClient, LogCapture, seedOf, startCalloutFixture, within, type CalloutFixture } from '../helpers/callout-fixture.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../helpers/nats-server.js';

const binaries = await natsServerBinaries();
const newest = binaries[binaries.length - 1]!;

const AUTH_SUBJECT = '$SYS.REQ.USER.AUTH';
const AUDIENCE = 'nats';
/** How long a request waits for an answer that must never come. Any real answer takes milliseconds. */
const NO_ANSWER_MS = 750;

const rules = [
  {
    name: 'developers',
    match: { groups: 'dev' },
    when: [{ claim: 'tenant', present: true }],
    account: 'APP',
    user_name_claim: 'name',
    permissions: { pub: { allow: ['app.{{claims.tenant}}.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } },
  },
];
const issuerDoc = (issuer: LocalIssuer) => ({ issuer: issuer.issuer, audiences: [AUDIENCE], jwks_uri: issuer.jwksUri, allow_insecure_http: true });
const devClaims = { sub: 'worker-7', aud: AUDIENCE, groups: ['dev'], tenant: 'acme', name: 'Worker 7' };

const utf8 = (b: Uint8Array) => Buffer.from(b).toString('utf8');

interface DecodedJwt {
  header: Record<string, any>;
  claims: Record<string, any>;
  signingInput: string;
  signature: Uint8Array;
}

/** Splits a NATS JWT without trusting it (independently of src/). */
function decodeJwt(jwt: string): DecodedJwt {
  const [h, p, s] = jwt.split('.');
  assert.ok(h && p && s !== undefined, `not a JWT: ${jwt.slice(0, 40)}`);
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    claims: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
    signingInput: `${h}.${p}`,
    signature: Buffer.from(s, 'base64url'),
  };
}

/** Asserts `jwt` is signed by the nkey `signer` (verified with @nats-io/nkeys) and returns its claims. */
function verifiedClaims(jwt: string, signer: string): Record<string, any> {
  const d = decodeJwt(jwt);
  assert.equal(d.header.alg, 'ed25519-nkey');
  assert.ok(fromPublic(signer).verify(new TextEncoder().encode(d.signingInput), d.signature), `JWT not signed by ${signer}`);
  return d.claims;
}

/** A copy of `data` with one bit of the byte at `index` flipped. */
function flipByte(data: Uint8Array, index: number): Uint8Array {
  const copy = Uint8Array.from(data);
  copy[index] = copy[index]! ^ 0x01;
  return copy;
}

function xkeyHeader(xkey: string): MsgHdrs {
  const h = natsHeaders();
  h.set('Nats-Server-Xkey', xkey);
  return h;
}

/**
 * A nats-server without auth_callout, the service listening on it too, and a client of the
 * same account that can publish on $SYS.REQ.USER.AUTH there.
 */
interface Relay {
  readonly server: RunningNats;
  readonly requester: NatsConnection;
  /** Sends a request; resolves with the answer. */
  request(data: Uint8Array | string, headers?: MsgHdrs, timeoutMs?: number): Promise<Msg>;
  stop(): Promise<void>;
}

async function startRelay(bin: string, service: CalloutService, log: LogCapture, password: string): Promise<Relay> {
  const server = await startNatsServer({ bin, config: `accounts {\n  AUTH { users: [ { user: auth, password: "${password}" } ] }\n}` });
  let runner: CalloutRunner | undefined;
  let requester: NatsConnection | undefined;
  try {
    runner = new CalloutRunner(
      await connectNats(service.config, { servers: [server.url], maxReconnectAttempts: 0 }),
      service,
      createLogger('debug', log.write),
    );
    await runner.start();
    requester = await connectClient(server.url, { user: 'auth', pass: password });
  } catch (err) {
    await runner?.stop();
    await server.stop();
    throw err;
  }
  const nc = requester;
  const started = runner;
  return {
    server,
    requester: nc,
    request: (data, headers, timeoutMs = 5000) => nc.request(AUTH_SUBJECT, data, { timeout: timeoutMs, ...(headers ? { headers } : {}) }),
    async stop() {
      await nc.close().catch(() => undefined);
      await started.stop();
      await server.stop();
    },
  };
}

/**
 * Sends a request that must get NO answer and returns the decision the service logged for it.
 * The decision is awaited first (an event); the missing answer is then checked with a timeout.
 */
async function expectNoAnswer(relay: Relay, log: LogCapture, data: Uint8Array | string, headers?: MsgHdrs) {
  const mark = log.mark();
  const answer = relay.request(data, headers, NO_ANSWER_MS);
  // Never left unhandled while the decision is awaited.
  answer.catch(() => undefined);
  const decision = await log.nextDecision(mark);
  await assert.rejects(answer, (err: Error) => {
    assert.match(`${err.name} ${err.message}`, /timeout/i, `expected no answer (a timeout), got ${String(err)}`);
    return true;
  });
  assert.equal(decision.result, 'abort', `logged ${JSON.stringify(decision)}`);
  return decision;
}

for (const { version, path } of binaries) {
  describe(`a request recorded from nats-server ${version} (xkey), replayed and altered through a server without callout`, () => {
    let issuer: LocalIssuer;
    let fx: CalloutFixture;
    let relay: Relay;
    /** The request exactly as nats-server published it. */
    let recorded: { data: Uint8Array; serverXkey: string };
    /** The request JWT inside the box. */
    let requestJwt: string;
    let requestClaims: Record<string, any>;

    before(async () => {
      issuer = await startLocalIssuer();
      // A 30 s auth timeout makes the request's own deadline (exp = iat + timeout) 30 s away, so a
      // replay a moment later is still within it: the replay answer does not depend on timing.
      fx = await startCalloutFixture({ bin: path, xkey: true, authTimeoutSeconds: 30, issuers: [issuerDoc(issuer)], rules });
      relay = await startRelay(path, fx.service, fx.log, fx.password);

      const recorder = await connectClient(fx.url, { user: 'auth', pass: fx.password });
      try {
        const got = new Promise<{ data: Uint8Array; serverXkey: string }>((resolve) => {
          recorder.subscribe(AUTH_SUBJECT, {
            max: 1,
            callback: (_err, msg) => resolve({ data: Uint8Array.from(msg.data), serverXkey: msg.headers?.get('Nats-Server-Xkey') ?? '' }),
          });
        });
        await recorder.flush();
        const client = await connectClient(fx.url, { token: await issuer.sign(devClaims) });
        await client.close();
        recorded = await within(got, 5000, 'the recorded authorization request');
      } finally {
        await recorder.close();
      }
      assert.match(recorded.serverXkey, /^X[A-Z2-7]{55}$/);
      const opened = fx.xkey!.open(recorded.data, recorded.serverXkey);
      assert.ok(opened, 'the recorded request does not open with the service xkey');
      requestJwt = utf8(opened);
      requestClaims = decodeJwt(requestJwt).claims;
      assert.equal(requestClaims.exp - requestClaims.iat, 30, 'request exp should be iat + authorization timeout');
    });

    after(async () => {
      await relay?.stop();
      await fx?.stop();
      await issuer?.stop();
    });

    /** The service's answer to `data` must be a user JWT bound to the recorded request. */
    async function expectUserJwtAnswer(data: Uint8Array): Promise<void> {
      const mark = fx.log.mark();
      const answer = await relay.request(data, xkeyHeader(recorded.serverXkey));
      // Sealed to the server's xkey: the service's own key opens it too (same shared secret).
      const opened = fx.xkey!.open(answer.data, recorded.serverXkey);
      assert.ok(opened, 'the answer is not sealed to the server xkey');
      const response = verifiedClaims(utf8(opened), fx.service.issuerPublicKey);
      assert.equal(response.nats.type, 'authorization_response');
      assert.equal(response.sub, requestClaims.nats.user_nkey);
      assert.equal(response.aud, requestClaims.iss);
      assert.equal(response.nats.error, undefined);
      const user = verifiedClaims(response.nats.jwt, fx.service.issuerPublicKey);
      assert.equal(user.sub, requestClaims.nats.user_nkey);
      assert.equal(user.aud, 'APP');
      assert.equal((await fx.log.nextDecision(mark)).result, 'allow');
    }

    it('answers an unchanged replay of the recorded request with a user JWT for that request (the relay path works)', async () => {
      assert.equal(requestClaims.aud, 'nats-authorization-request');
      assert.equal(requestClaims.nats.server_id.xkey, recorded.serverXkey);
      await expectUserJwtAnswer(recorded.data);
    });

    it('sends no answer when one byte of the sealed box is flipped (REQUEST_DECRYPT_FAILED)', async () => {
      const tampered = flipByte(recorded.data, recorded.data.length - 10);
      const decision = await expectNoAnswer(relay, fx.log, tampered, xkeyHeader(recorded.serverXkey));
      assert.equal(decision.code, 'REQUEST_DECRYPT_FAILED');
    });

    it('sends no answer when the request JWT has a flipped signature byte, even properly re-sealed (REQUEST_SIGNATURE_INVALID)', async () => {
      // Re-sealing with the service's key and the server's public xkey yields a box the service
      // opens exactly like the server's own (a NaCl box key is shared by both ends).
      const reseal = (jwt: string) => fx.xkey!.seal(new TextEncoder().encode(jwt), recorded.serverXkey);
      // Control: the unaltered JWT, re-sealed, is still answered.
      await expectUserJwtAnswer(reseal(requestJwt));

      const d = decodeJwt(requestJwt);
      const badSignature = `${d.signingInput}.${Buffer.from(flipByte(d.signature, 7)).toString('base64url')}`;
      const decision = await expectNoAnswer(relay, fx.log, reseal(badSignature), xkeyHeader(recorded.serverXkey));
      assert.equal(decision.code, 'REQUEST_SIGNATURE_INVALID');

      // Changing a claim (here the audience) without the server's key breaks the signature too.
      const [h, , s] = requestJwt.split('.');
      const otherAudience = `${h}.${Buffer.from(JSON.stringify({ ...requestClaims, aud: 'elsewhere' })).toString('base64url')}.${s}`;
      const decision2 = await expectNoAnswer(relay, fx.log, reseal(otherAudience), xkeyHeader(recorded.serverXkey));
      assert.equal(decision2.code, 'REQUEST_SIGNATURE_INVALID');
    });

    it('sends no answer to the recorded request in the clear while an xkey is configured (REQUEST_PLAINTEXT)', async () => {
      const decision = await expectNoAnswer(relay, fx.log, requestJwt, xkeyHeader(recorded.serverXkey));
      assert.equal(decision.code, 'REQUEST_PLAINTEXT');
    });
  });
}

/** A bare TCP connection to a NATS port: for bytes no client library would send. */
function connectRaw(port: number): Socket {
  return createConnection({ host: '127.0.0.1', port });
}

/** A service listening only on a relay (no callout server needed for requests from a fake server). */
async function startRelayedService(xkey: KeyPair | undefined, issuer: LocalIssuer) {
  const log = new LogCapture();
  const account = createAccount();
  const password = 'relay-password';
  const service = new CalloutService(
    buildConfig(
      {
        nats: { servers: ['nats://127.0.0.1:1'], user: 'auth', password },
        callout: { account: 'AUTH', issuer_seed: seedOf(account), ...(xkey ? { xkey_seed: seedOf(xkey) } : {}) },
        issuers: [issuerDoc(issuer)],
        policy: { rules },
      },
      {},
    ),
    createLogger('debug', log.write),
  );
  const relay = await startRelay(newest.path, service, log, password);
  return { service, log, relay };
}

describe('requests from a fake server, through a server without callout (xkey)', () => {
  let issuer: LocalIssuer;
  let setup: Awaited<ReturnType<typeof startRelayedService>>;
  let serviceXkey: KeyPair;
  let server: FakeServer;

  before(async () => {
    issuer = await startLocalIssuer();
    serviceXkey = createCurve();
    setup = await startRelayedService(serviceXkey, issuer);
    server = fakeServer();
  });

  after(async () => {
    await setup?.relay.stop();
    await issuer?.stop();
  });

  const send = (jwt: string) => setup.relay.request(sealRequest(server, jwt, serviceXkey.getPublicKey()), xkeyHeader(server.curve.getPublicKey()));
  const sendNoAnswer = (jwt: string) =>
    expectNoAnswer(setup.relay, setup.log, sealRequest(server, jwt, serviceXkey.getPublicKey()), xkeyHeader(server.curve.getPublicKey()));
  /** Opens the sealed answer as the fake server and checks the response envelope. */
  const openResponse = (answer: Msg, userNkey: string) => {
    const opened = server.curve.open(answer.data, serviceXkey.getPublicKey());
    assert.ok(opened, 'the answer is not sealed to the fake server xkey');
    const response = verifiedClaims(utf8(opened), setup.service.issuerPublicKey);
    assert.equal(response.nats.type, 'authorization_response');
    assert.equal(response.nats.version, 2);
    assert.equal(response.sub, userNkey);
    assert.equal(response.aud, server.id);
    assert.equal(response.iss, setup.service.issuerPublicKey);
    return response;
  };

  it('answers a well-formed request carrying a valid token with a user JWT bound to its user_nkey', async () => {
    const userNkey = newUserNkey();
    const answer = await send(authRequestJwt(server, { xkey: true, userNkey, connectOpts: { auth_token: await issuer.sign(devClaims) } }));
    const response = openResponse(answer, userNkey);
    assert.equal(response.nats.error, undefined);
    const user = verifiedClaims(response.nats.jwt, setup.service.issuerPublicKey);
    assert.equal(user.sub, userNkey);
    assert.equal(user.aud, 'APP');
    assert.equal(user.name, 'Worker 7');
    assert.deepEqual(user.nats.pub, { allow: ['app.acme.>'] });
    assert.ok(typeof user.exp === 'number' && user.exp > Date.now() / 1000);
  });

  it('keeps answering good requests through a flood of hostile ones, with bounded memory', async (t) => {
    const nc = setup.relay.requester;
    const good = async () => {
      const userNkey = newUserNkey();
      const answer = await send(authRequestJwt(server, { xkey: true, userNkey, connectOpts: { auth_token: await issuer.sign(devClaims) } }));
      assert.equal(openResponse(answer, userNkey).nats.error, undefined);
    };
    const sealed = (jwt: string) => sealRequest(server, jwt, serviceXkey.getPublicKey());
    const header = xkeyHeader(server.curve.getPublicKey());
    const valid = authRequestJwt(server, { xkey: true, connectOpts: { auth_token: 'x.y.z' } });
    const hostile: [Uint8Array, MsgHdrs | undefined][] = [
      [new TextEncoder().encode('garbage'), undefined],
      [randomBytes(4096), header],
      [sealed(valid.slice(0, 100)), header], // a truncated request
      [sealed(`${'e30.'.repeat(2)}${'A'.repeat(50_000)}`), header], // a long, deeply meaningless one
      [sealRequest(server, valid, createCurve().getPublicKey()), header], // sealed to another key
      [sealed(authRequestJwt(server, { xkey: true, edit: (c) => delete c.exp })), header], // no exp
      [new TextEncoder().encode(valid), undefined], // plaintext while an xkey is configured
    ];
    const heapBefore = process.memoryUsage().heapUsed;
    const floodMark = setup.log.mark();
    const until = Date.now() + 2500;
    let sent = 0;
    let huge = 0;
    const flood = (async () => {
      while (Date.now() < until) {
        for (let i = 0; i < 200; i++) {
          const [data, headers] = hostile[sent % hostile.length]!;
          nc.publish(AUTH_SUBJECT, data, { reply: `_INBOX.flood.${sent}`, ...(headers ? { headers } : {}) });
          sent++;
        }
        if (huge < 20) {
          nc.publish(AUTH_SUBJECT, randomBytes(900 * 1024), { reply: '_INBOX.flood.huge' });
          huge++;
        }
        await nc.flush();
        // The publisher shares this process with the service: leave its event loop some turns.
        await new Promise((r) => setTimeout(r, 5));
      }
    })();
    // A good request whose deadline passes while the machine is busy is dropped unanswered, as
    // nats-server would have given up on it: what matters is that good requests keep getting in.
    let answered = 0;
    let missed = 0;
    while (Date.now() < until) {
      try {
        await good();
        answered++;
      } catch (err) {
        assert.match(String((err as Error).message), /timeout/i);
        missed++;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    await flood;
    await good();
    const grownMiB = (process.memoryUsage().heapUsed - heapBefore) / 1024 / 1024;
    t.diagnostic(
      `${sent} hostile requests and ${huge} of 900 KiB in 2.5 s; ${answered + 1} good requests answered (${missed} past their deadline); heap grew ${grownMiB.toFixed(1)} MiB`,
    );
    assert.ok(answered >= 2, `only ${answered} good requests answered during the flood`);
    assert.ok(sent > 1000, `the flood sent only ${sent}`);
    assert.ok(grownMiB < 200, `heap grew ${grownMiB.toFixed(1)} MiB`);
    // The refusals of the flood are not a line each: past 100 a second they are counted in one
    // summary line a second.
    const summary = await setup.log.waitFor((r) => typeof r.unverified === 'number' && r.unverified > 0, { from: floodMark, timeoutMs: 5000 });
    assert.match(String(summary.msg), /without a line each/);
    const lines = setup.log.records.slice(floodMark).filter((r) => r.msg === 'authorization' && r.result !== 'allow').length;
    assert.ok(lines < sent / 2, `${lines} refusal lines for ${sent} hostile requests`);
    // The last window the flood used ends a second after it began at most: then the next
    // refusal opens a window of its own.
    await new Promise((r) => setTimeout(r, 1200));
  });

  it('keeps answering after a message with malformed headers (it never stops the client reader)', async () => {
    const { port } = setup.relay.server;
    const raw = connectRaw(port);
    const headers = 'NATS/1.0\r\nBad Name: x\r\n\r\n';
    const payload = 'eyJhbGciOiJub25lIn0';
    raw.write(`CONNECT {"user":"auth","pass":"relay-password","verbose":false,"pedantic":false,"headers":true,"protocol":1}\r\n`);
    raw.write(`HPUB ${AUTH_SUBJECT} _INBOX.raw ${headers.length} ${headers.length + payload.length}\r\n${headers}${payload}\r\nPING\r\n`);
    await new Promise<void>((resolve) => raw.on('data', (d: Buffer) => d.toString().includes('PONG') && resolve()));
    raw.destroy();
    const userNkey = newUserNkey();
    const answer = await send(authRequestJwt(server, { xkey: true, userNkey, connectOpts: { auth_token: await issuer.sign(devClaims) } }));
    assert.ok(openResponse(answer, userNkey).nats.jwt, 'the next request is still answered');
  });

  it('answers a well-formed request carrying a bad token with a signed error and no user JWT', async () => {
    const userNkey = newUserNkey();
    const mark = setup.log.mark();
    const answer = await send(authRequestJwt(server, { xkey: true, userNkey, connectOpts: { auth_token: await issuer.sign({ ...devClaims, aud: 'other' }) } }));
    const response = openResponse(answer, userNkey);
    assert.equal(response.nats.jwt, undefined);
    assert.equal(response.nats.error, 'not authorized');
    // This request's decision: one of an earlier test's request may still be logged after the mark.
    const decision = await setup.log.waitFor((r) => r.msg === 'authorization' && r.user_nkey === userNkey, { from: mark });
    assert.equal(decision.result, 'reject');
    assert.equal(decision.code, 'TOKEN_AUDIENCE_INVALID');
  });

  it('sends no answer to a request for another audience (REQUEST_CLAIMS_INVALID)', async () => {
    const decision = await sendNoAnswer(authRequestJwt(server, { xkey: true, edit: (c) => (c.aud = 'somebody-else') }));
    assert.equal(decision.code, 'REQUEST_CLAIMS_INVALID');
  });

  it('sends no answer to a request not signed by the server key it names (REQUEST_SIGNATURE_INVALID)', async () => {
    const impostor = new NkeySigner(seedOf(createServerKey()), 'server');
    const decision = await sendNoAnswer(authRequestJwt(server, { xkey: true, signer: impostor }));
    assert.equal(decision.code, 'REQUEST_SIGNATURE_INVALID');
  });

  it('sends no answer to a request past its deadline (REQUEST_EXPIRED)', async () => {
    // A fresh request first: the service learns this server's clock from it.
    await send(authRequestJwt(server, { xkey: true, connectOpts: { auth_token: await issuer.sign(devClaims) } }));
    const decision = await sendNoAnswer(
      authRequestJwt(server, { xkey: true, now: Math.floor(Date.now() / 1000) - 60, connectOpts: { auth_token: await issuer.sign(devClaims) } }),
    );
    assert.equal(decision.code, 'REQUEST_EXPIRED');
  });

  it('sends no answer when the xkey inside the request differs from the Nats-Server-Xkey header (REQUEST_XKEY_MISMATCH)', async () => {
    const decision = await sendNoAnswer(authRequestJwt(server, { xkey: true, edit: (c) => (c.nats.server_id.xkey = createCurve().getPublicKey()) }));
    assert.equal(decision.code, 'REQUEST_XKEY_MISMATCH');
  });
});

describe('requests from a fake server, through a server without callout (no xkey)', () => {
  let issuer: LocalIssuer;
  let setup: Awaited<ReturnType<typeof startRelayedService>>;
  let server: FakeServer;

  before(async () => {
    issuer = await startLocalIssuer();
    setup = await startRelayedService(undefined, issuer);
    server = fakeServer();
  });

  after(async () => {
    await setup?.relay.stop();
    await issuer?.stop();
  });

  it('answers a plaintext request with a plaintext response JWT', async () => {
    const userNkey = newUserNkey();
    const answer = await setup.relay.request(authRequestJwt(server, { userNkey, connectOpts: { auth_token: await issuer.sign(devClaims) } }));
    const text = answer.string();
    assert.match(text, /^eyJ/, 'expected a plaintext JWT');
    const response = verifiedClaims(text, setup.service.issuerPublicKey);
    assert.equal(response.sub, userNkey);
    assert.equal(response.aud, server.id);
    assert.equal(verifiedClaims(response.nats.jwt, setup.service.issuerPublicKey).sub, userNkey);
  });

  it('sends no answer to a sealed request it has no xkey for (REQUEST_DECRYPT_FAILED)', async () => {
    const sealed = sealRequest(server, authRequestJwt(server, { xkey: true }), createCurve().getPublicKey());
    const decision = await expectNoAnswer(setup.relay, setup.log, sealed, xkeyHeader(server.curve.getPublicKey()));
    assert.equal(decision.code, 'REQUEST_DECRYPT_FAILED');
  });
});
