import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createCurve } from '@nats-io/nkeys';
import { AuthFailure } from '../../src/errors.js';
import { RequestVerifier } from '../../src/request.js';
import { XkeyBox } from '../../src/xkey.js';
import { authRequestJwt, fakeServer, sealRequest } from '../helpers/auth-request.js';

const enc = (s: string) => new TextEncoder().encode(s);
const now = () => Math.floor(Date.now() / 1000);

function refusal(fn: () => unknown, code: string): void {
  assert.throws(fn, (err: unknown) => err instanceof AuthFailure && err.code === code && err.outcome === 'abort');
}

describe('request verification', () => {
  const server = fakeServer();
  const plain = new RequestVerifier(undefined);

  it('accepts a well-formed signed request and extracts what the pipeline needs', () => {
    const req = plain.verifyMessage(enc(authRequestJwt(server, { connectOpts: { auth_token: 'tok' } })), undefined);
    assert.equal(req.serverId, server.id);
    assert.match(req.userNkey, /^U/);
    assert.equal(req.connectOpts.auth_token, 'tok');
    assert.equal(req.serverXkey, undefined);
  });

  it('refuses a broken signature', () => {
    const jwt = authRequestJwt(server);
    const [h, p, s] = jwt.split('.') as [string, string, string];
    const sig = Buffer.from(s, 'base64url');
    sig[0]! ^= 1;
    refusal(() => plain.verifyMessage(enc(`${h}.${p}.${sig.toString('base64url')}`), undefined), 'REQUEST_SIGNATURE_INVALID');
  });

  it('refuses a request signed by another key than the server it names', () => {
    const other = fakeServer();
    refusal(() => plain.verifyMessage(enc(authRequestJwt(server, { signer: other.signer })), undefined), 'REQUEST_SIGNATURE_INVALID');
  });

  it('refuses wrong audience, mismatched server id, type, version and user key', () => {
    const cases: [string, (c: Record<string, any>) => void][] = [
      ['aud', (c) => (c.aud = 'somebody-else')],
      ['server id', (c) => (c.nats.server_id.id = fakeServer().id)],
      ['type', (c) => (c.nats.type = 'authorization_response')],
      ['version', (c) => (c.nats.version = 1)],
      ['user nkey', (c) => (c.nats.user_nkey = server.id)],
    ];
    for (const [, edit] of cases) refusal(() => plain.verifyMessage(enc(authRequestJwt(server, { edit })), undefined), 'REQUEST_CLAIMS_INVALID');
    refusal(() => plain.verifyMessage(enc(authRequestJwt(server, { edit: (c) => (c.iss = 'not-a-key') })), undefined), 'REQUEST_CLAIMS_INVALID');
  });

  it('opens a request without verifying it, and leaves time to the request clock', () => {
    // Stale by a minute: opening and verifying still work; whether it is worth answering is
    // the scheduler's decision (request-clock.ts), not the verifier's.
    // One reading of the clock: a second boundary between two readings must not matter.
    const minuteAgo = now() - 60;
    const jwt = authRequestJwt(server, { now: minuteAgo });
    const opened = plain.open(enc(jwt), undefined);
    assert.equal(opened.claimedServer, server.id);
    assert.equal(opened.iat, minuteAgo);
    assert.equal(opened.exp, minuteAgo + 2);
    assert.equal(plain.verify(opened).issuedAt, minuteAgo);
    // Forged: open() reads it all the same, verify() refuses it.
    const forged = plain.open(enc(authRequestJwt(server, { signer: fakeServer().signer })), undefined);
    refusal(() => plain.verify(forged), 'REQUEST_SIGNATURE_INVALID');
  });

  it('refuses garbage', () => {
    refusal(() => plain.verifyMessage(enc('not a jwt'), undefined), 'REQUEST_MALFORMED');
    refusal(() => plain.verifyMessage(new Uint8Array(0), undefined), 'REQUEST_MALFORMED');
  });

  describe('with an xkey', () => {
    const ours = createCurve();
    const box = new XkeyBox(new TextDecoder().decode(ours.getSeed()));
    const sealed = new RequestVerifier(box);

    it('opens a sealed request and remembers the server xkey', () => {
      const data = sealRequest(server, authRequestJwt(server, { xkey: true }), ours.getPublicKey());
      const req = sealed.verifyMessage(data, server.curve.getPublicKey());
      assert.equal(req.serverXkey, server.curve.getPublicKey());
    });

    it('refuses a plaintext request (downgrade)', () => {
      refusal(() => sealed.verifyMessage(enc(authRequestJwt(server, { xkey: true })), server.curve.getPublicKey()), 'REQUEST_PLAINTEXT');
    });

    it('refuses a box sealed to another key or under another header key', () => {
      const toOther = sealRequest(server, authRequestJwt(server, { xkey: true }), createCurve().getPublicKey());
      refusal(() => sealed.verifyMessage(toOther, server.curve.getPublicKey()), 'REQUEST_DECRYPT_FAILED');
      const data = sealRequest(server, authRequestJwt(server, { xkey: true }), ours.getPublicKey());
      refusal(() => sealed.verifyMessage(data, undefined), 'REQUEST_DECRYPT_FAILED');
    });

    it('refuses when server_id.xkey differs from the header', () => {
      const data = sealRequest(
        server,
        authRequestJwt(server, { xkey: true, edit: (c) => (c.nats.server_id.xkey = createCurve().getPublicKey()) }),
        ours.getPublicKey(),
      );
      refusal(() => sealed.verifyMessage(data, server.curve.getPublicKey()), 'REQUEST_XKEY_MISMATCH');
    });

    it('refuses a sealed request when no xkey is configured', () => {
      const data = sealRequest(server, authRequestJwt(server, { xkey: true }), ours.getPublicKey());
      refusal(() => plain.verifyMessage(data, server.curve.getPublicKey()), 'REQUEST_DECRYPT_FAILED');
    });
  });
});
