/**
 * `oidc-callout probe`: one real login through nats-server and the callout, the way a client
 * makes it, timed. For monitoring systems: it fails when logins fail or take too long, whatever
 * the service's own endpoints say.
 */
import { connect, credsAuthenticator, tokenAuthenticator } from '@nats-io/transport-node';
import { withoutUserinfo } from './nats-connection.js';

/** Why a probe failed (stable codes for alerts). */
export type ProbeCode = 'PROBE_REFUSED' | 'PROBE_TIMEOUT' | 'PROBE_UNREACHABLE' | 'PROBE_FAILED';

export type ProbeResult =
  | {
      readonly ok: true;
      readonly server: string;
      readonly server_id: string;
      readonly server_name: string;
      /** From opening the connection to the server's first PONG: TCP, CONNECT and the whole callout. */
      readonly login_ms: number;
      readonly rtt_ms: number;
    }
  | { readonly ok: false; readonly server: string; readonly code: ProbeCode; readonly error: string; readonly elapsed_ms: number };

const round = (ms: number) => Math.round(ms * 10) / 10;

/**
 * Logs in to `server` with `token` (as `auth_token`), once, within `timeoutMs`; with `creds`
 * (operator mode: the sentinel's creds file contents) the sentinel user JWT comes along, as
 * clients send it. Never throws.
 */
export async function probe(server: string, token: string, timeoutMs: number, creds?: Uint8Array): Promise<ProbeResult> {
  // The probe logs in with the token alone, never with credentials written into the URL.
  const url = withoutUserinfo(server);
  const started = performance.now();
  try {
    const nc = await connect({
      servers: [url],
      ...(creds ? { authenticator: [credsAuthenticator(creds), tokenAuthenticator(token)] } : { token }),
      name: 'oidc-callout probe',
      timeout: timeoutMs,
      reconnect: false,
      maxReconnectAttempts: 0,
      // No subscriptions: the probe must not need an inbox grant.
      noEcho: true,
    });
    const loginMs = performance.now() - started;
    try {
      const rtt = await nc.rtt();
      const info = nc.info;
      return { ok: true, server: url, server_id: info?.server_id ?? '', server_name: info?.server_name ?? '', login_ms: round(loginMs), rtt_ms: round(rtt) };
    } finally {
      await nc.close().catch(() => undefined);
    }
  } catch (err) {
    const message = (err as Error).message ?? String(err);
    return { ok: false, server: url, code: probeCode(err as Error), error: message, elapsed_ms: round(performance.now() - started) };
  }
}

function probeCode(err: Error): ProbeCode {
  const text = `${err.name} ${err.message} ${(err as { code?: string }).code ?? ''}`.toLowerCase();
  if (text.includes('authorization') || text.includes('authentication')) return 'PROBE_REFUSED';
  if (text.includes('timeout')) return 'PROBE_TIMEOUT';
  if (text.includes('refused') || text.includes('econnrefused') || text.includes('connection_refused') || text.includes('enotfound'))
    return 'PROBE_UNREACHABLE';
  return 'PROBE_FAILED';
}
