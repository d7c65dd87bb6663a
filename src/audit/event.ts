import { z } from 'zod';
import { FAILURES, type FailureCode } from '../errors.js';
import type { AuthRequest, OpenedRequest } from '../request.js';
import type { Decision } from '../service.js';
import { connectionFacts } from '../service.js';

/**
 * One audit event per authorization decision: who (issuer, subject), what they got (account,
 * rule) or why not (code), and the connection as nats-server saw it (client address and port,
 * nats-server's connection id, server), so a line of a load balancer's log can be joined with
 * it. Built from an explicit list of fields: the token, the CONNECT options and every other
 * secret never enter an event.
 */

/** Every string an event carries is cut to this many characters (claims and client names are chosen by clients). */
export const MAX_FIELD_CHARS = 256;
/** The refusal's reason may quote more (still never a secret). */
export const MAX_REASON_CHARS = 1024;

/** What a decision meant for the client: let in, refused, or dropped unanswered to survive a storm. */
export type AuditResult = 'allow' | 'deny' | 'shed';

const text = z.string().max(MAX_FIELD_CHARS);
const nullable = <T extends z.ZodType>(t: T) => t.nullable();

/** The event, as published (JSON); conf/audit-event.schema.json is generated from it. */
export const auditEventSchema = z
  .strictObject({
    version: z.literal(1).describe('schema version of the event'),
    time: z.iso.datetime({ precision: 3 }).describe('when the service decided (ISO 8601, UTC, milliseconds)'),
    result: z.enum(['allow', 'deny', 'shed']).describe('allow: let in; deny: refused; shed: dropped unanswered (the server had given up or would have)'),
    outcome: z
      .enum(['allow', 'reject', 'abort'])
      .describe('what the service did: answered with a user (allow), with a signed error (reject), or not at all (abort)'),
    code: nullable(z.enum(Object.keys(FAILURES) as [FailureCode, ...FailureCode[]])).describe('failure code (README, Failure codes); null when allowed'),
    reason: nullable(z.string().max(MAX_REASON_CHARS)).describe('why it was refused, in words; null when allowed'),
    shed: nullable(z.enum(['expired', 'too_late', 'queue_full'])).describe('why a request was shed'),
    issuer: nullable(text).describe("the token's issuer, once the token verified"),
    subject: nullable(text).describe("the token's sub, once the token verified"),
    account: nullable(text).describe('the account the user was placed into'),
    rule: nullable(text).describe('the policy rule that granted'),
    expires: nullable(z.iso.datetime({ precision: 3 })).describe("the user JWT's expiry"),
    cached: nullable(z.boolean()).describe('the token was found in the decision cache'),
    user_nkey: nullable(text).describe("nats-server's per-connection user key (U...)"),
    client_host: nullable(text).describe("the client's address as nats-server saw it (behind a proxy: the proxy's)"),
    client_port: nullable(z.number().int().min(0).max(65535)).describe("the client's source port (looked up from nats-server; null without a system login)"),
    client_start: nullable(z.iso.datetime({ precision: 3 })).describe('when nats-server accepted the connection (looked up with the port)'),
    client_id: nullable(z.number().int().nonnegative()).describe("nats-server's id of the connection (cid), unique per server"),
    client_name: nullable(text).describe('the name the client gave in CONNECT'),
    connection_type: nullable(text).describe('STANDARD, WEBSOCKET, MQTT, LEAFNODE, or the kind/type nats-server reported'),
    server_id: nullable(text).describe('the nats-server that asked (N...)'),
    server_name: nullable(text).describe('its name'),
    request_verified: z
      .boolean()
      .describe("false: the request was shed before its signature was checked; client and server fields are the request's unverified claims"),
    replica: text.describe('the oidc-callout replica that decided (name@host#pid)'),
    latency_ms: nullable(z.number().nonnegative()).describe('from receiving the request to having its answer; null when none was made'),
  })
  .describe('An oidc-callout audit event: one per authorization decision');

export type AuditEvent = z.infer<typeof auditEventSchema>;

/** A decision with everything known about its request, as the service logs it. */
export interface DecisionRecord {
  readonly decision: Decision;
  /** The verified request; undefined when it could not be verified or was shed before. */
  readonly request: AuthRequest | undefined;
  /** The opened, unverified request of a shed one (its claims are read, marked as unverified). */
  readonly opened?: OpenedRequest | undefined;
  /** From receipt to answer; undefined when no answer was made. */
  readonly seconds: number | undefined;
  /** Wall-clock ms of the decision. */
  readonly timeMs: number;
}

/** Cuts `value` to `max` UTF-16 units without splitting a surrogate pair; null for anything but a non-empty string. */
export function bounded(value: unknown, max = MAX_FIELD_CHARS): string | null {
  if (typeof value !== 'string' || value === '') return null;
  if (value.length <= max) return value;
  const cut = value.charCodeAt(max - 1) >= 0xd800 && value.charCodeAt(max - 1) <= 0xdbff ? max - 1 : max;
  return value.slice(0, cut);
}

/** What a decision meant for the client; the `{result}` of the audit subject. */
export function auditResult(decision: Decision): AuditResult {
  if (decision.result === 'allow') return 'allow';
  return decision.shed ? 'shed' : 'deny';
}

function isoOrNull(ms: number | undefined): string | null {
  return ms === undefined || !Number.isFinite(ms) ? null : new Date(ms).toISOString();
}

/** The request's client and server facts, verified or (for a shed request) as it claims them. */
function requestFacts(record: DecisionRecord): {
  host: unknown;
  id: unknown;
  name: unknown;
  kind: unknown;
  type: unknown;
  serverId: unknown;
  serverName: unknown;
  userNkey: unknown;
} {
  const r = record.request;
  if (r) {
    return {
      host: r.clientHost,
      id: r.clientId,
      name: r.clientName,
      kind: r.clientKind,
      type: r.clientType,
      serverId: r.serverId,
      serverName: r.serverName,
      userNkey: r.userNkey,
    };
  }
  const nats = (record.opened?.jwt.claims.nats ?? {}) as Record<string, unknown>;
  const client = (typeof nats.client_info === 'object' && nats.client_info !== null ? nats.client_info : {}) as Record<string, unknown>;
  const server = (typeof nats.server_id === 'object' && nats.server_id !== null ? nats.server_id : {}) as Record<string, unknown>;
  return {
    host: client.host,
    id: client.id,
    name: client.name,
    kind: client.kind,
    type: client.type,
    serverId: record.opened?.claimedServer,
    serverName: server.name,
    userNkey: nats.user_nkey,
  };
}

/**
 * The audit event of one decision. Pure: every field is picked by name and bounded, so a
 * hostile claim or client name cannot make an event large, and nothing else of the request
 * (the token in CONNECT above all) can reach it.
 */
export function buildAuditEvent(record: DecisionRecord, replica: string): AuditEvent {
  const { decision } = record;
  const facts = requestFacts(record);
  const kind = typeof facts.kind === 'string' ? facts.kind : '';
  const type = typeof facts.type === 'string' ? facts.type : '';
  const known = connectionFacts({ clientKind: kind, clientType: type, clientHost: '' }).type;
  const id = facts.id;
  return {
    version: 1,
    time: new Date(record.timeMs).toISOString(),
    result: auditResult(decision),
    outcome: decision.result,
    code: decision.code ?? null,
    reason: bounded(decision.reason, MAX_REASON_CHARS),
    shed: decision.shed ?? null,
    issuer: bounded(decision.issuer),
    subject: bounded(decision.subject),
    account: bounded(decision.account),
    rule: bounded(decision.rule),
    expires: isoOrNull(decision.expires === undefined ? undefined : decision.expires * 1000),
    cached: decision.cached ?? null,
    user_nkey: bounded(facts.userNkey),
    client_host: bounded(facts.host),
    client_port: null,
    client_start: null,
    client_id: typeof id === 'number' && Number.isSafeInteger(id) && id >= 0 ? id : null,
    client_name: bounded(facts.name),
    connection_type: known ?? bounded(kind || type ? `${kind}/${type}` : undefined),
    server_id: bounded(facts.serverId),
    server_name: bounded(facts.serverName),
    request_verified: record.request !== undefined,
    replica: bounded(replica) ?? 'unknown',
    latency_ms: record.seconds === undefined ? null : Math.round(record.seconds * 1_000_000) / 1000,
  };
}

export const AUDIT_EVENT_SCHEMA_ID = 'urn:oidc-callout:audit-event';

/** The event's JSON Schema as shipped in conf/audit-event.schema.json (`npm run schema`): 2-space JSON, trailing newline. */
export function auditEventJsonSchemaText(): string {
  const { $schema, ...rest } = z.toJSONSchema(auditEventSchema, { target: 'draft-2020-12', io: 'output', unrepresentable: 'throw' }) as Record<string, unknown>;
  return `${JSON.stringify({ $schema, $id: AUDIT_EVENT_SCHEMA_ID, title: 'oidc-callout audit event', ...rest }, null, 2)}\n`;
}
