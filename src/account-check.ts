/**
 * The startup check of operator mode: the callout account's JWT (from a file or the running
 * servers) against this service's configuration. What it finds would otherwise show only as
 * refused logins: a target account missing from `allowed_accounts`, an xkey that does not match,
 * users in `auth_users` that bypass the callout.
 */
import { readFileSync } from 'node:fs';
import type { NatsConnection } from '@nats-io/transport-node';
import { calloutAccountConnections, type Config, replicaLanes } from './config.js';
import { decodeNatsJwt } from './nats-jwt.js';
import { isPublicKey, NkeySigner, publicKeyObject, verifySignature } from './nkey.js';

export interface AccountFindings {
  /** Misconfigurations that refuse logins or break the service. */
  readonly problems: readonly string[];
  /** Worth knowing, not necessarily wrong. */
  readonly warnings: readonly string[];
}

interface AccountClaims {
  readonly sub?: unknown;
  readonly iss?: unknown;
  readonly exp?: unknown;
  readonly nats?: {
    readonly type?: unknown;
    readonly limits?: { readonly conn?: unknown };
    readonly signing_keys?: unknown;
    readonly authorization?: { readonly auth_users?: unknown; readonly allowed_accounts?: unknown; readonly xkey?: unknown };
  };
}

/** A verified account JWT's claims (its signature checked against its own issuer), or why not. */
export function readAccountJwt(jwt: string, expected: string): AccountClaims | string {
  const decoded = decodeNatsJwt(jwt.trim());
  if (typeof decoded === 'string') return `not a NATS JWT: ${decoded}`;
  const claims = decoded.claims as AccountClaims;
  if (claims.nats?.type !== 'account') return `not an account JWT (type ${JSON.stringify(claims.nats?.type)})`;
  if (claims.sub !== expected) return `the JWT is of account ${JSON.stringify(claims.sub) ?? 'undefined'}, not ${expected}`;
  if (typeof claims.iss !== 'string') return `its issuer ${JSON.stringify(claims.iss) ?? 'undefined'} is not an operator key`;
  const iss = claims.iss;
  if (!isPublicKey(iss, 'operator')) return `its issuer ${iss} is not an operator key`;
  if (!verifySignature(publicKeyObject(iss, 'operator'), decoded.signingInput, decoded.signature)) return 'its signature does not verify';
  return claims;
}

/** The public keys an account JWT lists as signing keys, and which of them carry a scope. */
function signingKeys(claims: AccountClaims): Map<string, boolean> {
  const keys = new Map<string, boolean>();
  for (const k of Array.isArray(claims.nats?.signing_keys) ? claims.nats.signing_keys : []) {
    if (typeof k === 'string') keys.set(k, false);
    else if (k && typeof k === 'object' && typeof (k as { key?: unknown }).key === 'string') keys.set((k as { key: string }).key, true);
  }
  return keys;
}

/** The public key of the user this service connects as, when its credentials name one. */
export function serviceUserKey(config: Config): string | undefined {
  const n = config.nats;
  if (n.nkeySeed) return new NkeySigner(n.nkeySeed.value, 'user').publicKey;
  if (n.credsFile) {
    const jwt = /-----BEGIN NATS USER JWT-----\s*([^\s-][^\s]*)\s*------END NATS USER JWT------/.exec(readFileSync(n.credsFile, 'utf8'))?.[1];
    const decoded = jwt ? decodeNatsJwt(jwt) : undefined;
    if (decoded && typeof decoded !== 'string' && typeof decoded.claims.sub === 'string') return decoded.claims.sub;
  }
  return undefined;
}

const short = (key: string) => `${key.slice(0, 8)}...`;

/** An `exp` for a message: a date when it is one, the raw number otherwise (never throws). */
function whenText(seconds: number): string {
  const d = new Date(seconds * 1000);
  return Number.isNaN(d.getTime()) ? String(seconds) : d.toISOString();
}

/**
 * Checks the callout account's JWT against the configuration: the service's user in
 * `auth_users` (and who else is), every configured account in `allowed_accounts`, the xkey.
 * `targets` are the configured accounts' JWTs when they could be had (checked for the signing
 * keys the service uses, and their scope).
 */
export function checkCalloutAccount(
  config: Config,
  claims: AccountClaims,
  opts: { serviceUser: string | undefined; xkey: string | undefined; nowSeconds: number; targets?: ReadonlyMap<string, AccountClaims | string> },
): AccountFindings {
  const problems: string[] = [];
  const warnings: string[] = [];
  const account = typeof claims.sub === 'string' ? claims.sub : JSON.stringify(claims.sub);
  if (typeof claims.exp === 'number' && claims.exp <= opts.nowSeconds) problems.push(`the callout account's JWT expired (exp ${whenText(claims.exp)})`);
  const auth = claims.nats?.authorization;
  const authUsers = Array.isArray(auth?.auth_users) ? auth.auth_users.filter((u): u is string => typeof u === 'string') : [];
  if (authUsers.length === 0) {
    problems.push(`account ${account} has no auth callout: its JWT lists no authorization.auth_users`);
    return { problems, warnings };
  }
  if (opts.serviceUser !== undefined) {
    if (!authUsers.includes(opts.serviceUser)) {
      problems.push(
        `this service connects as ${opts.serviceUser}, which is not in authorization.auth_users: nats-server would send the service's own login to the callout`,
      );
    }
    const others = authUsers.filter((u) => u !== opts.serviceUser);
    if (others.length > 0) {
      warnings.push(
        `authorization.auth_users also lists ${others.join(', ')}: those users log in without the callout (other replicas' credentials are fine; anything else bypasses it)`,
      );
    }
  }
  const allowed = Array.isArray(auth?.allowed_accounts) ? auth.allowed_accounts.filter((a): a is string => typeof a === 'string') : [];
  if (!allowed.includes('*')) {
    for (const [name, a] of Object.entries(config.accounts)) {
      if (!allowed.includes(a.publicKey)) {
        problems.push(`account ${name} (${a.publicKey}) is not in authorization.allowed_accounts: nats-server refuses every user the service places into it`);
      }
    }
  }
  const limit = connectionLimitFindings(config, claims);
  problems.push(...limit.problems);
  warnings.push(...limit.warnings);
  const jwtXkey = typeof auth?.xkey === 'string' && auth.xkey !== '' ? auth.xkey : undefined;
  if (jwtXkey && !opts.xkey) {
    problems.push(`the account requires encrypted requests (xkey ${short(jwtXkey)}) but callout.xkey_seed is not set: the service cannot read them`);
  } else if (!jwtXkey && opts.xkey) {
    warnings.push('callout.xkey_seed is set but the account JWT has no authorization.xkey: requests and answers travel unencrypted');
  } else if (jwtXkey && opts.xkey && jwtXkey !== opts.xkey) {
    problems.push(
      `the account's xkey ${short(jwtXkey)} is not the public key of callout.xkey_seed (${short(opts.xkey)}): the service cannot read its requests`,
    );
  }
  for (const [name, target] of opts.targets ?? []) {
    if (typeof target === 'string') {
      warnings.push(`account ${name}: its JWT could not be checked: ${target}`);
      continue;
    }
    const a = config.accounts[name]!;
    const signer = config.keys.accounts.forAccount(name)?.signer.publicKey;
    if (signer === undefined || signer === a.publicKey) continue;
    const keys = signingKeys(target);
    if (!keys.has(signer)) {
      problems.push(`account ${name}: ${signer} (accounts.${name}.signing_seed) is not one of its signing keys: nats-server refuses the users it signs`);
    } else if (keys.get(signer) !== a.scoped) {
      problems.push(
        keys.get(signer)
          ? `account ${name}: its signing key ${short(signer)} is scoped; set accounts.${name}.scoped: true (a scoped user JWT carries no permissions of its own)`
          : `account ${name}: accounts.${name}.scoped is true but its signing key ${short(signer)} has no scope: users would get no permissions`,
      );
    }
  }
  return { problems, warnings };
}

/** nats-server 2.10 keeps an account limit in 32 bits: a larger `conn` wraps around there. */
const MAX_CONN_2_10 = 2 ** 31 - 1;

/**
 * The callout account's connection limit (`limits.conn`) against the connections this replica
 * opens into it: its lanes, and with audit one connection per worker. Only -1 means no limit: a
 * JWT without `conn` (Go's encoder leaves a 0 out) admits no connection at all. Past the limit
 * nats-server refuses a connection, and the service retries its lanes for ever without serving
 * (an audit connection is given up on: that worker's events are dropped).
 */
export function connectionLimitFindings(config: Config, claims: AccountClaims): AccountFindings {
  const conn = claims.nats?.limits?.conn ?? 0;
  if (conn === -1) return { problems: [], warnings: [] };
  if (typeof conn !== 'number' || !Number.isSafeInteger(conn)) {
    return {
      problems: [
        `the callout account's limits.conn is ${JSON.stringify(conn) ?? String(conn)}, not an integer: nats-server cannot use this JWT (-1 admits any number)`,
      ],
      warnings: [],
    };
  }
  if (conn < 0) return { problems: [`the callout account's limits.conn is ${conn}: nats-server admits no connection (-1 admits any number)`], warnings: [] };
  const lanes = replicaLanes(config);
  const need = calloutAccountConnections(config);
  const workers = `${config.workers} worker${config.workers === 1 ? '' : 's'}${config.workersAuto ? " ('auto' on this machine)" : ''}`;
  const opens = `this replica opens ${need}: ${lanes} for nats.connections over ${workers}${config.audit ? `, and ${config.workers} for audit` : ''}`;
  const problems: string[] = [];
  const warnings: string[] = [];
  const remedies = `raise limits.conn (-1 admits any number), or lower nats.connections${config.workers > config.nats.connections ? ' or workers' : ''}${config.audit ? ', or turn audit off' : ''}`;
  if (conn < lanes) {
    problems.push(
      `the callout account admits ${conn} connection${conn === 1 ? '' : 's'} (limits.conn) and ${opens}: nats-server refuses the rest, and the service (or some of its workers) cannot start; ${remedies}`,
    );
  } else if (conn < need) {
    problems.push(
      `the callout account admits ${conn} connections (limits.conn) and ${opens}: ${need - conn} audit connection${need - conn === 1 ? ' is' : 's are'} refused, and those workers drop their audit events; ${remedies}`,
    );
  } else if (conn < 2 * need + 1) {
    warnings.push(
      `the callout account admits ${conn} connections (limits.conn) and ${opens}: a second replica, this one restarting before its old connections are gone, or an \`oidc-callout revoke\` or \`check\` (they log in as the service) would not fit`,
    );
  }
  if (conn > MAX_CONN_2_10)
    warnings.push(`the callout account's limits.conn ${conn} is above 2^31-1: nats-server 2.10 keeps it in 32 bits, where it wraps around`);
  return { problems, warnings };
}

/**
 * An account's JWT as the servers hold it, through a system-account connection: from the
 * resolver (`$SYS.REQ.ACCOUNT.<id>.CLAIMS.LOOKUP`, full and cache resolvers), else from a server
 * that has the account loaded (`$SYS.REQ.ACCOUNT.<id>.INFO`, any resolver: a MEMORY resolver's
 * account is loaded once a user of it connects). Throws with the reason when neither has it.
 */
export async function lookupAccountJwt(system: NatsConnection, account: string, timeoutMs = 2000): Promise<string> {
  try {
    const text = (await system.request(`$SYS.REQ.ACCOUNT.${account}.CLAIMS.LOOKUP`, '', { timeout: timeoutMs })).string().trim();
    if (text.split('.').length === 3) return text;
  } catch {
    // No full or cache resolver answers: ask the servers.
  }
  const reply = await system.request(`$SYS.REQ.ACCOUNT.${account}.INFO`, '', { timeout: timeoutMs });
  const body = reply.json<{ data?: { jwt?: unknown }; error?: { description?: unknown } }>();
  if (typeof body.data?.jwt === 'string' && body.data.jwt !== '') return body.data.jwt;
  const why = String(body.error?.description ?? '');
  if (/does not exist/i.test(why)) {
    throw new Error(
      'not loaded by the servers yet (a MEMORY resolver loads an account when a user of it first connects; a full resolver or callout.account_jwt avoids this)',
    );
  }
  throw new Error(`no JWT for account ${account}${why ? `: ${why}` : ''}`);
}

/**
 * Runs the check with the JWTs at hand: `callout.account_jwt` when configured, else the servers'
 * (through `system`, the `admin.system` login), which also yields the target accounts' JWTs.
 * Undefined when neither is available (server_config mode has no account JWT at all).
 */
export async function inspectCalloutAccount(
  config: Config,
  system: NatsConnection | undefined,
  nowSeconds: number,
): Promise<(AccountFindings & { readonly source: string }) | undefined> {
  if (config.callout.mode !== 'operator') return undefined;
  const account = config.keys.accounts.calloutAccount;
  let jwt = config.callout.accountJwt;
  let source = 'callout.account_jwt';
  if (jwt === undefined) {
    if (!system) return undefined;
    source = 'the servers (admin.system)';
    try {
      jwt = await lookupAccountJwt(system, account);
    } catch (err) {
      return { source, problems: [`the callout account's JWT could not be read from the servers: ${(err as Error).message}`], warnings: [] };
    }
  }
  const claims = readAccountJwt(jwt, account);
  if (typeof claims === 'string') return { source, problems: [`the callout account's JWT (${source}): ${claims}`], warnings: [] };
  const targets = new Map<string, AccountClaims | string>();
  if (system) {
    await Promise.all(
      Object.entries(config.accounts).map(async ([name, a]) => {
        try {
          const target = readAccountJwt(await lookupAccountJwt(system, a.publicKey), a.publicKey);
          targets.set(name, target);
        } catch (err) {
          targets.set(name, (err as Error).message);
        }
      }),
    );
  }
  let serviceUser: string | undefined;
  try {
    serviceUser = serviceUserKey(config);
  } catch {
    serviceUser = undefined;
  }
  return { source, ...checkCalloutAccount(config, claims, { serviceUser, xkey: config.keys.xkey?.publicKey, nowSeconds, targets }) };
}
