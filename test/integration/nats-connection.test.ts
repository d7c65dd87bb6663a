import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createAccount, createUser } from '@nats-io/nkeys';
import { buildConfig } from '../../src/config.js';
import { connectNats } from '../../src/nats-connection.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { startNatsServer } from '../helpers/nats-server.js';

const text = (b: Uint8Array) => new TextDecoder().decode(b);

function configFor(url: string, nats: Record<string, unknown>, env: NodeJS.ProcessEnv = {}, baseDir?: string) {
  return buildConfig(
    {
      nats: { servers: [url], ...nats },
      callout: { account: 'AUTH', issuer_seed: text(createAccount().getSeed()) },
      issuers: [{ issuer: 'https://idp.example.com', audiences: ['nats'] }],
      policy: { rules: [{ name: 'r', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
    },
    env,
    baseDir,
  );
}

describe('the service connects to NATS with each kind of credential', () => {
  it('logs in with a token from the environment and with an nkey seed from a file', async () => {
    const user = createUser();
    const [bin] = (await natsServerBinaries()).slice(-1);
    await using tokenServer = await startNatsServer({ bin: bin!.path, config: 'authorization { token: s3cret }' });
    const nc = await connectNats(configFor(tokenServer.url, { token: { env: 'SERVICE_TOKEN' } }, { SERVICE_TOKEN: 's3cret' }), { maxReconnectAttempts: 0 });
    await nc.flush();
    await nc.close();
    await assert.rejects(connectNats(configFor(tokenServer.url, { token: 'wrong' }), { maxReconnectAttempts: 0 }), /Authorization Violation/);

    await using nkeyServer = await startNatsServer({ bin: bin!.path, config: `authorization { users: [ { nkey: ${user.getPublicKey()} } ] }` });
    const dir = mkdtempSync(join(tmpdir(), 'oc-nkey-'));
    writeFileSync(join(dir, 'service.nk'), text(user.getSeed()), { mode: 0o600 });
    const nk = await connectNats(configFor(nkeyServer.url, { nkey_seed: { file: 'service.nk' } }, {}, dir), { maxReconnectAttempts: 0 });
    await nk.flush();
    await nk.close();
    await assert.rejects(
      connectNats(configFor(nkeyServer.url, { nkey_seed: text(createUser().getSeed()) }), { maxReconnectAttempts: 0 }),
      /Authorization Violation/,
    );
  });
});
