/**
 * Minimal typings for the parts of `oidc-provider` (v9, ships no .d.ts) that the test helper uses.
 * Kept narrow on purpose: the configuration is checked at runtime by oidc-provider itself, and
 * a loose `Configuration` avoids maintaining a copy of its large option tree here.
 */
declare module 'oidc-provider' {
  import type { IncomingMessage, ServerResponse } from 'node:http';

  /** Provider configuration; see the oidc-provider documentation for the keys. */
  export type Configuration = Record<string, unknown>;

  /** The subset of the token models passed to hooks such as extraTokenClaims. */
  export interface TokenLike {
    clientId?: string;
    kind?: string;
  }

  export class Provider {
    constructor(issuer: string, configuration?: Configuration);
    readonly issuer: string;
    /** Node http request listener (the provider is a Koa application). */
    callback(): (req: IncomingMessage, res: ServerResponse) => void;
    on(event: string, listener: (...args: unknown[]) => void): this;
  }

  export const errors: {
    InvalidTarget: new (description?: string) => Error;
  };

  export default Provider;
}
