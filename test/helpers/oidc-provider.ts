/**
 * A real OpenID Provider (the `oidc-provider` package) on 127.0.0.1 that issues RS256 JWT access
 * tokens (`typ: at+jwt`) through the client_credentials grant.
 *
 * The service under test must interoperate with a real, standards-following issuer; a
 * hand-made issuer (local-issuer.ts) only proves we agree with ourselves. This one exercises
 * real discovery, a real JWKS and the token shape (RFC 9068) that production IdPs emit.
 */
import { createServer, type RequestListener, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair } from 'jose';
import type { Configuration, Provider, TokenLike } from 'oidc-provider';

/** One client allowed to use the client_credentials grant. */
export interface OidcClient {
  clientId: string;
  clientSecret: string;
  /**
   * Custom claims copied into every access token issued to this client (e.g. groups).
   * Registered claims (iss, sub, aud, exp, iat, jti, scope, client_id, cnf) cannot be set this
   * way: oidc-provider writes its own values over them, so they are refused up front.
   */
  claims: Record<string, unknown>;
}

/** Options for {@link startOidcProvider}. */
export interface OidcProviderOptions {
  clients: OidcClient[];
  /** Resource indicator (RFC 8707) that becomes the token audience. Default 'urn:nats'. */
  resource?: string;
  /** Access token lifetime in seconds. Default 300. */
  ttlSeconds?: number;
  /** Scopes the resource server accepts, requestable with token(id, {scope}). Default ['nats']. */
  scopes?: string[];
}

/** Options for {@link RunningOidcProvider.token}. */
export interface TokenRequestOptions {
  /** Space-separated scopes to request; must be among OidcProviderOptions.scopes. */
  scope?: string;
  /** Override the resource parameter (to provoke invalid_target). Default: the provider's resource. */
  resource?: string;
  /** Override the secret sent (to provoke invalid_client). Default: the configured secret. */
  clientSecret?: string;
}

/** A running provider. Stop it with `stop()` or `await using`. */
export interface RunningOidcProvider extends AsyncDisposable {
  /** "http://127.0.0.1:PORT" (no trailing slash); discovery lives below it. */
  readonly issuer: string;
  /** The audience of issued access tokens. */
  readonly resource: string;
  /** Token endpoint URL, as advertised by discovery. */
  readonly tokenEndpoint: string;
  /**
   * Obtains an access token for `clientId` with a real client_credentials POST
   * (client_secret_basic, resource parameter). Rejects with the endpoint's error body.
   */
  token(clientId: string, opts?: TokenRequestOptions): Promise<string>;
  stop(): Promise<void>;
}

/** Claims oidc-provider sets itself in JWT access tokens, overriding extraTokenClaims. */
const RESERVED_CLAIMS = new Set(['iss', 'sub', 'aud', 'exp', 'iat', 'nbf', 'jti', 'scope', 'client_id', 'cnf']);

let providerModule: Promise<typeof import('oidc-provider')> | undefined;

/**
 * Imports oidc-provider once. Its module body prints "Unsupported runtime" on Node 20 (it wants
 * Node 22 LTS, yet works here); that line would be printed into every test run, so drop exactly
 * that warning while the module loads.
 */
function loadOidcProvider(): Promise<typeof import('oidc-provider')> {
  providerModule ??= withoutWarnings([/Unsupported runtime/], () => import('oidc-provider'));
  return providerModule;
}

/**
 * Runs `action` with console.warn filtered. oidc-provider writes its notices with console.warn
 * and has no option to turn the development-only ones off; other warnings still get through.
 */
async function withoutWarnings<T>(patterns: RegExp[], action: () => Promise<T> | T): Promise<T> {
  const original = console.warn;
  console.warn = (...args: unknown[]) => {
    const text = args.map(String).join(' ');
    if (text.includes('oidc-provider WARNING') && patterns.some((pattern) => pattern.test(text))) return;
    original.apply(console, args);
  };
  try {
    return await action();
  } finally {
    console.warn = original;
  }
}

/** Starts an oidc-provider on a free loopback port with an RS256 key generated for this run. */
export async function startOidcProvider(opts: OidcProviderOptions): Promise<RunningOidcProvider> {
  const resource = opts.resource ?? 'urn:nats';
  const ttlSeconds = opts.ttlSeconds ?? 300;
  const scopes = opts.scopes ?? ['nats'];
  const claimsByClient = new Map<string, Record<string, unknown>>();
  const secrets = new Map<string, string>();
  for (const client of opts.clients) {
    const reserved = Object.keys(client.claims).filter((claim) => RESERVED_CLAIMS.has(claim));
    if (reserved.length > 0) {
      throw new Error(`client ${client.clientId}: oidc-provider overrides the claims ${reserved.join(', ')}`);
    }
    claimsByClient.set(client.clientId, structuredClone(client.claims));
    secrets.set(client.clientId, client.clientSecret);
  }

  const { default: ProviderClass, errors } = await loadOidcProvider();

  const { privateKey } = await generateKeyPair('RS256', { extractable: true });
  const signingKey = { ...(await exportJWK(privateKey)), kid: `rs256-${Date.now().toString(36)}`, alg: 'RS256', use: 'sig' };

  // The issuer must contain the port, so listen first and attach the provider afterwards.
  let handler: RequestListener | undefined;
  const server = createServer((req, res) => {
    if (handler) handler(req, res);
    else res.writeHead(503).end();
  });
  const port = await listen(server);
  const issuer = `http://127.0.0.1:${port}`;

  const configuration: Configuration = {
    clients: opts.clients.map((client) => ({
      client_id: client.clientId,
      client_secret: client.clientSecret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: scopes.join(' '),
    })),
    jwks: { keys: [signingKey] },
    scopes,
    ttl: { ClientCredentials: ttlSeconds },
    features: {
      // Only the token endpoint is used: no login UI, so the dev interaction pages go.
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Without this, a request lacking `resource` would get an opaque, audience-less token.
        defaultResource: () => resource,
        // oidc-provider's default throws and warns "you MUST change it": every resource
        // server must be described explicitly.
        getResourceServerInfo: (_ctx: unknown, indicator: string) => {
          if (indicator !== resource) throw new errors.InvalidTarget(`unknown resource ${indicator}`);
          return {
            scope: scopes.join(' '),
            audience: resource,
            accessTokenTTL: ttlSeconds,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
    extraTokenClaims: (_ctx: unknown, token: TokenLike) => (token.clientId === undefined ? undefined : structuredClone(claimsByClient.get(token.clientId))),
  };

  // Constructing without an adapter prints the "in-memory adapter is development-only" warning:
  // exactly what a test wants, so silence it.
  let provider: Provider;
  try {
    provider = await withoutWarnings([/in-memory adapter/], () => new ProviderClass(issuer, configuration));
  } catch (err) {
    await close(server);
    throw err;
  }
  // server_error means a bug in our configuration; keep it for the failure message of token().
  const serverErrors: string[] = [];
  provider.on('server_error', (_ctx, err) => {
    serverErrors.push(err instanceof Error ? (err.stack ?? err.message) : String(err));
  });
  handler = provider.callback();

  const tokenEndpoint = `${issuer}/token`;

  const token = async (clientId: string, tokenOpts: TokenRequestOptions = {}): Promise<string> => {
    const secret = tokenOpts.clientSecret ?? secrets.get(clientId);
    if (secret === undefined) throw new Error(`unknown client ${clientId}`);
    const body = new URLSearchParams({ grant_type: 'client_credentials', resource: tokenOpts.resource ?? resource });
    if (tokenOpts.scope !== undefined) body.set('scope', tokenOpts.scope);
    const response = await fetch(tokenEndpoint, {
      method: 'POST',
      headers: {
        // RFC 6749 §2.3.1: id and secret are form-urlencoded before base64.
        authorization: `Basic ${Buffer.from(`${formEncode(clientId)}:${formEncode(secret)}`).toString('base64')}`,
        'content-type': 'application/x-www-form-urlencoded',
        accept: 'application/json',
      },
      body,
    });
    const text = await response.text();
    if (!response.ok) {
      const hint = serverErrors.length > 0 ? `\nprovider server errors:\n${serverErrors.join('\n')}` : '';
      throw new Error(`token endpoint answered ${response.status}: ${text}${hint}`);
    }
    const parsed = JSON.parse(text) as { access_token?: unknown };
    if (typeof parsed.access_token !== 'string') throw new Error(`no access_token in ${text}`);
    return parsed.access_token;
  };

  let stopped: Promise<void> | undefined;
  const stop = (): Promise<void> => (stopped ??= close(server));

  return { issuer, resource, tokenEndpoint, token, stop, [Symbol.asyncDispose]: stop };
}

function formEncode(value: string): string {
  return encodeURIComponent(value).replace(/%20/g, '+');
}

function listen(server: Server): Promise<number> {
  return new Promise((resolveListen, rejectListen) => {
    server.once('error', rejectListen);
    server.listen(0, '127.0.0.1', () => {
      server.off('error', rejectListen);
      resolveListen((server.address() as AddressInfo).port);
    });
  });
}

function close(server: Server): Promise<void> {
  return new Promise((resolveClose) => {
    // fetch keeps connections alive; without this close() would wait for them to time out.
    server.closeAllConnections();
    server.close(() => resolveClose());
  });
}
