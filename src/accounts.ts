import type { NkeySigner } from './nkey.js';

/** How to sign for one target account. */
export interface AccountSigner {
  readonly signer: NkeySigner;
  /** Set when `signer` is a signing key of the account rather than its identity key. */
  readonly issuerAccount: string | undefined;
  /** Server-config mode names the target account in the user JWT's `aud`. */
  readonly audience: string | undefined;
  /** `signer` is a scoped signing key: the user JWT carries no permissions or limits of its own. */
  readonly scoped?: boolean;
}

/** A target account of operator mode: its public key and the key that signs its users. */
export interface AccountKey {
  readonly publicKey: string;
  readonly signer: NkeySigner;
  readonly scoped: boolean;
}

/**
 * The keys the service signs with, decoded once when the configuration loads.
 * - server_config mode: one issuer key (the `auth_callout.issuer` seed) signs both the user JWT
 *   and the response; the target account is named by `aud`.
 * - operator mode: the callout account's key signs the response; each target account's own
 *   identity or signing key signs its users.
 */
export class Accounts {
  readonly response: AccountSigner;
  readonly mode: 'server_config' | 'operator';
  readonly #byName = new Map<string, AccountSigner>();

  constructor(mode: 'server_config' | 'operator', issuer: NkeySigner, issuerAccount: string | undefined, targets: ReadonlyMap<string, AccountKey>) {
    this.mode = mode;
    this.response = {
      signer: issuer,
      issuerAccount: issuerAccount !== undefined && issuerAccount !== issuer.publicKey ? issuerAccount : undefined,
      audience: undefined,
    };
    for (const [name, a] of targets) {
      this.#byName.set(name, {
        signer: a.signer,
        issuerAccount: a.signer.publicKey === a.publicKey ? undefined : a.publicKey,
        audience: undefined,
        scoped: a.scoped,
      });
    }
  }

  /** The callout account's public key (operator mode; server_config: the issuer key). */
  get calloutAccount(): string {
    return this.response.issuerAccount ?? this.response.signer.publicKey;
  }

  /** The signer for users of account `name`; undefined when this service cannot sign for it. */
  forAccount(name: string): AccountSigner | undefined {
    if (this.mode === 'server_config') return { signer: this.response.signer, issuerAccount: undefined, audience: name };
    return this.#byName.get(name);
  }
}
