/**
 * `oidc-callout setup operator`: a first decentralized (operator JWT) deployment in one directory.
 * An operator with a signing key, the system account, the callout account (AUTH) whose JWT
 * delegates logins to the service, application accounts with signing keys (the last one scoped),
 * the users the service and the clients log in with, nats-server's configuration with every
 * account JWT preloaded, and the service's configuration that matches it.
 *
 * Generating is pure (keys and texts); writing goes through the same all-or-nothing, mode-0600,
 * never-through-a-symlink path as `oidc-callout keys`.
 */
import { mkdirSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { type Account, encodeAccount, encodeOperator, encodeUser, fmtCreds, type OperatorLimits, type SigningKey } from '@nats-io/jwt';
import { createAccount, createCurve, createOperator, createUser, type KeyPair } from '@nats-io/nkeys';
import { refuseSharedDirectory, writeSecretFiles } from './secret-files.js';
import { UsageError } from './usage-error.js';

/** What `setup operator` was asked for, validated. */
export interface OperatorSetupOptions {
  /** Application accounts APP1..APPn (1-100); the last one signs with a scoped key when n >= 2. */
  readonly accounts: number;
  /** Encrypt callout requests (`authorization.xkey` in AUTH's JWT). */
  readonly xkey: boolean;
  /** The OpenID issuer and audience to write; a marked placeholder when undefined. */
  readonly issuer: string | undefined;
  readonly audience: string | undefined;
}

/** One file of the setup, named relative to its directory. */
export interface SetupFile {
  readonly name: string;
  readonly text: string;
  /** Seeds and creds: mode 0600. The two configurations hold only public keys and JWTs. */
  readonly secret: boolean;
  /** One line for the report. */
  readonly what: string;
}

/** An application account of the setup. */
export interface SetupAccount {
  readonly name: string;
  readonly publicKey: string;
  readonly signingKey: string;
  readonly scoped: boolean;
}

/** The generated setup: its files and the public keys the report names. */
export interface OperatorSetup {
  readonly files: readonly SetupFile[];
  readonly operator: string;
  readonly systemAccount: string;
  readonly calloutAccount: string;
  readonly xkey: string | undefined;
  readonly serviceUser: string;
  readonly sentinelUser: string;
  readonly accounts: readonly SetupAccount[];
}

/**
 * Limits written into every account JWT. An account JWT without limits allows no connection at
 * all; -1 is unlimited. JetStream stays off (zero storage) until someone decides its limits, and
 * bearer user JWTs (which need no signature of the client) are refused.
 */
export const ACCOUNT_LIMITS: OperatorLimits = {
  conn: -1,
  leaf: -1,
  subs: -1,
  data: -1,
  payload: -1,
  imports: -1,
  exports: -1,
  wildcards: true,
  disallow_bearer: true,
  mem_storage: 0,
  disk_storage: 0,
  streams: 0,
  consumer: 0,
};

/**
 * The scope of the scoped signing key: nats-server expands the templates for each user when it
 * registers the user (`processUserPermissionsTemplate`; verified on 2.10.27 and 2.15.1:
 * `{{name()}}`, `{{subject()}}`, `{{account-name()}}`, `{{account-subject()}}`, `{{tag(k)}}`,
 * `{{account-tag(k)}}`). `name()` is the user's name, which the service takes from the token
 * (`user_name_claim`, default `sub`): the private inbox a client sets as its inbox prefix.
 */
export const SCOPE_PERMISSIONS: { readonly pub: readonly string[]; readonly sub: readonly string[] } = {
  pub: ['{{account-name()}}.>', '$SYS.REQ.USER.INFO'],
  sub: ['{{account-name()}}.>', '_INBOX.{{name()}}.>'],
};

/**
 * User names the scoped rule admits: nats-server substitutes `{{name()}}` without any check, so a
 * name holding `.`, `*` or `>` would change the shape of the scope's subjects (`_INBOX.*.>`).
 */
export const SCOPED_NAME = '[A-Za-z0-9_@:+=-]{1,128}';

const MAX_ACCOUNTS = 100;
const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]']);

/** Validates the command-line options of `setup operator` (each error names its option). */
export function setupOptions(raw: {
  accounts?: string | undefined;
  'no-xkey'?: boolean | undefined;
  issuer?: string | undefined;
  audience?: string | undefined;
}): OperatorSetupOptions {
  const accounts = raw.accounts === undefined ? 2 : Number(raw.accounts);
  if (!/^\d+$/.test(raw.accounts ?? '2') || !Number.isInteger(accounts) || accounts < 1 || accounts > MAX_ACCOUNTS) {
    throw new UsageError(`--accounts must be a whole number from 1 to ${MAX_ACCOUNTS}`);
  }
  if ((raw.issuer === undefined) !== (raw.audience === undefined)) {
    throw new UsageError('--issuer and --audience go together: the issuer (exact iss) and the audience its tokens for NATS carry');
  }
  if (raw.issuer !== undefined) {
    let url: URL;
    try {
      url = new URL(raw.issuer);
    } catch {
      throw new UsageError(`--issuer ${JSON.stringify(raw.issuer)} is not a URL`);
    }
    if (url.protocol !== 'https:' && !(url.protocol === 'http:' && LOOPBACK.has(url.hostname))) {
      throw new UsageError('--issuer must be an https:// URL (http:// only on loopback, for tests)');
    }
    if (/[\s"'#]/.test(raw.issuer) || !raw.audience || /[\s"'#,[\]{}]/.test(raw.audience)) {
      throw new UsageError('--issuer and --audience cannot be empty or contain spaces, quotes, #, commas or brackets');
    }
  }
  return { accounts, xkey: !raw['no-xkey'], issuer: raw.issuer, audience: raw.audience };
}

const text = (kp: KeyPair) => new TextDecoder().decode(kp.getSeed());
const seedFile = (kp: KeyPair) => `${text(kp)}\n`;

/** Generates every key, JWT and configuration of the setup (nothing is written). */
export async function generateOperatorSetup(options: OperatorSetupOptions): Promise<OperatorSetup> {
  const operator = createOperator();
  const operatorSigning = createOperator();
  const sys = createAccount();
  const sysSigning = createAccount();
  const auth = createAccount();
  const authSigning = createAccount();
  const xkey = options.xkey ? createCurve() : undefined;
  const serviceUser = createUser();
  const sentinel = createUser();
  const sysUser = createUser();
  const apps = Array.from({ length: options.accounts }, (_, i) => ({
    name: `APP${i + 1}`,
    key: createAccount(),
    signing: createAccount(),
    scoped: options.accounts >= 2 && i === options.accounts - 1,
  }));

  // strict_signing_key_usage: account JWTs must be signed by the operator's signing key, and users
  // by their account's signing keys. No identity seed signs anything day to day: the operator's
  // stays offline, the accounts' are not even kept.
  const operatorJwt = await encodeOperator('oidc-callout', operator, {
    system_account: sys.getPublicKey(),
    signing_keys: [operatorSigning.getPublicKey()],
    strict_signing_key_usage: true,
  } as Parameters<typeof encodeOperator>[2]);
  const signedByOperator = { signer: operatorSigning };
  const account = (name: string, kp: KeyPair, extra: Partial<Account> = {}) => encodeAccount(name, kp, { limits: ACCOUNT_LIMITS, ...extra }, signedByOperator);
  const sysJwt = await account('SYS', sys, { signing_keys: [sysSigning.getPublicKey()] });
  const authJwt = await account('AUTH', auth, {
    signing_keys: [authSigning.getPublicKey()],
    authorization: {
      auth_users: [serviceUser.getPublicKey()],
      allowed_accounts: apps.map((a) => a.key.getPublicKey()),
      ...(xkey ? { xkey: xkey.getPublicKey() } : {}),
    },
  });
  const appJwts = await Promise.all(
    apps.map((a) => {
      const signingKey: string | SigningKey = a.scoped
        ? // Written out rather than newScopedSigner(), whose defaults add response permissions.
          {
            kind: 'user_scope',
            key: a.signing.getPublicKey(),
            role: 'oidc-callout',
            template: { pub: { allow: [...SCOPE_PERMISSIONS.pub], deny: [] }, sub: { allow: [...SCOPE_PERMISSIONS.sub], deny: [] } },
          }
        : a.signing.getPublicKey();
      return account(a.name, a.key, { signing_keys: [signingKey] });
    }),
  );

  // The service's own login (listed in auth_users, so it bypasses the callout) and the sentinel:
  // every client presents it with its token; by itself it may do nothing.
  const serviceJwt = await encodeUser('oidc-callout', serviceUser, auth, {}, { signer: authSigning });
  const sentinelJwt = await encodeUser(
    'sentinel',
    sentinel,
    auth,
    { pub: { allow: [], deny: ['>'] }, sub: { allow: [], deny: ['>'] } },
    { signer: authSigning },
  );
  const sysJwtUser = await encodeUser('sys', sysUser, sys, {}, { signer: sysSigning });

  const accounts: SetupAccount[] = apps.map((a) => ({ name: a.name, publicKey: a.key.getPublicKey(), signingKey: a.signing.getPublicKey(), scoped: a.scoped }));
  const setup = {
    operator: operator.getPublicKey(),
    systemAccount: sys.getPublicKey(),
    calloutAccount: auth.getPublicKey(),
    xkey: xkey?.getPublicKey(),
    serviceUser: serviceUser.getPublicKey(),
    sentinelUser: sentinel.getPublicKey(),
    accounts,
  };
  const files: SetupFile[] = [
    {
      name: 'nats-server.conf',
      text: natsServerConf(setup, operatorJwt, [
        ['SYS: the system account', sys.getPublicKey(), sysJwt],
        [
          `AUTH: the callout account (auth_users: the service; allowed_accounts: ${apps.map((a) => a.name).join(', ')}${xkey ? '; xkey' : ''})`,
          auth.getPublicKey(),
          authJwt,
        ],
        ...apps.map((a, i) => [`${a.name}${a.scoped ? ' (scoped signing key)' : ''}`, a.key.getPublicKey(), appJwts[i]!] as const),
      ]),
      secret: false,
      what: 'nats-server: the operator, the system account, every account JWT (MEMORY resolver)',
    },
    {
      name: 'oidc-callout.yaml',
      text: serviceConfig(setup, options),
      secret: false,
      what: "the service's configuration (edit the issuer and the rules' conditions)",
    },
    { name: 'auth.jwt', text: `${authJwt}\n`, secret: false, what: "AUTH's account JWT: check and run compare the configuration with it" },
    {
      name: 'service.creds',
      text: new TextDecoder().decode(fmtCreds(serviceJwt, serviceUser)),
      secret: true,
      what: "the service's NATS user in AUTH (in auth_users)",
    },
    {
      name: 'sentinel.creds',
      text: new TextDecoder().decode(fmtCreds(sentinelJwt, sentinel)),
      secret: true,
      what: 'the sentinel user of AUTH: clients present it with their token; alone it can do nothing',
    },
    { name: 'auth-signing.nk', text: seedFile(authSigning), secret: true, what: "AUTH's signing seed: signs the service's answers to nats-server" },
    ...(xkey ? [{ name: 'xkey.nk', text: seedFile(xkey), secret: true, what: 'the xkey seed: opens the encrypted requests' }] : []),
    ...apps.map((a) => ({
      name: `${a.name.toLowerCase()}-signing.nk`,
      text: seedFile(a.signing),
      secret: true,
      what: `${a.name}'s ${a.scoped ? 'scoped ' : ''}signing seed: signs its users`,
    })),
    {
      name: 'sys.creds',
      text: new TextDecoder().decode(fmtCreds(sysJwtUser, sysUser)),
      secret: true,
      what: 'a user of the system account, for administration (nats CLI, admin.system)',
    },
    {
      name: 'operator-signing.nk',
      text: seedFile(operatorSigning),
      secret: true,
      what: "the operator's signing seed: signs account JWTs (keep it off the servers)",
    },
    { name: 'operator.nk', text: seedFile(operator), secret: true, what: "the operator's identity seed: changes the operator JWT (keep it offline)" },
  ];
  return { ...setup, files };
}

type Preload = readonly (readonly [comment: string, publicKey: string, jwt: string])[];

function natsServerConf(setup: Omit<OperatorSetup, 'files'>, operatorJwt: string, preload: Preload): string {
  return `# nats-server (2.10+) in operator (JWT) mode, delegating client logins to oidc-callout.
# Written by \`oidc-callout setup operator\`. Start it with: nats-server -c nats-server.conf

# Loopback only: to serve other machines, listen on their interface and serve clients over TLS
# (tokens are bearer credentials): tls { cert_file: ..., key_file: ... }
listen: 127.0.0.1:4222

# OIDC access tokens travel in CONNECT and often exceed the 4 KiB default: such clients would be
# dropped before the callout.
max_control_line: 65536

# How long a client may take to log in, the callout's answer included. When nats-server restarts,
# every client reconnects at once and waits in line for the callout: 2 s (the default) is too
# short for thousands of clients (see the README, "Reconnect storms").
authorization { timeout: 5 }

operator: ${operatorJwt}
system_account: ${setup.systemAccount}

# Every account JWT, signed by the operator's signing key (operator-signing.nk). To change an
# account, sign its new JWT and replace it here, or move to the full resolver (see the README).
resolver: MEMORY
resolver_preload: {
${preload.map(([comment, key, jwt]) => `  # ${comment}\n  ${key}: ${jwt}`).join('\n')}
}
`;
}

function serviceConfig(setup: Omit<OperatorSetup, 'files'>, options: OperatorSetupOptions): string {
  const issuer =
    options.issuer === undefined
      ? `  # EDIT: your OpenID provider's exact issuer (iss) and the audience its access tokens for NATS carry.
  - issuer: https://idp.example.com/realms/example
    audiences: [nats]`
      : `  - issuer: ${options.issuer}
    audiences: [${options.audience}]${options.issuer.startsWith('http:') ? '\n    allow_insecure_http: true   # a loopback issuer: tests only' : ''}`;
  const accounts = setup.accounts
    .map(
      (a) => `  ${a.name}:
    public_key: ${a.publicKey}
    signing_seed: { file: ${a.name.toLowerCase()}-signing.nk }${
      a.scoped
        ? `   # a scoped signing key: the scope in ${a.name}'s JWT grants the permissions
    scoped: true`
        : ''
    }`,
    )
    .join('\n');
  const rules = setup.accounts
    .map((a) =>
      a.scoped
        ? `    - name: ${a.name.toLowerCase()}
      match: { groups: ${a.name.toLowerCase()} }
      # nats-server puts the user name (here the token's sub) into the scope's subjects as it is:
      # admit only names that are one plain subject token (a sub of "*" would open every inbox).
      when: [{ claim: sub, regex: "${SCOPED_NAME}" }]
      user_name_claim: sub
      account: ${a.name}
      # No permissions: users get the scope of ${a.name}'s signing key ({{account-name()}}.>, the
      # private inbox _INBOX.{{name()}}.>, where name() is the user name).`
        : `    - name: ${a.name.toLowerCase()}
      match: { groups: ${a.name.toLowerCase()} }
      account: ${a.name}
      permissions:
        # $SYS.REQ.USER.INFO lets a client ask nats-server who it is and what it may do
        pub: { allow: ["${a.name}.>", "$SYS.REQ.USER.INFO"] }
        # a private inbox: clients set their inbox prefix to _INBOX.<their token's sub>
        sub: { allow: ["${a.name}.>", "_INBOX.{{sub}}.>"] }`,
    )
    .join('\n');
  return `# oidc-callout in operator mode, matching nats-server.conf in this directory.
# Written by \`oidc-callout setup operator\`. Edit the issuer and the rules' conditions, then:
#   oidc-callout check --config oidc-callout.yaml && oidc-callout run --config oidc-callout.yaml
nats:
  servers: [nats://127.0.0.1:4222]
  creds_file: service.creds          # the service's user in AUTH, listed in AUTH's auth_users
callout:
  mode: operator
  issuer_seed: { file: auth-signing.nk }   # a signing key of AUTH: signs the answers to nats-server
  issuer_account: ${setup.calloutAccount}   # AUTH
  account_jwt: { file: auth.jwt }    # AUTH's JWT: check and run compare this configuration with it${
    setup.xkey ? "\n  xkey_seed: { file: xkey.nk }       # AUTH's JWT has authorization.xkey: requests are encrypted" : ''
  }
  system_account: ${setup.systemAccount}   # SYS: no rule may place users into it
accounts:
${accounts}
admin:
  # A system account login: check and run read each account's JWT through it (signing keys,
  # scopes). Add public_keys (user nkeys) to turn on revocation as well.
  system: { creds_file: sys.creds }
issuers:
${issuer}
policy:
  rules:
    # EDIT the conditions: which tokens land in which account.
${rules}
`;
}

/**
 * Writes the setup into `dir` (created 0700 when missing). Refuses a directory others can write
 * to, and a non-empty one unless `force` (then files of the same names are replaced, all or none).
 * Returns the paths written.
 */
export function writeOperatorSetup(dir: string, setup: OperatorSetup, force: boolean): string[] {
  try {
    mkdirSync(dir, { recursive: true, mode: 0o700 });
  } catch (err) {
    throw new UsageError(`cannot create --dir ${dir}: ${(err as NodeJS.ErrnoException).code ?? String(err)}`);
  }
  if (!statSync(dir).isDirectory()) throw new UsageError(`--dir ${dir} is not a directory`);
  refuseSharedDirectory(dir);
  if (!force && readdirSync(dir).length > 0) {
    throw new UsageError(`${dir} is not empty; pass --force to write into it (files of the same names are replaced)`);
  }
  const paths = setup.files.map((f) => join(dir, f.name));
  writeSecretFiles(setup.files.map((f, i) => [paths[i]!, f.text, f.secret ? 0o600 : 0o644] as const));
  return paths;
}

/** What was written and what to do next, for the terminal. No seed is ever printed. */
export function setupReport(dir: string, setup: OperatorSetup, options: OperatorSetupOptions): string {
  const width = Math.max(...setup.files.map((f) => f.name.length));
  const files = setup.files.map((f) => `  ${f.name.padEnd(width)}  ${f.secret ? '0600' : '    '}  ${f.what}`).join('\n');
  const accounts = [
    `  operator  ${setup.operator}`,
    `  SYS       ${setup.systemAccount}`,
    `  AUTH      ${setup.calloutAccount}   callout account${setup.xkey ? `, xkey ${setup.xkey}` : ''}`,
    ...setup.accounts.map((a) => `  ${a.name.padEnd(8)}  ${a.publicKey}   ${a.scoped ? 'scoped ' : ''}signing key ${a.signingKey}`),
  ].join('\n');
  const scoped = setup.accounts.find((a) => a.scoped);
  const config = join(dir, 'oidc-callout.yaml');
  return `oidc-callout setup operator: wrote into ${dir}
${files}

keys:
${accounts}
${scoped ? `\n${scoped.name}'s signing key is scoped: its users get ${SCOPE_PERMISSIONS.pub.join(', ')} (pub) and ${SCOPE_PERMISSIONS.sub.join(', ')} (sub).\n` : ''}
next steps:
  1. ${options.issuer === undefined ? `edit ${config}: the issuer, its audience, and the rules' conditions` : `check the rules' conditions in ${config}`}
  2. nats-server -c ${join(dir, 'nats-server.conf')}          (2.10 or newer; listens on 127.0.0.1:4222)
  3. oidc-callout check --config ${config}
     oidc-callout run --config ${config}
  4. clients log in with sentinel.creds plus their OIDC access token, and their private inbox:
       nats.js: connect({ servers, authenticator: [credsAuthenticator(sentinelCreds), tokenAuthenticator(token)],
                          inboxPrefix: \`_INBOX.\${sub}\`, maxReconnectAttempts: -1, ignoreAuthErrorAbort: true })
       Go:      nats.Connect(url, nats.UserCredentials("sentinel.creds"), nats.Token(token), nats.CustomInboxPrefix("_INBOX."+sub),
                             nats.MaxReconnects(-1), nats.IgnoreAuthErrorAbort(), nats.Timeout(7*time.Second))
     (retry logins refused or timed out in a restart storm; README "Reconnect storms")
`;
}

/** The whole command: generate, write, and return the report. */
export async function setupOperator(dir: string, options: OperatorSetupOptions, force: boolean): Promise<string> {
  const setup = await generateOperatorSetup(options);
  writeOperatorSetup(dir, setup, force);
  return setupReport(dir, setup, options);
}
