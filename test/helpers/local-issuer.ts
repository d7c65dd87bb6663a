/**
 * A hand-made OpenID issuer on 127.0.0.1 for edge cases a real provider will not produce:
 * key rotation on demand, tokens signed by keys outside the JWKS, wrong `typ`/`alg`/`kid`
 * headers, missing claims, JWKS outages and slow endpoints. It counts discovery and JWKS fetches
 * so tests can assert caching and refetch-on-unknown-kid behaviour.
 *
 * Keys are generated with jose; tokens are signed with node:crypto directly so that a test can
 * put ANY header on a token (jose refuses some hostile headers, e.g. odd `crit` values, and a
 * mismatch between `alg` and the key), which is exactly what these tests need.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { constants, createHmac, createPublicKey, KeyObject, sign as cryptoSign, type SignKeyObjectInput } from 'node:crypto';
import type { AddressInfo, Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { exportJWK, generateKeyPair, type JWK } from 'jose';

/** Signature algorithms the issuer can generate keys for. */
export type LocalIssuerAlg = 'RS256' | 'ES256' | 'EdDSA';

/** Options for {@link startLocalIssuer}. */
export interface LocalIssuerOptions {
  /** Algorithm of the generated keys. Default 'RS256'. */
  alg?: LocalIssuerAlg;
  /**
   * Path appended to the origin to form the issuer, e.g. '/realms/test'. Discovery is served at
   * `<issuer>/.well-known/openid-configuration` and the JWKS at `<issuer>/jwks`. Default ''.
   */
  path?: string;
  /**
   * Private key of the first current key (of `alg`'s type) instead of a generated one, so tokens
   * can also be signed elsewhere, e.g. on worker threads. Default: a new key.
   */
  privateKey?: KeyObject;
}

/** Options for {@link LocalIssuer.sign}. */
export interface LocalSignOptions {
  /** `kid` header; null omits it. Default: the kid of the signing key. */
  kid?: string | null;
  /**
   * `alg` header. Default: the key's algorithm. Another algorithm of the same key type works
   * (e.g. 'RS384' or 'PS256' with an RSA key) for algorithm-allowlist tests.
   */
  alg?: string;
  /** `typ` header; null omits it. Default 'at+jwt'. */
  typ?: string | null;
  /**
   * Which key signs: 'current' (in the JWKS), 'previous' (the key before the last rotate()),
   * or 'unknown' (a key of the same algorithm that is never published, with its own kid).
   * Default 'current'.
   */
  key?: 'current' | 'previous' | 'unknown';
  /** Extra or overriding header parameters, written as given (e.g. crit, jku, jwk). */
  header?: Record<string, unknown>;
}

/** A failure to inject into an endpoint; see {@link LocalIssuer.faults}. */
export interface EndpointFault {
  /** Answer with this HTTP status (and `body`) instead of the document. */
  status?: number;
  /** Body sent with `status`. Default: a short text. */
  body?: string;
  /** Wait this long before answering (to trigger fetch timeouts). */
  delayMs?: number;
}

/** A running local issuer. Stop it with `stop()` or `await using`. */
export interface LocalIssuer extends AsyncDisposable {
  /** `http://127.0.0.1:PORT` + path, exactly as it appears in `iss` and in discovery. */
  readonly issuer: string;
  readonly discoveryUrl: string;
  readonly jwksUri: string;
  /** Requests served on the discovery URL so far (including faulted ones). */
  readonly discoveryFetches: number;
  /** Requests served on the JWKS URL so far (including faulted ones). */
  readonly jwksFetches: number;
  /** Kid of the current signing key. */
  readonly kid: string;
  /**
   * Fields merged over the discovery document on each request, e.g. `{issuer: 'http://evil'}`
   * for issuer-mismatch tests. A field set to undefined is removed from the document.
   */
  discoveryOverrides: Record<string, unknown>;
  /** Per-endpoint failures; set a field to make the next requests fail, delete it to recover. */
  faults: { discovery?: EndpointFault; jwks?: EndpointFault };
  /**
   * Signs `claims` as a compact JWS. Defaults: iss = issuer, iat = now, exp = now + 300;
   * `claims` override them, and a claim set to undefined is left out (e.g. `{exp: undefined}`).
   */
  sign(claims: Record<string, unknown>, opts?: LocalSignOptions): Promise<string>;
  /**
   * Makes a new current key with a new kid. With keepOld the JWKS serves the new and the old
   * key (a graceful rotation); without it only the new key (an abrupt one). Default keepOld false.
   * With reuseKid the new key keeps the current kid: the rotation some IdPs do that only a
   * signature failure reveals to a cached JWKS.
   */
  rotate(opts?: { keepOld?: boolean; reuseKid?: boolean }): Promise<void>;
  /** SPKI PEM of the current public key: the "secret" of the HS256 key-confusion attack. */
  publicKeyPem(): string;
  /** The JWKS currently served: `{keys: [...]}` public JWKs with kid, alg and use. */
  jwks(): { keys: JWK[] };
  stop(): Promise<void>;
}

interface IssuerKey {
  kid: string;
  alg: LocalIssuerAlg;
  privateKey: KeyObject;
  publicKey: KeyObject;
  publicJwk: JWK;
}

let kidCounter = 0;

// Unique and readable in failure messages; kids only need to differ.
const newKid = (alg: LocalIssuerAlg): string => `${alg.toLowerCase()}-${++kidCounter}-${Math.random().toString(36).slice(2, 8)}`;

async function newKey(alg: LocalIssuerAlg, reuseKid?: string): Promise<IssuerKey> {
  const pair = await generateKeyPair(alg, { extractable: true });
  const kid = reuseKid ?? newKid(alg);
  return {
    kid,
    alg,
    privateKey: KeyObject.from(pair.privateKey),
    publicKey: KeyObject.from(pair.publicKey),
    publicJwk: { ...(await exportJWK(pair.publicKey)), kid, alg, use: 'sig' },
  };
}

async function givenKey(alg: LocalIssuerAlg, privateKey: KeyObject): Promise<IssuerKey> {
  const kid = newKid(alg);
  const publicKey = createPublicKey(privateKey);
  return { kid, alg, privateKey, publicKey, publicJwk: { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' } };
}

/** Starts a local issuer with one current key. */
export async function startLocalIssuer(opts: LocalIssuerOptions = {}): Promise<LocalIssuer> {
  const alg = opts.alg ?? 'RS256';
  let current = opts.privateKey ? await givenKey(alg, opts.privateKey) : await newKey(alg);
  let previous: IssuerKey | undefined;
  let published: IssuerKey[] = [current];
  // Lazily made: most tests never need a key outside the JWKS.
  let unknown: IssuerKey | undefined;

  const server = createServer();
  await new Promise<void>((resolveListen, rejectListen) => {
    server.once('error', rejectListen);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', rejectListen);
      resolveListen();
    });
  });
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const path = opts.path ?? '';
  const issuer = origin + path;
  // OpenID Connect Discovery appends the well-known suffix after removing a trailing slash.
  const base = issuer.replace(/\/$/, '');
  const discoveryUrl = `${base}/.well-known/openid-configuration`;
  const jwksUri = `${base}/jwks`;
  const discoveryPath = new URL(discoveryUrl).pathname;
  const jwksPath = new URL(jwksUri).pathname;

  let discoveryFetches = 0;
  let jwksFetches = 0;

  // Mutable through the returned object's accessors; read on every request.
  const issuerState: { discoveryOverrides: Record<string, unknown>; faults: LocalIssuer['faults'] } = {
    discoveryOverrides: {},
    faults: {},
  };

  const jwks = (): { keys: JWK[] } => ({ keys: published.map((key) => structuredClone(key.publicJwk)) });

  const discoveryDocument = (): Record<string, unknown> => {
    const document: Record<string, unknown> = {
      issuer,
      jwks_uri: jwksUri,
      // Required by OpenID Connect Discovery 1.0 §3, so strict clients accept the document.
      authorization_endpoint: `${base}/authorize`,
      response_types_supported: ['code'],
      subject_types_supported: ['public'],
      id_token_signing_alg_values_supported: [alg],
      ...issuerState.discoveryOverrides,
    };
    for (const [name, value] of Object.entries(document)) if (value === undefined) delete document[name];
    return document;
  };

  const closing = new AbortController();
  const sockets = new Set<Socket>();
  server.on('connection', (socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });

  server.on('request', (req: IncomingMessage, res: ServerResponse) => {
    const pathname = new URL(req.url ?? '/', origin).pathname;
    let endpoint: 'discovery' | 'jwks';
    if (pathname === discoveryPath) {
      discoveryFetches++;
      endpoint = 'discovery';
    } else if (pathname === jwksPath) {
      jwksFetches++;
      endpoint = 'jwks';
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' }).end('not found');
      return;
    }
    void respond(endpoint, res);
  });

  const respond = async (endpoint: 'discovery' | 'jwks', res: ServerResponse): Promise<void> => {
    const fault = issuerState.faults[endpoint];
    if (fault?.delayMs) {
      try {
        await sleep(fault.delayMs, undefined, { signal: closing.signal });
      } catch {
        return; // stop() was called: do not hold the test process for the rest of the delay.
      }
    }
    if (res.destroyed) return; // The client gave up (timeout test): nothing to answer.
    if (fault?.status !== undefined) {
      res.writeHead(fault.status, { 'content-type': 'text/plain' }).end(fault.body ?? `injected ${fault.status}`);
      return;
    }
    const body = JSON.stringify(endpoint === 'discovery' ? discoveryDocument() : jwks());
    res
      .writeHead(200, {
        'content-type': endpoint === 'discovery' ? 'application/json' : 'application/jwk-set+json',
        'cache-control': 'no-store',
      })
      .end(body);
  };

  const sign = async (claims: Record<string, unknown>, signOpts: LocalSignOptions = {}): Promise<string> => {
    let key: IssuerKey;
    switch (signOpts.key ?? 'current') {
      case 'current':
        key = current;
        break;
      case 'previous':
        if (!previous) throw new Error('sign({key: "previous"}) needs a rotate() first');
        key = previous;
        break;
      case 'unknown':
        unknown ??= await newKey(alg);
        key = unknown;
        break;
    }
    const now = Math.floor(Date.now() / 1000);
    const header: Record<string, unknown> = {
      alg: signOpts.alg ?? key.alg,
      typ: signOpts.typ === undefined ? 'at+jwt' : signOpts.typ,
      kid: signOpts.kid === undefined ? key.kid : signOpts.kid,
      ...signOpts.header,
    };
    for (const [name, value] of Object.entries(header)) if (value === null || value === undefined) delete header[name];
    const payload = { iss: issuer, iat: now, exp: now + 300, ...claims };
    const signingInput = `${b64json(header)}.${b64json(payload)}`;
    const signature = rawSign(String(header['alg']), key.privateKey, Buffer.from(signingInput));
    return `${signingInput}.${signature.toString('base64url')}`;
  };

  const rotate = async (rotateOpts: { keepOld?: boolean; reuseKid?: boolean } = {}): Promise<void> => {
    const next = await newKey(alg, rotateOpts.reuseKid ? current.kid : undefined);
    previous = current;
    current = next;
    published = rotateOpts.keepOld ? [next, ...published] : [next];
  };

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopped ??= new Promise<void>((resolveClose) => {
      closing.abort();
      // Keep-alive connections (fetch) would otherwise hold close() open.
      for (const socket of sockets) socket.destroy();
      server.close(() => resolveClose());
    }));

  return {
    issuer,
    discoveryUrl,
    jwksUri,
    get discoveryFetches() {
      return discoveryFetches;
    },
    get jwksFetches() {
      return jwksFetches;
    },
    get kid() {
      return current.kid;
    },
    get discoveryOverrides() {
      return issuerState.discoveryOverrides;
    },
    set discoveryOverrides(value: Record<string, unknown>) {
      issuerState.discoveryOverrides = value;
    },
    get faults() {
      return issuerState.faults;
    },
    set faults(value: LocalIssuer['faults']) {
      issuerState.faults = value;
    },
    sign,
    rotate,
    publicKeyPem: () => current.publicKey.export({ type: 'spki', format: 'pem' }).toString(),
    jwks,
    stop,
    [Symbol.asyncDispose]: stop,
  };
}

/** Signs with the raw JWS algorithm `alg`; throws if the key cannot do it. */
function rawSign(alg: string, key: KeyObject, data: Buffer): Buffer {
  const rs = /^RS(256|384|512)$/.exec(alg);
  if (rs) return cryptoSign(`sha${rs[1]}`, data, key);
  const ps = /^PS(256|384|512)$/.exec(alg);
  if (ps) {
    const input: SignKeyObjectInput = { key, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: Number(ps[1]) / 8 };
    return cryptoSign(`sha${ps[1]}`, data, input);
  }
  const es = /^ES(256|384|512)$/.exec(alg);
  // JWS wants the fixed-size r||s form, not DER.
  if (es) return cryptoSign(`sha${es[1]}`, data, { key, dsaEncoding: 'ieee-p1363' });
  if (alg === 'EdDSA' || alg === 'Ed25519') return cryptoSign(null, data, key);
  throw new Error(`local issuer cannot sign alg ${alg} with a ${key.asymmetricKeyType} key; use hs256WithSecret() or unsignedToken()`);
}

function b64json(value: unknown): string {
  return Buffer.from(JSON.stringify(value)).toString('base64url');
}

/**
 * An unsecured JWT (`alg: none`, empty signature) carrying `claims`. `header` adds or overrides
 * header fields (e.g. `{alg: 'None'}` for case-variation attacks).
 */
export function unsignedToken(claims: Record<string, unknown>, header: Record<string, unknown> = {}): string {
  return `${b64json({ alg: 'none', typ: 'at+jwt', ...header })}.${b64json(claims)}.`;
}

/**
 * An HS256 JWT with `secretBytes` as the HMAC key. With a public key PEM as the secret and the
 * issuer's kid in `header`, this is the classic RS256→HS256 key-confusion token.
 */
export function hs256WithSecret(claims: Record<string, unknown>, secretBytes: Uint8Array | string, header: Record<string, unknown> = {}): string {
  const signingInput = `${b64json({ alg: 'HS256', typ: 'at+jwt', ...header })}.${b64json(claims)}`;
  const mac = createHmac('sha256', secretBytes).update(signingInput).digest('base64url');
  return `${signingInput}.${mac}`;
}

/**
 * A syntactically plausible JWE (five base64url segments, `alg: RSA-OAEP`, `enc: A256GCM`) that
 * nobody can decrypt: a verifier must reject it rather than try to treat it as a JWS.
 */
export function fakeJwe(): string {
  const header = b64json({ alg: 'RSA-OAEP', enc: 'A256GCM', typ: 'at+jwt' });
  const segment = (bytes: number): string => Buffer.alloc(bytes, 7).toString('base64url');
  return [header, segment(256), segment(12), segment(32), segment(16)].join('.');
}
