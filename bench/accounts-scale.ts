/**
 * `npm run bench -- --only accounts`: operator mode with many tenant accounts. A rule places each
 * user into the account its `tenant` claim names (an account table); every account has a
 * signing key of its own. Measured: loading the configuration (every seed decoded once), and
 * deciding and signing a user JWT for the first and the last of ACCOUNTS accounts, against the
 * same configuration with one account: the cost per login must not grow with the account count.
 */
import assert from 'node:assert/strict';
import { createAccount } from '@nats-io/nkeys';
import { buildConfig, type Config } from '../src/config.js';
import { signUserJwt } from '../src/user-jwt.js';
import { newUserNkey } from '../test/helpers/auth-request.js';
import { type BenchResult, type MeasureOptions, measureSync } from './lib.js';

export const ACCOUNTS = 500;
const ISSUER = 'https://idp.example.com';

const seedOf = (kp: { getSeed(): Uint8Array }) => new TextDecoder().decode(kp.getSeed());
const tenant = (i: number) => `t${String(i).padStart(4, '0')}`;

/** An operator-mode configuration document with `n` accounts TENANT_0..., each with a signing key. */
function accountsDoc(n: number): Record<string, unknown> {
  const accounts: Record<string, unknown> = {};
  const map: Record<string, string> = {};
  for (let i = 0; i < n; i++) {
    const account = createAccount();
    accounts[`TENANT_${i}`] = { public_key: account.getPublicKey(), signing_seed: seedOf(createAccount()) };
    map[tenant(i)] = `TENANT_${i}`;
  }
  return {
    callout: { mode: 'operator', issuer_seed: seedOf(createAccount()), system_account: createAccount().getPublicKey() },
    accounts,
    issuers: [{ issuer: ISSUER, audiences: ['nats'] }],
    policy: {
      rules: [
        {
          name: 'tenants',
          match: { groups: 'member' },
          account: { claim: 'tenant', map },
          permissions: { pub: { allow: ['app.{{claims.tenant}}.>'] }, sub: { allow: ['app.{{claims.tenant}}.>', '_INBOX.{{sub}}.>'] } },
        },
      ],
    },
  };
}

export function runAccountsScale(opts: { minMs?: number; onResult?: (r: BenchResult) => void } = {}): BenchResult[] {
  const m: MeasureOptions = { minMs: opts.minMs ?? 1000 };
  const results: BenchResult[] = [];
  const userNkey = newUserNkey();
  const now = Math.floor(Date.now() / 1000);
  for (const n of [1, ACCOUNTS]) {
    const doc = accountsDoc(n);
    const t0 = process.hrtime.bigint();
    const config: Config = buildConfig(doc);
    const loadMs = Number(process.hrtime.bigint() - t0) / 1e6;
    for (const i of n === 1 ? [0] : [0, n - 1]) {
      const claims = { sub: `user-${i}`, groups: ['member'], tenant: tenant(i), exp: now + 3600 };
      const login = () => {
        const grant = config.policy.decide(ISSUER, claims);
        return signUserJwt(grant, userNkey, config.keys.accounts.forAccount(grant.account)!, now, now + 600);
      };
      assert.equal(config.policy.decide(ISSUER, claims).account, `TENANT_${i}`);
      const r = measureSync(`decide + sign user JWT, ${n} account${n === 1 ? '' : 's'}: account ${i + 1}`, login, m);
      const withExtra: BenchResult = { ...r, extra: { accounts: n, loadMs: Math.round(loadMs) } };
      results.push(withExtra);
      opts.onResult?.(withExtra);
    }
  }
  return results;
}
