import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { NatsConnection } from '@nats-io/transport-node';
import { createLogger } from '../../src/log.js';
import { logSentinelSupport, sentinelSupport } from '../../src/sentinel-support.js';

describe('token-only clients by nats-server version (default_sentinel)', () => {
  it('refuses them before 2.11.2, which added default_sentinel', () => {
    for (const v of ['2.9.25', '2.10.0', '2.10.27', '2.11.0', '2.11.1', 'v2.11.1']) {
      const s = sentinelSupport(v);
      assert.equal(s.defaultSentinel, false, v);
      assert.match(s.summary, /refuses token-only clients \(default_sentinel needs 2\.11\.2\): clients must present the sentinel credentials/);
    }
  });

  it('accepts them from 2.11.2 on, when default_sentinel is set', () => {
    for (const v of ['2.11.2', '2.11.7', '2.12.0-RC.1', 'v2.12.3', '2.15.1', '2.15.1+build', '3.0.0']) {
      const s = sentinelSupport(v);
      assert.equal(s.defaultSentinel, true, v);
      assert.match(s.summary, /accepts token-only clients when its default_sentinel is a bearer user JWT of the callout account/);
    }
    assert.equal(sentinelSupport('2.15.1').version, '2.15.1');
  });

  it('warns that 2.11.2 to 2.11.6 do not refuse a default_sentinel that is not a bearer JWT', () => {
    for (const v of ['2.11.2', '2.11.6']) assert.match(sentinelSupport(v).summary, /before 2\.11\.7 .* into \$G without the callout/, v);
    for (const v of ['2.11.7', '2.12.0', '2.15.1']) assert.doesNotMatch(sentinelSupport(v).summary, /\$G/, v);
  });

  it('treats a missing or unreadable version as a server that refuses them', () => {
    for (const v of [undefined, '', 'dev', '2.x']) {
      const s = sentinelSupport(v);
      assert.equal(s.defaultSentinel, false, String(v));
      assert.match(s.summary, /is unreadable: assume token-only clients are refused/);
    }
  });

  it('logs one line with the server version from INFO', () => {
    const lines: Record<string, unknown>[] = [];
    const log = createLogger('info', (l) => lines.push(JSON.parse(l)));
    logSentinelSupport(log, { info: { version: '2.10.27' } } as unknown as NatsConnection);
    logSentinelSupport(log, { info: { version: '2.15.1' } } as unknown as NatsConnection);
    assert.deepEqual(
      lines.map((l) => [l.level, l.nats_server, l.token_only_clients]),
      [
        ['info', '2.10.27', 'refused'],
        ['info', '2.15.1', 'with default_sentinel'],
      ],
    );
  });
});
