/**
 * Opening a replica's connections when the server admits only some of them: the failure says how
 * many were open, so a connection limit does not read as a server that is down.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import { buildConfig } from '../../src/config.js';
import { connectAll } from '../../src/nats-connection.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { startNatsServer } from '../helpers/nats-server.js';

const binaries = await natsServerBinaries();
const newest = binaries[binaries.length - 1]!;

describe('connectAll against a connection limit', () => {
  it('fails saying how many connections were open, and leaves none open', async () => {
    await using nats = await startNatsServer({ bin: newest.path, config: 'max_connections: 3' });
    const config = buildConfig({
      nats: { servers: [nats.url] },
      callout: { mode: 'server_config', account: 'AUTH', issuer_seed: new TextDecoder().decode(createAccount().getSeed()) },
      issuers: [{ issuer: 'https://idp.example.com', audiences: ['nats'] }],
      policy: { rules: [{ name: 'r', match: { groups: 'dev' }, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
    });
    // No reconnecting: the fourth connection's refusal must end its connect().
    await assert.rejects(
      connectAll(config, { maxReconnectAttempts: 0, timeout: 3000 }, 5),
      /^Error: 3 of 5 connections were open when the next one failed \(\w+: .+\); .*limits\.conn.*max_connections/,
    );
    // The three were closed: three fresh ones fit again.
    const again = await connectAll(config, { maxReconnectAttempts: 0, timeout: 3000 }, 3);
    assert.equal(again.length, 3);
    await Promise.all(again.map((nc) => nc.close()));
  });
});
