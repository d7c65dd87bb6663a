/**
 * What a rule restricts beyond subjects. nats-server 2.10 and 2.15 check a callout user's time
 * windows, but not its connection types or source networks (they are in the user JWT, and the
 * server lets the connection in anyway): the service refuses those connections itself. Tags are
 * accepted as given.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { type CalloutFixture, connectClient, expectAuthorizationViolation, startCalloutFixture } from '../helpers/callout-fixture.js';
import { type LocalIssuer, startLocalIssuer } from '../helpers/local-issuer.js';
import { natsServerBinaries } from '../helpers/nats-server-bin.js';

const binaries = await natsServerBinaries();
const now = () => Math.floor(Date.now() / 1000);

/** A one-hour window (UTC) that starts two hours from now: the current time is outside it. */
function laterWindow(): { start: string; end: string } {
  const at = (h: number) => `${String((new Date().getUTCHours() + h) % 24).padStart(2, '0')}:00:00`;
  return { start: at(2), end: at(3) };
}

for (const { version, path } of binaries) {
  describe(`nats-server ${version} enforces a rule's connection restrictions`, () => {
    let idp: LocalIssuer;
    let fx: CalloutFixture;
    const base = { account: 'APP', permissions: { pub: { allow: ['app.>'] }, sub: { allow: ['_INBOX.{{sub}}.>'] } } };

    before(async () => {
      idp = await startLocalIssuer();
      fx = await startCalloutFixture({
        bin: path,
        xkey: true,
        issuers: [{ issuer: idp.issuer, audiences: ['nats'], jwks_uri: idp.jwksUri, allow_insecure_http: true }],
        rules: [
          {
            name: 'inside',
            match: { groups: 'inside' },
            ...base,
            connection_types: ['STANDARD'],
            source_networks: ['127.0.0.1', '::1/128'],
            times: [{ start: '00:00:00', end: '23:59:59' }],
            times_location: 'UTC',
            tags: ['team:ops'],
          },
          { name: 'websocket-only', match: { groups: 'ws' }, ...base, connection_types: ['WEBSOCKET'] },
          { name: 'elsewhere', match: { groups: 'far' }, ...base, source_networks: ['10.0.0.0/8'] },
          { name: 'later', match: { groups: 'later' }, ...base, times: [laterWindow()], times_location: 'UTC' },
        ],
      });
    });
    after(async () => {
      await fx?.stop();
      await idp?.stop();
    });

    const token = (groups: string) => idp.sign({ sub: `u-${groups}`, aud: 'nats', exp: now() + 300, groups: [groups] });

    it('lets in a TCP client from an allowed network within its time window', async () => {
      const nc = await connectClient(fx.url, { token: await token('inside'), inboxPrefix: '_INBOX.u-inside' });
      try {
        nc.publish('app.hello');
        await nc.flush();
      } finally {
        await nc.close();
      }
    });

    for (const [groups, rule] of [
      ['ws', 'websocket-only'],
      ['far', 'elsewhere'],
    ] as const) {
      it(`refuses a TCP client of rule ${rule} itself (nats-server would let it in)`, async () => {
        const from = fx.log.mark();
        await expectAuthorizationViolation(fx.url, { token: await token(groups) });
        const d = fx.log.decisions(from).at(-1);
        assert.equal(d?.code, 'POLICY_CONNECTION_REFUSED', JSON.stringify(d));
        assert.match(String(d?.reason), new RegExp(`rule ${rule} allows`));
      });
    }

    it('leaves the time window to nats-server, which refuses outside it', async () => {
      const from = fx.log.mark();
      await expectAuthorizationViolation(fx.url, { token: await token('later') });
      assert.ok(
        fx.log.decisions(from).some((d) => d.result === 'allow' && d.rule === 'later'),
        'the service allowed; nats-server refused the connection outside its window',
      );
    });
  });
}
