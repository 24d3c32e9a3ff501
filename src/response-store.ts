import { randomBytes } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type { Redis } from 'ioredis';
import { z } from 'zod';
import { FIELD_NAME_TOKEN } from '../otel/wire-names';
import { atMostEvery, type Logger } from '../otel/logger';
import { PEER_CONFIRMATION_TIMEOUT_MS, type StaleResources } from './cache-invalidations';
import { asciiContentDisposition } from './content-disposition-ascii';
import type { GatewayConfig } from './config';
import { DEFAULT_ROUTE_MAX_BYTES, retentionMs, type CachedResponse } from './response-cache';

/**
 * Where the response cache keeps its entries: a byte-bounded LRU in this process, or Redis shared by every
 * replica. Neither ever fails a request: a store that cannot answer is a miss.
 */

/** A stored response's place: the resource it answers, and its variant of it. */
export interface CacheKey {
  /** The route and the upstream path and query: what a successful write invalidates, every variant at once. */
  resource: string;
  /** The route as configured (a digest), the origin forwarded to the service (Host, scheme, port, a trusted proxy's forwarding headers), the caller's scope key and the route's `varyHeaders` values. */
  variant: string;
}

/**
 * A stored copy's headers with its `Content-Disposition` in ASCII (asciiContentDisposition), as the proxy passes the
 * field on: a copy stored by a gateway from before (a replica not yet upgraded, or an entry from before the upgrade)
 * holds the service's raw bytes, which Node's http wrote as line breaks, and was served so on a hit.
 */
function withAsciiContentDisposition(headers: Record<string, string | string[]>): Record<string, string | string[]> {
  for (const name in headers) {
    if (name.length !== 19 || name.toLowerCase() !== 'content-disposition') continue;
    const value = headers[name]!;
    headers[name] = typeof value === 'string' ? asciiContentDisposition(value) : value.map(asciiContentDisposition);
  }
  return headers;
}

/** A header field value (no CR, LF or NUL) as a stored copy may carry it. */
const HEADER_VALUE = /^[\t\x20-\x7e\x80-\xff]*$/;
const headerValue = z.string().regex(HEADER_VALUE);
const seconds = z.number().finite().min(0);

/**
 * What a Redis entry must hold besides its body to be served. The store is shared: another version of the
 * gateway under the same prefix, or anyone who can write to Redis, may leave an entry of another shape, and one
 * that does not parse is a miss (as a failing store is), not a 500 for that resource until it expires.
 */
const storedMeta = z.object({
  status: z.int().min(200).max(599),
  headers: z.record(z.string().regex(FIELD_NAME_TOKEN), z.union([headerValue, z.array(headerValue)])).transform(withAsciiContentDisposition),
  storedAt: z.number().finite(),
  initialAgeSeconds: seconds,
  lifetimeSeconds: seconds,
  staleIfErrorSeconds: seconds,
  // Absent from the entries of a gateway from before it was read: no window.
  staleWhileRevalidateSeconds: seconds.default(0),
  vary: z.array(z.string().regex(FIELD_NAME_TOKEN)),
  varyValues: z.array(z.string().nullable()),
}).refine((meta) => meta.vary.length === meta.varyValues.length, 'vary and varyValues differ in length');

/**
 * Where a resource's invalidations stood when a miss went to the service (ResponseStore.fetchStarting). The
 * answer is stored only if none came since: a write may have changed the resource after the service read it.
 */
export interface FetchStart {
  /** The resource's invalidation generation: a count (memory), Redis's value (GENERATION_START), or undefined when it could not be read (nothing is stored). */
  readonly generation: number | string | undefined;
  /** performance.now() when it was read. */
  readonly startedMs: number;
}

/** Where entries live. No method throws: a failing store is a miss. */
export interface ResponseStore {
  readonly kind: 'memory' | 'redis';
  get(route: string, key: CacheKey): Promise<CachedResponse | undefined>;
  /**
   * Called before a miss is sent to the service; resolves once the store knows where the resource's invalidations
   * stand (Redis: one round trip; hits never call it).
   */
  fetchStarting(route: string, resource: string): Promise<FetchStart>;
  /**
   * Stores the answer of the fetch that `since` started, unless the resource was invalidated since (here, by a
   * peer worker, or through Redis by any replica): its answer may be from before the write (RFC 9111 4.4), and
   * an invalidation must win over every fetch that started before it.
   */
  set(route: string, key: CacheKey, entry: CachedResponse, since: FetchStart): Promise<void>;
  /**
   * Called once the fetch that `since` started is over (its answer stored, or known never to be): what the store
   * kept for it alone is let go (Redis: the generation its last fetch under way read), so a miss leaves nothing.
   */
  fetchEnded(route: string, resource: string, since: FetchStart): Promise<void>;
  /**
   * Drops every variant of a resource (RFC 9111 4.4: after an unsafe request to it succeeded), and keeps fetches of
   * it already under way from storing. Resolves once that holds wherever another request may read it, with
   * undefined; or with why a copy may be left (a failing store, peers that did not confirm in time).
   */
  invalidate(route: string, resource: string): Promise<string | undefined>;
}

/** A store in this process's memory, which can also be emptied at once. */
export interface MemoryResponseStore extends ResponseStore {
  /** Drops every entry of every route. */
  clear(): void;
}

/**
 * `entry` with a body in memory of its own. A small Buffer (Buffer.concat's, Buffer.from's) is a view of a slab of
 * Node's shared pool: kept, it held the whole slab (8 KiB or more) alive while its few hundred bytes were counted
 * against maxBytes, so the store's real footprint could be many times its bound.
 */
function withOwnBody(entry: CachedResponse): CachedResponse {
  const { body } = entry;
  if (body.byteOffset === 0 && body.buffer.byteLength === body.length) return entry;
  const own = Buffer.allocUnsafeSlow(body.length);
  body.copy(own);
  return { ...entry, body: own };
}

/**
 * What an entry costs in memory beyond its body and header texts: its objects, its key, the Map and Set nodes that
 * hold it and its body's own ArrayBuffer. Counted as 512, the store held 1.6-1.7x what it counted: 100,000 empty
 * answers, 55 MB counted, took 92 MB of heap and external memory (an outside review, measured after a forced GC).
 */
const ENTRY_OVERHEAD_BYTES = 1024;

/**
 * Bytes an entry is counted as: body, headers, the request's values of the headers its `Vary` names (a
 * client's header may be ~16 KiB however small the body) and bookkeeping.
 */
function sizeOf(entry: CachedResponse): number {
  let size = entry.body.length + ENTRY_OVERHEAD_BYTES;
  for (const name in entry.headers) size += name.length + String(entry.headers[name]).length + 4;
  entry.vary.forEach((name, index) => (size += name.length + (entry.varyValues[index]?.length ?? 0) + 4));
  return size;
}

/**
 * Resources whose last invalidation a memory store remembers (for the fetches under way). One more and it forgets
 * them all and refuses the answers of every fetch that started before, which is never wrong, only costly.
 */
export const MAX_REMEMBERED_INVALIDATIONS = 4096;

export interface MemoryStoreOptions {
  /** All routes together, bytes. */
  maxBytes: number;
  /** Per route name, bytes. */
  routeMaxBytes: ReadonlyMap<string, number>;
  now?: () => number;
}

interface RouteEntries {
  /** By resource and variant, least recently used first. */
  entries: Map<string, { entry: CachedResponse; size: number; resource: string }>;
  /** The entry keys of each resource, for invalidation. */
  byResource: Map<string, Set<string>>;
  bytes: number;
  maxBytes: number;
}

/**
 * Entries of this process, least recently used first out: each route within its own byte budget, and all of
 * them within `maxBytes`, where the route holding the most bytes gives up its oldest entry first.
 */
export function createMemoryResponseStore(options: MemoryStoreOptions): MemoryResponseStore {
  const now = options.now ?? Date.now;
  const routes = new Map<string, RouteEntries>();
  let totalBytes = 0;
  const routeOf = (name: string) => {
    let route = routes.get(name);
    if (!route) routes.set(name, (route = { entries: new Map(), byResource: new Map(), bytes: 0, maxBytes: options.routeMaxBytes.get(name) ?? DEFAULT_ROUTE_MAX_BYTES }));
    return route;
  };
  const evict = (route: RouteEntries, id: string) => {
    const held = route.entries.get(id);
    if (!held) return;
    route.entries.delete(id);
    const siblings = route.byResource.get(held.resource);
    siblings?.delete(id);
    if (siblings?.size === 0) route.byResource.delete(held.resource);
    route.bytes -= held.size;
    totalBytes -= held.size;
  };
  const evictOldest = (route: RouteEntries) => {
    const oldest = route.entries.keys().next();
    if (!oldest.done) evict(route, oldest.value);
  };
  const idOf = (key: CacheKey) => `${key.resource} ${key.variant}`;
  // Invalidations counted: a fetch takes the count as it starts, and its answer is not stored if the resource's
  // last invalidation, or the moment the store forgot them, came after.
  let invalidations = 0;
  let forgottenAt = 0;
  const lastInvalidated = new Map<string, number>();
  const forgetInvalidations = () => {
    lastInvalidated.clear();
    forgottenAt = invalidations;
  };

  return {
    kind: 'memory',
    async get(routeName, key) {
      const route = routes.get(routeName);
      const id = idOf(key);
      const held = route?.entries.get(id);
      if (!route || !held) return undefined;
      if (retentionMs(held.entry, now()) <= 0) {
        evict(route, id);
        return undefined;
      }
      // Most recently used last.
      route.entries.delete(id);
      route.entries.set(id, held);
      return held.entry;
    },
    async fetchStarting() {
      return { generation: invalidations, startedMs: performance.now() };
    },
    async fetchEnded() {
      // A count for the whole process: nothing kept per fetch.
    },
    async set(routeName, key, entry, since) {
      const started = since.generation;
      if (typeof started !== 'number' || started < forgottenAt || (lastInvalidated.get(`${routeName} ${key.resource}`) ?? 0) > started) return;
      const route = routeOf(routeName);
      const id = idOf(key);
      const size = sizeOf(entry);
      // The newer answer supersedes the copy in any case; one already past its retention (an `Age` beyond its
      // lifetime and grace) would only push out live copies to be dropped at its first read, as Redis refuses it.
      evict(route, id);
      if (size > route.maxBytes || size > options.maxBytes || retentionMs(entry, now()) <= 0) return;
      while (route.bytes + size > route.maxBytes) evictOldest(route);
      while (totalBytes + size > options.maxBytes) {
        let largest = route;
        for (const other of routes.values()) if (other.bytes > largest.bytes) largest = other;
        evictOldest(largest);
      }
      route.entries.set(id, { entry: withOwnBody(entry), size, resource: key.resource });
      let siblings = route.byResource.get(key.resource);
      if (!siblings) route.byResource.set(key.resource, (siblings = new Set()));
      siblings.add(id);
      route.bytes += size;
      totalBytes += size;
    },
    async invalidate(routeName, resource) {
      invalidations++;
      if (lastInvalidated.size < MAX_REMEMBERED_INVALIDATIONS) lastInvalidated.set(`${routeName} ${resource}`, invalidations);
      else forgetInvalidations();
      const route = routes.get(routeName);
      for (const id of route?.byResource.get(resource) ?? []) evict(route!, id);
      return undefined;
    },
    clear() {
      invalidations++;
      forgetInvalidations();
      routes.clear();
      totalBytes = 0;
    },
  };
}

export interface RedisStoreOptions {
  client: Redis;
  keyPrefix: string;
  logger: Logger;
  now?: () => number;
}

/** How often a failing shared store is logged while it fails, ms. */
const FAILURE_LOG_INTERVAL_MS = 10_000;

/**
 * The part of Redis's `maxmemory` the cache keeps within. The rate-limit windows live in the same Redis, and every
 * key of both has a TTL, so no eviction policy tells them apart: a cache filling Redis to its cap made it evict
 * the least recently used keys, which were the windows of clients idle for a while (their counts started over).
 * Within this share, the cache never makes Redis evict: it evicts its own entries (STORE_VARIANT).
 */
const CACHE_SHARE_OF_MAXMEMORY = 0.75;

/**
 * Most resources one store evicts to fit its share: each eviction reads INFO again, and a store must stay quick
 * however small the entries ahead of it are (they are bounded by `cache.maxEntryBytes`, the value by it too).
 */
const MAX_EVICTIONS_PER_STORE = 32;

/** What a resource's sorted set of variant ends is named, after the resource's own key. */
const ENDS_SUFFIX = ':ends';
/** What a resource's invalidation generation is named, after the resource's own key. */
const GENERATION_SUFFIX = ':generation';

/**
 * How long Redis keeps a resource's invalidation generation after the last fetch that read it began, ms, when no
 * fetch says it ended (GENERATION_END: a gateway stopped mid-fetch). Its TTL lets Redis evict it, as every key the
 * gateway writes (README: the rate-limit windows and the cache share one `volatile-lru` Redis); evicted or expired,
 * a generation makes the fetches that read it store nothing (GENERATION_START), never one that predates a write.
 */
const GENERATION_RETENTION_MS = 10 * 60_000;

/**
 * The resource's invalidation generation (KEYS[1], a hash: `g` its value, `n` the fetches under way that read it)
 * as a miss goes to the service: its value, or ARGV[1] (a value never used before) when it has none, with one
 * more fetch counted, kept ARGV[2] ms from now. STORE_VARIANT stores the fetch's answer only while the generation
 * is still this value: a write deletes it (INVALIDATE), and so do eviction and expiry, so a write's invalidation
 * cannot be forgotten while a fetch is under way (a count that restarted from nothing after its key was evicted,
 * or that a write created after the fetch read none, matched what the fetch read, and an answer from before the
 * write was stored). GENERATION_END deletes it once its last fetch is over: it exists only while a fetch needs it.
 */
const GENERATION_START = `
local generation = redis.call('HGET', KEYS[1], 'g')
if not generation then
  generation = ARGV[1]
  redis.call('HSET', KEYS[1], 'g', generation)
end
redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return generation`;

/**
 * A fetch that read generation ARGV[1] of a resource (KEYS[1]) is over: one fetch fewer under way, and the
 * generation deleted with the last. Kept for the whole retention, every miss of every URL (a query string, a 404,
 * a `no-store` answer) left a key in the Redis the rate-limit windows share, outside the share of it the cache keeps
 * within (STORE_VARIANT): at a thousand misses a second, ~90 MB, past the shipped Redis's whole `maxmemory`.
 * A generation a write ended, or that Redis evicted, is not touched (its fetches store nothing anyway).
 */
const GENERATION_END = `
if redis.call('HGET', KEYS[1], 'g') == ARGV[1] and redis.call('HINCRBY', KEYS[1], 'n', -1) <= 0 then
  redis.call('DEL', KEYS[1])
end
return 1`;

/**
 * Drops every variant of a resource (KEYS[1], KEYS[2]) and ends its invalidation generation (KEYS[3]), in one step:
 * a fetch that read the generation before this stores nothing after it (STORE_VARIANT).
 */
const INVALIDATE = `
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1`;

/**
 * Stores a variant (ARGV[1], value ARGV[2], retention ARGV[3] ms from ARGV[4], now in ms) in its resource's hash
 * (KEYS[1]) and its end in a sorted set beside it (KEYS[2]); both live as long as their longest variant. Returns 2,
 * storing nothing, when the resource's invalidation generation (KEYS[4]) is no longer the one its fetch read as it
 * started (ARGV[8], GENERATION_START): a write through any replica ended it since (INVALIDATE), or Redis evicted it
 * or let it expire, which may have taken a write's invalidation with it. Every
 * store first drops variants past their retention (64 at most): the hash's TTL is extended by each new
 * variant, so on a resource stored for many callers or header values it may never expire, and dead variants
 * would otherwise pile up in it without bound (a per-field TTL needs Redis 7.4).
 *
 * The cache's resources are indexed by when they end (KEYS[3], the resource's key scored by its hash's expiry in
 * seconds, ties in store order;
 * cleaned of ended ones, 64 at most per store, and living as long as its longest member). When Redis has a
 * `maxmemory` and the value would take it past ARGV[5] of it (CACHE_SHARE_OF_MAXMEMORY), the script first
 * evicts the cache's own resources that end soonest, every variant of each (as Redis's volatile-ttl would, but
 * never a rate-limit window), at most ARGV[7] of them, until the value fits; a client filling the share with
 * junk thus pushes out the oldest junk, not every answer stored after it. Returns 0, storing nothing, only when
 * it still does not fit (the windows take the rest). A member whose resource was invalidated (a DEL) stays until
 * it ends or is evicted, which deletes nothing. A Redis that does not let a script read INFO stores as if it had
 * no `maxmemory`. The evicted resources' keys are not among KEYS: like KEYS[1] and KEYS[2], which share no hash
 * tag, this is for a single Redis, not a Redis Cluster.
 */
const STORE_VARIANT = `
if (redis.call('HGET', KEYS[4], 'g') or '') ~= ARGV[8] then return 2 end
local ended = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', tonumber(ARGV[4]) / 1000, 'LIMIT', 0, 64)
if #ended > 0 then redis.call('ZREM', KEYS[3], unpack(ended)) end
local memory = redis.pcall('INFO', 'memory')
if type(memory) == 'string' then
  local maxmemory = tonumber(string.match(memory, 'maxmemory:(%d+)')) or 0
  local share = maxmemory * tonumber(ARGV[5])
  local used = tonumber(string.match(memory, 'used_memory:(%d+)')) or 0
  local evicted = 0
  while maxmemory > 0 and used + #ARGV[2] > share do
    local soonest = redis.call('ZRANGE', KEYS[3], 0, 0)[1]
    if not soonest or evicted == tonumber(ARGV[7]) then return 0 end
    redis.call('ZREM', KEYS[3], soonest)
    redis.call('DEL', soonest, soonest .. ARGV[6])
    evicted = evicted + 1
    used = tonumber(string.match(redis.call('INFO', 'memory'), 'used_memory:(%d+)')) or 0
  end
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[4], 'LIMIT', 0, 64)
if #expired > 0 then
  redis.call('HDEL', KEYS[1], unpack(expired))
  redis.call('ZREM', KEYS[2], unpack(expired))
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local ends = tonumber(ARGV[4]) + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], ends, ARGV[1])
-- The index counts in seconds: answers that came within one second of their Date end together (their age counts
-- from it), give or take the milliseconds their bodies took to arrive, which ordered them at random; within the
-- second, the one stored first goes first (the store time's place in a 1,000 s cycle, in the fraction).
local order = math.floor(ends / 1000 + 0.5) + (tonumber(ARGV[4]) % 1000000) / 1000000
local indexed = tonumber(redis.call('ZSCORE', KEYS[3], KEYS[1]))
if not indexed or indexed < order then redis.call('ZADD', KEYS[3], order, KEYS[1]) end
for index = 1, 3 do
  if redis.call('PTTL', KEYS[index]) < tonumber(ARGV[3]) then redis.call('PEXPIRE', KEYS[index], ARGV[3]) end
end
return 1`;

/**
 * Entries shared by every replica, in Redis: one hash per resource (so an unsafe request drops all its
 * variants at once), a field per variant, when each variant ends (see STORE_VARIANT), and its invalidation
 * generation since its last write (GENERATION_START, INVALIDATE). The cache takes
 * at most CACHE_SHARE_OF_MAXMEMORY of Redis's `maxmemory`, evicting its own resources that end soonest to stay
 * within it; entry size is still bounded by `cache.maxEntryBytes`. The client fails fast (src/rate-limit-store.ts), and
 * any failure is a miss: the request goes to the service. A value is 4 bytes of metadata length, the
 * metadata as JSON, then the body as it is.
 */
export function createRedisResponseStore(options: RedisStoreOptions): ResponseStore {
  const { client, keyPrefix, logger } = options;
  const now = options.now ?? Date.now;
  const mayReport = atMostEvery(FAILURE_LOG_INTERVAL_MS);
  const failed = (operation: string, error: unknown) => {
    if (!mayReport()) return;
    logger.warn('response cache store failed; answering from the service', { store: 'redis', operation, error: error instanceof Error ? error.message : String(error) });
  };
  const redisKey = (route: string, resource: string) => `${keyPrefix}:${route}:${resource}`;
  // A resource is a fixed-length base64url hash (no `:`), so no resource's key can end in `:ends`.
  const endsKey = (route: string, resource: string) => `${redisKey(route, resource)}${ENDS_SUFFIX}`;
  // Apart from the resource's hash, which the cache's own eviction deletes: the fetches under way may still store.
  const generationKey = (route: string, resource: string) => `${redisKey(route, resource)}${GENERATION_SUFFIX}`;
  // One segment after the prefix where every resource's key has two (a route name has no `:`).
  const indexKey = `${keyPrefix}:resources`;

  return {
    kind: 'redis',
    async get(route, key) {
      try {
        const value = await client.hgetBuffer(redisKey(route, key.resource), key.variant);
        if (!value || value.length < 4) return undefined;
        const metaLength = value.readUInt32BE(0);
        const meta = storedMeta.parse(JSON.parse(value.subarray(4, 4 + metaLength).toString('utf8')));
        const entry: CachedResponse = { ...meta, body: value.subarray(4 + metaLength) };
        return retentionMs(entry, now()) > 0 ? entry : undefined;
      } catch (error) {
        failed('get', error);
        return undefined;
      }
    },
    async fetchStarting(route, resource) {
      const startedMs = performance.now();
      try {
        const generation = await client.eval(GENERATION_START, 1, generationKey(route, resource), randomBytes(16).toString('base64url'), GENERATION_RETENTION_MS);
        return { generation: typeof generation === 'string' ? generation : undefined, startedMs };
      } catch (error) {
        failed('get', error);
        return { generation: undefined, startedMs };
      }
    },
    async set(route, key, entry, since) {
      if (typeof since.generation !== 'string') return;
      const storedAt = now();
      const ttl = Math.ceil(retentionMs(entry, storedAt));
      if (ttl <= 0) return;
      // The monotonic time of storing is this process's alone: other replicas read the copy's wall-clock storedAt.
      const { body, storedAtMonotonicMs: _thisProcessOnly, ...meta } = entry;
      const metaBytes = Buffer.from(JSON.stringify(meta), 'utf8');
      const length = Buffer.alloc(4);
      length.writeUInt32BE(metaBytes.length, 0);
      try {
        const stored = await client.eval(STORE_VARIANT, 4, redisKey(route, key.resource), endsKey(route, key.resource), indexKey, generationKey(route, key.resource), key.variant, Buffer.concat([length, metaBytes, body]), ttl, storedAt, CACHE_SHARE_OF_MAXMEMORY, ENDS_SUFFIX, MAX_EVICTIONS_PER_STORE, since.generation);
        if (stored === 0) failed('set', new Error(`the answer would take Redis past ${CACHE_SHARE_OF_MAXMEMORY * 100}% of its maxmemory even after evicting up to ${MAX_EVICTIONS_PER_STORE} of the cache's own entries: it is not stored, the rate-limit windows keep the rest`));
      } catch (error) {
        failed('set', error);
      }
    },
    async fetchEnded(route, resource, since) {
      if (typeof since.generation !== 'string') return;
      try {
        await client.eval(GENERATION_END, 1, generationKey(route, resource), since.generation);
      } catch (error) {
        // Left to its TTL.
        failed('set', error);
      }
    },
    async invalidate(route, resource) {
      try {
        await client.eval(INVALIDATE, 3, redisKey(route, resource), endsKey(route, resource), generationKey(route, resource));
        return undefined;
      } catch (error) {
        // Not logged here: the cache logs and counts a write answered with its copies possibly left.
        return `the shared store (redis) failed: ${error instanceof Error ? error.message : String(error)}`;
      }
    },
  };
}

/**
 * The other processes of this gateway that keep memory stores of their own: the cluster's other workers
 * (src/worker-link.ts). An unsafe request that succeeded makes what every one of them stored for the resource
 * out of date (RFC 9111 4.4), not only the copy of the worker that forwarded it.
 */
export interface PeerInvalidations {
  /**
   * Tells the other processes to drop what they stored for `resource` of `route`; resolves true once they all
   * did, false when they did not confirm in time (src/cache-invalidations.ts).
   */
  publish(route: string, resource: string): Promise<boolean>;
  /**
   * `drop` runs for each invalidation another process published, and has dropped what it names when it returns
   * (it is then confirmed). It replaces the previous one: only the store of the running build (a reload builds a
   * new one) answers requests. Undefined lets the previous store go (a config without cached routes).
   */
  subscribe(drop: ((resources: StaleResources) => void) | undefined): void;
}

/** `store`, whose invalidations also reach the peers' stores, and which drops what the peers' invalidations name. */
export function sharingInvalidations(store: MemoryResponseStore, peers: PeerInvalidations): ResponseStore {
  // Into `store` itself: published again, a peer's invalidation would go round the workers for ever. The memory
  // store's invalidate does its work before its first await: dropped when `drop` returns.
  peers.subscribe((resources) => (resources === 'all' ? store.clear() : resources.forEach(({ route, resource }) => void store.invalidate(route, resource))));
  return {
    kind: store.kind,
    get: (route, key) => store.get(route, key),
    fetchStarting: (route, resource) => store.fetchStarting(route, resource),
    set: (route, key, entry, since) => store.set(route, key, entry, since),
    fetchEnded: (route, resource, since) => store.fetchEnded(route, resource, since),
    async invalidate(route, resource) {
      await store.invalidate(route, resource);
      const confirmed = await peers.publish(route, resource);
      return confirmed ? undefined : `the other workers did not confirm within ${PEER_CONFIRMATION_TIMEOUT_MS} ms`;
    },
  };
}

/**
 * The memory store of this process's newest build (src/config-reload.ts keeps it across reloads). A reload swaps in
 * a build with an empty store of its own while requests of the old one finish: a write still under way there
 * dropped the old build's copies only, and the new build had meanwhile stored the service's answer from before the
 * write (RFC 9111 4.4), served as a hit until it expired.
 */
export class NewestMemoryStore {
  current: MemoryResponseStore | undefined;
}

/** `store`, made the newest, whose invalidations also reach whichever store is newest when they happen. */
function tellingNewerBuilds(store: MemoryResponseStore, newest: NewestMemoryStore): MemoryResponseStore {
  newest.current = store;
  return {
    ...store,
    async invalidate(route, resource) {
      const failure = await store.invalidate(route, resource);
      const { current } = newest;
      if (current !== undefined && current !== store) await current.invalidate(route, resource);
      return failure;
    },
  };
}

/**
 * The store for a config: Redis when the gateway has a client for it (`REDIS_URL`), so every replica answers
 * from the same entries; this process's memory otherwise, told of the `peers`' invalidations (cluster workers)
 * and of the writes of this process's earlier builds (`newest`).
 */
export function createResponseStore(config: GatewayConfig, redis: Redis | undefined, logger: Logger, peers?: PeerInvalidations, newest?: NewestMemoryStore): ResponseStore {
  if (redis) return createRedisResponseStore({ client: redis, keyPrefix: config.cache.redisKeyPrefix, logger });
  const routeMaxBytes = new Map(config.routes.flatMap((route) => (route.cache ? [[route.name, route.cache.maxBytes ?? Math.min(DEFAULT_ROUTE_MAX_BYTES, config.cache.maxBytes)] as const] : [])));
  const created = createMemoryResponseStore({ maxBytes: config.cache.maxBytes, routeMaxBytes });
  const memory = newest ? tellingNewerBuilds(created, newest) : created;
  return peers ? sharingInvalidations(memory, peers) : memory;
}
