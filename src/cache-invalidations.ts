/**
 * Response-cache invalidations of a cluster without Redis, where each worker caches in its own memory: a write
 * that succeeded through one worker must drop what every worker stored for its resource (RFC 9111 4.4), and its
 * answer waits until they did, so a client that writes, then reads through another worker, never gets the copy
 * from before its write (read-your-writes).
 *
 * A worker's queue sends its invalidations to the primary in batches, one batch at a time; the primary's relay
 * passes each batch on to the other workers and confirms it to the sender once every one of them dropped what it
 * names. A write whose batch is in flight waits for the next one (the one in flight may have reached a worker
 * before the copy this write made stale was stored there). However many writes arrive, a worker has one message
 * in flight and one waiting, which names each resource once; the waiting one is bounded, and past its bound it
 * becomes "drop everything", which is never wrong, only costly.
 */

/** A resource of a route (src/response-cache.ts cacheKey) whose stored answers are out of date. */
export interface StaleResource {
  route: string;
  resource: string;
}

/** What a batch drops: the resources it names, or `all` (every copy of every route). */
export type StaleResources = readonly StaleResource[] | 'all';

/** A worker's batch for the other workers (worker -> primary), or the primary passing it on (primary -> worker). */
export interface CacheInvalidation {
  gateway: 'invalidate';
  id: number;
  resources: StaleResources;
}

/** The batch `id` was dropped: by the worker that got it (worker -> primary), or by every other worker (primary -> sender). */
export interface CacheInvalidated {
  gateway: 'invalidated';
  id: number;
}

/** Distinct resources a worker's waiting batch names at most; one more and it drops everything instead. */
export const MAX_QUEUED_INVALIDATIONS = 1024;

/** Longest a write's answer waits for the other workers' confirmation, ms; then it goes out anyway. */
export const PEER_CONFIRMATION_TIMEOUT_MS = 1000;

export interface InvalidationQueueOptions {
  /** Sends a batch to the primary; its `confirmed(id)` follows once every other worker dropped it. */
  send(batch: CacheInvalidation): void;
  /** Default PEER_CONFIRMATION_TIMEOUT_MS. */
  timeoutMs?: number;
  /** Default MAX_QUEUED_INVALIDATIONS. */
  maxQueued?: number;
}

export interface InvalidationQueue {
  /** Resolves true once the other workers dropped `resource` of `route`, false when they did not confirm in time. */
  publish(route: string, resource: string): Promise<boolean>;
  /** The primary confirmed batch `id`. */
  confirmed(id: number): void;
}

interface Batch {
  resources: Map<string, StaleResource> | 'all';
  /** The writes waiting for this batch to be confirmed. */
  waiters: ((confirmed: boolean) => void)[];
}

/** A worker's side: batches its invalidations to the primary, one in flight at a time. */
export function createInvalidationQueue(options: InvalidationQueueOptions): InvalidationQueue {
  const timeoutMs = options.timeoutMs ?? PEER_CONFIRMATION_TIMEOUT_MS;
  const maxQueued = options.maxQueued ?? MAX_QUEUED_INVALIDATIONS;
  let nextId = 1;
  let inFlight: { id: number; batch: Batch; timer: NodeJS.Timeout } | undefined;
  let waiting: Batch | undefined;

  const finish = (id: number, confirmed: boolean) => {
    if (inFlight?.id !== id) return;
    clearTimeout(inFlight.timer);
    const { batch } = inFlight;
    inFlight = undefined;
    for (const waiter of batch.waiters) waiter(confirmed);
    flush();
  };
  function flush() {
    if (inFlight || !waiting) return;
    const batch = waiting;
    waiting = undefined;
    const id = nextId++;
    // Unconfirmed, the next batch goes anyway: a stuck worker (the primary kills it) must not hold up the others' writes.
    inFlight = { id, batch, timer: setTimeout(() => finish(id, false), timeoutMs) };
    options.send({ gateway: 'invalidate', id, resources: batch.resources === 'all' ? 'all' : [...batch.resources.values()] });
  }

  return {
    publish(route, resource) {
      const batch: Batch = (waiting ??= { resources: new Map(), waiters: [] });
      const { resources } = batch;
      const key = `${route} ${resource}`;
      if (resources !== 'all' && !resources.has(key)) {
        if (resources.size < maxQueued) resources.set(key, { route, resource });
        else batch.resources = 'all';
      }
      const confirmation = new Promise<boolean>((resolve) => {
        // Each write waits at most timeoutMs, though its batch may only leave once the one in flight is done.
        const timer = setTimeout(() => resolve(false), timeoutMs);
        batch.waiters.push((confirmed) => {
          clearTimeout(timer);
          resolve(confirmed);
        });
      });
      flush();
      return confirmation;
    },
    confirmed: (id) => finish(id, true),
  };
}

export interface InvalidationRelayOptions {
  /** Messages a worker by cluster id. */
  send(worker: number, message: CacheInvalidation | CacheInvalidated): void;
}

export interface InvalidationRelay {
  /** Passes `batch` from `sender` on to `others`, and confirms it to `sender` once each of them did. */
  relay(sender: number, batch: CacheInvalidation, others: readonly number[]): void;
  /** `worker` dropped what the relayed batch `id` names. */
  confirmed(worker: number, id: number): void;
  /** `worker` exited: it waits for nothing and has nothing left to drop. */
  workerGone(worker: number): void;
}

/**
 * The primary's side. It keeps one relayed batch per sender: a sender sends its next batch only once the last
 * was confirmed or it stopped waiting for it, so a new one replaces the last (whose late confirmations are then
 * ignored), and what the relay holds is bounded by the number of workers whatever a worker sends.
 */
export function createInvalidationRelay(options: InvalidationRelayOptions): InvalidationRelay {
  let nextId = 1;
  const relayed = new Map<number, { sender: number; senderId: number; unconfirmed: Set<number> }>();
  const lastOf = new Map<number, number>();

  const confirmed = (worker: number, id: number) => {
    const batch = relayed.get(id);
    if (!batch?.unconfirmed.delete(worker) || batch.unconfirmed.size > 0) return;
    relayed.delete(id);
    lastOf.delete(batch.sender);
    options.send(batch.sender, { gateway: 'invalidated', id: batch.senderId });
  };

  return {
    relay(sender, batch, others) {
      const last = lastOf.get(sender);
      if (last !== undefined) relayed.delete(last);
      lastOf.delete(sender);
      if (others.length === 0) return options.send(sender, { gateway: 'invalidated', id: batch.id });
      const id = nextId++;
      relayed.set(id, { sender, senderId: batch.id, unconfirmed: new Set(others) });
      lastOf.set(sender, id);
      for (const worker of others) options.send(worker, { gateway: 'invalidate', id, resources: batch.resources });
    },
    confirmed,
    workerGone(worker) {
      const last = lastOf.get(worker);
      if (last !== undefined) relayed.delete(last);
      lastOf.delete(worker);
      for (const id of [...relayed.keys()]) confirmed(worker, id);
    },
  };
}
