import { createHash } from 'node:crypto';

/**
 * The `Idempotency-Key`s order-service has seen (draft-ietf-httpapi-idempotency-key-header): a client that sends its
 * POST again with the same key (after a timeout, a dropped connection, a gateway's 502) gets the order the first one
 * made, not a second order. Per owner, for a day, bounded: the newest MAX_IDEMPOTENCY_KEYS_PER_OWNER of each owner and
 * MAX_IDEMPOTENCY_KEYS in all, the oldest dropped.
 */

/** Most keys remembered in all; past it, the oldest go. */
export const MAX_IDEMPOTENCY_KEYS = 10_000;

/**
 * Most keys remembered per owner; past it, the owner's oldest go. Without it one busy owner's keys pushed every other
 * owner's out of the table, and their retries placed second orders. As many as orders kept per owner.
 */
export const MAX_IDEMPOTENCY_KEYS_PER_OWNER = 1000;

/** How long a key is remembered, ms (a day, as Stripe keeps them). */
export const IDEMPOTENCY_KEY_TTL_MS = 24 * 60 * 60 * 1000;

/** A key as a client may send it: 1-255 visible ASCII characters (a UUID, a quoted string as the draft writes it). */
export const IDEMPOTENCY_KEY = /^[\x21-\x7e]{1,255}$/;

/** What a request with a key is to do. */
export type IdempotentStart =
  /** The first with this key: make the order, then `settle` with its id (or `abandon` if it failed, so a retry may go on). */
  | { kind: 'first'; settle(orderId: string): void; abandon(): void }
  /** The key made this order already: answer with it. */
  | { kind: 'replay'; orderId: string }
  /** A request with this key is still being made. */
  | { kind: 'in_flight' }
  /** The key was used with another body. */
  | { kind: 'other_body' };

interface Remembered {
  scope: string;
  fingerprint: string;
  /** Unset while the first request is under way. */
  orderId?: string;
  expiresAt: number;
}

export interface IdempotencyKeys {
  /** `scope`: the owner the key belongs to (keys of two owners never meet); `body`: what the request asks for. */
  start(scope: string, key: string, body: unknown): IdempotentStart;
}

export function createIdempotencyKeys(options: { maxKeys?: number; maxKeysPerOwner?: number; ttlMs?: number; now?: () => number } = {}): IdempotencyKeys {
  const maxKeys = options.maxKeys ?? MAX_IDEMPOTENCY_KEYS;
  const maxPerOwner = options.maxKeysPerOwner ?? MAX_IDEMPOTENCY_KEYS_PER_OWNER;
  const ttlMs = options.ttlMs ?? IDEMPOTENCY_KEY_TTL_MS;
  const now = options.now ?? (() => performance.now());
  // In arrival order: the first entry is the oldest.
  const remembered = new Map<string, Remembered>();
  // Each owner's ids in `remembered`, oldest first.
  const byOwner = new Map<string, Set<string>>();
  const forget = (id: string) => {
    const entry = remembered.get(id);
    if (entry === undefined) return;
    remembered.delete(id);
    const mine = byOwner.get(entry.scope)!;
    mine.delete(id);
    if (mine.size === 0) byOwner.delete(entry.scope);
  };

  return {
    start(scope, key, body) {
      const time = now();
      // The owner and the key apart: neither holds a line feed (an owner key is `user:`/`consumer:` and a header value).
      const id = `${scope}\n${key}`;
      const fingerprint = createHash('sha256').update(JSON.stringify(body)).digest('base64url');
      const seen = remembered.get(id);
      if (seen !== undefined && seen.expiresAt > time) {
        if (seen.fingerprint !== fingerprint) return { kind: 'other_body' };
        return seen.orderId === undefined ? { kind: 'in_flight' } : { kind: 'replay', orderId: seen.orderId };
      }
      forget(id);
      const entry: Remembered = { scope, fingerprint, expiresAt: time + ttlMs };
      remembered.set(id, entry);
      const mine = byOwner.get(scope) ?? new Set<string>();
      byOwner.set(scope, mine.add(id));
      // The oldest first, expired or not: the owner's own past its bound, then anyone's past the table's.
      if (mine.size > maxPerOwner) forget(mine.values().next().value!);
      while (remembered.size > maxKeys) forget(remembered.keys().next().value!);
      return {
        kind: 'first',
        settle: (orderId) => void (entry.orderId = orderId),
        abandon: () => void (remembered.get(id) === entry && forget(id)),
      };
    },
  };
}
