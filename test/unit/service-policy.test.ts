import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { decodeNatsJwt } from '../../src/nats-jwt.js';
import { CalloutService, connectionFacts } from '../../src/service.js';
import { authRequestJwt, fakeServer } from '../helpers/auth-request.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';

const text = (b: Uint8Array) => new TextDecoder().decode(b);
const enc = (s: string) => new TextEncoder().encode(s);
const now = () => Math.floor(Date.now() / 1000);

/** The user JWT's claims inside a response (signatures are checked in service.test.ts). */
function userOf(reply: Uint8Array | undefined): Record<string, any> | undefined {
  if (!reply) return undefined;
  const res = decodeNatsJwt(text(reply));
  assert.ok(typeof res !== 'string');
  const jwt = (res.claims.nats as { jwt?: string }).jwt;
  if (!jwt) return undefined;
  const user = decodeNatsJwt(jwt);
  assert.ok(typeof user !== 'string');
  return user.claims as Record<string, any>;
}

describe('service and policy', () => {
  let idp: LocalIssuer;
  const server = fakeServer();
  const lines: any[] = [];
  let service: CalloutService;

  before(async () => {
    idp = await startLocalIssuer();
    const config = buildConfig({
      callout: { account: 'AUTH', issuer_seed: text(createAccount().getSeed()) },
      issuers: [{ issuer: idp.issuer, audiences: ['nats'], allow_insecure_http: true }],
      policy: {
        roles: { reader: { sub: { allow: ['public.>', '_INBOX.{{sub}}.>'] } } },
        rules: [
          {
            name: 'browser',
            match: { groups: 'web' },
            when: [{ connection_type: 'WEBSOCKET' }],
            account: 'APP',
            roles: ['reader'],
            connection_types: ['WEBSOCKET'],
          },
          {
            name: 'office',
            match: { groups: 'web' },
            when: [{ source_network: '10.0.0.0/8' }],
            account: 'APP',
            roles: ['reader'],
            permissions: { pub: { allow: ['office.>'] } },
            source_networks: ['10.0.0.0/8'],
            tags: ['office'],
          },
        ],
      },
    });
    service = new CalloutService(
      config,
      createLogger('debug', (l) => lines.push(JSON.parse(l))),
    );
  });
  after(() => idp.stop());

  const connect = (token: string, client: Record<string, unknown>) =>
    service.handle(
      enc(
        authRequestJwt(server, {
          connectOpts: { auth_token: token },
          edit: (c) => {
            c.nats.client_info = { ...c.nats.client_info, ...client };
          },
        }),
      ),
      undefined,
    );
  const last = () => lines.filter((l) => l.msg === 'authorization').at(-1);

  it('decides per connection when a rule looks at it, also for a cached token', async () => {
    const token = await idp.sign({ sub: 'ann', aud: 'nats', exp: now() + 600, groups: ['web'] });
    const ws = userOf(await connect(token, { kind: 'Client', type: 'websocket', host: '192.0.2.1' }));
    assert.equal(last().rule, 'browser');
    assert.equal(last().cached, false);
    assert.deepEqual(ws?.nats.allowed_connection_types, ['WEBSOCKET']);
    assert.deepEqual(ws?.nats.sub, { allow: ['public.>', '_INBOX.ann.>'] });

    // The same token, now over TCP from the office network: a cache hit, decided again.
    const office = userOf(await connect(token, { kind: 'Client', type: 'nats', host: '10.1.2.3' }));
    assert.equal(last().rule, 'office');
    assert.equal(last().cached, true);
    assert.deepEqual(office?.nats.allowed_connection_types, ['STANDARD', 'WEBSOCKET']);
    assert.deepEqual(office?.nats.src, ['10.0.0.0/8']);
    assert.deepEqual(office?.nats.tags, ['office']);
    assert.deepEqual(office?.nats.pub, { allow: ['office.>'] });

    // Over TCP from elsewhere: no rule; a leaf node of the right network is not a client either.
    assert.equal(userOf(await connect(token, { kind: 'Client', type: 'nats', host: '192.0.2.1' })), undefined);
    assert.equal(last().code, 'POLICY_NO_MATCH');
    assert.equal(last().cached, undefined);
  });

  it('maps what the request says about the connection to connection types', () => {
    const facts = (kind: string, type: string) => connectionFacts({ clientKind: kind, clientType: type, clientHost: '' }).type;
    assert.equal(facts('Client', 'nats'), 'STANDARD');
    assert.equal(facts('Client', 'websocket'), 'WEBSOCKET');
    assert.equal(facts('Client', 'mqtt'), 'MQTT');
    assert.equal(facts('Leafnode', 'nats'), 'LEAFNODE');
    assert.equal(facts('Leafnode', 'websocket'), 'LEAFNODE_WS');
    assert.equal(facts('Client', 'toString'), undefined);
    assert.equal(facts('Router', 'nats'), undefined);
    assert.equal(connectionFacts({ clientKind: 'Client', clientType: 'nats', clientHost: '' }).host, undefined);
  });

  it('keeps a refused token verified in the cache: a retry is decided without verifying it again', async () => {
    const token = await idp.sign({ sub: 'bob', aud: 'nats', exp: now() + 600, groups: ['other'] });
    const size = service.cache.size;
    assert.equal(userOf(await connect(token, { kind: 'Client', type: 'websocket' })), undefined);
    assert.equal(last().code, 'POLICY_NO_MATCH');
    assert.equal(service.cache.size, size + 1);
    // The key that signed the token is withdrawn and the service holds the new key set:
    // verifying the token again could only refuse it (its key is unknown), so a POLICY_NO_MATCH
    // now is decided from the cache.
    await idp.rotate({ keepOld: false });
    await service.issuers[0]!.load();
    const logged = lines.length;
    await connect(token, { kind: 'Client', type: 'websocket' });
    assert.ok(lines.length > logged, 'the retry was decided');
    assert.equal(last().code, 'POLICY_NO_MATCH', JSON.stringify(last()));
    assert.equal(service.cache.size, size + 1);
  });
});
