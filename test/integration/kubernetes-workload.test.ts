/**
 * README "Kubernetes workload identity", run as written against a real nats-server and the
 * service running conf/examples/kubernetes.yaml (the file the provider-examples tests use) with
 * the README's in-cluster issuer block: discovery over HTTPS from a stand-in API server whose
 * certificate only the `ca_file` CA trusts. The pod spec must mount a token with the audience the
 * configuration expects, at the path the client reads; the README's client module is imported
 * as it stands and must present the rotated token file when nats-server closes its connection
 * at the first token's expiry.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, renameSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { pathToFileURL } from 'node:url';
import { createAccount, createCurve } from '@nats-io/nkeys';
import type { NatsConnection } from '@nats-io/transport-node';
import { type CryptoKey, exportJWK, generateKeyPair, SignJWT } from 'jose';
import { parse } from 'yaml';
import { buildConfig } from '../../src/config.js';
import { createLogger } from '../../src/log.js';
import { connectAll } from '../../src/nats-connection.js';
import { CalloutRunner } from '../../src/runner.js';
import { CalloutService } from '../../src/service.js';
import { LogCapture, seedOf, within } from '../helpers/callout-fixture.js';
import { newestAndOldest } from '../helpers/nats-server-bin.js';
import { type RunningNats, startNatsServer } from '../helpers/nats-server.js';
import { accountsOf, exampleDoc, ROOT } from '../helpers/provider-fixtures.js';
import { codeBlocks, oneBlock, readmeSection } from '../helpers/readme-snippets.js';

const binaries = await newestAndOldest();
const blocks = codeBlocks(readmeSection('### Kubernetes workload identity'));
const POD = parse(oneBlock(blocks, 'the pod spec', (b) => b.lang === 'yaml' && b.text.includes('kind: Pod'))) as Record<string, any>;
const CLIENT = oneBlock(blocks, 'the client module', (b) => b.lang === 'js');
const SERVICE = parse(oneBlock(blocks, 'the issuer configuration', (b) => b.lang === 'yaml' && b.text.includes('issuers:'))) as Record<string, any>;
const EXAMPLE = exampleDoc('kubernetes');
const KID = 'sa-key-1';

/** The projected service-account token source of the README's pod, and where its container reads it. */
function projectedToken(): { audience: string; expirationSeconds: number; file: string } {
  const volume = (POD.spec.volumes as Record<string, any>[]).find((v) => v.projected);
  assert.ok(volume, 'the pod has a projected volume');
  const source = (volume.projected.sources as Record<string, any>[] | undefined)?.find((s) => s.serviceAccountToken)?.serviceAccountToken;
  assert.ok(source, 'the pod projects a service-account token');
  const container = POD.spec.containers[0];
  const mount = (container.volumeMounts as Record<string, any>[]).find((m) => m.name === volume.name);
  assert.ok(mount, 'the container mounts the token volume');
  const env = Object.fromEntries((container.env as { name: string; value: string }[]).map((e) => [e.name, e.value]));
  const file = `${mount.mountPath}/${source.path}`;
  assert.equal(env['NATS_TOKEN_FILE'], file, 'NATS_TOKEN_FILE names the mounted token');
  return { audience: source.audience, expirationSeconds: source.expirationSeconds, file };
}

describe('README Kubernetes snippets agree with conf/examples/kubernetes.yaml', () => {
  it("the pod's token has the audience the issuer expects, a lifetime the kubelet accepts, at the client's default path", () => {
    const { audience, expirationSeconds, file } = projectedToken();
    assert.ok((EXAMPLE.issuers[0].audiences as string[]).includes(audience), `${audience} is an audience of the example`);
    assert.deepEqual(SERVICE.issuers[0].audiences, EXAMPLE.issuers[0].audiences);
    assert.ok(expirationSeconds >= 600, 'Kubernetes refuses expirationSeconds below 600');
    assert.ok(CLIENT.includes(`'${file}'`), `the client's default token path is ${file}`);
    assert.notEqual(POD.spec.serviceAccountName ?? 'default', 'default', 'the example refuses the default service account');
  });

  it("the issuer block keeps the example's checks and its rule is the example's", () => {
    const readmeIssuer = SERVICE.issuers[0];
    const example = EXAMPLE.issuers[0];
    assert.deepEqual(readmeIssuer.algorithms, example.algorithms);
    assert.deepEqual(readmeIssuer.required_claims, example.required_claims);
    assert.match(readmeIssuer.ca_file, /^\/var\/run\/secrets\/kubernetes\.io\/serviceaccount\/ca\.crt$/);
    for (const rule of SERVICE.policy.rules as Record<string, any>[]) {
      const twin = (EXAMPLE.policy.rules as Record<string, any>[]).find((r) => r.name === rule.name);
      assert.ok(twin, `rule ${rule.name} is in the example`);
      assert.equal(rule.issuer, readmeIssuer.issuer);
      assert.deepEqual({ ...rule, issuer: example.issuer }, twin);
    }
  });
});

for (const { version, path: bin } of binaries) {
  describe(`nats-server ${version}: a pod logs in with its projected service-account token`, () => {
    const dir = mkdtempSync(join(tmpdir(), 'oc-k8s-'));
    const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
    let apiServer: Server;
    let issuer: string;
    let privateKey: CryptoKey;
    let nats: RunningNats;
    let runner: CalloutRunner | undefined;
    const log = new LogCapture();

    before(async () => {
      // The cluster CA and the API server's certificate: trusted only through ca_file.
      openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.crt', '-days', '2', '-subj', '/CN=kubernetes');
      openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'apiserver.key', '-out', 'apiserver.csr', '-subj', '/CN=kube-apiserver');
      writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
      openssl(
        'x509',
        '-req',
        '-in',
        'apiserver.csr',
        '-CA',
        'ca.crt',
        '-CAkey',
        'ca.key',
        '-CAcreateserial',
        '-out',
        'apiserver.crt',
        '-days',
        '2',
        '-extfile',
        'san.ext',
      );
      const pair = await generateKeyPair('RS256', { extractable: true });
      privateKey = pair.privateKey;
      const jwk = { ...(await exportJWK(pair.publicKey)), kid: KID, alg: 'RS256', use: 'sig' };
      // What kube-apiserver serves at /.well-known/openid-configuration and /openid/v1/jwks.
      apiServer = createServer({ key: readFileSync(join(dir, 'apiserver.key')), cert: readFileSync(join(dir, 'apiserver.crt')) }, (req, res) => {
        res.setHeader('content-type', 'application/json');
        if (req.url === '/.well-known/openid-configuration') {
          res.end(
            JSON.stringify({
              issuer,
              jwks_uri: `${issuer}/openid/v1/jwks`,
              response_types_supported: ['id_token'],
              subject_types_supported: ['public'],
              id_token_signing_alg_values_supported: ['RS256'],
            }),
          );
        } else if (req.url === '/openid/v1/jwks') res.end(JSON.stringify({ keys: [jwk] }));
        else res.writeHead(404).end('{}');
      });
      await new Promise<void>((resolve) => apiServer.listen(0, '127.0.0.1', resolve));
      issuer = `https://127.0.0.1:${(apiServer.address() as AddressInfo).port}`;

      const issuerKey = createAccount();
      const xkey = createCurve();
      const password = randomBytes(12).toString('hex');
      nats = await startNatsServer({
        bin,
        config: [
          'max_control_line: 65536',
          'accounts {',
          `  AUTH { users: [ { user: auth, password: "${password}" } ] }`,
          ...accountsOf(EXAMPLE).map((a) => `  ${a} {}`),
          '  SYS {}',
          '}',
          'system_account: SYS',
          'authorization {',
          '  timeout: 5',
          `  auth_callout { issuer: ${issuerKey.getPublicKey()}, xkey: ${xkey.getPublicKey()}, account: AUTH, auth_users: [ auth ] }`,
          '}',
        ].join('\n'),
      });
      // The example as shipped, with the README's in-cluster issuer block (its URL and CA file
      // pointing at the stand-in API server) and the test server's NATS settings and secrets.
      const doc = exampleDoc('kubernetes');
      const exampleIssuer: string = doc.issuers[0].issuer;
      doc.issuers = [{ ...SERVICE.issuers[0], issuer, ca_file: join(dir, 'ca.crt') }];
      for (const rule of doc.policy.rules as Record<string, any>[]) {
        assert.equal(rule.issuer, exampleIssuer);
        rule.issuer = issuer;
      }
      // The test server knows the service by a password; the example's nkey login is dropped for it.
      const { nkey_seed: _nkey, ...rest } = doc.nats;
      doc.nats = { ...rest, servers: [nats.url], user: 'auth', password };
      doc.callout = { ...doc.callout, issuer_seed: seedOf(issuerKey), xkey_seed: seedOf(xkey) };
      const logger = createLogger('debug', log.write);
      const service = new CalloutService(buildConfig(doc, {}, dir), logger);
      runner = new CalloutRunner(await connectAll(service.config, { maxReconnectAttempts: 0 }), service, logger);
      await runner.start();
    });

    after(async () => {
      await runner?.stop().catch(() => undefined);
      await nats?.stop();
      await new Promise<void>((resolve) => (apiServer ? apiServer.close(() => resolve()) : resolve()));
      rmSync(dir, { recursive: true, force: true });
    });

    /** A token as the kubelet mounts it for the README's pod (no `typ` header, bound to the pod). */
    function podToken(lifetimeSeconds: number): Promise<string> {
      const ns: string = POD.metadata.namespace;
      const sa: string = POD.spec.serviceAccountName;
      const now = Math.floor(Date.now() / 1000);
      return new SignJWT({
        aud: [projectedToken().audience],
        sub: `system:serviceaccount:${ns}:${sa}`,
        'kubernetes.io': {
          namespace: ns,
          pod: { name: POD.metadata.name, uid: '1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d' },
          serviceaccount: { name: sa, uid: '9e8d7c6b-5a4f-4e3d-2c1b-0a9f8e7d6c5b' },
        },
      })
        .setProtectedHeader({ alg: 'RS256', kid: KID })
        .setIssuer(issuer)
        .setIssuedAt(now)
        .setNotBefore(now)
        .setExpirationTime(now + lifetimeSeconds)
        .sign(privateKey);
    }
    const expOf = (token: string): number => JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString('utf8')).exp;

    it('connects with the mounted token, and reconnects with the rotated file when the first token expires', async () => {
      const tokenFile = join(dir, 'token');
      // The kubelet replaces the file atomically (a rename); so does the test.
      const mount = (token: string): void => {
        writeFileSync(`${tokenFile}.new`, token);
        renameSync(`${tokenFile}.new`, tokenFile);
      };
      const first = await podToken(4);
      mount(first);
      const clientDir = mkdtempSync(join(dir, 'client-'));
      symlinkSync(join(ROOT, 'node_modules'), join(clientDir, 'node_modules'));
      writeFileSync(join(clientDir, 'nats-client.mjs'), CLIENT);

      const saved = { url: process.env['NATS_URL'], file: process.env['NATS_TOKEN_FILE'] };
      process.env['NATS_URL'] = nats.url;
      process.env['NATS_TOKEN_FILE'] = tokenFile;
      let mark = log.mark();
      let nc: NatsConnection;
      try {
        ({ nc } = (await import(pathToFileURL(join(clientDir, 'nats-client.mjs')).href)) as { nc: NatsConnection });
      } finally {
        for (const [name, value] of [
          ['NATS_URL', saved.url],
          ['NATS_TOKEN_FILE', saved.file],
        ] as const) {
          if (value === undefined) delete process.env[name];
          else process.env[name] = value;
        }
      }
      try {
        const d1 = await log.nextDecision(mark);
        assert.equal(d1.result, 'allow', JSON.stringify(d1));
        assert.equal(d1.rule, 'workloads');
        assert.equal(d1.account, 'SHOP');
        assert.equal(d1.expires, expOf(first));

        // The kubelet's next token, before the first one expires.
        const second = await podToken(3600);
        mount(second);
        mark = log.mark();
        const reconnected = (async () => {
          for await (const s of nc.status()) if (s.type === 'reconnect') return true;
          return false;
        })();
        assert.ok(await within(reconnected, 10_000, 'the reconnect after the first token expired'));
        const d2 = await log.nextDecision(mark);
        assert.equal(d2.result, 'allow', JSON.stringify(d2));
        assert.equal(d2.expires, expOf(second), 'the reconnect presented the rotated token');

        // Its private inbox works: a request it answers itself comes back.
        const sub = nc.subscribe('svc.orders.status', {
          callback: (err, m) => {
            if (!err) m.respond('up');
          },
        });
        const reply = await nc.request('svc.orders.status', '', { timeout: 5000 });
        assert.equal(reply.string(), 'up');
        assert.ok(reply.subject.startsWith('_INBOX.system:serviceaccount:shop:orders.'), reply.subject);
        sub.unsubscribe();
      } finally {
        await nc.close();
      }
    });
  });
}
