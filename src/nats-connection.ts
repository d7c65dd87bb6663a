import { readFileSync } from 'node:fs';
import { connect, credsAuthenticator, nkeyAuthenticator, type NatsConnection, type NodeConnectionOptions } from '@nats-io/transport-node';
import type { Config } from './config.js';

/** Connects as the callout service user with whichever credentials the configuration names. */
export async function connectNats(config: Config, overrides: Partial<NodeConnectionOptions> = {}): Promise<NatsConnection> {
  return connectAs(config, config.nats, overrides);
}

/** Connects to the service's servers with the given credentials (the service's, or the system login of `admin.system`). */
export async function connectAs(
  config: Config,
  n: Pick<Config['nats'], 'user' | 'password' | 'token' | 'nkeySeed' | 'credsFile'>,
  overrides: Partial<NodeConnectionOptions> = {},
): Promise<NatsConnection> {
  const auth: Record<string, unknown> = {};
  if (n.user !== undefined && n.password) Object.assign(auth, { user: n.user, pass: n.password.value });
  if (n.token) auth.token = n.token.value;
  if (n.nkeySeed) auth.authenticator = nkeyAuthenticator(new TextEncoder().encode(n.nkeySeed.value));
  if (n.credsFile) auth.authenticator = credsAuthenticator(readFileSync(n.credsFile));
  return connect({
    servers: [...config.nats.servers],
    name: config.nats.name,
    // The callout is what lets everyone else in: never give up reconnecting, and come back
    // quickly after a server restart: every client attempt before we resubscribe is wasted.
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
    reconnectJitter: 100,
    // Rejected credentials (a rotation in progress) must not end the service for good either.
    ignoreAuthErrorAbort: true,
    ...auth,
    ...overrides,
  });
}

/**
 * Opens `count` (default `nats.connections`) connections of a running service (named `NAME`, `NAME#2`, ...).
 * Closes those already open if one fails, saying how many were (a limit on the account's or the
 * server's connections stops a later one, not the first).
 */
export async function connectAll(
  config: Config,
  overrides: Partial<NodeConnectionOptions> = {},
  count = config.nats.connections,
  namePrefix = config.nats.name,
): Promise<NatsConnection[]> {
  const open: NatsConnection[] = [];
  try {
    for (let i = 0; i < count; i++) {
      open.push(await connectNats(config, { name: i === 0 ? namePrefix : `${namePrefix}#${i + 1}`, ...overrides }));
    }
    return open;
  } catch (err) {
    await Promise.all(open.map((nc) => nc.close().catch(() => undefined)));
    if (open.length === 0) throw err;
    const e = err as Error;
    // nats.js keeps a refusal past a connection limit to itself: the connect just times out.
    throw new Error(
      `${open.length} of ${count} connections were open when the next one failed (${e.name}: ${e.message}); a refusal past the account's limits.conn or the server's max_connections ends so (nats-server logs "maximum ... connections exceeded")`,
      { cause: err },
    );
  }
}

/** The user information of a server URL (`nats://user:secret@host`), up to the last `@` before the path, as URL parsers read it. */
const USERINFO = /^([a-z][a-z0-9+.-]*:\/\/)?[^/\s]*@/i;

/**
 * A server URL fit for logs: credentials written into it (`nats://user:secret@host`) are
 * replaced, so a password never reaches a log line or an error message.
 */
export function withoutCredentials(url: string): string {
  return url.replace(USERINFO, '$1<redacted>@');
}

/** A server URL with the credentials written into it removed: for a login that presents nothing else. */
export function withoutUserinfo(url: string): string {
  return url.replace(USERINFO, '$1');
}
