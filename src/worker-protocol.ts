/**
 * The messages between a replica's main thread and its worker threads (workers > 1). Requests
 * carry an id; the answer names it. Plain data only: configurations are loaded by each worker
 * from the file (they hold compiled policies and keys, which do not cross threads).
 */
import type { AppliedRevocation, RevokeTarget } from './admin.js';

/** What a worker thread is started with. */
export interface WorkerData {
  readonly file: string;
  readonly version: string;
  readonly index: number;
  readonly count: number;
  /**
   * The replica's `nats.connections` when it started, shared out over `count` workers. Not read
   * again from the file by a worker started again: like `workers`, a change needs a restart, or
   * the replica's total would drift from its worker count.
   */
  readonly connections: number;
  /** The replica's name for admin answers and audit events (the worker index is added). */
  readonly replica: string;
  /**
   * The queue group the replica's workers take admin requests in (one worker per request):
   * random per replica, since two replicas in one queue group would split the requests.
   */
  readonly adminQueue: string;
  /** Revocations the replica applied before this worker started: applied before it serves. */
  readonly revocations?: readonly RevokeTarget[];
}

export type ToWorker =
  | { readonly id: number; readonly type: 'readiness' }
  | { readonly id: number; readonly type: 'metrics' }
  | { readonly id: number; readonly type: 'reload' }
  | { readonly id: number; readonly type: 'revoke'; readonly target: RevokeTarget }
  | { readonly id: number; readonly type: 'stop' };

export type FromWorker =
  /** The worker serves (its NATS connections are subscribed). */
  | { readonly type: 'started' }
  /** The answer to a request of the main thread. */
  | { readonly type: 'answer'; readonly id: number; readonly value: unknown; readonly error?: string }
  /** A worker that received a revocation asks for it to be applied on the other workers. */
  | { readonly type: 'peers'; readonly id: number; readonly target: RevokeTarget }
  /** A worker asks whether an admin request id is new to the replica (replay guard). */
  | { readonly type: 'claim'; readonly id: number; readonly jti: string; readonly until: number; readonly now: number };

/** A worker's reply lane in the replica's metrics: the worker names it, so lanes of workers never clash. */
export function workerLaneLabel(index: number, connection: string): string {
  return `w${index}/${connection}`;
}

/** The main thread's answers to a worker's own requests. */
export type ToPrimary =
  | { readonly type: 'peers-answer'; readonly id: number; readonly results: AppliedRevocation[] }
  | { readonly type: 'claim-answer'; readonly id: number; readonly fresh: boolean };
