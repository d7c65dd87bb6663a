import type { KeyObject } from 'node:crypto';
import { AuthFailure, quoted } from './errors.js';
import { decodeNatsJwt, type DecodedNatsJwt } from './nats-jwt.js';
import { isPublicKey, publicKeyObject, verifySignature } from './nkey.js';
import { XkeyBox } from './xkey.js';

/** The parts of a verified authorization request the service acts on. */
export interface AuthRequest {
  /** The server's public nkey (`N...`): the response's audience. */
  readonly serverId: string;
  readonly serverName: string;
  readonly serverVersion: string;
  /** The server's public xkey when the request was sealed: the response is sealed back to it. */
  readonly serverXkey: string | undefined;
  /** The per-connection user key the user JWT must be issued to. */
  readonly userNkey: string;
  /** The request's `iat` (seconds, the server's clock): teaches the request clock. */
  readonly issuedAt: unknown;
  readonly clientHost: string;
  readonly clientKind: string;
  readonly clientType: string;
  /** nats-server's id for the connection (`client_info.id`): what its kick request takes. */
  readonly clientId: number | undefined;
  /** The name the client gave in CONNECT (client-chosen, unbounded: cut it before logging). */
  readonly clientName: string;
  readonly connectOpts: Readonly<Record<string, unknown>>;
}

/**
 * A request opened (box) and parsed, nothing verified yet: enough to estimate its deadline and
 * to decide whether it is worth verifying at all.
 */
export interface OpenedRequest {
  readonly jwt: DecodedNatsJwt;
  readonly headerXkey: string | undefined;
  /** The claimed server (`iss`); a string only, not verified. */
  readonly claimedServer: string;
  readonly iat: unknown;
  readonly exp: unknown;
}

const AUDIENCE = 'nats-authorization-request';
const MAX_SERVER_KEYS = 1024;

/**
 * Opens and verifies the server's authorization request: xkey box (mandatory when we hold an
 * xkey), Ed25519 signature by the server key it names, and the claims nats-server always sets.
 * Time is not checked here: the request clock estimates deadlines (request-clock.ts).
 * Server verification keys are built once per server and kept in a bounded map.
 */
export class RequestVerifier {
  readonly #xkey: XkeyBox | undefined;
  readonly #serverKeys = new Map<string, KeyObject>();

  constructor(xkey: XkeyBox | undefined) {
    this.#xkey = xkey;
  }

  /**
   * Opens the box and parses the JWT, verifying nothing: what it yields may only be used to
   * decide not to answer.
   * @param data the raw message payload
   * @param headerXkey the `Nats-Server-Xkey` header, if present
   */
  open(data: Uint8Array, headerXkey: string | undefined): OpenedRequest {
    const decoded = decodeNatsJwt(this.#open(data, headerXkey));
    if (typeof decoded === 'string') throw new AuthFailure('REQUEST_MALFORMED', decoded);
    const c = decoded.claims;
    return { jwt: decoded, headerXkey, claimedServer: typeof c.iss === 'string' ? c.iss : '', iat: c.iat, exp: c.exp };
  }

  /** `open` then `verify`, for a message taken as it comes. */
  verifyMessage(data: Uint8Array, headerXkey: string | undefined): AuthRequest {
    return this.verify(this.open(data, headerXkey));
  }

  /** Verifies an opened request: the server's signature, then the claims it always sets. */
  verify(opened: OpenedRequest): AuthRequest {
    const decoded = opened.jwt;
    const headerXkey = opened.headerXkey;
    const c = decoded.claims;
    const nats = (c.nats ?? {}) as Record<string, unknown>;
    const server = (nats.server_id ?? {}) as Record<string, unknown>;
    const iss = c.iss;
    if (typeof iss !== 'string' || !isPublicKey(iss, 'server')) {
      throw new AuthFailure('REQUEST_CLAIMS_INVALID', 'request iss is not a server public key');
    }
    if (!verifySignature(this.#serverKey(iss), decoded.signingInput, decoded.signature)) {
      throw new AuthFailure('REQUEST_SIGNATURE_INVALID', `request signature does not verify with ${iss}`);
    }
    // Claims are checked only once the signature proves who wrote them.
    if (server.id !== iss) throw new AuthFailure('REQUEST_CLAIMS_INVALID', 'request iss differs from server_id.id');
    if (c.aud !== AUDIENCE) throw new AuthFailure('REQUEST_CLAIMS_INVALID', `request aud is ${quoted(c.aud)}`);
    // nats-server always sets exp (iat + its authorization timeout): without it no deadline is known.
    if (typeof c.exp !== 'number' || !Number.isFinite(c.exp)) throw new AuthFailure('REQUEST_CLAIMS_INVALID', 'request has no numeric exp');
    if (nats.type !== 'authorization_request') throw new AuthFailure('REQUEST_CLAIMS_INVALID', 'request type is not authorization_request');
    if (nats.version !== 2) throw new AuthFailure('REQUEST_CLAIMS_INVALID', `unsupported request version ${quoted(nats.version)}`);
    const userNkey = nats.user_nkey;
    if (typeof userNkey !== 'string' || !isPublicKey(userNkey, 'user')) {
      throw new AuthFailure('REQUEST_CLAIMS_INVALID', 'request user_nkey is not a user public key');
    }
    let serverXkey: string | undefined;
    if (this.#xkey) {
      if (server.xkey !== headerXkey) throw new AuthFailure('REQUEST_XKEY_MISMATCH', 'server_id.xkey differs from the Nats-Server-Xkey header');
      serverXkey = headerXkey;
    }
    const client = (nats.client_info ?? {}) as Record<string, unknown>;
    const connectOpts = nats.connect_opts;
    return {
      serverId: iss,
      serverName: str(server.name),
      serverVersion: str(server.version),
      serverXkey,
      userNkey,
      issuedAt: c.iat,
      clientHost: str(client.host),
      clientKind: str(client.kind),
      clientType: str(client.type),
      clientId: typeof client.id === 'number' && Number.isSafeInteger(client.id) ? client.id : undefined,
      clientName: str(client.name),
      connectOpts: typeof connectOpts === 'object' && connectOpts !== null ? (connectOpts as Record<string, unknown>) : {},
    };
  }

  #open(data: Uint8Array, headerXkey: string | undefined): string {
    if (!this.#xkey) {
      if (XkeyBox.isSealed(data)) throw new AuthFailure('REQUEST_DECRYPT_FAILED', 'request is encrypted but no xkey seed is configured');
      return Buffer.from(data).toString('utf8');
    }
    // A plaintext request while we hold an xkey is a misconfiguration or a downgrade.
    if (!XkeyBox.isSealed(data)) throw new AuthFailure('REQUEST_PLAINTEXT', 'request is not encrypted although an xkey is configured');
    if (!headerXkey) throw new AuthFailure('REQUEST_DECRYPT_FAILED', 'encrypted request without a Nats-Server-Xkey header');
    const opened = this.#xkey.open(data, headerXkey);
    if (!opened) throw new AuthFailure('REQUEST_DECRYPT_FAILED', 'request box does not open with our xkey and the header key');
    return Buffer.from(opened).toString('utf8');
  }

  #serverKey(id: string): KeyObject {
    let key = this.#serverKeys.get(id);
    if (!key) {
      key = publicKeyObject(id, 'server');
      if (this.#serverKeys.size >= MAX_SERVER_KEYS) this.#serverKeys.delete(this.#serverKeys.keys().next().value!);
      this.#serverKeys.set(id, key);
    }
    return key;
  }
}

function str(v: unknown): string {
  return typeof v === 'string' ? v : '';
}
