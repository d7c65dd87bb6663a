import type { Config } from './config.js';
import { isPublicKey, NkeySigner } from './nkey.js';

/** How to sign for one target account. */
export interface AccountSigner {
  readonly signer: NkeySigner;
  /** Set when `signer` is a signing key of the account rather than its identity key. */
  readonly issuerAccount: string | undefined;
  /** Server-config mode names the target account in the user JWT's `aud`. */
  readonly audience: string | undefined;
}

/**
 * The keys the service signs with, built once from configuration.
 * - server_config mode: one issuer key (the `auth_callout.issuer` seed) signs both the user JWT
 *   and the response; the target account is named by `aud`.
 * - operator mode: the callout account's key signs the response; each target account's own
 *   identity or signing key signs its users.
 */
export class Accounts {
  readonly response: AccountSigner;
  readonly mode: Config['callout']['mode'];
  readonly #byName = new Map<string, AccountSigner>();

  constructor(config: Config) {
    this.mode = config.callout.mode;
    const issuer = seedSigner(config.callout.issuerSeed.value, 'callout.issuer_seed');
    const issuerAccount = config.callout.issuerAccount;
    if (issuerAccount !== undefined && !isPublicKey(issuerAccount, 'account')) {
      throw new Error('callout.issuer_account: not an account public key (A...)');
    }
    this.response = {
      signer: issuer,
      issuerAccount: issuerAccount !== undefined && issuerAccount !== issuer.publicKey ? issuerAccount : undefined,
      audience: undefined,
    };
    for (const [name, a] of Object.entries(config.accounts)) {
      if (!isPublicKey(a.publicKey, 'account')) throw new Error(`accounts.${name}.public_key: not an account public key (A...)`);
      const signer = seedSigner(a.signingSeed.value, `accounts.${name}.signing_seed`);
      this.#byName.set(name, { signer, issuerAccount: signer.publicKey === a.publicKey ? undefined : a.publicKey, audience: undefined });
    }
  }

  /** The signer for users of account `name`; undefined when this service cannot sign for it. */
  forAccount(name: string): AccountSigner | undefined {
    if (this.mode === 'server_config') return { signer: this.response.signer, issuerAccount: undefined, audience: name };
    return this.#byName.get(name);
  }
}

function seedSigner(seed: string, path: string): NkeySigner {
  try {
    return new NkeySigner(seed, 'account');
  } catch (err) {
    throw new Error(`${path}: ${(err as Error).message}`);
  }
}
