// Pushes an account JWT to nats-servers with a full (nats-based) resolver, as `nsc push` does.

/**
 * Sends `accountJwt` to `$SYS.REQ.CLAIMS.UPDATE` on `system`, a connection of a system-account
 * user. Each server with a full resolver stores the JWT in its directory and applies it to the
 * running account, and answers `{ server, data: { account, code: 200, message: 'jwt updated' } }`,
 * or `{ server, error: { account, code: 500, description } }`: this resolves with the first answer.
 */
export async function pushAccountJwt(system, accountJwt) {
  const reply = (await system.request('$SYS.REQ.CLAIMS.UPDATE', accountJwt, { timeout: 5000 })).json();
  if (reply.error) throw new Error(`account ${reply.error.account}: ${reply.error.description}`);
  return reply.data;
}
