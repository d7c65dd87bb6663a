/**
 * Checks the nats-server test helper against every fetched server version: it must start on a
 * free loopback port, carry traffic, and really release the port on stop().
 */
import assert from 'node:assert/strict';
import { connect as tcpConnect } from 'node:net';
import { test } from 'node:test';
import { connect } from '@nats-io/transport-node';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';
import { startNatsServer } from '../helpers/nats-server.js';

const binaries = await natsServerBinaries();

function portOpen(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = tcpConnect({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

test('at least one nats-server binary with auth callout support', () => {
  assert.ok(binaries.length > 0);
  for (const { version } of binaries) {
    const [major = 0, minor = 0] = version.split('.').map(Number);
    assert.ok(major > 2 || (major === 2 && minor >= 10), `nats-server ${version} predates auth callout`);
  }
});

for (const { version, path } of binaries) {
  test(`nats-server ${version}: starts, carries messages, stops`, async () => {
    const server = await startNatsServer({ bin: path, config: 'accounts { APP {} }' });
    assert.match(server.url, /^nats:\/\/127\.0\.0\.1:\d+$/);
    assert.equal(server.url, `nats://127.0.0.1:${server.port}`);
    await server.waitForLog(/Server is ready/);

    const nc = await connect({ servers: server.url });
    const sub = nc.subscribe('helpers.test', { max: 1 });
    nc.publish('helpers.test', 'hello');
    await nc.flush();
    for await (const msg of sub) assert.equal(msg.string(), 'hello');
    await nc.close();

    await server.stop();
    await server.stop(); // idempotent
    assert.equal(await portOpen(server.port), false, 'port still open after stop()');
  });

  test(`nats-server ${version}: a bad config fails with the server's own message`, async () => {
    await assert.rejects(
      startNatsServer({ bin: path, config: 'accounts { APP { users: [ { user: a } ] } }\nno_such_option: {' }),
      (err: Error) => /exited with code/.test(err.message) && /--- output ---/.test(err.message),
    );
  });
}

test('waitForLog honours the from offset and times out with the log', async () => {
  const [first] = binaries;
  assert.ok(first);
  await using server = await startNatsServer({ bin: first.path, config: '' });
  const ready = await server.waitForLog(/Server is ready/g);
  assert.match(ready, /Server is ready/);
  await assert.rejects(server.waitForLog(/Server is ready/, 200, server.logs().length), /within 200 ms/);
});
