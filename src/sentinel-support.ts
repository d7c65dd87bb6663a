/**
 * Whether a nats-server in operator mode can let a client in with its token alone, decided from
 * the version in the server's INFO. Operator mode sends a client to the callout only when it
 * presents a user JWT of the callout account (the sentinel); nats-server 2.11.2 added
 * `default_sentinel` (nats-io/nats-server#6577), a bearer user JWT it uses for clients that
 * present none. Older servers refuse a token-only client with `Authorization Violation`, logging
 * only "authentication error", and refuse `default_sentinel` in their configuration as an
 * unknown field. The INFO does not say whether `default_sentinel` is set: only that it can be.
 */
import type { NatsConnection } from '@nats-io/transport-node';
import type { Logger } from './log.js';

/** What a server version allows token-only clients. */
export interface SentinelSupport {
  /** The version as the server reported it, or `unknown`. */
  readonly version: string;
  /** True when the server knows `default_sentinel` (2.11.2 and later). */
  readonly defaultSentinel: boolean;
  /** One sentence for the log and the operator. */
  readonly summary: string;
}

/** The first version with `default_sentinel`. */
export const DEFAULT_SENTINEL_SINCE = [2, 11, 2] as const;
/**
 * The first version that refuses a `default_sentinel` that is not a bearer JWT at start
 * (nats-io/nats-server#7073, fixed by #7074). Earlier ones accepted it and placed every
 * token-only client in the global account `$G`, without the callout.
 */
export const BEARER_CHECK_SINCE = [2, 11, 7] as const;

/** `major.minor.patch` of "2.11.2", "v2.12.0-RC.1" or "2.15.1+build"; undefined when unreadable. */
function parseVersion(version: string): [number, number, number] | undefined {
  const m = /^v?(\d+)\.(\d+)\.(\d+)/.exec(version.trim());
  return m ? [Number(m[1]), Number(m[2]), Number(m[3])] : undefined;
}

function atLeast(v: readonly number[], min: readonly number[]): boolean {
  for (let i = 0; i < min.length; i++) if (v[i] !== min[i]) return v[i]! > min[i]!;
  return true;
}

/**
 * Decides from `version` (the server INFO's `version`, e.g. "2.10.27") whether the server can
 * accept token-only clients. An unreadable or missing version is treated as a server without
 * `default_sentinel`: clients that bring the sentinel credentials work on every server.
 */
export function sentinelSupport(version: string | undefined): SentinelSupport {
  const parsed = version === undefined ? undefined : parseVersion(version);
  if (!parsed) {
    return {
      version: version ?? 'unknown',
      defaultSentinel: false,
      summary: `nats-server version ${JSON.stringify(version ?? 'unknown')} is unreadable: assume token-only clients are refused and give clients the sentinel credentials with their token`,
    };
  }
  const v = parsed.join('.');
  if (!atLeast(parsed, DEFAULT_SENTINEL_SINCE)) {
    return {
      version: v,
      defaultSentinel: false,
      summary: `nats-server ${v} refuses token-only clients (default_sentinel needs 2.11.2): clients must present the sentinel credentials with their token`,
    };
  }
  const bearer = atLeast(parsed, BEARER_CHECK_SINCE)
    ? ''
    : '; before 2.11.7 a default_sentinel that is not a bearer JWT is not refused but puts those clients into $G without the callout';
  return {
    version: v,
    defaultSentinel: true,
    summary: `nats-server ${v} accepts token-only clients when its default_sentinel is a bearer user JWT of the callout account; without it, clients need the sentinel credentials with their token${bearer}`,
  };
}

/** Logs, once at startup in operator mode, what the connected server allows token-only clients. */
export function logSentinelSupport(log: Logger, nc: NatsConnection): void {
  const support = sentinelSupport(nc.info?.version);
  log.info(support.summary, { nats_server: support.version, token_only_clients: support.defaultSentinel ? 'with default_sentinel' : 'refused' });
}
