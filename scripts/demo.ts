/**
 * `npm run demo`: the whole flow on one machine, nothing to configure. Starts a real OpenID
 * provider, a nats-server with auth_callout (xkey on), and `oidc-callout run` itself, then
 * connects clients with real access tokens and says in plain words what happened.
 *
 * `npm run demo -- --operator`: the same in operator (JWT) mode, from the files
 * `oidc-callout setup operator` writes: an operator, accounts with signing keys (one scoped),
 * a sentinel user that clients present with their token.
 *
 * `npm run demo -- --idp`: only the OpenID provider, kept running until Ctrl-C, for trying the
 * service by hand: it prints its issuer, the audience of its tokens and how to get one.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createAccount, createCurve } from '@nats-io/nkeys';
import { connect, credsAuthenticator, type NatsConnection, tokenAuthenticator } from '@nats-io/transport-node';
import { generateOperatorSetup, setupOptions, writeOperatorSetup } from '../src/operator-setup.js';
import { calloutServerConfig } from '../test/helpers/callout-fixture.js';
import { natsServerBinaries } from '../test/helpers/nats-server-bin.js';
import { startNatsServer } from '../test/helpers/nats-server.js';
import { startOidcProvider } from '../test/helpers/oidc-provider.js';

const here = dirname(fileURLToPath(import.meta.url));
const say = (s: string) => process.stdout.write(`${s}\n`);
const step = (s: string) => say(`\n== ${s}`);

async function main(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'oidc-callout-demo-'));
  const cleanups: Cleanups = [() => rmSync(work, { recursive: true, force: true })];
  cleanUpOnSignal(cleanups);
  try {
    step('Starting an OpenID provider with two machine clients (client_credentials)');
    const idp = await startOidcProvider({
      clients: [
        { clientId: 'orders-service', clientSecret: 'orders-secret', claims: { groups: ['orders-writers'], tenant: 'acme', name: 'Orders service' } },
        { clientId: 'stranger', clientSecret: 'stranger-secret', claims: { groups: ['guests'] } },
      ],
    });
    cleanups.push(() => idp.stop());
    say(`issuer ${idp.issuer}, access tokens for audience ${idp.resource}`);

    step('Starting nats-server with auth_callout (encrypted with an xkey)');
    const [bin] = (await natsServerBinaries()).slice(-1);
    const issuerKey = createAccount();
    const xkey = createCurve();
    const nats = await startNatsServer({
      bin: bin!.path,
      config: calloutServerConfig({ issuer: issuerKey.getPublicKey(), xkey: xkey.getPublicKey(), password: 'demo-password' }),
    });
    cleanups.push(() => nats.stop());
    say(`nats-server ${bin!.version} at ${nats.url}`);

    step('Starting oidc-callout run');
    writeFileSync(join(work, 'issuer.nk'), new TextDecoder().decode(issuerKey.getSeed()), { mode: 0o600 });
    writeFileSync(join(work, 'xkey.nk'), new TextDecoder().decode(xkey.getSeed()), { mode: 0o600 });
    const configFile = join(work, 'oidc-callout.yaml');
    writeFileSync(
      configFile,
      `nats:
  servers: [${nats.url}]
  user: auth
  password: { env: DEMO_NATS_PASSWORD }
callout:
  account: AUTH                 # auth_callout.account: no rule may place users into it
  issuer_seed: { file: issuer.nk }
  xkey_seed: { file: xkey.nk }
issuers:
  - issuer: ${idp.issuer}
    audiences: [${idp.resource}]
    token_types: [at+jwt]
    allow_insecure_http: true   # loopback demo only
policy:
  rules:
    - name: order-writers
      match: { groups: orders-writers }
      when: [{ claim: tenant, present: true }]   # a claim used in subjects must be guaranteed
      account: APP
      user_name_claim: name
      max_lifetime: 15m
      permissions:
        # $SYS.REQ.USER.INFO lets the demo client ask the server who it is and what it may do
        pub: { allow: ["orders.{{claims.tenant}}.>", "$SYS.REQ.USER.INFO"] }
        # a private inbox: the client sets its inbox prefix to _INBOX.<its sub>
        sub: { allow: ["orders.{{claims.tenant}}.>", "_INBOX.{{sub}}.>"] }
`,
    );
    say(`configuration: ${configFile}`);
    const { decisions, nextDecision } = await startService(configFile, { DEMO_NATS_PASSWORD: 'demo-password' }, cleanups);

    step('Client "orders-service" connects with its access token');
    const token = await idp.token('orders-service');
    let seen = decisions().length;
    // Replies come to a private inbox the rule grants to this identity alone.
    const tokenSub = (JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { sub: string }).sub;
    const nc = await connect({ servers: nats.url, token, reconnect: false, inboxPrefix: `_INBOX.${tokenSub}` });
    cleanups.push(() => nc.close());
    const d = await nextDecision(seen);
    say(`connected. oidc-callout: ${d.result} by rule "${d.rule}" into account ${d.account}, until ${new Date(Number(d.expires) * 1000).toISOString()}`);
    const info = JSON.parse(new TextDecoder().decode((await nc.request('$SYS.REQ.USER.INFO', '')).data)) as { data: Record<string, unknown> };
    say(`the server sees user "${info.data.user}" in account ${info.data.account} with permissions ${JSON.stringify(info.data.permissions)}`);

    const sub = nc.subscribe('orders.acme.>', { max: 1 });
    nc.publish('orders.acme.created', 'order #1');
    for await (const m of sub) say(`publish to orders.acme.created: allowed, and received back: "${m.string()}"`);
    say(`publish to orders.globex.created: ${await deniedPublish(nc, 'orders.globex.created')}`);

    step('Client "stranger" connects with a valid token that no policy rule grants');
    const strangerToken = await idp.token('stranger');
    seen = decisions().length;
    say(await refusedConnect({ servers: nats.url, token: strangerToken, reconnect: false }));
    const refusal = await nextDecision(seen);
    say(`oidc-callout logged why: ${refusal.code} (${refusal.reason})`);

    step('A client connects with a forged token');
    const [h, p] = token.split('.');
    const forged = `${h}.${Buffer.from(JSON.stringify({ ...JSON.parse(Buffer.from(p!, 'base64url').toString()), tenant: 'globex' })).toString('base64url')}.${token.split('.')[2]}`;
    seen = decisions().length;
    say(await refusedConnect({ servers: nats.url, token: forged, reconnect: false }));
    const forgery = await nextDecision(seen);
    say(`oidc-callout logged why: ${forgery.code} (${forgery.reason})`);
    step('Done: stopping everything');
  } finally {
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
  }
}

type Cleanups = (() => Promise<unknown> | unknown)[];

/**
 * A demo stopped by Ctrl-C or SIGTERM still stops what it started: the service, nats-server, the
 * provider, and the directory holding the demo's seeds.
 */
function cleanUpOnSignal(cleanups: Cleanups): void {
  let stopping = false;
  const stop = (signal: NodeJS.Signals) => {
    if (stopping) return;
    stopping = true;
    void (async () => {
      for (const c of [...cleanups].reverse()) await Promise.resolve(c()).catch(() => undefined);
      process.exit(signal === 'SIGINT' ? 130 : 143);
    })();
  };
  // `on`, not `once`: the nats-server helper's own handler re-raises the signal when it finds no
  // other listener left, which would end the process before the cleanups ran.
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

/** `oidc-callout run` as a child process, its JSON log read for the decisions it logs. */
async function startService(configFile: string, env: Record<string, string>, cleanups: Cleanups) {
  const service = spawn(process.execPath, [join(here, '..', 'src', 'main.js'), 'run', '--config', configFile], {
    env: { ...process.env, ...env },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const serviceLog: Record<string, unknown>[] = [];
  let listening!: () => void;
  const ready = new Promise<void>((resolve) => (listening = resolve));
  let buffered = '';
  service.stdout.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      const line = JSON.parse(buffered.slice(0, nl)) as Record<string, unknown>;
      buffered = buffered.slice(nl + 1);
      serviceLog.push(line);
      if (line.msg === 'listening') listening();
    }
  });
  cleanups.push(
    () =>
      new Promise<void>((resolve) => {
        service.once('exit', () => resolve());
        service.kill('SIGTERM');
      }),
  );
  await Promise.race([ready, new Promise((_, reject) => service.once('exit', (code) => reject(new Error(`oidc-callout exited with ${code}`))))]);
  say('oidc-callout is subscribed to $SYS.REQ.USER.AUTH');
  const decisions = () => serviceLog.filter((l) => l.msg === 'authorization');
  /** The service's log arrives through a pipe, possibly after the client saw the outcome. */
  const nextDecision = async (seen: number): Promise<Record<string, unknown>> => {
    for (let i = 0; i < 100 && decisions().length <= seen; i++) await new Promise((r) => setTimeout(r, 20));
    return decisions()[seen] ?? {};
  };
  return { decisions, nextDecision };
}

/** `--operator`: decentralized mode, set up by the code of `oidc-callout setup operator`. */
async function operatorDemo(): Promise<void> {
  const work = mkdtempSync(join(tmpdir(), 'oidc-callout-demo-'));
  const cleanups: Cleanups = [() => rmSync(work, { recursive: true, force: true })];
  cleanUpOnSignal(cleanups);
  try {
    step('Starting an OpenID provider with three machine clients (client_credentials)');
    const idp = await startOidcProvider({
      clients: [
        { clientId: 'billing', clientSecret: 'billing-secret', claims: { groups: ['app1'] } },
        { clientId: 'reports', clientSecret: 'reports-secret', claims: { groups: ['app2'] } },
        { clientId: 'stranger', clientSecret: 'stranger-secret', claims: { groups: ['guests'] } },
      ],
    });
    cleanups.push(() => idp.stop());
    say(`issuer ${idp.issuer}, access tokens for audience ${idp.resource}`);

    step('oidc-callout setup operator --dir ... (an operator, accounts, users, seeds and both configurations)');
    const dir = join(work, 'setup');
    const setup = await generateOperatorSetup(setupOptions({ issuer: idp.issuer, audience: idp.resource }));
    writeOperatorSetup(dir, setup, false);
    for (const f of setup.files) say(`  ${f.name.padEnd(20)} ${f.secret ? '0600' : '    '}  ${f.what}`);
    const accountName = new Map([...setup.accounts.map((a) => [a.publicKey, a.name] as const)]);

    step('Starting nats-server in operator mode with the written nats-server.conf');
    const [bin] = (await natsServerBinaries()).slice(-1);
    // The demo's server takes a free port instead of the written 127.0.0.1:4222.
    const conf = readFileSync(join(dir, 'nats-server.conf'), 'utf8').replace(/^listen: .*$/m, '');
    const nats = await startNatsServer({ bin: bin!.path, config: conf });
    cleanups.push(() => nats.stop());
    say(`nats-server ${bin!.version} at ${nats.url}; AUTH's account JWT sends every login to the callout`);

    step('Starting oidc-callout run with the written oidc-callout.yaml');
    const configFile = join(dir, 'demo.yaml');
    writeFileSync(configFile, readFileSync(join(dir, 'oidc-callout.yaml'), 'utf8').replace('nats://127.0.0.1:4222', nats.url));
    const { decisions, nextDecision } = await startService(configFile, {}, cleanups);
    const sentinel = readFileSync(join(dir, 'sentinel.creds'));

    for (const [clientId, other] of [
      ['billing', 'APP2.reports'],
      ['reports', 'APP1.invoices'],
    ] as const) {
      step(`Client "${clientId}" connects with sentinel.creds and its access token`);
      const token = await idp.token(clientId);
      const sub = (JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as { sub: string }).sub;
      const seen = decisions().length;
      const nc = await connect({
        servers: nats.url,
        reconnect: false,
        inboxPrefix: `_INBOX.${sub}`,
        authenticator: [credsAuthenticator(sentinel), tokenAuthenticator(token)],
      });
      cleanups.push(() => nc.close());
      const d = await nextDecision(seen);
      say(`connected. oidc-callout: ${d.result} by rule "${d.rule}" into account ${d.account}`);
      const info = JSON.parse(new TextDecoder().decode((await nc.request('$SYS.REQ.USER.INFO', '')).data)) as {
        data: { user: string; account: string; permissions: unknown };
      };
      const scoped = setup.accounts.find((a) => a.publicKey === info.data.account)?.scoped;
      say(
        `the server sees user "${info.data.user}" in account ${accountName.get(info.data.account)} with permissions ${JSON.stringify(info.data.permissions)}${
          scoped ? ": the scope of the account's signing key, expanded by nats-server for this user" : ": the rule's permissions"
        }`,
      );
      say(`publish to ${other}: ${await deniedPublish(nc, other)}`);
    }

    step('A client presents sentinel.creds without a token');
    const seen = decisions().length;
    say(await refusedConnect({ servers: nats.url, reconnect: false, authenticator: credsAuthenticator(sentinel) }));
    const alone = await nextDecision(seen);
    say(`oidc-callout logged why: ${alone.code} (${alone.reason})`);

    step('Client "stranger" connects with a valid token that no policy rule grants');
    const strangerSeen = decisions().length;
    say(
      await refusedConnect({
        servers: nats.url,
        reconnect: false,
        authenticator: [credsAuthenticator(sentinel), tokenAuthenticator(await idp.token('stranger'))],
      }),
    );
    const refusal = await nextDecision(strangerSeen);
    say(`oidc-callout logged why: ${refusal.code} (${refusal.reason})`);
    step('Done: stopping everything');
  } finally {
    for (const c of cleanups.reverse()) await Promise.resolve(c()).catch(() => undefined);
  }
}

async function deniedPublish(nc: NatsConnection, subject: string): Promise<string> {
  const violation = (async () => {
    for await (const s of nc.status()) if (s.type === 'error') return `denied by the server (${String(s.error.message)})`;
    return 'no answer';
  })();
  nc.publish(subject, 'order #2');
  await nc.flush();
  return Promise.race([violation, new Promise<string>((r) => setTimeout(() => r('NOT denied (unexpected)'), 2000))]);
}

async function refusedConnect(options: Parameters<typeof connect>[0]): Promise<string> {
  try {
    const nc = await connect(options);
    await nc.close();
    return 'connected (unexpected!)';
  } catch (err) {
    return `refused: the client sees "${(err as Error).message}"`;
  }
}

/** `--idp`: a local OpenID provider for trying things by hand, until Ctrl-C. */
async function idpOnly(): Promise<void> {
  const ttlSeconds = 3600;
  const clients = [
    { clientId: 'orders-service', clientSecret: 'orders-secret', claims: { groups: ['orders-writers'], tenant: 'acme', name: 'Orders service' } },
    { clientId: 'billing', clientSecret: 'billing-secret', claims: { groups: ['app1'] } },
    { clientId: 'reports', clientSecret: 'reports-secret', claims: { groups: ['app2'] } },
    { clientId: 'stranger', clientSecret: 'stranger-secret', claims: { groups: ['guests'] } },
  ];
  const idp = await startOidcProvider({ clients, ttlSeconds });
  step('A local OpenID provider (client_credentials), for trying oidc-callout by hand');
  say(`issuer:   ${idp.issuer}   (http on loopback: set allow_insecure_http: true on this issuer)`);
  say(`audience: ${idp.resource}`);
  say(`tokens:   valid ${ttlSeconds / 60} minutes; the client id is the token's sub`);
  for (const c of clients) say(`  ${c.clientId.padEnd(15)} secret ${c.clientSecret.padEnd(16)} claims ${JSON.stringify(c.claims)}`);
  say('\nGet a token (here for billing) into a file:');
  say(
    `  curl -s -u billing:billing-secret -d grant_type=client_credentials --data-urlencode resource=${idp.resource} ${idp.tokenEndpoint} | node -pe 'JSON.parse(require("fs").readFileSync(0)).access_token' > billing.jwt`,
  );
  say(`\nWith setup operator: oidc-callout setup operator --dir DIR --issuer ${idp.issuer} --audience ${idp.resource}`);
  say('  (its rules admit groups app1 and app2: billing and reports)');
  say('\nCtrl-C stops the provider.');
  await new Promise<void>((resolve) => {
    process.once('SIGINT', resolve);
    process.once('SIGTERM', resolve);
  });
  await idp.stop();
}

const USAGE = `npm run demo [-- --operator | --idp]
  (no option)  server configuration mode: an OpenID provider, nats-server and oidc-callout on
               loopback; clients allowed, refused and forged, and the service's decisions
  --operator   the same in operator (decentralized JWT) mode, set up as \`setup operator\` does
  --idp        only the OpenID provider, for trying the service by hand; Ctrl-C stops it`;
const args = process.argv.slice(2);
const unknown = args.filter((a) => !['--idp', '--operator'].includes(a));
if (args.includes('--help') || args.includes('-h') || unknown.length > 0) {
  const help = args.includes('--help') || args.includes('-h');
  (help ? process.stdout : process.stderr).write(`${help ? '' : `unknown option ${unknown.join(' ')}\n`}${USAGE}\n`);
  process.exit(help ? 0 : 2);
}
const mode = args.includes('--idp') ? idpOnly : args.includes('--operator') ? operatorDemo : main;
mode().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(`demo failed: ${(err as Error).stack ?? String(err)}\n`);
    process.exit(1);
  },
);
