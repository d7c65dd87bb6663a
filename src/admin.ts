import type { Msg, NatsConnection } from '@nats-io/transport-node';
import { RevokeVerifier } from './admin-request.js';
import { asAuthFailure } from './errors.js';
import type { Logger } from './log.js';
import type { CalloutService } from './service.js';

/** What one replica did for a revoke request. */
export interface RevokeResult {
  readonly replica: string;
  readonly ok: boolean;
  readonly error?: string;
  readonly code?: string;
  readonly cache_entries_dropped?: number;
  readonly connections_found?: number;
  readonly connections_kicked?: number;
  readonly kick_errors?: readonly string[];
}

/**
 * Revocation, on every replica: each subscribes to `<admin.subject>.revoke` outside the queue
 * group, so every replica gets every request. A request signed by an admin key drops the
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
  #verifier: RevokeVerifier;
  #keys: string;

  constructor(nc: NatsConnection, system: NatsConnection | undefined, service: () => CalloutService, log: Logger, replica: string) {
    this.#nc = nc;
    this.#system = system;
    this.#service = service;
    this.#log = log;
    this.#replica = replica;
    const keys = service().config.admin?.publicKeys ?? [];
    this.#verifier = new RevokeVerifier(keys);
    this.#keys = keys.join(',');
  }

  async start(): Promise<void> {
    const subject = `${this.#service().config.admin!.subject}.revoke`;
    this.#nc.subscribe(subject, {
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
      this.#verifier = new RevokeVerifier(keys);
      this.#keys = keys.join(',');
    }
    let result: RevokeResult;
    try {
      const request = this.#verifier.verify(msg.data, Math.floor(Date.now() / 1000));
      service.revocations.revoke(request.issuer, request.subject, Math.floor(Date.now() / 1000));
      const dropped = service.cache.dropWhere(request.issuer, request.subject);
      const live = service.liveUsers.take(request.issuer, request.subject);
      const errors: string[] = [];
      let kicked = 0;
      if (this.#system) {
        for (const user of live) {
          if (user.clientId === undefined) continue;
          try {
            const reply = await this.#system.request(`$SYS.REQ.SERVER.${user.serverId}.KICK`, JSON.stringify({ cid: user.clientId }), { timeout: 2000 });
            const body = reply.json<{ error?: { description?: string } }>();
            if (body.error) errors.push(`${user.serverId}/${user.clientId}: ${body.error.description ?? 'refused'}`);
            else kicked++;
          } catch (err) {
            errors.push(`${user.serverId}/${user.clientId}: ${(err as Error).message}`);
          }
        }
      }
      result = {
        replica: this.#replica,
        ok: errors.length === 0,
        cache_entries_dropped: dropped,
        connections_found: live.length,
        connections_kicked: kicked,
        ...(errors.length ? { kick_errors: errors } : {}),
      };
      this.#log.warn('revoked', { admin: request.admin, issuer: request.issuer, subject: request.subject, ...result });
    } catch (err) {
      const failure = asAuthFailure(err);
      result = { replica: this.#replica, ok: false, code: failure.code, error: failure.message };
      this.#log.warn('revoke request refused', { code: failure.code, reason: failure.message });
    }
    if (msg.reply) msg.respond(JSON.stringify(result));
  }
}
