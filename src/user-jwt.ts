import type { AccountSigner } from './accounts.js';
import { encodeNatsJwt } from './nats-jwt.js';
import type { Grant } from './policy.js';

/**
 * The claims of the NATS user JWT for one connection: bound to the server's per-connection
 * `user_nkey`, expiring at `exp` (the caller caps it at the token's own expiry), carrying the
 * grant's permissions. Limits are left unlimited on purpose: nats-server does not enforce
 * per-user limits from callout JWTs; accounts carry limits.
 */
export function userClaims(grant: Grant, userNkey: string, account: AccountSigner, nowSeconds: number, exp: number): Record<string, unknown> {
  // A scoped signing key: nats-server refuses the user unless its permissions and limits are all
  // empty, then applies the scope's template. Name and tags stay (templates may read them).
  const nats: Record<string, unknown> = account.scoped
    ? { ...(grant.tags ? { tags: grant.tags } : {}), issuer_account: account.issuerAccount, type: 'user', version: 2 }
    : unscopedClaims(grant, account);
  return {
    iat: nowSeconds,
    iss: account.signer.publicKey,
    name: grant.name,
    sub: userNkey,
    exp,
    // Server-config mode reads the target account from aud; never let it default.
    ...(account.audience !== undefined ? { aud: account.audience } : {}),
    nats,
  };
}

function unscopedClaims(grant: Grant, account: AccountSigner): Record<string, unknown> {
  return {
    pub: grant.pub,
    sub: grant.sub,
    ...(grant.resp ? { resp: grant.resp } : {}),
    // nats-server refuses a connection of a type not listed, a client outside `src`, and one
    // outside `times` (also disconnecting it when its window ends).
    allowed_connection_types: grant.connectionTypes,
    ...(grant.sourceNetworks ? { src: grant.sourceNetworks } : {}),
    ...(grant.times ? { times: grant.times } : {}),
    ...(grant.timesLocation ? { times_location: grant.timesLocation } : {}),
    ...(grant.tags ? { tags: grant.tags } : {}),
    // nats-server 2.12+ refuses the user unless it came through a trusted NATS proxy.
    ...(grant.proxyRequired ? { proxy_required: true } : {}),
    subs: -1,
    data: -1,
    payload: -1,
    ...(account.issuerAccount ? { issuer_account: account.issuerAccount } : {}),
    type: 'user',
    version: 2,
  };
}

/** Builds and signs the NATS user JWT for one connection (see userClaims). */
export function signUserJwt(grant: Grant, userNkey: string, account: AccountSigner, nowSeconds: number, exp: number): string {
  return encodeNatsJwt(userClaims(grant, userNkey, account, nowSeconds, exp), account.signer);
}
