import type { KeyObject } from 'node:crypto';
import { AuthFailure } from './errors.js';
import { decodeNatsJwt } from './nats-jwt.js';
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
  /**
   * When the server gives up on this request, in milliseconds on OUR clock: the time we received
   * it plus the server's own budget (`exp - iat`), so clock skew between hosts does not matter.
   */
  readonly deadlineMs: number | undefined;
  readonly clientHost: string;
  readonly clientKind: string;
  readonly clientType: string;
  readonly connectOpts: Readonly<Record<string, unknown>>;
}

const AUDIENCE = 'nats-authorization-request';
/** Clock difference tolerated between nats-server and this service when reading `exp`. */
const SERVER_CLOCK_SKEW_SECONDS = 10;
const MAX_SERVER_KEYS = 1024;

/**
 * Opens and verifies the server's authorization request: xkey box (mandatory when we hold an
 * xkey), Ed25519 signature by the server key it names, and the claims nats-server always sets.
 * Server verification keys are built once per server and kept in a bounded map.
 */
export class RequestVerifier {
  readonly #xkey: XkeyBox | undefined;
  readonly #serverKeys = new Map<string, KeyObject>();

  constructor(xkey: XkeyBox | undefined) {
    this.#xkey = xkey;
  }

  /**
   * @param data the raw message payload
   * @param headerXkey the `Nats-Server-Xkey` header, if present
   * @param receivedMs when the request arrived (ms since the epoch), for the deadline
   */
  verify(data: Uint8Array, headerXkey: string | undefined, receivedMs: number): AuthRequest {
    const jwt = this.#open(data, headerXkey);
    const decoded = decodeNatsJwt(jwt);
    if (typeof decoded === 'string') throw new AuthFailure('REQUEST_MALFORMED', decoded);
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
    if (c.aud !== AUDIENCE) throw new AuthFailure('REQUEST_CLAIMS_INVALID', `request aud is ${JSON.stringify(c.aud)}`);
    if (nats.type !== 'authorization_request') throw new AuthFailure('REQUEST_CLAIMS_INVALID', 'request type is not authorization_request');
    if (nats.version !== 2) throw new AuthFailure('REQUEST_CLAIMS_INVALID', `unsupported request version ${JSON.stringify(nats.version)}`);
    const userNkey = nats.user_nkey;
    if (typeof userNkey !== 'string' || !isPublicKey(userNkey, 'user')) {
      throw new AuthFailure('REQUEST_CLAIMS_INVALID', 'request user_nkey is not a user public key');
    }
    const exp = typeof c.exp === 'number' && Number.isFinite(c.exp) ? c.exp : undefined;
    const iat = typeof c.iat === 'number' && Number.isFinite(c.iat) ? c.iat : undefined;
    const nowSeconds = receivedMs / 1000;
    // Only a request stale by the server's clock beyond any plausible skew is refused here.
    if (exp !== undefined && exp + SERVER_CLOCK_SKEW_SECONDS < nowSeconds) {
      throw new AuthFailure('REQUEST_EXPIRED', `request expired ${Math.round(nowSeconds - exp)}s ago`);
    }
    // The server's budget is its auth timeout, exp - iat; it started just before we received it.
    const deadlineMs = exp !== undefined && iat !== undefined && exp > iat ? receivedMs + (exp - iat) * 1000 : undefined;
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
      deadlineMs,
      clientHost: str(client.host),
      clientKind: str(client.kind),
      clientType: str(client.type),
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
