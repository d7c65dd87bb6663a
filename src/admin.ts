import type { Msg, NatsConnection } from '@nats-io/transport-node';
import { LocalReplayGuard, type ReplayGuard, RevokeVerifier } from './admin-request.js';
import { AuthFailure, asAuthFailure } from './errors.js';
import type { LiveUser } from './live-users.js';
import type { Logger } from './log.js';
import type { CalloutService } from './service.js';

/** Kicks at once, and how long a request may spend kicking before it answers. */
const KICK_CONCURRENCY = 16;
const KICK_BUDGET_MS = 1500;
/**
 * How long a worker that took a revoke request waits for the replica's other workers (workers >
 * 1): their kicks within KICK_BUDGET_MS and the trip between threads, and still less than the
 * CLI's default --wait (2 s), so one worker that does not answer is named in the replica's
 * answer instead of making the whole answer too late to be heard.
 */
export const PEERS_BUDGET_MS = KICK_BUDGET_MS + 250;

/** What one replica did for a revoke request. */
export interface RevokeResult {
  readonly replica: string;
  readonly ok: boolean;
  readonly error?: string;
  readonly code?: string;
  readonly cache_entries_dropped?: number;
  readonly connections_found?: number;
  readonly connections_kicked?: number;
  readonly connections_already_closed?: number;
  /** Some connections of the identity may have been forgotten (the registry's bound): not all could be kicked. */
  readonly registry_incomplete?: boolean;
  readonly kick_errors?: readonly string[];
}

/** An identity to revoke, as verified from an admin request. */
export interface RevokeTarget {
  readonly issuer: string | undefined;
  readonly subject: string | undefined;
  /** Seconds: tokens issued until then are refused. */
  readonly at: number;
}

/** What applying a revocation did on one worker of a replica. */
export interface AppliedRevocation {
  readonly dropped: number;
  readonly found: number;
  readonly kicked: number;
  readonly gone: number;
  readonly errors: readonly string[];
  readonly incomplete: boolean;
}

/**
 * Revocation, on every replica: each subscribes to `<admin.subject>.revoke` outside the
 * callout's queue group, so every replica gets every request (the workers of one replica share
 * a queue group of their own: one of them takes it, and has it applied on the others). A request signed by an admin key drops the
 * decisions cached for the identity (issuer and/or subject) and, with a system account login,
 * disconnects the live connections this replica let in for it (nats-server's kick request,
 * `$SYS.REQ.SERVER.<id>.KICK`). Each replica answers what it did.
 */
export class AdminListener {
  readonly #nc: NatsConnection;
  readonly #system: NatsConnection | undefined;
  readonly #service: () => CalloutService;
  readonly #log: Logger;
  readonly #replica: string;
  /** Request ids acted on: kept across reloads, so a captured request cannot be replayed after one. */
  readonly #replays: ReplayGuard;
  /** The queue group of this replica's workers (undefined with one worker). */
  readonly #queue: string | undefined;
  #verifier: RevokeVerifier;
  #keys: string;

  /** The replica's other workers: the revocation applied on each, their results (workers > 1). */
  readonly #peers: ((target: RevokeTarget) => Promise<AppliedRevocation[]>) | undefined;

  constructor(
    nc: NatsConnection,
    system: NatsConnection | undefined,
    service: () => CalloutService,
    log: Logger,
    replica: string,
    workers?: {
      readonly peers: (target: RevokeTarget) => Promise<AppliedRevocation[]>;
      readonly replays: ReplayGuard;
      readonly queue: string;
    },
  ) {
    this.#peers = workers?.peers;
    this.#replays = workers?.replays ?? new LocalReplayGuard();
    this.#queue = workers?.queue;
    this.#nc = nc;
    this.#system = system;
    this.#service = service;
    this.#log = log;
    this.#replica = replica;
    const keys = service().config.admin?.publicKeys ?? [];
    this.#verifier = new RevokeVerifier(keys, this.#replays);
    this.#keys = keys.join(',');
  }

  async start(): Promise<void> {
    const subject = `${this.#service().config.admin!.subject}.revoke`;
    this.#nc.subscribe(subject, {
      ...(this.#queue ? { queue: this.#queue } : {}),
      callback: (err, msg) => {
        if (err) return;
        // Nothing may throw into the client's read loop.
        this.#handle(msg).catch((e: unknown) => this.#log.error('revoke request failed', { error: (e as Error).message }));
      },
    });
    await this.#nc.flush();
    this.#log.info('admin requests', { subject, kicks: this.#system !== undefined });
  }

  async #handle(msg: Msg): Promise<void> {
    const service = this.#service();
    // A reload may change the admin keys.
    const keys = service.config.admin?.publicKeys ?? [];
    if (keys.join(',') !== this.#keys) {
      this.#verifier = new RevokeVerifier(keys, this.#replays);
      this.#keys = keys.join(',');
    }
    let result: RevokeResult;
    try {
      const nowSeconds = Math.floor(service.clock.now() / 1000);
      const request = await this.#verifier.verify(msg.data, nowSeconds);
      if (request.issuer !== undefined && !service.config.issuers.some((i) => i.issuer === request.issuer)) {
        throw new AuthFailure('ADMIN_REQUEST_INVALID', `issuer ${JSON.stringify(request.issuer)} is not configured (compared exactly)`);
      }
      // As of when it was signed (never later than now).
      const target: RevokeTarget = { issuer: request.issuer, subject: request.subject, at: Math.min(request.iat, nowSeconds) };
      // Every worker of this replica holds its own cache and live users: apply it on each.
      const [local, peers] = await Promise.all([this.apply(target), this.#peers?.(target) ?? Promise.resolve([])]);
      const applied = [local, ...peers];
      const sum = (k: 'dropped' | 'found' | 'kicked' | 'gone') => applied.reduce((n, a) => n + a[k], 0);
      const errors = applied.flatMap((a) => a.errors);
      result = {
        replica: this.#replica,
        ok: errors.length === 0,
        cache_entries_dropped: sum('dropped'),
        connections_found: sum('found'),
        connections_kicked: sum('kicked'),
        connections_already_closed: sum('gone'),
        ...(errors.length ? { kick_errors: errors.slice(0, 20) } : {}),
        ...(applied.some((a) => a.incomplete) ? { registry_incomplete: true } : {}),
      };
      this.#log.warn('revoked', { admin: request.admin, issuer: request.issuer, subject: request.subject, ...result });
    } catch (err) {
      const failure = asAuthFailure(err);
      result = { replica: this.#replica, ok: false, code: failure.code, error: failure.message };
      this.#log.warn('revoke request refused', { code: failure.code, reason: failure.message });
    }
    if (msg.reply) msg.respond(JSON.stringify(result));
  }

  /** Applies a verified revocation to this worker's service: refuse, drop cached decisions, kick its live connections. */
  async apply(target: RevokeTarget): Promise<AppliedRevocation> {
    return applyRevocation(this.#service(), this.#system, target);
  }
}

/** Applies a verified revocation to `service`: refuse, drop its cached decisions, kick the live connections it let in. */
export async function applyRevocation(service: CalloutService, system: NatsConnection | undefined, target: RevokeTarget): Promise<AppliedRevocation> {
  service.revocations.revoke(target.issuer, target.subject, target.at);
  const dropped = service.cache.dropWhere(target.issuer, target.subject);
  const live = service.liveUsers.matching(target.issuer, target.subject);
  const { kicked, gone, errors } = system ? await kick(system, live, service) : { kicked: 0, gone: 0, errors: [] as string[] };
  return { dropped, found: live.length, kicked, gone, errors, incomplete: service.liveUsers.incomplete(target.issuer, target.subject) };
}

/**
 * Kicks the connections, up to KICK_CONCURRENCY at once and for at most KICK_BUDGET_MS, so the
 * answer comes within the CLI's wait. A connection the server no longer has is already gone.
 */
async function kick(
  system: NatsConnection,
  live: readonly (LiveUser & { readonly userNkey: string })[],
  service: CalloutService,
): Promise<{ kicked: number; gone: number; errors: string[] }> {
  const clock = service.clock;
  const until = clock.monotonic() + KICK_BUDGET_MS;
  const errors: string[] = [];
  let kicked = 0;
  let gone = 0;
  let next = 0;
  const worker = async () => {
    while (next < live.length) {
      const user = live[next++]!;
      if (user.clientId === undefined) continue;
      const left = until - clock.monotonic();
      if (left <= 0) {
        errors.push(`${user.serverId}/${user.clientId}: not kicked within ${KICK_BUDGET_MS}ms; revoke again`);
        continue;
      }
      try {
        const reply = await system.request(`$SYS.REQ.SERVER.${user.serverId}.KICK`, JSON.stringify({ cid: user.clientId }), {
          timeout: Math.min(2000, left),
        });
        const body = reply.json<{ error?: { description?: string } }>();
        const description = body.error?.description ?? '';
        if (!body.error) {
          kicked++;
          service.liveUsers.forget(user.userNkey);
        } else if (/no such client/i.test(description)) {
          gone++;
          service.liveUsers.forget(user.userNkey);
        } else errors.push(`${user.serverId}/${user.clientId}: ${description || 'refused'}`);
      } catch (err) {
        // No answer: the server is gone (a restart gives it a new id), or slow; kept for a retry.
        errors.push(`${user.serverId}/${user.clientId}: ${(err as Error).message}`);
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(KICK_CONCURRENCY, live.length) }, worker));
  return { kicked, gone, errors };
}
