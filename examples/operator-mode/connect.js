// A Node.js NATS client of an operator-mode nats-server that logs in with the user's OIDC access token.
import { connect, credsAuthenticator, tokenAuthenticator } from '@nats-io/transport-node';

/**
 * Connects with the callout account's sentinel credentials (the contents of sentinel.creds) plus
 * the token: works on every nats-server with auth callout (2.10 and later). nats.js asks
 * `currentToken()` for the token on every connect and reconnect, so a client whose NATS user
 * expired comes back with the token it holds by then: keep it fresh, and answer at once (no await).
 * `sub` is the token's subject: the policy grants the user replies on its own `_INBOX.<sub>.>`,
 * never the account's shared `_INBOX.>`.
 */
export function connectWithSentinel(servers, sentinelCreds, sub, currentToken, options = {}) {
  return connect({
    servers,
    authenticator: [credsAuthenticator(sentinelCreds), tokenAuthenticator(currentToken)],
    inboxPrefix: `_INBOX.${sub}`,
    maxReconnectAttempts: -1,
    ignoreAuthErrorAbort: true, // a login refused or timed out in a restart storm is retried
    ...options,
  });
}

/**
 * Connects with the token alone: nats-server (2.11.2 and later) hands the client to the callout
 * with its `default_sentinel`. Elsewhere the login fails with `Authorization Violation`.
 */
export function connectWithToken(servers, sub, currentToken, options = {}) {
  return connect({
    servers,
    authenticator: tokenAuthenticator(currentToken),
    inboxPrefix: `_INBOX.${sub}`,
    maxReconnectAttempts: -1,
    ignoreAuthErrorAbort: true, // a login refused or timed out in a restart storm is retried
    ...options,
  });
}
