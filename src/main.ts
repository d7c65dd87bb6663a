#!/usr/bin/env node
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { createAccount, createCurve, createUser } from '@nats-io/nkeys';
import type { NatsConnection } from '@nats-io/transport-node';
import type { RevokeResult } from './admin.js';
import { signRevokeRequest } from './admin-request.js';
import { inspectCalloutAccount } from './account-check.js';
import type { ConnectionFacts } from './conditions.js';
import { loadConfig, parseDuration, redactedConfig } from './config.js';
import { systemClock } from './clock.js';
import { ConfigError } from './errors.js';
import { explainOutput } from './explain-output.js';
import { buildService, runService } from './lifecycle.js';
import { createLogger } from './log.js';
import { connectAs, connectNats, withoutCredentials } from './nats-connection.js';
import { NkeySigner } from './nkey.js';
import { setupOperator, setupOptions } from './operator-setup.js';
import { probe } from './probe.js';
import { CONNECTION_TYPES, type ConnectionType } from './policy-schema.js';
import { pathExists, refuseSharedDirectory, writeSecretFiles } from './secret-files.js';
import { CalloutService } from './service.js';
import { UsageError } from './usage-error.js';

const VERSION = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

const USAGE = `usage:
  oidc-callout run --config FILE       serve $SYS.REQ.USER.AUTH until SIGTERM (SIGHUP reloads)
  oidc-callout check --config FILE     validate config, load every issuer's keys, connect to NATS
  oidc-callout explain --config FILE --token TOKEN|@FILE|- [--jwks FILE] [--now TIME]
                     [--connection-type TYPE] [--client-host ADDRESS]
                                       verify a token and print the decision and a trace of every
                                       rule, without NATS; --jwks and --now work offline
  oidc-callout revoke --config FILE --admin-seed FILE [--issuer URL] [--subject SUB] [--wait 2s]
                                       on every replica: drop the identity's cached decisions, refuse
                                       its tokens issued until now, disconnect its live connections
  oidc-callout probe --config FILE --token TOKEN|@FILE|- [--creds FILE] [--server URL] [--timeout 7s]
                                       log in through nats-server and the callout with the token,
                                       print the latency (a JSON line per server), exit 1 on failure
  oidc-callout keys [--dir DIR] [--force]
                                       write issuer.nk (SA...), xkey.nk (SX...) and service.nk (SU...,
                                       the service's own login) seeds (mode 0600) and print the
                                       nats-server configuration that goes with them
  oidc-callout setup operator --dir DIR [--accounts 2] [--no-xkey] [--issuer URL --audience AUD] [--force]
                                       first steps in operator (JWT) mode: write an operator, the
                                       system, callout and application accounts, the users, the
                                       seeds (mode 0600), nats-server.conf and oidc-callout.yaml`;

/** Exit codes: 0 ok, 1 refused/failed check, 2 usage or configuration error. */
async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  // `setup` takes what to set up as its first word.
  const subcommand = command === 'setup' && rest[0] !== undefined && !rest[0].startsWith('-') ? rest.shift() : undefined;
  const { values } = parseArgs({
    args: rest,
    options: {
      config: { type: 'string', short: 'c' },
      token: { type: 'string', short: 't' },
      dir: { type: 'string' },
      force: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
      jwks: { type: 'string' },
      now: { type: 'string' },
      'connection-type': { type: 'string' },
      'client-host': { type: 'string' },
      'admin-seed': { type: 'string' },
      issuer: { type: 'string' },
      subject: { type: 'string' },
      wait: { type: 'string' },
      server: { type: 'string' },
      timeout: { type: 'string' },
      creds: { type: 'string' },
      accounts: { type: 'string' },
      xkey: { type: 'boolean' },
      'no-xkey': { type: 'boolean' },
      audience: { type: 'string' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  switch (command) {
    case 'run':
      return runService(requireConfig(values.config), VERSION);
    case 'check':
      return check(requireConfig(values.config));
    case 'explain':
      if (!values.token) throw new UsageError('explain needs --token TOKEN, --token @FILE or --token -');
      return explain(requireConfig(values.config), values.token, {
        jwks: values.jwks,
        now: values.now,
        connectionType: values['connection-type'],
        clientHost: values['client-host'],
      });
    case 'probe':
      if (!values.token) throw new UsageError('probe needs --token TOKEN, --token @FILE or --token -');
      return probeLogin(requireConfig(values.config), values.token, values.server, values.timeout ?? '7s', values.creds);
    case 'keys':
      return keys(values.dir ?? '.', values.force ?? false);
    case 'setup':
      if (subcommand !== 'operator') throw new UsageError('setup needs what to set up: setup operator --dir DIR');
      if (!values.dir) throw new UsageError('setup operator needs --dir DIR (a new or empty directory)');
      if (values.xkey && values['no-xkey']) throw new UsageError('--xkey and --no-xkey contradict each other');
      process.stdout.write(await setupOperator(values.dir, setupOptions(values), values.force ?? false));
      return 0;
    case 'revoke':
      if (!values['admin-seed']) throw new UsageError('revoke needs --admin-seed FILE (the seed of a key in admin.public_keys)');
      if (values.issuer === '' || values.subject === '') throw new UsageError('revoke: --issuer and --subject cannot be empty');
      if (!values.issuer && !values.subject) throw new UsageError('revoke needs --issuer URL, --subject SUB or both');
      return revoke(requireConfig(values.config), values['admin-seed'], values.issuer, values.subject, values.wait ?? '2s');
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n`);
      return command === undefined ? 2 : 0;
    default:
      throw new UsageError(`unknown command ${JSON.stringify(command)}`);
  }
}

function requireConfig(file: string | undefined): string {
  if (!file) throw new UsageError('--config FILE is required');
  return file;
}

async function check(file: string): Promise<number> {
  const config = loadConfig(file);
  const service = buildService(config, createLogger('error'));
  const printable = redactedConfig(config) as { nats: { servers: string[] } };
  printable.nats.servers = printable.nats.servers.map(withoutCredentials);
  const out: Record<string, unknown> = { config: printable, issuer_public_key: service.issuerPublicKey, xkey_public_key: service.xkeyPublicKey };
  let ok = true;
  for (const issuer of service.issuers) {
    try {
      await issuer.load();
    } catch (err) {
      ok = false;
      process.stderr.write(`issuers: ${issuer.config.issuer}: ${(err as Error).message}\n`);
    }
  }
  out.issuers = service.issuerStatus();
  try {
    const nc = await connectNats(config, { maxReconnectAttempts: 0, timeout: 5000 });
    await nc.flush();
    out.nats = { connected: nc.getServer() };
    await nc.close();
  } catch (err) {
    ok = false;
    process.stderr.write(`nats: cannot connect to ${config.nats.servers.map(withoutCredentials).join(', ')}: ${(err as Error).message}\n`);
  }
  let sys: NatsConnection | undefined;
  if (config.admin?.system) {
    try {
      sys = await connectAs(config, config.admin.system, { maxReconnectAttempts: 0, timeout: 5000, name: `${config.nats.name} (check system)` });
      await sys.flush();
      out.admin_system = { connected: sys.getServer() };
    } catch (err) {
      ok = false;
      process.stderr.write(`admin.system: cannot log in to the system account: ${(err as Error).message}\n`);
    }
  }
  // Operator mode: the callout account's JWT against this configuration.
  const account = await inspectCalloutAccount(config, sys, Math.floor(Date.now() / 1000));
  await sys?.close();
  if (account) {
    out.callout_account = { checked_from: account.source, problems: account.problems, warnings: account.warnings };
    for (const p of account.problems) process.stderr.write(`callout account: ${p}\n`);
    for (const w of account.warnings) process.stderr.write(`callout account (warning): ${w}\n`);
    if (account.problems.length > 0) ok = false;
  } else if (config.callout.mode === 'operator') {
    process.stderr.write("callout account: not checked; set callout.account_jwt or admin.system to check the account's JWT against this configuration\n");
  }
  process.stdout.write(`${JSON.stringify(out, null, 2)}\n`);
  process.stderr.write(ok ? 'check passed\n' : 'check failed\n');
  return ok ? 0 : 1;
}

async function readToken(arg: string): Promise<string> {
  if (arg === '-') {
    const chunks: Buffer[] = [];
    for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
    return Buffer.concat(chunks).toString('utf8').trim();
  }
  if (arg.startsWith('@')) {
    try {
      return readFileSync(arg.slice(1), 'utf8').trim();
    } catch (err) {
      throw new UsageError(`cannot read --token ${arg}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  }
  // A path given without its @ is not a token: say so instead of "malformed token".
  if (arg.split('.').length !== 3 && existsSync(arg)) throw new UsageError(`--token ${arg} is a file: write --token @${arg}`);
  // Any user of the machine can read a process's arguments: a live token belongs in a file or stdin.
  process.stderr.write('oidc-callout: note: a token on the command line is visible in the process list; prefer --token @FILE or --token -\n');
  return arg.trim();
}

/**
 * Logs in to each configured server (or `--server`) with the token, through the callout. One JSON
 * line per server; exit 1 when any login failed.
 */
async function probeLogin(file: string, tokenArg: string, server: string | undefined, timeoutArg: string, credsFile: string | undefined): Promise<number> {
  let timeoutMs: number;
  try {
    timeoutMs = parseDuration(timeoutArg, '--timeout');
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  if (timeoutMs < 1 || timeoutMs > 120_000) throw new UsageError('--timeout must be between 1ms and 2m');
  if (server !== undefined && !/^(nats|tls|ws|wss):\/\/|^[^/:]+:\d+$/.test(server)) throw new UsageError(`--server ${server}: expected nats://HOST:PORT`);
  // The probe is a client like any other: it needs the servers, none of the service's secrets.
  const config = loadConfig(file, process.env, { natsSecrets: false, signingSecrets: false });
  const token = await readToken(tokenArg);
  if (!token) throw new UsageError('the token is empty');
  let creds: Uint8Array | undefined;
  if (credsFile !== undefined) {
    try {
      creds = readFileSync(credsFile);
    } catch (err) {
      throw new UsageError(`--creds ${credsFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
  }
  let ok = true;
  for (const url of server !== undefined ? [server] : config.nats.servers) {
    const result = await probe(url, token, timeoutMs, creds);
    ok &&= result.ok;
    process.stdout.write(`${JSON.stringify(result)}\n`);
  }
  return ok ? 0 : 1;
}

interface ExplainOptions {
  readonly jwks: string | undefined;
  readonly now: string | undefined;
  readonly connectionType: string | undefined;
  readonly clientHost: string | undefined;
}

async function explain(file: string, tokenArg: string, options: ExplainOptions): Promise<number> {
  // explain never connects to NATS: it needs none of the NATS secrets.
  // Nor does it sign anything: the callout and account seeds are not read either.
  const config = loadConfig(file, process.env, { natsSecrets: false, signingSecrets: false });
  const now = options.now === undefined ? undefined : parseTime(options.now);
  let offlineJwks: string | undefined;
  if (options.jwks !== undefined) {
    try {
      offlineJwks = readFileSync(options.jwks, 'utf8');
    } catch (err) {
      throw new UsageError(`cannot read --jwks ${options.jwks}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
    }
  }
  let connection: ConnectionFacts | undefined;
  if (options.connectionType !== undefined || options.clientHost !== undefined) {
    const type = options.connectionType?.toUpperCase();
    if (type !== undefined && !(CONNECTION_TYPES as readonly string[]).includes(type)) {
      throw new UsageError(`--connection-type must be one of ${CONNECTION_TYPES.join(', ')}`);
    }
    if (options.clientHost !== undefined && !isIP(options.clientHost)) throw new UsageError('--client-host must be an IP address');
    connection = { type: type as ConnectionType | undefined, host: options.clientHost };
  }
  let service: CalloutService;
  try {
    service = new CalloutService(config, createLogger('error'), { ...(now !== undefined ? { clock: { ...systemClock, now: () => now } } : {}), offlineJwks });
  } catch (err) {
    throw new UsageError(`--jwks ${options.jwks}: ${(err as Error).message}`);
  }
  const token = await readToken(tokenArg);
  const e = await service.explain(token, connection);
  process.stdout.write(`${JSON.stringify(explainOutput(e, connection, now ?? Date.now()), null, 2)}\n`);
  return e.decision === 'allow' ? 0 : 1;
}

/**
 * Sends a signed revoke request on the admin subject (as the service's own NATS user) and prints
 * what each replica answered within `--wait`. Exit 0 when at least one answered and none refused.
 */
async function revoke(file: string, seedFile: string, issuer: string | undefined, subject: string | undefined, wait: string): Promise<number> {
  const config = loadConfig(file);
  if (!config.admin?.publicKeys.length) throw new UsageError('the configuration lists no admin.public_keys: revocation is off');
  let signer: NkeySigner;
  try {
    signer = new NkeySigner(readFileSync(seedFile, 'utf8'), 'user');
  } catch (err) {
    throw new UsageError(`--admin-seed ${seedFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
  }
  let waitMs: number;
  try {
    waitMs = parseDuration(wait, '--wait');
  } catch {
    throw new UsageError(`--wait ${JSON.stringify(wait)}: a duration such as 500ms, 2s or 1m`);
  }
  let nc: Awaited<ReturnType<typeof connectNats>>;
  try {
    nc = await connectNats(config, { maxReconnectAttempts: 0, name: `${config.nats.name} (revoke)` });
  } catch (err) {
    process.stderr.write(`oidc-callout: cannot connect to NATS at ${config.nats.servers.map(withoutCredentials).join(', ')}: ${(err as Error).message}\n`);
    return 1;
  }
  try {
    const replies: RevokeResult[] = [];
    const inbox = nc.subscribe(`_INBOX.revoke.${randomBytes(8).toString('hex')}`);
    const collecting = (async () => {
      for await (const m of inbox) {
        // nats-server's "no responders" status is an empty message: no replica is listening.
        if (m.data.length === 0) continue;
        try {
          replies.push(m.json<RevokeResult>());
        } catch {
          // Not a replica's answer.
        }
      }
    })();
    nc.publish(`${config.admin.subject}.revoke`, signRevokeRequest({ issuer, subject }, signer, Math.floor(Date.now() / 1000)), { reply: inbox.getSubject() });
    await new Promise((r) => setTimeout(r, waitMs));
    inbox.unsubscribe();
    await collecting;
    process.stdout.write(`${JSON.stringify({ issuer, subject, replicas: replies }, null, 2)}\n`);
    if (replies.length === 0) {
      process.stderr.write('no replica answered: are they running with this admin section?\n');
      return 1;
    }
    return replies.every((r) => r.ok) ? 0 : 1;
  } finally {
    await nc.close();
  }
}

/** `--now`: an ISO 8601 time or seconds since the epoch. */
function parseTime(value: string): number {
  // A time without a zone would be read in the machine's local time: ask for one instead.
  if (!/^\d+(\.\d+)?$/.test(value) && !/(?:Z|[+-]\d\d:?\d\d)$/i.test(value)) {
    throw new UsageError(`--now ${JSON.stringify(value)}: give the time zone (2026-01-31T12:00:00Z or +01:00), or seconds since the epoch`);
  }
  const ms = /^\d+(\.\d+)?$/.test(value) ? Number(value) * 1000 : Date.parse(value);
  if (!Number.isFinite(ms)) throw new UsageError(`--now ${JSON.stringify(value)}: use an ISO 8601 time (2026-01-31T12:00:00Z) or seconds since the epoch`);
  return ms;
}

function keys(dir: string, force: boolean): number {
  mkdirSync(dir, { recursive: true });
  const issuerFile = join(dir, 'issuer.nk');
  const xkeyFile = join(dir, 'xkey.nk');
  const serviceFile = join(dir, 'service.nk');
  for (const f of [issuerFile, xkeyFile, serviceFile]) {
    if (pathExists(f) && !force) throw new UsageError(`${f} exists; pass --force to replace it`);
  }
  refuseSharedDirectory(dir);
  const account = createAccount();
  const curve = createCurve();
  // The service's own login is an nkey: no shared secret to hand nats-server, none that an empty
  // environment variable could turn into an empty password.
  const user = createUser();
  const seed = (k: { getSeed(): Uint8Array }) => `${new TextDecoder().decode(k.getSeed())}\n`;
  writeSecretFiles([
    [issuerFile, seed(account)],
    [xkeyFile, seed(curve)],
    [serviceFile, seed(user)],
  ]);
  process.stdout.write(`# seeds written to ${issuerFile}, ${xkeyFile} and ${serviceFile} (mode 0600)
# nats-server configuration (server_config mode):
max_control_line: 65536   # OIDC tokens often exceed the 4 KiB default
accounts {
  # The service's account: it sees every login request and its token, so nobody else belongs here.
  AUTH { users: [ { nkey: ${user.getPublicKey()} } ] }   # the service (nats.nkey_seed: service.nk)
  APP {}                     # where your policy places users
}
authorization {
  timeout: 5                 # not 2 (the default): a restart storm needs it (README "Reconnect storms")
  auth_callout {
    issuer: ${account.getPublicKey()}
    xkey: ${curve.getPublicKey()}
    account: AUTH            # the account the service user logs into
    auth_users: [ ${user.getPublicKey()} ]   # the service's own login bypasses the callout
  }
}
`);
  return 0;
}

// A log reader that goes away (a closed pipe) must not take the service down with an EPIPE.
for (const stream of [process.stdout, process.stderr]) {
  stream.on('error', (err: NodeJS.ErrnoException) => {
    if (err.code !== 'EPIPE') throw err;
  });
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (err: unknown) => {
    if (err instanceof UsageError) process.stderr.write(`oidc-callout: ${err.message}\n(oidc-callout --help lists the commands and their options)\n`);
    else if (err instanceof ConfigError) process.stderr.write(`oidc-callout: configuration error: ${err.message}\n`);
    else process.stderr.write(`oidc-callout: ${(err as Error)?.message ?? String(err)}\n`);
    process.exit(2);
  },
);
