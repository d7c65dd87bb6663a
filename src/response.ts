import type { AccountSigner } from './accounts.js';
import { encodeNatsJwt } from './nats-jwt.js';
import type { AuthRequest } from './request.js';
import type { XkeyBox } from './xkey.js';

/**
 * Signs the authorization response for `request` (exactly one of a user JWT or an error) and
 * seals it to the server's xkey when the request came sealed.
 */
export function signResponse(
  request: AuthRequest,
  outcome: { readonly jwt: string } | { readonly error: string },
  signer: AccountSigner,
  xkey: XkeyBox | undefined,
  nowSeconds: number,
): Uint8Array {
  const jwt = encodeNatsJwt(
    {
      iat: nowSeconds,
      iss: signer.signer.publicKey,
      sub: request.userNkey,
      aud: request.serverId,
      nats: {
        ...outcome,
        ...(signer.issuerAccount ? { issuer_account: signer.issuerAccount } : {}),
        type: 'authorization_response',
        version: 2,
      },
    },
    signer.signer,
  );
  // A JWT is ASCII (base64url and dots).
  const bytes = Buffer.from(jwt, 'latin1');
  return xkey && request.serverXkey ? xkey.seal(bytes, request.serverXkey) : bytes;
}
