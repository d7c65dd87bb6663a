import { createCurve, createServer, createUser, type KeyPair } from '@nats-io/nkeys';
import { encodeNatsJwt } from '../../src/nats-jwt.js';
import { NkeySigner } from '../../src/nkey.js';

/** A stand-in nats-server identity: the signing nkey and the curve key it seals with. */
export interface FakeServer {
  readonly signer: NkeySigner;
  readonly id: string;
  readonly curve: KeyPair;
}

export function fakeServer(): FakeServer {
  const kp = createServer();
  const signer = new NkeySigner(new TextDecoder().decode(kp.getSeed()), 'server');
  return { signer, id: signer.publicKey, curve: createCurve() };
}

export const newUserNkey = (): string => createUser().getPublicKey();

/** nats-server numbers connections in accept order; each request here is a new connection. */
let nextClientId = 1;

/**
 * Builds an authorization request JWT the way nats-server does; `edit` may change any claim
 * before signing so tests can forge exactly one defect.
 */
export function authRequestJwt(
  server: FakeServer,
  opts: {
    userNkey?: string;
    connectOpts?: Record<string, unknown>;
    xkey?: boolean;
    now?: number;
    edit?: (claims: Record<string, any>) => void;
    signer?: NkeySigner;
  } = {},
): string {
  const now = opts.now ?? Math.floor(Date.now() / 1000);
  const claims: Record<string, any> = {
    aud: 'nats-authorization-request',
    exp: now + 2,
    iat: now,
    iss: server.id,
    sub: 'AAUTHACCOUNT',
    nats: {
      server_id: { name: 'test-server', host: '127.0.0.1', id: server.id, version: '2.10.27', ...(opts.xkey ? { xkey: server.curve.getPublicKey() } : {}) },
      user_nkey: opts.userNkey ?? newUserNkey(),
      client_info: { host: '127.0.0.1', id: nextClientId++, user: '', kind: 'Client', type: 'nats' },
      connect_opts: { lang: 'test', version: '0', protocol: 1, ...(opts.connectOpts ?? {}) },
      type: 'authorization_request',
      version: 2,
    },
  };
  opts.edit?.(claims);
  return encodeNatsJwt(claims, opts.signer ?? server.signer);
}

/** Seals a request to `recipientXkey` as nats-server does when auth_callout.xkey is set. */
export function sealRequest(server: FakeServer, jwt: string, recipientXkey: string): Uint8Array {
  return server.curve.seal(new TextEncoder().encode(jwt), recipientXkey);
}
