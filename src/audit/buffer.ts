/** Why an audit event was not delivered (the `reason` of `oidc_callout_audit_dropped_total`). */
export type AuditDropReason = 'buffer_full' | 'permission_denied' | 'publish_failed';

/**
 * The events waiting to be published, bounded in count and in bytes: when NATS is slow or gone
 * the service keeps deciding, and what does not fit is refused here (and counted) rather than
 * held in memory without end. First in, first out.
 */
export class AuditBuffer<T> {
  readonly #maxEvents: number;
  readonly #maxBytes: number;
  #items: { item: T; bytes: number }[] = [];
  #head = 0;
  #bytes = 0;

  constructor(maxEvents: number, maxBytes: number) {
    if (!(maxEvents >= 1) || !(maxBytes >= 1)) throw new RangeError('an audit buffer holds at least one event and one byte');
    this.#maxEvents = maxEvents;
    this.#maxBytes = maxBytes;
  }

  get length(): number {
    return this.#items.length - this.#head;
  }

  get bytes(): number {
    return this.#bytes;
  }

  /** Adds an event of `bytes` bytes; false (nothing kept) when it would exceed either bound. */
  push(item: T, bytes: number): boolean {
    if (this.length >= this.#maxEvents || this.#bytes + bytes > this.#maxBytes) return false;
    this.#items.push({ item, bytes });
    this.#bytes += bytes;
    return true;
  }

  /** Removes and returns up to `max` of the oldest events. */
  take(max: number): T[] {
    const end = Math.min(this.#items.length, this.#head + max);
    const taken = this.#items.slice(this.#head, end);
    this.#head = end;
    for (const t of taken) this.#bytes -= t.bytes;
    // Compact once the consumed prefix dominates, so the array does not grow without end.
    if (this.#head > 1024 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    return taken.map((t) => t.item);
  }
}
