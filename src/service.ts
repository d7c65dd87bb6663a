import type { Accounts } from './accounts.js';
import { DecisionCache, type CachedDecision } from './cache.js';
import type { Config } from './config.js';
import { AuthFailure, asAuthFailure, GENERIC_REJECTION, type FailureCode } from './errors.js';
import { IssuerKeys, type IssuerStatus } from './issuers.js';
import type { Logger } from './log.js';
import type { DecisionObserver } from './metrics.js';
import { isPublicKey } from './nkey.js';
import type { ConnectionFacts } from './conditions.js';
import { admitConnection, admitServer, type Grant, type Policy, type PolicyExplanation } from './policy.js';
import type { ConnectionType } from './policy-schema.js';
import { LiveUsers } from './live-users.js';
import { Revocations } from './revocations.js';
import { type ShedSummary, ShedLog } from './shed-log.js';
import { RequestClock, type RequestTiming } from './request-clock.js';
import { type Clock, systemClock } from './clock.js';
import type { ShedReason } from './request-queue.js';
import { RequestVerifier, type AuthRequest, type OpenedRequest } from './request.js';
import { signResponse } from './response.js';
import { TokenVerifier } from './token.js';
import { signUserJwt, userClaims } from './user-jwt.js';
import type { XkeyBox } from './xkey.js';

/** The outcome of one authorization request, as logged and counted. */
export interface Decision {
  readonly result: 'allow' | 'reject' | 'abort';
  readonly code?: FailureCode;
  readonly reason?: string;
  readonly issuer?: string;
  readonly subject?: string;
  readonly account?: string;
  readonly rule?: string;
  readonly expires?: number;
  readonly cached?: boolean;
  /** Why a request was dropped unanswered to save the work for requests still waited for. */
  readonly shed?: ShedReason;
}

/** A request received and opened, not yet verified: what the scheduler queues. */
export interface Admitted {
  readonly opened: OpenedRequest;
  /** When it reached us, on the request clock (monotonic ms). */
  readonly receivedMs: number;
  /** Its estimated issue time and deadline; undefined when it carries no usable iat/exp. */
  readonly timing: RequestTiming | undefined;
  /** Set when admission already verified it (the first request of a server not known yet). */
  readonly verified: AuthRequest | undefined;
}

const SHED_CODES: Record<ShedReason, FailureCode> = { expired: 'REQUEST_EXPIRED', too_late: 'REQUEST_TOO_LATE', queue_full: 'REQUEST_QUEUE_FULL' };

/** What `explain` prints: the decision for a token without any NATS request around it. */
export type Explanation =
  | {
      readonly decision: 'allow';
      readonly issuer: string;
      readonly claims: Readonly<Record<string, unknown>>;
      readonly grant: Grant;
      readonly expires: number;
      readonly policy: PolicyExplanation;
      /** The user JWT's claims as they would be issued (unsigned; `sub` stands for the connection's key). */
      readonly userJwt: Record<string, unknown>;
    }
  | {
      readonly decision: 'refuse';
      readonly failure: AuthFailure;
      /** Set once the token verified: the claims the policy saw, and how each rule fared. */
      readonly issuer?: string;
      readonly claims?: Readonly<Record<string, unknown>>;
      readonly policy?: PolicyExplanation;
    };

/**
 * The callout pipeline, and the only place that knows its order:
 * open + verify the server's request -> pick the token from CONNECT -> cache or verify the OIDC
 * token -> policy -> sign the user JWT -> sign (and seal) the response. Everything is built
 * once per configuration; a reload builds a new service.
 */
export class CalloutService {
  readonly config: Config;
  readonly issuers: readonly IssuerKeys[];
  readonly cache: DecisionCache;
  /** Per-server clock offsets, kept across reloads. */
  readonly requestClock: RequestClock;
  /** The connections this replica let in, for revocation; kept across reloads. */
  readonly liveUsers: LiveUsers;
  /** Identities revoked on this replica; kept across reloads. */
  readonly revocations: Revocations;
  /** Bounds the log lines of shed requests; kept across reloads. */
  readonly shedLog: ShedLog;
  readonly #log: Logger;
  readonly #requests: RequestVerifier;
  readonly #tokens: TokenVerifier;
  readonly #policy: Policy;
  readonly #accounts: Accounts;
  readonly #xkey: XkeyBox | undefined;
  readonly #clock: Clock;
  readonly #now: () => number;
  readonly #mono: () => number;
  readonly #observer: DecisionObserver | undefined;
  /** Verifications in flight, by token digest: one per token. */
  readonly #pending = new Map<string, Promise<CachedDecision>>();
  /** Verifications in flight per issuer: each issuer has a budget of its own. */
  readonly #pendingByIssuer = new Map<string, number>();
  readonly #budgets: ReadonlyMap<string, number>;

  /**
   * Throws Error/ConfigError when keys or policy templates are invalid. `observer` receives
   * every decision and JWKS fetch (metrics); `clock` is the one clock of tokens, request
   * deadlines, their timers and the issuers' key freshness (tests inject one they move by
   * hand); `previous` is the service a reload replaces.
   */
  constructor(
    config: Config,
    log: Logger,
    options: {
      readonly clock?: Clock;
      readonly observer?: DecisionObserver;
      readonly previous?: CalloutService;
      /** A key set (JWKS JSON) used for every issuer instead of fetching: `explain --jwks`. */
      readonly offlineJwks?: string;
    } = {},
  ) {
    this.config = config;
    this.#log = log;
    const clock = options.clock ?? systemClock;
    this.#clock = clock;
    this.#now = () => clock.now();
    this.#mono = () => clock.monotonic();
    this.requestClock = options.previous?.requestClock ?? new RequestClock();
    this.liveUsers = options.previous?.liveUsers ?? new LiveUsers();
    this.revocations = options.previous?.revocations ?? new Revocations();
    this.shedLog = options.previous?.shedLog ?? new ShedLog();
    this.#observer = options.observer;
    this.#policy = config.policy;
    this.#accounts = config.keys.accounts;
    this.#xkey = config.keys.xkey;
    this.#requests = new RequestVerifier(this.#xkey);
    // A reload keeps the loaded keys of every issuer whose settings did not change.
    const kept = new Map((options.previous?.issuers ?? []).map((k) => [JSON.stringify(k.config), k]));
    this.issuers = config.issuers.map(
      (c) => (options.offlineJwks === undefined ? kept.get(JSON.stringify(c)) : undefined) ?? new IssuerKeys(c, options.observer, options.offlineJwks, clock),
    );
    this.#tokens = new TokenVerifier(this.issuers, config.token.maxBytes);
    this.#budgets = new Map(config.issuers.map((i) => [i.issuer, i.maxInFlight ?? config.callout.maxInFlight]));
    this.cache = new DecisionCache(config.cache.maxEntries, config.cache.ttlMs);
  }

  /** The public key nats-server must list as `auth_callout.issuer` (or the callout account). */
  get issuerPublicKey(): string {
    return this.#accounts.response.signer.publicKey;
  }

  get xkeyPublicKey(): string | undefined {
    return this.#xkey?.publicKey;
  }

  issuerStatus(): IssuerStatus[] {
    return this.issuers.map((i) => i.status());
  }

  /** The service's clock (tokens, deadlines, revocations). */
  get clock(): Clock {
    return this.#clock;
  }

  /** The clock request deadlines are measured on (ms). */
  get monotonicNow(): () => number {
    return this.#mono;
  }

  /**
   * Answers one request at once (no queue): admit, then process unless it has already expired.
   * Returns the reply payload, or undefined to abort (send nothing). Never throws.
   */
  async handle(data: Uint8Array, headerXkey: string | undefined): Promise<Uint8Array | undefined> {
    const admitted = this.admit(data, headerXkey, this.#mono());
    if (!admitted) return undefined;
    if (admitted.timing && admitted.timing.deadlineMs <= this.#mono()) {
      this.shed(admitted, 'expired');
      return undefined;
    }
    return this.process(admitted, 0);
  }

  /**
   * Opens and parses a request and estimates its deadline (cheap: the box and a JSON parse).
   * The first request of a server whose clock is not known yet is verified at once, so that it
   * teaches the clock before its deadline is estimated: a server whose clock is far off ours
   * would otherwise have its requests dropped as stale before any could be learnt from.
   * Undefined when the request cannot even be read: that is decided and logged (abort) here.
   * `connection` numbers the NATS connection it came on (each delivers in order).
   */
  admit(data: Uint8Array, headerXkey: string | undefined, receivedMs: number, connection = 0, inArrivalOrder = true): Admitted | undefined {
    let opened: OpenedRequest;
    try {
      opened = this.#requests.open(data, headerXkey);
    } catch (err) {
      const failure = asAuthFailure(err);
      this.#decided({ result: 'abort', code: failure.code, reason: failure.message }, undefined, undefined);
      return undefined;
    }
    const clock = this.requestClock;
    let verified: AuthRequest | undefined;
    let tried = false;
    const genuine = (): boolean => {
      if (!tried) {
        tried = true;
        try {
          verified = this.#requests.verify(opened);
        } catch {
          // Not verifiable: it teaches nothing; process() refuses it with the reason.
        }
      }
      return verified !== undefined;
    };
    // A step of the server's clock shows in the order requests arrive on a connection: only
    // requests opened in that order are looked at (one picked later from a backlog is not).
    if (inArrivalOrder && clock.noteArrival(opened.claimedServer, opened.iat, receivedMs, connection, genuine)) {
      this.#log.warn("a server's requests jumped back in time: its clock stepped; relearning its offset", { server_id: opened.claimedServer });
      this.#observer?.clockStepped?.();
    }
    // The first request of a server not known yet is verified here (see above); one verified
    // for the step detection teaches the clock too (process() skips what admit() verified).
    if (!clock.calibrated(opened.claimedServer, receivedMs)) genuine();
    if (verified) clock.observe(verified.serverId, verified.issuedAt, receivedMs, opened.exp);
    const timing = clock.estimate(opened.claimedServer, opened.iat, opened.exp, receivedMs);
    return { opened, receivedMs, timing, verified };
  }

  /**
   * Verifies and answers an admitted request. `laneDelayMs` is how long the answer will wait
   * on its way back into the server: a verification that would wait on the IdP is abandoned
   * that much before the deadline. Returns the reply payload, or undefined to abort. Never
   * throws: every failure becomes a logged decision; its latency counts from receipt.
   */
  async process(admitted: Admitted, laneDelayMs: number): Promise<Uint8Array | undefined> {
    let request: AuthRequest | undefined;
    let decision: Decision;
    let reply: Uint8Array | undefined;
    try {
      request = admitted.verified ?? this.#requests.verify(admitted.opened);
      if (!admitted.verified) this.requestClock.observe(request.serverId, request.issuedAt, admitted.receivedMs, admitted.opened.exp);
      const deadline = admitted.timing === undefined ? undefined : admitted.timing.deadlineMs - laneDelayMs;
      const result = await this.#authorize(request, deadline);
      decision = result.decision;
      reply = result.reply;
    } catch (err) {
      const failure = asAuthFailure(err);
      // A refusal of a verified token names whose it was (audit trails ask who was refused).
      decision = { result: failure.outcome, code: failure.code, reason: failure.message, ...failure.identity };
      reply = undefined;
      if (failure.outcome === 'reject' && request) {
        try {
          reply = signResponse(request, { error: GENERIC_REJECTION }, this.#accounts.response, this.#xkey, Math.floor(this.#now() / 1000));
        } catch (signErr) {
          decision = { result: 'abort', code: 'INTERNAL', reason: `cannot sign rejection: ${(signErr as Error).message}` };
        }
      } else if (!request) {
        decision = { ...decision, result: 'abort' };
      }
    }
    this.#decided(decision, request, Math.max(0, this.#mono() - admitted.receivedMs) / 1000);
    return reply;
  }

  /**
   * Drops an admitted request unanswered (the scheduler found it cannot be answered in time)
   * and logs why. Not a latency: no answer was made.
   */
  shed(admitted: Admitted, reason: ShedReason, detail?: string): void {
    const now = this.#mono();
    // Past the window's lines nothing is logged: the reason is not even written.
    if (!this.#countShed(reason, now)) return;
    const { opened, timing } = admitted;
    const waited = Math.round(now - admitted.receivedMs);
    const why =
      detail ??
      (reason === 'queue_full'
        ? `the request queue is full; dropped after waiting ${waited}ms`
        : reason === 'expired'
          ? `the server gave up on it ${timing ? Math.round(now - timing.deadlineMs) : '?'}ms ago (estimated age ${timing ? Math.round(now - timing.issuedMs) : '?'}ms, waited here ${waited}ms)`
          : `its answer could not reach the server before the deadline (${timing ? Math.round(timing.deadlineMs - now) : '?'}ms left)`);
    // The server named by an unverified request is only a claim, logged as such and only when it is a server key.
    const claimed = isPublicKey(opened.claimedServer, 'server') ? opened.claimedServer : undefined;
    this.#decided({ result: 'abort', code: SHED_CODES[reason], reason: why, shed: reason }, admitted.verified, undefined, claimed, opened);
  }

  /**
   * Drops a request never opened (the scheduler found it past any deadline it can have while
   * it waited for its turn under overload): nothing of it is known but its size.
   */
  shedUnopened(reason: ShedReason, receivedMs: number, why: string): void {
    const now = this.#mono();
    if (!this.#countShed(reason, now)) return;
    this.#decided(
      { result: 'abort', code: SHED_CODES[reason], reason: `${why}; dropped unopened after waiting ${Math.round(now - receivedMs)}ms`, shed: reason },
      undefined,
      undefined,
    );
  }

  /**
   * Logs the summary of the shed requests that went without a line of their own, when one is
   * due; `final` (the runner stops) logs the current window's at once.
   */
  flushShedLog(final = false): void {
    this.#logShedSummary(this.shedLog.flush(this.#mono(), final));
  }

  /**
   * Counts a shed request; true when it gets a decision line of its own (the first 100 a
   * second do), false when it was counted as a decision here and goes into the summary.
   */
  #countShed(reason: ShedReason, nowMs: number): boolean {
    this.#observer?.shed(reason);
    const { line, summary } = this.shedLog.take(reason, nowMs);
    this.#logShedSummary(summary);
    if (!line) this.#observer?.decided('abort', SHED_CODES[reason], undefined, undefined);
    return line;
  }

  #logShedSummary(summary: ShedSummary | undefined): void {
    if (summary)
      this.#log.warn('requests shed without a line each (counted in oidc_callout_shed_total; those refused unverified in oidc_callout_requests_total)', {
        ...summary,
      });
  }

  /** `opened`: a shed request not verified, whose unverified claims an audit event may carry, marked as such. */
  #decided(decision: Decision, request: AuthRequest | undefined, seconds: number | undefined, claimedServer?: string, opened?: OpenedRequest): void {
    this.#observer?.decided(decision.result, decision.code, decision.cached, seconds);
    if (request === undefined && decision.shed === undefined && decision.result !== 'allow') {
      // Refused before anything verified it: whoever may publish on the subject sends as many as
      // they like, so these share the shed lines' budget (and, past it, have no audit event).
      const { line, summary } = this.shedLog.take('unverified', this.#mono());
      this.#logShedSummary(summary);
      if (!line) return;
    }
    this.#observer?.recorded?.({ decision, request, opened: request ? undefined : opened, seconds, timeMs: this.#now() });
    this.#log[decision.result === 'allow' ? 'info' : 'warn']('authorization', {
      ...decision,
      user_nkey: request?.userNkey,
      client_host: request?.clientHost,
      client_type: request?.clientType,
      server: request?.serverName,
      server_id: request?.serverId,
      claimed_server_id: request ? undefined : claimedServer,
      latency_ms: seconds === undefined ? undefined : Math.round(seconds * 1_000_000) / 1000,
    });
  }

  /**
   * Verifies a token and applies the policy exactly as a connection would, without NATS. A
   * refusal after the token verified carries its claims, so the user sees why no rule matched.
   */
  async explain(token: string, connection?: ConnectionFacts): Promise<Explanation> {
    const now = this.#now();
    let verified: Awaited<ReturnType<TokenVerifier['verify']>>;
    try {
      verified = await this.#tokens.verify(token, now);
    } catch (err) {
      return { decision: 'refuse', failure: asAuthFailure(err) };
    }
    const issuer = verified.issuer.issuer;
    const policy = this.#policy.explain(issuer, verified.claims, connection);
    if ('failure' in policy.result) return { decision: 'refuse', failure: policy.result.failure, issuer, claims: verified.claims, policy };
    const grant = policy.result.grant;
    try {
      // Without a connection to look at, explain shows the grant; with one, it checks it as a connect would.
      if (connection) admitConnection(grant, connection);
      const expires = expiry(verified.exp, grant, now);
      const account = this.#accounts.forAccount(grant.account);
      if (!account) throw new AuthFailure('INTERNAL', `no signing key for account ${grant.account}`);
      const userJwt = userClaims(grant, "U... (the connection's own key, chosen by nats-server)", account, Math.floor(now / 1000), expires);
      return { decision: 'allow', issuer, claims: verified.claims, grant, expires, policy, userJwt };
    } catch (err) {
      return { decision: 'refuse', failure: asAuthFailure(err), issuer, claims: verified.claims, policy };
    }
  }

  async #authorize(request: AuthRequest, deadlineMs: number | undefined): Promise<{ decision: Decision; reply: Uint8Array }> {
    const token = this.#pickToken(request);
    const key = DecisionCache.key(token);
    const hit = this.cache.get(key);
    const entry = hit ?? (await this.#verifyWithinBudget(token, key, deadlineMs));
    try {
      return this.#issue(request, entry, hit !== undefined, this.#now());
    } catch (err) {
      throw identified(err, entry.issuer, entry.subject);
    }
  }

  /**
   * The slow path (may wait on the IdP). Bounded: at most `max_in_flight` verifications run at
   * once, so a slow IdP or a flood of unknown tokens cannot queue every login behind it (cache
   * hits never wait for a slot); connects presenting a token already being verified join that
   * verification; and no request waits past its deadline (request clock), when the server has
   * given up (the verification itself runs on and fills the cache).
   */
  async #verifyWithinBudget(token: string, key: string, deadlineMs: number | undefined): Promise<CachedDecision> {
    let verification = this.#pending.get(key);
    if (!verification) {
      // A kid the issuer's keys do not hold while they are being fetched (a rotation, or junk)
      // waits for that fetch without taking a slot, up to the request's deadline.
      let admission = this.#tokens.admission(token);
      if (admission.waitFor) {
        await this.#settledOrDeadline(admission.waitFor.settled(), deadlineMs);
        admission = this.#tokens.admission(token);
        if (admission.waitFor)
          throw new AuthFailure('TOKEN_KEY_UNKNOWN', `the keys of ${admission.issuer} are still being fetched and hold no key for this token`);
        verification = this.#pending.get(key);
      }
    }
    if (!verification) {
      const issuer = this.#tokens.issuerOf(token);
      // The budget is the issuer's: a slow or hostile IdP can fill its own, never another's.
      const busy = this.#pendingByIssuer.get(issuer) ?? 0;
      const budget = this.#budgets.get(issuer) ?? this.config.callout.maxInFlight;
      if (busy >= budget) {
        throw new AuthFailure('OVERLOADED', `${busy} verifications of ${issuer || 'malformed'} tokens in flight (max_in_flight ${budget})`);
      }
      this.#pendingByIssuer.set(issuer, busy + 1);
      verification = this.#verifyAndDecide(token, key).finally(() => {
        this.#pending.delete(key);
        const left = (this.#pendingByIssuer.get(issuer) ?? 1) - 1;
        if (left > 0) this.#pendingByIssuer.set(issuer, left);
        else this.#pendingByIssuer.delete(issuer);
      });
      verification.catch(() => undefined);
      this.#pending.set(key, verification);
    }
    if (deadlineMs === undefined) return verification;
    const timeout = this.#clock.timeout(deadlineMs - this.#mono());
    const expired = timeout.done.then(() => {
      throw new AuthFailure('REQUEST_EXPIRED', 'the request deadline passed while the token was verified');
    });
    try {
      return await Promise.race([verification, expired]);
    } finally {
      timeout.cancel();
    }
  }

  /** Waits for `settled`, but not past `deadlineMs` (request clock) when there is one. */
  async #settledOrDeadline(settled: Promise<void>, deadlineMs: number | undefined): Promise<void> {
    if (deadlineMs === undefined) return settled;
    const timeout = this.#clock.timeout(deadlineMs - this.#mono());
    await Promise.race([settled, timeout.done]);
    timeout.cancel();
  }

  async #verifyAndDecide(token: string, key: string): Promise<CachedDecision> {
    const verified = await this.#tokens.verify(token, this.#now());
    const issuer = verified.issuer.issuer;
    const sub = verified.claims.sub;
    // A policy that does not look at the connection decides once per token; a refusal is
    // cached as the verified token, so retries skip the signature check but are decided again.
    let grant: Grant | undefined;
    if (!this.#policy.usesConnection) {
      try {
        grant = this.#policy.decide(issuer, verified.claims);
      } catch (err) {
        this.cache.set(
          key,
          { issuer, subject: typeof sub === 'string' ? sub : '', claims: verified.claims, grant: undefined, tokenExp: verified.exp },
          this.#now(),
        );
        throw identified(err, issuer, typeof sub === 'string' ? sub : '');
      }
    }
    const entry = { issuer, subject: typeof sub === 'string' ? sub : '', claims: verified.claims, grant, tokenExp: verified.exp };
    this.cache.set(key, entry, this.#now());
    return entry;
  }

  #issue(request: AuthRequest, entry: CachedDecision, cached: boolean, nowMs: number): { decision: Decision; reply: Uint8Array } {
    const iat = entry.claims.iat;
    const skew = this.config.issuers.find((i) => i.issuer === entry.issuer)?.leewaySeconds ?? 0;
    const revokedAt = this.revocations.revokedAt(entry.issuer, entry.subject, typeof iat === 'number' ? iat : undefined, skew);
    if (revokedAt !== undefined)
      throw new AuthFailure('TOKEN_REVOKED', `${entry.subject} of ${entry.issuer} was revoked at ${new Date(revokedAt * 1000).toISOString()}`);
    const connection = connectionFacts(request);
    const grant = entry.grant ?? this.#policy.decide(entry.issuer, entry.claims, connection);
    admitConnection(grant, connection);
    admitServer(grant, request.serverVersion);
    const now = Math.floor(nowMs / 1000);
    const exp = expiry(entry.tokenExp, grant, nowMs);
    const account = this.#accounts.forAccount(grant.account);
    // Config validation makes this unreachable; kept so a gap can never sign with a wrong key.
    if (!account) throw new AuthFailure('INTERNAL', `no signing key for account ${grant.account}`);
    const jwt = signUserJwt(grant, request.userNkey, account, now, exp);
    const reply = signResponse(request, { jwt }, this.#accounts.response, this.#xkey, now);
    this.liveUsers.record(
      request.userNkey,
      { issuer: entry.issuer, subject: entry.subject, serverId: request.serverId, clientId: request.clientId },
      exp * 1000,
      nowMs,
    );
    return {
      decision: { result: 'allow', issuer: entry.issuer, subject: entry.subject, account: grant.account, rule: grant.rule, expires: exp, cached },
      reply,
    };
  }

  #pickToken(request: AuthRequest): string {
    for (const field of this.config.token.fields) {
      const value = request.connectOpts[field];
      if (typeof value === 'string' && value.length > 0) return value;
    }
    throw new AuthFailure('TOKEN_MISSING', `no token in CONNECT ${this.config.token.fields.join(' or ')}`);
  }
}

/**
 * The user JWT's expiry: the token's own `exp`, capped by the rule's lifetime. A token that
 * is already past its `exp` (accepted within the leeway) cannot yield a usable user.
 */
/** What the request says about the connection, in the terms of the user JWT's connection types. */
export function connectionFacts(request: Pick<AuthRequest, 'clientKind' | 'clientType' | 'clientHost'>): ConnectionFacts {
  return { type: connectionType(request.clientKind, request.clientType), host: request.clientHost || undefined };
}

const CONNECTION_TYPE = new Map<string, ConnectionType>([
  ['Client/nats', 'STANDARD'],
  ['Client/websocket', 'WEBSOCKET'],
  ['Client/mqtt', 'MQTT'],
  ['Leafnode/nats', 'LEAFNODE'],
  // nats-server 2.10 and 2.15 send leaf node requests without a type.
  ['Leafnode/', 'LEAFNODE'],
  ['Leafnode/websocket', 'LEAFNODE_WS'],
]);

function connectionType(kind: string, type: string): ConnectionType | undefined {
  return CONNECTION_TYPE.get(`${kind}/${type}`);
}

function expiry(tokenExp: number | undefined, grant: Grant, nowMs: number): number {
  const now = Math.floor(nowMs / 1000);
  const exp = Math.min(tokenExp ?? Number.POSITIVE_INFINITY, now + grant.maxLifetimeSeconds);
  if (exp <= now) throw new AuthFailure('TOKEN_EXPIRED', 'the token expires before a user could connect');
  return exp;
}

/** `err` as an AuthFailure naming the verified identity it refused. */
function identified(err: unknown, issuer: string, subject: string): AuthFailure {
  const failure = asAuthFailure(err);
  failure.identity = { issuer, subject };
  return failure;
}
