/**
 * Answers go out on the connection that received the request, not on any other. A service user
 * restricted to responses (`allow_responses`, nsc
 * `--allow-pub-response`: the least privilege nats-server documents for responders) may only
 * answer on the connection that received the request: every answer sent on another connection
 * is a "Permissions Violation", and the client times out.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectAll } from '../../src/nats-connection.js';
import { CalloutRunner } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { connectClient, LogCapture, seedOf } from '../helpers/callout-fixture.js';
import { startLocalIssuer, type LocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { startNatsServer, type RunningNats } from '../helpers/nats-server.js';

const binaries = await natsServerBinaries();
const newest = binaries[binaries.length - 1]!;

describe('answers on the connection that received the request', () => {
  let issuer: LocalIssuer;
  let nats: RunningNats;
  let runner: CalloutRunner;
  const log = new LogCapture();

  before(async () => {
    issuer = await startLocalIssuer();
    const account = createAccount();
    const password = randomBytes(12).toString('hex');
    nats = await startNatsServer({
      bin: newest.path,
      config: [
        'max_control_line: 65536',
        'accounts {',
        // The service user may subscribe to the callout subject and answer what it received.
        `  AUTH { users: [ { user: auth, password: "${password}", permissions: { subscribe: "$SYS.REQ.USER.AUTH", allow_responses: true } } ] }`,
        '  APP {}',
        '  SYS {}',
        '}',
        'system_account: SYS',
        'authorization {',
        '  timeout: 2',
        '  auth_callout {',
        `    issuer: ${account.getPublicKey()}`,
        '    auth_users: [ auth ]',
        '    account: AUTH',
        '  }',
        '}',
      ].join('\n'),
    });
    const config = buildConfig(
      {
        nats: { servers: [nats.url], user: 'auth', password, connections: 4 },
        callout: { account: 'AUTH', issuer_seed: seedOf(account) },
        issuers: [{ issuer: issuer.issuer, audiences: ['nats'], jwks_uri: issuer.jwksUri, allow_insecure_http: true }],
        policy: { rules: [{ name: 'all', allow_broad: true, account: 'APP', permissions: { pub: { allow: ['app.>'] } } }] },
      },
      {},
    );
    const logger = createLogger('debug', log.write);
    runner = new CalloutRunner(await connectAll(config, { maxReconnectAttempts: 0 }), new CalloutService(config, logger), logger);
    await runner.start();
  });

  after(async () => {
    await runner?.stop();
    await nats?.stop();
    await issuer?.stop();
  });

  it('lets in every client with a valid token', async () => {
    const token = await issuer.sign({ sub: 'alice', aud: 'nats', exp: Math.floor(Date.now() / 1000) + 300 });
    const outcomes: string[] = [];
    for (let i = 0; i < 8; i++) {
      outcomes.push(
        await connectClient(nats.url, { token, timeout: 5000 }).then(
          async (nc) => {
            await nc.close();
            return 'connected';
          },
          (e: Error) => e.message,
        ),
      );
    }
    const allowed = log.decisions().filter((d) => d.result === 'allow').length;
    const serverSaid = nats.logs().match(/Publish Violation[^\n]*/g) ?? [];
    assert.deepEqual(
      outcomes,
      Array(8).fill('connected'),
      `the service allowed ${allowed} of 8; nats-server: ${serverSaid.slice(0, 2).join(' | ')} (${serverSaid.length} lines)`,
    );
  });
});
