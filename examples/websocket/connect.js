// A browser (or Node.js 22+) NATS client that logs in with the user's OIDC access token.
import { tokenAuthenticator, wsconnect } from '@nats-io/nats-core';

/**
 * Connects to nats-server's websocket listener. nats.js asks `currentToken()` for the token on
 * every connect and reconnect, so a client whose NATS user expired comes back with the token the
 * page holds now: keep it fresh (your OIDC library's silent refresh). It must answer at once, with
 * no await. `sub` is the token's subject: the policy grants the user replies on `_INBOX.<sub>.>`.
 */
export function connectWithOidc(url, currentToken, sub, options = {}) {
  return wsconnect({
    servers: url,
    authenticator: tokenAuthenticator(currentToken),
    inboxPrefix: `_INBOX.${sub}`,
    maxReconnectAttempts: -1,
    ignoreAuthErrorAbort: true, // a login refused or timed out in a restart storm is retried
    ...options,
  });
}
