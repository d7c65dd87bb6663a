import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createCurve } from '@nats-io/nkeys';
import { AuthFailure } from '../../src/errors.js';
import { RequestVerifier } from '../../src/request.js';
import { XkeyBox } from '../../src/xkey.js';
import { authRequestJwt, fakeServer, sealRequest } from '../helpers/auth-request.js';

const enc = (s: string) => new TextEncoder().encode(s);
const now = () => Math.floor(Date.now() / 1000);
const nowMs = () => Date.now();

function refusal(fn: () => unknown, code: string): void {
  assert.throws(fn, (err: unknown) => err instanceof AuthFailure && err.code === code && err.outcome === 'abort');
}

describe('request verification', () => {
  const server = fakeServer();
  const plain = new RequestVerifier(undefined);

  it('accepts a well-formed signed request and extracts what the pipeline needs', () => {
    const req = plain.verify(enc(authRequestJwt(server, { connectOpts: { auth_token: 'tok' } })), undefined, nowMs());
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
    refusal(() => plain.verify(enc(`${h}.${p}.${sig.toString('base64url')}`), undefined, nowMs()), 'REQUEST_SIGNATURE_INVALID');
  });

  it('refuses a request signed by another key than the server it names', () => {
    const other = fakeServer();
    refusal(() => plain.verify(enc(authRequestJwt(server, { signer: other.signer })), undefined, nowMs()), 'REQUEST_SIGNATURE_INVALID');
  });

  it('refuses wrong audience, mismatched server id, type, version and user key', () => {
    const cases: [string, (c: Record<string, any>) => void][] = [
      ['aud', (c) => (c.aud = 'somebody-else')],
      ['server id', (c) => (c.nats.server_id.id = fakeServer().id)],
      ['type', (c) => (c.nats.type = 'authorization_response')],
      ['version', (c) => (c.nats.version = 1)],
      ['user nkey', (c) => (c.nats.user_nkey = server.id)],
    ];
    for (const [, edit] of cases) refusal(() => plain.verify(enc(authRequestJwt(server, { edit })), undefined, nowMs()), 'REQUEST_CLAIMS_INVALID');
    refusal(() => plain.verify(enc(authRequestJwt(server, { edit: (c) => (c.iss = 'not-a-key') })), undefined, nowMs()), 'REQUEST_CLAIMS_INVALID');
  });

  it('refuses a request expired beyond the tolerated clock skew, and measures the deadline on our clock', () => {
    refusal(() => plain.verify(enc(authRequestJwt(server, { now: now() - 30 })), undefined, Date.now()), 'REQUEST_EXPIRED');
    // 5 s behind (a skewed server clock) is still answered: the budget is exp - iat from receipt.
    const received = Date.now();
    const req = plain.verify(enc(authRequestJwt(server, { now: now() - 5 })), undefined, received);
    assert.equal(req.deadlineMs, received + 2000);
  });

  it('refuses garbage', () => {
    refusal(() => plain.verify(enc('not a jwt'), undefined, nowMs()), 'REQUEST_MALFORMED');
    refusal(() => plain.verify(new Uint8Array(0), undefined, nowMs()), 'REQUEST_MALFORMED');
  });

  describe('with an xkey', () => {
    const ours = createCurve();
    const box = new XkeyBox(new TextDecoder().decode(ours.getSeed()));
    const sealed = new RequestVerifier(box);

    it('opens a sealed request and remembers the server xkey', () => {
      const data = sealRequest(server, authRequestJwt(server, { xkey: true }), ours.getPublicKey());
      const req = sealed.verify(data, server.curve.getPublicKey(), nowMs());
      assert.equal(req.serverXkey, server.curve.getPublicKey());
    });

    it('refuses a plaintext request (downgrade)', () => {
      refusal(() => sealed.verify(enc(authRequestJwt(server, { xkey: true })), server.curve.getPublicKey(), nowMs()), 'REQUEST_PLAINTEXT');
    });

    it('refuses a box sealed to another key or under another header key', () => {
      const toOther = sealRequest(server, authRequestJwt(server, { xkey: true }), createCurve().getPublicKey());
      refusal(() => sealed.verify(toOther, server.curve.getPublicKey(), nowMs()), 'REQUEST_DECRYPT_FAILED');
      const data = sealRequest(server, authRequestJwt(server, { xkey: true }), ours.getPublicKey());
      refusal(() => sealed.verify(data, undefined, nowMs()), 'REQUEST_DECRYPT_FAILED');
    });

    it('refuses when server_id.xkey differs from the header', () => {
      const data = sealRequest(server, authRequestJwt(server, { xkey: true, edit: (c) => (c.nats.server_id.xkey = createCurve().getPublicKey()) }), ours.getPublicKey());
      refusal(() => sealed.verify(data, server.curve.getPublicKey(), nowMs()), 'REQUEST_XKEY_MISMATCH');
    });

    it('refuses a sealed request when no xkey is configured', () => {
      const data = sealRequest(server, authRequestJwt(server, { xkey: true }), ours.getPublicKey());
      refusal(() => plain.verify(data, server.curve.getPublicKey(), nowMs()), 'REQUEST_DECRYPT_FAILED');
    });
  });
});
