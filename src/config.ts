import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parse as parseYaml } from 'yaml';
import { createAccount } from '@nats-io/nkeys';
import { z } from 'zod';
import { Accounts, type AccountKey } from './accounts.js';
import { AuditSubject } from './audit/subject.js';
import { bounded, parseDuration } from './duration.js';
import { ConfigError } from './errors.js';
import { isPublicKey, NkeySigner } from './nkey.js';
import type { Policy } from './policy.js';
import { compilePolicy } from './policy-compile.js';
import { type ConnectionType, issuerPolicySchema, type PolicyInput, policySchema } from './policy-schema.js';
import { XkeyBox } from './xkey.js';

export { bounded, parseDuration } from './duration.js';

/**
 * The service configuration: a YAML file validated by one schema (unknown keys are errors),
 * defaulted from `DEFAULTS`, secrets resolved from files or the environment, then frozen.
 */

/** Every default in one place; README and conf/ document these values. */
export const DEFAULTS = deepFreeze({
  nats: { servers: ['nats://127.0.0.1:4222'], name: 'oidc-callout', queue_group: 'oidc-callout', connections: 24 },
  workers: 'auto',
  callout: { mode: 'server_config' as const, max_in_flight: 256, system_account: 'SYS' },
  token: { fields: ['auth_token'] as TokenField[], max_bytes: 16384 },
  issuer: {
    algorithms: ['RS256'],
    leeway: '60s',
    allow_missing_exp: false,
    allow_insecure_http: false,
    jwks_cache_max_age: '10m',
    jwks_cooldown: '30s',
    jwks_max_stale: '1h',
    http_timeout: '5s',
  },
  rule: { max_lifetime: '1h', user_name_claim: 'sub', connection_types: ['STANDARD', 'WEBSOCKET'] as ConnectionType[] },
  cache: { max_entries: 50000, ttl: '60s' },
  log: { level: 'info' as LogLevel },
  audit: { subject: 'oidc-callout.audit.{result}', buffer_events: 10_000, buffer_bytes: 8 * 1024 * 1024, client_ports: false },
});

export type TokenField = 'auth_token' | 'pass';
export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

/** Asymmetric JWS algorithms only: HMAC and `none` can never be allowed. */
export const ASYMMETRIC_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA', 'Ed25519'] as const;

const secret = z.union([
  z.string().min(1),
  z.strictObject({ file: z.string().min(1) }),
  z.strictObject({ env: z.string().min(1) }),
  // systemd's LoadCredential=: $CREDENTIALS_DIRECTORY/NAME, whatever the unit is called.
  z.strictObject({ credential: z.string().regex(/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/, 'a credential name (letters, digits, _ . -)') }),
]);
const duration = z.union([z.string(), z.number().nonnegative()]);

const issuerSchema = z.strictObject({
  issuer: z.string().min(1),
  audiences: z.array(z.string().min(1)).min(1),
  algorithms: z.array(z.enum(ASYMMETRIC_ALGORITHMS)).min(1).optional(),
  jwks_uri: z.string().optional(),
  token_types: z.array(z.string().min(1)).min(1).optional(),
  leeway: duration.optional(),
  allow_missing_exp: z.boolean().optional(),
  allow_insecure_http: z.boolean().optional(),
  jwks_cache_max_age: duration.optional(),
  jwks_cooldown: duration.optional(),
  jwks_max_stale: duration.optional(),
  http_timeout: duration.optional(),
  max_in_flight: z.number().int().positive().optional(),
  ca_file: z
    .string()
    .min(1)
    .optional()
    .describe("PEM file of the CA(s) the IdP's certificate chains to (a private CA); only those are trusted for this issuer"),
  ...issuerPolicySchema,
});

const schema = z.strictObject({
  nats: z
    .strictObject({
      servers: z.array(z.string().min(1)).min(1).optional(),
      name: z.string().min(1).optional(),
      queue_group: z.string().min(1).optional(),
      connections: z
        .number()
        .int()
        .min(1)
        .max(48)
        .optional()
        .describe('NATS connections of this replica (default 24), shared out among its workers; each is a queue-group subscriber and a reply lane of its own'),
      user: z.string().min(1).optional(),
      password: secret.optional(),
      token: secret.optional(),
      nkey_seed: secret.optional(),
      creds_file: z.string().min(1).optional(),
    })
    .optional(),
  callout: z.strictObject({
    mode: z.enum(['server_config', 'operator']).optional(),
    issuer_seed: secret,
    account: z.string().min(1).optional().describe('server_config mode: the auth_callout account name; no rule may place users into it'),
    system_account: z.string().min(1).optional().describe('the system account (server_config: its name, default SYS; operator: its public key)'),
    issuer_account: z.string().optional(),
    xkey_seed: secret.optional(),
    account_jwt: secret
      .optional()
      .describe(
        "operator mode: the callout account's JWT (a string, { file } or { env }), checked against this configuration at start; default: read from the servers through admin.system",
      ),
    max_in_flight: z.number().int().positive().optional(),
  }),
  accounts: z
    .record(
      z.string().min(1),
      z.strictObject({
        public_key: z.string(),
        signing_seed: secret,
        scoped: z.boolean().optional().describe("signing_seed is a scoped signing key: users get the scope's permissions, and rules for this account set none"),
      }),
    )
    .optional(),
  token: z
    .strictObject({
      fields: z
        .array(z.enum(['auth_token', 'pass']))
        .min(1)
        .optional(),
      max_bytes: z.number().int().min(256).max(1048576).optional(),
    })
    .optional(),
  issuers: z.array(issuerSchema).min(1),
  policy: policySchema,
  cache: z.strictObject({ max_entries: z.number().int().nonnegative().optional(), ttl: duration.optional() }).optional(),
  log: z.strictObject({ level: z.enum(['debug', 'info', 'warn', 'error']).optional() }).optional(),
  workers: z
    .union([z.number().int().min(1).max(64), z.literal('auto')])
    .optional()
    .describe(
      "worker threads of this replica, each with its own NATS connections in the queue group; 'auto': one per core but one (left to nats-server), at least 1, at most 8",
    ),
  http: z
    .strictObject({
      listen: z.string().min(1),
      ready_max_latency: duration.optional().describe('/readyz reports slow decisions when more than 5 % of the last 30 s took longer than this'),
    })
    .optional(),
  audit: z
    .strictObject({
      subject: z.string().min(1).optional().describe('subject of the events, in the service account; {result} and {account} are replaced per event'),
      buffer_events: z.number().int().min(1).max(1_000_000).optional().describe('events held while NATS is slow or away; more are dropped and counted'),
      buffer_bytes: z.number().int().min(4096).max(1_073_741_824).optional().describe('bytes of events held at most'),
      client_ports: z
        .boolean()
        .optional()
        .describe("look up each client's source port and accept time in nats-server's CONNZ (needs admin.system; one system request per decision)"),
    })
    .optional()
    .describe('audit events: one per authorization decision, published on NATS'),
  admin: z
    .strictObject({
      public_keys: z
        .array(z.string().min(1))
        .min(1)
        .optional()
        .describe('user public keys (U...) whose signed revoke requests the service acts on; without them revocation is off'),
      subject: z.string().min(1).optional().describe('subject prefix of administrative requests, in the service account'),
      system: z
        .strictObject({
          user: z.string().min(1).optional(),
          password: secret.optional(),
          token: secret.optional(),
          nkey_seed: secret.optional(),
          creds_file: z.string().min(1).optional(),
        })
        .optional()
        .describe("a login to the system account, to disconnect revoked users' connections"),
    })
    .optional()
    .describe('revocation: drop cached decisions and disconnect live users of an identity on every replica'),
});

type RawConfig = z.infer<typeof schema>;

/** The configuration schema (the JSON Schema in conf/ is generated from it). */
export const configSchema = schema;

/** A secret value: the resolved string plus where it came from (for redacted printing). */
export interface Secret {
  readonly value: string;
  readonly source: string;
}

export interface IssuerConfig {
  readonly issuer: string;
  readonly audiences: readonly string[];
  readonly algorithms: readonly string[];
  readonly jwksUri: string | undefined;
  readonly tokenTypes: readonly string[] | undefined;
  readonly leewaySeconds: number;
  readonly allowMissingExp: boolean;
  readonly allowInsecureHttp: boolean;
  readonly jwksCacheMaxAgeMs: number;
  readonly jwksCooldownMs: number;
  /** How long the last good key set is still used while the IdP fails to serve a new one. */
  readonly jwksMaxStaleMs: number;
  readonly httpTimeoutMs: number;
  /** Verifications of this issuer's tokens at once (default `callout.max_in_flight`). */
  readonly maxInFlight: number | undefined;
  /** PEM of the CAs trusted for this issuer's HTTPS (`ca_file`), instead of the system's. */
  readonly ca: string | undefined;
}

export interface AccountSigning {
  readonly publicKey: string;
  readonly signingSeed: Secret;
  /** The signing key carries a scope (a permission template in the account JWT) that nats-server applies. */
  readonly scoped: boolean;
}

/** Keys decoded at load, so a bad seed is a configuration error naming its key. */
export interface Keys {
  readonly accounts: Accounts;
  readonly xkey: XkeyBox | undefined;
}

export interface Config {
  readonly nats: {
    readonly servers: readonly string[];
    readonly name: string;
    readonly queueGroup: string;
    /** NATS connections per process, each subscribed in the queue group and a reply lane of its own. */
    readonly connections: number;
    readonly user: string | undefined;
    readonly password: Secret | undefined;
    readonly token: Secret | undefined;
    readonly nkeySeed: Secret | undefined;
    readonly credsFile: string | undefined;
  };
  readonly callout: {
    readonly mode: 'server_config' | 'operator';
    readonly issuerSeed: Secret;
    readonly issuerAccount: string | undefined;
    /** server_config: the auth_callout account's name. */
    readonly account: string | undefined;
    readonly systemAccount: string | undefined;
    readonly xkeySeed: Secret | undefined;
    readonly maxInFlight: number;
    /** Operator mode: the callout account's JWT to check the configuration against (`check`, `run`). */
    readonly accountJwt: string | undefined;
  };
  /** Operator mode: how to sign users for each account name a rule may grant. */
  readonly accounts: Readonly<Record<string, AccountSigning>>;
  readonly token: { readonly fields: readonly TokenField[]; readonly maxBytes: number };
  readonly issuers: readonly IssuerConfig[];
  /** The policy section as written (printed by `check`). */
  readonly policyInput: PolicyInput;
  /** The compiled policy: matchers and templates built once at load. */
  readonly policy: Policy;
  readonly keys: Keys;
  readonly cache: { readonly maxEntries: number; readonly ttlMs: number };
  readonly log: { readonly level: LogLevel };
  /** Revocation requests; off when not configured. */
  readonly admin:
    | {
        readonly publicKeys: readonly string[];
        readonly subject: string;
        /** Credentials of a system account user (same shape as `nats`), to kick connections. */
        readonly system: Pick<Config['nats'], 'user' | 'password' | 'token' | 'nkeySeed' | 'credsFile'> | undefined;
      }
    | undefined;
  /** Audit events (one per decision, on NATS); off when not configured. */
  readonly audit: { readonly subject: AuditSubject; readonly bufferEvents: number; readonly bufferBytes: number; readonly clientPorts: boolean } | undefined;
  /** The monitoring endpoints (/healthz, /readyz, /metrics); off when not configured. */
  readonly http: { readonly host: string; readonly port: number; readonly readyMaxLatencyMs: number } | undefined;
  /** Worker threads of this replica (`workers`, resolved: see autoWorkers). */
  readonly workers: number;
  /** True when `workers` is 'auto': resolved from this machine's cores. */
  readonly workersAuto: boolean;
}

function resolveSecret(value: z.infer<typeof secret>, path: string, env: NodeJS.ProcessEnv, baseDir: string): Secret {
  if (typeof value === 'string') return { value, source: 'inline' };
  if ('env' in value) {
    const v = env[value.env];
    if (v === undefined || v === '') throw new ConfigError(path, `environment variable ${value.env} is not set`);
    return { value: v.trim(), source: `env:${value.env}` };
  }
  let file: string;
  if ('credential' in value) {
    const dir = env.CREDENTIALS_DIRECTORY;
    if (!dir) {
      throw new ConfigError(
        path,
        `credential ${value.credential}: CREDENTIALS_DIRECTORY is not set (run under systemd with LoadCredential=${value.credential}:FILE, or set CREDENTIALS_DIRECTORY to the directory holding ${value.credential})`,
      );
    }
    file = `${dir}/${value.credential}`;
  } else {
    file = value.file.startsWith('/') ? value.file : `${baseDir}/${value.file}`;
  }
  try {
    const v = readFileSync(file, 'utf8').trim();
    if (!v) throw new ConfigError(path, `secret file ${file} is empty`);
    return { value: v, source: `file:${file}` };
  } catch (err) {
    if (err instanceof ConfigError) throw err;
    throw new ConfigError(path, `cannot read secret file ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
}

function issuerConfig(raw: RawConfig['issuers'][number], i: number, baseDir: string): IssuerConfig {
  const d = DEFAULTS.issuer;
  const path = `issuers[${i}]`;
  const allowInsecureHttp = raw.allow_insecure_http ?? d.allow_insecure_http;
  checkUrl(raw.issuer, allowInsecureHttp, `${path}.issuer`);
  if (raw.jwks_uri !== undefined) checkUrl(raw.jwks_uri, allowInsecureHttp, `${path}.jwks_uri`);
  return {
    issuer: raw.issuer,
    audiences: raw.audiences,
    algorithms: raw.algorithms ?? d.algorithms,
    jwksUri: raw.jwks_uri,
    tokenTypes: raw.token_types,
    leewaySeconds: bounded(parseDuration(raw.leeway ?? d.leeway, `${path}.leeway`), 0, 600_000, `${path}.leeway`) / 1000,
    allowMissingExp: raw.allow_missing_exp ?? d.allow_missing_exp,
    allowInsecureHttp,
    jwksCacheMaxAgeMs: bounded(
      parseDuration(raw.jwks_cache_max_age ?? d.jwks_cache_max_age, `${path}.jwks_cache_max_age`),
      1000,
      Infinity,
      `${path}.jwks_cache_max_age`,
    ),
    // A cooldown keeps unknown kids from making the service hammer the IdP; stale keys must expire.
    jwksCooldownMs: bounded(parseDuration(raw.jwks_cooldown ?? d.jwks_cooldown, `${path}.jwks_cooldown`), 0, 3_600_000, `${path}.jwks_cooldown`),
    jwksMaxStaleMs: bounded(parseDuration(raw.jwks_max_stale ?? d.jwks_max_stale, `${path}.jwks_max_stale`), 0, 7 * 86_400_000, `${path}.jwks_max_stale`),
    maxInFlight: raw.max_in_flight,
    ca: raw.ca_file === undefined ? undefined : readCa(raw.ca_file, baseDir, `${path}.ca_file`),
    httpTimeoutMs: bounded(parseDuration(raw.http_timeout ?? d.http_timeout, `${path}.http_timeout`), 100, 60_000, `${path}.http_timeout`),
  };
}

function readCa(file: string, baseDir: string, path: string): string {
  const full = file.startsWith('/') ? file : `${baseDir}/${file}`;
  let pem: string;
  try {
    pem = readFileSync(full, 'utf8');
  } catch (err) {
    throw new ConfigError(path, `cannot read ${full}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (!pem.includes('-----BEGIN CERTIFICATE-----')) throw new ConfigError(path, `${full} holds no PEM certificate`);
  return pem;
}

function checkUrl(value: string, allowInsecureHttp: boolean, path: string): void {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(path, `not a URL: ${JSON.stringify(value)}`);
  }
  if (url.protocol === 'https:') return;
  if (url.protocol === 'http:' && allowInsecureHttp) return;
  if (url.protocol === 'http:') throw new ConfigError(path, 'http:// is refused; use https:// or set allow_insecure_http: true (loopback tests only)');
  throw new ConfigError(path, `unsupported URL scheme ${url.protocol}`);
}

/** `host:port` or `[v6]:port` (port 0: any free port); the host is required so the bind address is deliberate. */
function parseListen(value: string, path: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:[\]]+)):(\d{1,5})$/.exec(value.trim());
  const port = m ? Number(m[3]) : NaN;
  if (!m || port > 65535) throw new ConfigError(path, `expected host:port (e.g. 127.0.0.1:9464), got ${JSON.stringify(value)}`);
  return { host: (m[1] ?? m[2])!, port };
}

function zodPath(path: readonly PropertyKey[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join('');
}

/**
 * Validates an already-parsed document. `env` and `baseDir` resolve secrets; relative secret
 * files are read relative to the configuration file.
 */
/** What a command needs resolved: `explain` never connects to NATS, so it needs no NATS secret. */
export interface LoadOptions {
  readonly natsSecrets?: boolean;
  /**
   * `explain` signs nothing: without signing secrets the callout and account seeds are not read,
   * stand-in keys take their place (Secret.source `not read`), and no xkey is loaded.
   */
  readonly signingSecrets?: boolean;
}

export function buildConfig(doc: unknown, env: NodeJS.ProcessEnv = process.env, baseDir = process.cwd(), options: LoadOptions = {}): Config {
  refuseUserLimits(doc);
  const parsed = schema.safeParse(doc);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    throw new ConfigError(zodPath(issue.path), issue.message);
  }
  const raw = parsed.data;
  // Every NATS key has a default: the section itself may be left out.
  const n = raw.nats ?? {};
  const methods = [n.password !== undefined || n.user !== undefined, n.token, n.nkey_seed, n.creds_file].filter(Boolean).length;
  if (methods > 1) throw new ConfigError('nats', 'choose one way to authenticate: user/password, token, nkey_seed or creds_file');
  if ((n.user === undefined) !== (n.password === undefined)) throw new ConfigError('nats', 'user and password go together');
  const mode = raw.callout.mode ?? DEFAULTS.callout.mode;
  const natsSecrets = options.natsSecrets ?? true;
  const signingSecrets = options.signingSecrets ?? true;
  const signingSecret = (value: z.infer<typeof secret>, path: string): Secret =>
    signingSecrets ? resolveSecret(value, path, env, baseDir) : { value: standInSeed(), source: NOT_READ };

  const accounts: Record<string, AccountSigning> = {};
  if (raw.accounts && mode !== 'operator') throw new ConfigError('accounts', 'accounts are only used in callout.mode: operator');
  for (const [name, a] of Object.entries(raw.accounts ?? {})) {
    accounts[name] = { publicKey: a.public_key, signingSeed: signingSecret(a.signing_seed, `accounts.${name}.signing_seed`), scoped: a.scoped ?? false };
  }
  if (mode === 'server_config' && raw.callout.issuer_account !== undefined) {
    throw new ConfigError('callout.issuer_account', 'only used in callout.mode: operator (server_config mode signs with the auth_callout issuer key)');
  }
  if (mode === 'server_config' && raw.callout.account === undefined) {
    throw new ConfigError(
      'callout.account',
      'required in server_config mode: the name of the auth_callout account (auth_callout.account), so that no rule can place users into it',
    );
  }
  if (mode === 'operator' && raw.callout.account !== undefined) {
    throw new ConfigError('callout.account', "only used in server_config mode (in operator mode the callout account is the issuer key's account)");
  }

  const issuers = raw.issuers.map((iss, i) => issuerConfig(iss, i, baseDir));
  const seen = new Set<string>();
  issuers.forEach((iss, i) => {
    if (seen.has(iss.issuer)) throw new ConfigError(`issuers[${i}].issuer`, `duplicate issuer ${iss.issuer}`);
    seen.add(iss.issuer);
  });

  const natsSettings: Config['nats'] = {
    servers: n.servers ?? DEFAULTS.nats.servers,
    name: n.name ?? DEFAULTS.nats.name,
    queueGroup: n.queue_group ?? DEFAULTS.nats.queue_group,
    connections: n.connections ?? DEFAULTS.nats.connections,
    user: n.user,
    password: n.password === undefined || !natsSecrets ? undefined : resolveSecret(n.password, 'nats.password', env, baseDir),
    token: n.token === undefined || !natsSecrets ? undefined : resolveSecret(n.token, 'nats.token', env, baseDir),
    nkeySeed: n.nkey_seed === undefined || !natsSecrets ? undefined : resolveSecret(n.nkey_seed, 'nats.nkey_seed', env, baseDir),
    credsFile: n.creds_file === undefined ? undefined : n.creds_file.startsWith('/') ? n.creds_file : `${baseDir}/${n.creds_file}`,
  };
  const issuerSeed = signingSecret(raw.callout.issuer_seed, 'callout.issuer_seed');
  const xkeySeed = raw.callout.xkey_seed === undefined || !signingSecrets ? undefined : resolveSecret(raw.callout.xkey_seed, 'callout.xkey_seed', env, baseDir);
  const keys = decodeKeys(mode, issuerSeed, raw.callout.issuer_account, accounts, xkeySeed);
  // server_config names accounts; operator mode knows them by public key, and has no default:
  // without it nothing would keep a rule from placing users into the system account.
  const systemAccount = raw.callout.system_account ?? (mode === 'server_config' ? DEFAULTS.callout.system_account : undefined);
  if (mode === 'operator' && (systemAccount === undefined || !isPublicKey(systemAccount, 'account'))) {
    throw new ConfigError(
      'callout.system_account',
      "required in operator mode: the system account's public key (A...), so that no rule can place users into it",
    );
  }
  for (const [key, name] of [
    ['callout.account', raw.callout.account],
    ['callout.system_account', systemAccount],
  ] as const) {
    if (name !== undefined && /[\p{White_Space}\p{Cc}]/u.test(name))
      throw new ConfigError(key, `${JSON.stringify(name)}: account names have no whitespace or control characters`);
  }
  const policy = compilePolicy({
    policy: raw.policy,
    issuers: raw.issuers,
    accounts: mode === 'operator' ? new Set(Object.keys(accounts)) : undefined,
    scopedAccounts: new Set(Object.keys(accounts).filter((n) => accounts[n]!.scoped)),
    reserved: reservedAccounts(mode, raw.callout.account, systemAccount, keys, accounts),
    defaults: { maxLifetime: DEFAULTS.rule.max_lifetime, userNameClaim: DEFAULTS.rule.user_name_claim, connectionTypes: DEFAULTS.rule.connection_types },
  });

  const config: Config = {
    nats: natsSettings,
    callout: {
      mode,
      issuerSeed,
      issuerAccount: raw.callout.issuer_account,
      account: raw.callout.account,
      systemAccount,
      xkeySeed,
      maxInFlight: raw.callout.max_in_flight ?? DEFAULTS.callout.max_in_flight,
      accountJwt: accountJwt(raw.callout.account_jwt, mode, env, baseDir),
    },
    accounts,
    token: { fields: raw.token?.fields ?? DEFAULTS.token.fields, maxBytes: raw.token?.max_bytes ?? DEFAULTS.token.max_bytes },
    issuers,
    policyInput: raw.policy,
    policy,
    keys,
    cache: {
      maxEntries: raw.cache?.max_entries ?? DEFAULTS.cache.max_entries,
      ttlMs: parseDuration(raw.cache?.ttl ?? DEFAULTS.cache.ttl, 'cache.ttl'),
    },
    log: { level: raw.log?.level ?? DEFAULTS.log.level },
    workers: (raw.workers ?? DEFAULTS.workers) === 'auto' ? autoWorkers(availableParallelism()) : (raw.workers as number),
    workersAuto: (raw.workers ?? DEFAULTS.workers) === 'auto',
    http: raw.http && {
      ...parseListen(raw.http.listen, 'http.listen'),
      // Half nats-server's default authorization timeout (2 s): an answer later than that is close to lost.
      readyMaxLatencyMs: bounded(parseDuration(raw.http.ready_max_latency ?? '1s', 'http.ready_max_latency'), 10, 60_000, 'http.ready_max_latency'),
    },
    admin: raw.admin && adminSettings(raw.admin, natsSecrets, env, baseDir),
    audit: raw.audit && auditSettings(raw.audit, raw.admin?.system !== undefined),
  };
  // The compiled parts are immutable by construction; freezing them would reach into key objects.
  const { policy: compiled, keys: decoded, ...data } = config;
  return Object.freeze({ ...deepFreeze(data), policy: compiled, keys: decoded });
}

const LIMIT_KEYS = ['subs', 'data', 'payload', 'limits'];

/** nats-server ignores per-user limits in callout-issued users: say so instead of "unknown key". */
function refuseUserLimits(doc: unknown): void {
  const policy = (doc as { policy?: { rules?: unknown; roles?: unknown } } | null)?.policy;
  const places: [string, unknown][] = [];
  if (Array.isArray(policy?.rules)) {
    policy.rules.forEach((r: unknown, i: number) => {
      places.push([`policy.rules[${i}]`, r], [`policy.rules[${i}].permissions`, (r as { permissions?: unknown } | null)?.permissions]);
    });
  }
  if (policy?.roles && typeof policy.roles === 'object') for (const [name, r] of Object.entries(policy.roles)) places.push([`policy.roles.${name}`, r]);
  for (const [path, value] of places) {
    if (!value || typeof value !== 'object') continue;
    const key = LIMIT_KEYS.find((k) => Object.hasOwn(value, k));
    if (key) {
      throw new ConfigError(
        `${path}.${key}`,
        'per-user limits are not enforced by nats-server for users issued by an auth callout; set subs, data and payload limits on the account instead',
      );
    }
  }
}

function auditSettings(raw: NonNullable<RawConfig['audit']>, systemLogin: boolean): NonNullable<Config['audit']> {
  if (raw.client_ports && !systemLogin) {
    throw new ConfigError('audit.client_ports', 'needs admin.system: client ports are looked up in CONNZ, a system account request');
  }
  const d = DEFAULTS.audit;
  let subject: AuditSubject;
  try {
    subject = AuditSubject.compile(raw.subject ?? d.subject);
  } catch (err) {
    throw new ConfigError('audit.subject', (err as Error).message);
  }
  return {
    subject,
    bufferEvents: raw.buffer_events ?? d.buffer_events,
    bufferBytes: raw.buffer_bytes ?? d.buffer_bytes,
    clientPorts: raw.client_ports ?? d.client_ports,
  };
}

/**
 * The NATS connections worker `index` (0-based) of `workers` opens: `nats.connections` shared out
 * exactly (24 over 5 workers: 5, 5, 5, 5, 4), at least one each. nats-server hands requests to
 * each subscription of the queue group alike, so a replica's share of the traffic is its count of
 * connections: it must be what the setting says.
 */
export function workerConnections(total: number, workers: number, index: number): number {
  return Math.max(1, Math.floor(total / workers) + (index < total % workers ? 1 : 0));
}

/** The reply lanes this replica opens: `nats.connections`, and at least one per worker. */
export function replicaLanes(config: Config): number {
  return config.workers <= 1 ? config.nats.connections : Math.max(config.nats.connections, config.workers);
}

/** Connections this replica opens into the callout account: its lanes and, with audit, one per worker. */
export function calloutAccountConnections(config: Config): number {
  return replicaLanes(config) + (config.audit ? config.workers : 0);
}

/** 'auto' workers: no more than this (beyond it the server's reply lanes, not our CPU, limit). */
export const MAX_AUTO_WORKERS = 8;

/**
 * 'auto': one worker per core but one, which is left to the nats-server the service runs next to
 * (measured: on two cores, a second worker slowed a 10,000-client storm by a quarter, taking CPU
 * nats-server needed); at least one, at most MAX_AUTO_WORKERS.
 */
export function autoWorkers(cores: number): number {
  return Math.min(Math.max(1, cores - 1), MAX_AUTO_WORKERS);
}

/** Secret.source of a seed `explain` did not read (LoadOptions.signingSecrets). */
export const NOT_READ = 'not read';

function standInSeed(): string {
  return new TextDecoder().decode(createAccount().getSeed());
}

function adminSettings(raw: NonNullable<RawConfig['admin']>, natsSecrets: boolean, env: NodeJS.ProcessEnv, baseDir: string): NonNullable<Config['admin']> {
  (raw.public_keys ?? []).forEach((k, i) => {
    if (!isPublicKey(k, 'user')) throw new ConfigError(`admin.public_keys[${i}]`, 'not a user public key (U...): sign revoke requests with a user nkey');
  });
  const subject = raw.subject ?? 'oidc-callout.admin';
  if (/[\s*>]/.test(subject) || subject.split('.').some((t) => !t))
    throw new ConfigError('admin.subject', 'a plain subject prefix (no wildcards, spaces or empty tokens)');
  const s = raw.system;
  if (s) {
    const methods = [s.password !== undefined || s.user !== undefined, s.token, s.nkey_seed, s.creds_file].filter(Boolean).length;
    if (methods !== 1) throw new ConfigError('admin.system', 'choose one way to authenticate: user/password, token, nkey_seed or creds_file');
    if ((s.user === undefined) !== (s.password === undefined)) throw new ConfigError('admin.system', 'user and password go together');
  }
  const read = (v: z.infer<typeof secret> | undefined, path: string) => (v === undefined || !natsSecrets ? undefined : resolveSecret(v, path, env, baseDir));
  return {
    publicKeys: raw.public_keys ?? [],
    subject,
    system: s && {
      user: s.user,
      password: read(s.password, 'admin.system.password'),
      token: read(s.token, 'admin.system.token'),
      nkeySeed: read(s.nkey_seed, 'admin.system.nkey_seed'),
      credsFile: s.creds_file === undefined ? undefined : s.creds_file.startsWith('/') ? s.creds_file : `${baseDir}/${s.creds_file}`,
    },
  };
}

/** `callout.account_jwt`, read at load (not a secret: an account JWT is public). */
function accountJwt(value: z.infer<typeof secret> | undefined, mode: Config['callout']['mode'], env: NodeJS.ProcessEnv, baseDir: string): string | undefined {
  if (value === undefined) return undefined;
  if (mode !== 'operator') throw new ConfigError('callout.account_jwt', 'only used in callout.mode: operator (server_config mode has no account JWT)');
  return resolveSecret(value, 'callout.account_jwt', env, baseDir).value.trim();
}

function decodeKeys(
  mode: Config['callout']['mode'],
  issuerSeed: Secret,
  issuerAccount: string | undefined,
  accounts: Readonly<Record<string, AccountSigning>>,
  xkeySeed: Secret | undefined,
): Keys {
  const issuer = seedSigner(issuerSeed.value, 'callout.issuer_seed');
  if (issuerAccount !== undefined && !isPublicKey(issuerAccount, 'account')) {
    throw new ConfigError('callout.issuer_account', 'not an account public key (A...)');
  }
  const targets = new Map<string, AccountKey>();
  for (const [name, a] of Object.entries(accounts)) {
    if (!isPublicKey(a.publicKey, 'account')) throw new ConfigError(`accounts.${name}.public_key`, 'not an account public key (A...)');
    const signer = seedSigner(a.signingSeed.value, `accounts.${name}.signing_seed`);
    // Only a signing key can carry a scope: an account's identity key always signs with full say.
    if (a.scoped && signer.publicKey === a.publicKey) {
      throw new ConfigError(
        `accounts.${name}.scoped`,
        "the signing_seed is the account's identity key, which has no scope; give the scoped signing key's seed",
      );
    }
    targets.set(name, { publicKey: a.publicKey, signer, scoped: a.scoped });
  }
  let xkey: XkeyBox | undefined;
  if (xkeySeed) {
    try {
      xkey = new XkeyBox(xkeySeed.value);
    } catch (err) {
      throw new ConfigError('callout.xkey_seed', (err as Error).message);
    }
  }
  return { accounts: new Accounts(mode, issuer, issuerAccount, targets), xkey };
}

function seedSigner(seed: string, path: string): NkeySigner {
  try {
    return new NkeySigner(seed, 'account');
  } catch (err) {
    throw new ConfigError(path, (err as Error).message);
  }
}

/** Accounts no rule may place users into: the callout account (it sees every login's token) and the system account. */
function reservedAccounts(
  mode: Config['callout']['mode'],
  calloutAccount: string | undefined,
  systemAccount: string | undefined,
  keys: Keys,
  accounts: Readonly<Record<string, AccountSigning>>,
): Map<string, string> {
  const reserved = new Map<string, string>();
  if (mode === 'server_config') {
    for (const name of ['$SYS', 'SYS', systemAccount ?? '$SYS']) reserved.set(name, 'the system account');
    reserved.set(calloutAccount!, 'the callout account (callout.account), where every login request and its token is visible');
    return reserved;
  }
  const calloutKey = keys.accounts.calloutAccount;
  for (const [name, a] of Object.entries(accounts)) {
    if (a.publicKey === calloutKey) reserved.set(name, 'the callout account, where every login request and its token is visible');
    if (a.publicKey === systemAccount) reserved.set(name, 'the system account (callout.system_account)');
  }
  return reserved;
}

/** Reads, parses and validates a YAML configuration file. */
export function loadConfig(file: string, env: NodeJS.ProcessEnv = process.env, options: LoadOptions = {}): Config {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new ConfigError('', `cannot read ${file}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  let doc: unknown;
  try {
    doc = parseYaml(text, { uniqueKeys: true });
  } catch (err) {
    // The parser's message quotes the offending line, which may hold an inline secret: keep
    // only its first sentence and the position.
    const e = err as Error & { linePos?: { line: number; col: number }[] };
    const what = e.message.split('\n')[0]!.replace(/ at line \d+, column \d+:?$/, '');
    const where = e.linePos?.[0] ? ` (line ${e.linePos[0].line}, column ${e.linePos[0].col})` : '';
    throw new ConfigError('', `${file} is not valid YAML: ${what}${where}`);
  }
  const dir = file.includes('/') ? file.slice(0, file.lastIndexOf('/')) || '/' : process.cwd();
  return buildConfig(doc, env, dir, options);
}

/** The effective configuration as plain data, every secret replaced by its source. */
export function redactedConfig(config: Config): unknown {
  const { policy: _compiled, keys: _keys, ...data } = config;
  return JSON.parse(
    JSON.stringify(data, (_key, value: unknown) =>
      value && typeof value === 'object' && 'value' in value && 'source' in value ? `<secret from ${(value as Secret).source}>` : value,
    ),
  );
}

function deepFreeze<T>(value: T): T {
  if (value && typeof value === 'object' && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const v of Object.values(value)) deepFreeze(v);
  }
  return value;
}
