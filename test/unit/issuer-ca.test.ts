/**
 * An IdP behind a private CA: `issuers[].ca_file` makes its HTTPS certificate trusted for that
 * issuer only; without it the same IdP is unreachable (the system's CAs do not know it).
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { createAccount } from '@nats-io/nkeys';
import { exportJWK, SignJWT } from 'jose';
import { buildConfig } from '../../src/config.js';
import { AuthFailure, ConfigError } from '../../src/errors.js';
import { IssuerKeys } from '../../src/issuers.js';
import { TokenVerifier } from '../../src/token.js';

const dir = mkdtempSync(join(tmpdir(), 'oc-ca-'));
const openssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });

describe('an IdP behind a private CA', () => {
  let server: Server;
  let issuer: string;
  const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });

  before(async () => {
    // A CA, and a certificate for 127.0.0.1 it signs.
    openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '2', '-subj', '/CN=test private CA');
    openssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'idp.key', '-out', 'idp.csr', '-subj', '/CN=127.0.0.1');
    writeFileSync(join(dir, 'san.ext'), 'subjectAltName=IP:127.0.0.1\n');
    openssl('x509', '-req', '-in', 'idp.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'idp.pem', '-days', '2', '-extfile', 'san.ext');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' };
    server = createServer({ key: readFileSync(join(dir, 'idp.key')), cert: readFileSync(join(dir, 'idp.pem')) }, (req, res) => {
      res.setHeader('content-type', 'application/json');
      if (req.url === '/.well-known/openid-configuration') res.end(JSON.stringify({ issuer, jwks_uri: `${issuer}/jwks`, subject_types_supported: ['public'] }));
      else if (req.url === '/jwks') res.end(JSON.stringify({ keys: [jwk] }));
      else res.writeHead(404).end('{}');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    issuer = `https://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((resolve) => server.close(() => resolve())));

  const configured = (extra: Record<string, unknown>) =>
    buildConfig(
      {
        callout: { account: 'AUTH', issuer_seed: new TextDecoder().decode(createAccount().getSeed()) },
        issuers: [{ issuer, audiences: ['nats'], ...extra }],
        policy: { rules: [{ name: 'r', allow_broad: true, account: 'APP', permissions: { sub: { allow: ['x'] } } }] },
      },
      {},
      dir,
    ).issuers[0]!;
  const token = () =>
    new SignJWT({ sub: 'a', aud: 'nats' })
      .setProtectedHeader({ alg: 'RS256', kid: 'k1' })
      .setIssuer(issuer)
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(privateKey);

  it('discovers the IdP and verifies its tokens with ca_file', async () => {
    const keys = new IssuerKeys(configured({ ca_file: 'ca.pem' }));
    const v = await new TokenVerifier([keys], 16384).verify(await token());
    assert.equal(v.claims.sub, 'a');
    assert.equal(keys.status().keysLoaded, true);
  });

  it('cannot reach it without ca_file', async () => {
    const keys = new IssuerKeys(configured({ http_timeout: '2s' }));
    await assert.rejects(new TokenVerifier([keys], 16384).verify(await token()), (e: unknown) => e instanceof AuthFailure && e.code === 'ISSUER_UNAVAILABLE');
  });

  it('refuses a ca_file that cannot be read or holds no certificate, naming the key', () => {
    writeFileSync(join(dir, 'empty.pem'), 'nothing here\n');
    assert.throws(
      () => configured({ ca_file: 'missing.pem' }),
      (e: unknown) => e instanceof ConfigError && e.path === 'issuers[0].ca_file' && /ENOENT/.test(e.message),
    );
    assert.throws(
      () => configured({ ca_file: 'empty.pem' }),
      (e: unknown) => e instanceof ConfigError && /holds no PEM certificate/.test(e.message),
    );
  });
});
