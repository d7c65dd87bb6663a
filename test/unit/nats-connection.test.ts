import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { withoutCredentials } from '../../src/nats-connection.js';

describe('server URLs in logs', () => {
  it('never carry credentials written into them', () => {
    assert.equal(withoutCredentials('nats://auth:s3cret@127.0.0.1:4222'), 'nats://<redacted>@127.0.0.1:4222');
    assert.equal(withoutCredentials('tls://tok3n@nats.example.com:4222'), 'tls://<redacted>@nats.example.com:4222');
    assert.equal(withoutCredentials('auth:s3cret@127.0.0.1:4222'), '<redacted>@127.0.0.1:4222');
    assert.equal(withoutCredentials('nats://127.0.0.1:4222'), 'nats://127.0.0.1:4222');
    assert.equal(withoutCredentials('127.0.0.1:4222'), '127.0.0.1:4222');
  });
});
