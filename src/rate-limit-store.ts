import { Redis } from 'ioredis';
import type { Logger } from '../otel/logger';
import { BoundedWindowStore } from './middleware/rate-limit';
import { leaseClockMs } from './rate-limit-leases';
import { remembered } from './remembered';

export interface RedisStoreOptions {
  url: string;
  /** Longest a limit check may wait for Redis, ms; then the store counts as down. */
  commandTimeoutMs: number;
  logger: Logger;
  /** How often the connection is checked for a Redis that stopped answering, ms. Default 500. */
  heartbeatMs?: number;
}

/** Heartbeats in a row that must go unanswered before the connection is dropped as hung. */
const HUNG_AFTER_MISSED_HEARTBEATS = 2;

/**
 * The shared rate-limit store: an ioredis client tuned to fail fast. With ioredis defaults a Redis outage
 * made every request wait ~73 s (offline queue, 20 retries; ../shared/NOTES.md); here a command fails within
 * `commandTimeoutMs`, and the limiter's store-down policy decides. Reconnection continues in the background.
 */
export function createRedisStore(options: RedisStoreOptions): Redis {
  const redis = new Redis(options.url, {
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: options.commandTimeoutMs,
    connectTimeout: Math.max(1000, options.commandTimeoutMs),
    // Back off to at most 2 s between reconnection attempts; never give up.
    retryStrategy: (attempt) => Math.min(attempt * 200, 2000),
    lazyConnect: false,
  });
  let lastReport = 0;
  // Without a listener an 'error' event would crash the process; one line per 10 s is enough to see it.
  redis.on('error', (error: Error) => {
    if (Date.now() - lastReport < 10_000) return;
    lastReport = Date.now();
    options.logger.warn('rate-limit store unavailable', { store: 'redis', error: error.message });
  });
  redis.on('ready', () => {
    if (lastReport !== 0) options.logger.info('rate-limit store reconnected', { store: 'redis' });
    lastReport = 0;
  });
  watchForHang(redis, options);
  return redis;
}

/**
 * A Redis that stops answering (hung, overloaded, its host paused) keeps its connection up, so every command waits
 * its whole `commandTimeoutMs`: every request was 200 ms slower, a cached one up to five times that, for as long
 * as it lasted. A PING every `heartbeatMs` finds it; after HUNG_AFTER_MISSED_HEARTBEATS unanswered, the connection
 * is dropped and reconnected, and until Redis answers the reconnection's ready check, commands fail at once (no
 * offline queue) and each request is decided by the store-down policy without waiting.
 */
function watchForHang(redis: Redis, options: RedisStoreOptions): void {
  let missed = 0;
  const heartbeat = setInterval(() => {
    if (redis.status !== 'ready') return void (missed = 0);
    redis.ping().then(
      () => (missed = 0),
      (error: Error) => {
        if (error.message !== 'Command timed out' || ++missed < HUNG_AFTER_MISSED_HEARTBEATS) return;
        missed = 0;
        options.logger.warn('rate-limit store not answering; reconnecting (requests use the store-down policy meanwhile)', { store: 'redis' });
        // Destroyed, not ended: `disconnect(true)` ends the stream gracefully, which waits for a FIN the hung
        // server never sends, and the client stays 'ready' with every command still waiting.
        redis.stream.destroy();
      },
    );
  }, options.heartbeatMs ?? 500);
  heartbeat.unref();
  redis.once('end', () => clearInterval(heartbeat));
}

/**
 * Resolves once the client is connected, or after `timeoutMs` (the limiter's store-down policy then applies
 * until it connects). Commands are not queued while connecting, so a gateway that started serving before
 * this would treat its first requests as a store outage.
 */
export async function waitForRedis(redis: Redis, timeoutMs: number): Promise<boolean> {
  if (redis.status === 'ready') return true;
  return new Promise<boolean>((resolve) => {
    const timer = setTimeout(() => {
      redis.off('ready', onReady);
      resolve(false);
    }, timeoutMs);
    const onReady = () => {
      clearTimeout(timer);
      resolve(true);
    };
    redis.once('ready', onReady);
  });
}

/**
 * One client's window as a store reports it: `remaining` before this request, `reset` in seconds on the store's
 * clock (the Redis driver: redisDriverSeconds; the memory driver: memoryDriverSeconds; the primary: leaseClockMs).
 * createWindowCounter reports it in epoch seconds.
 */
export interface WindowState {
  remaining: number;
  reset: number;
  total: number;
}

/**
 * Counts a window in the cluster primary for every worker (store kind `primary`), so a limit of 10 per minute
 * means 10 across all workers, not 10 per worker, without Redis: a worker spends tokens the primary leased to
 * it and asks again when they are used up (src/rate-limit-leases.ts). `remaining` is conservative with several
 * workers: it never counts the unspent leases of other workers. `reset` is on the leases' clock (leaseClockMs, in
 * seconds), not the epoch.
 */
export interface PrimaryStoreClient {
  take(policy: string, client: string, max: number, windowMs: number): Promise<WindowState>;
  /** The window when this worker knows it has nothing left (the primary denied or announced it), else undefined; asks no one. */
  exhausted(policy: string, client: string, max: number): WindowState | undefined;
  /** This worker's live lease of `client`'s window (`remaining`: its unspent tokens), else undefined; asks no one. */
  held(policy: string, client: string, max: number): WindowState | undefined;
}

/** One request's count: whether it is admitted, what the window has left after it, and when it admits again. */
export interface WindowCount {
  admitted: boolean;
  remaining: number;
  total: number;
  /** Epoch seconds, never before the window admits again (a store that rounds it is rounded up). */
  reset: number;
}

/** A policy's windows in one store (RateLimitStore in middleware/rate-limit.ts). */
export interface WindowCounter {
  /** Counts one request of `client`. */
  take(client: string): Promise<WindowCount>;
  /**
   * What `client`'s window still admits, counting nothing (the primary's: at most this worker's own unspent tokens,
   * at least one until it knows the window is spent); undefined when the store cannot answer.
   */
  peek(client: string): Promise<WindowLeft | undefined>;
}

/** What a window still admits (WindowCounter.peek). */
export interface WindowLeft {
  /** Requests it admits before it refuses. */
  left: number;
  total: number;
  /** Epoch seconds, never before the window admits again once `left` is spent. */
  reset: number;
}

/** A window as koa-ratelimit's drivers and the primary report it (`remaining` before this request) as a count; `reset` in epoch seconds. */
function counted(window: WindowState, reset: number): WindowCount {
  const admitted = window.remaining > 0;
  return { admitted, remaining: admitted ? window.remaining - 1 : 0, total: window.total, reset };
}

/** `reset`, in seconds on the clock `nowSeconds` reads, as epoch seconds: the time left, from Date.now(). */
function epochSeconds(reset: number, nowSeconds: number): number {
  return reset - nowSeconds + Date.now() / 1000;
}

interface DriverOptions {
  id: string;
  max: number;
  duration: number;
  namespace: string;
}
// koa-ratelimit's two drivers, without its middleware: that one writes X-RateLimit-* itself, so the limit checked
// last described a request limited by two (src/middleware/rate-limit.ts writes them for all at once).
type Driver = { get(options?: { peek?: boolean }): Promise<WindowState> };
const MemoryDriver = require('koa-ratelimit/limiter/memory') as new (options: DriverOptions & { db: Map<string, unknown> }) => Driver;
const RedisDriver = require('koa-ratelimit/limiter/redis') as new (options: DriverOptions & { db: Redis }) => Driver;

/**
 * The memory driver's clock in ms, less performance.now(): it reads Date.now() once as it loads and advances by
 * process.hrtime() (monotonic), and its windows' `reset` is on that clock. Compared with Date.now(), the two part
 * whenever the wall clock is stepped (NTP, a resumed VM): a step back kept a spent window refused for the step's
 * length (an hour's step, a network locked out for an hour), a step forward let the failed-authentication check
 * pass every guess and a full table's sweep drop every live window. Read from the driver itself: a window it opens
 * with a duration of 0 ends at its now.
 */
const memoryDriverOffsetMs = (() => {
  let opened = 0;
  const db = new (class extends Map<string, unknown> {
    override set(key: string, window: MemoryEntry): this {
      opened = window.reset;
      return this;
    }
  })();
  // get() sets the window before its first await: `opened` is read by the time it returns.
  void new MemoryDriver({ db, id: 'clock', max: 1, duration: 0, namespace: 'clock' }).get();
  return opened * 1000 - performance.now();
})();

/** Now on the memory driver's clock, in seconds: what its windows' `reset` is compared with. */
export function memoryDriverSeconds(): number {
  return (memoryDriverOffsetMs + performance.now()) / 1000;
}

/**
 * The Redis driver's clock (async-ratelimiter's, which koa-ratelimit's Redis driver is), in ms: like the memory
 * driver's, Date.now() read once as it loads, advanced by process.hrtime(); its windows' `reset` is on it. Read
 * against Date.now(), a wall-clock step forward made Retry-After 1 and `t=0` while the window kept refusing, and
 * X-RateLimit-Reset an hour in the past. Loaded from where koa-ratelimit loads it: the same module, the same clock.
 */
const redisDriverClock = require(require.resolve('async-ratelimiter/src/microtime', { paths: [require.resolve('koa-ratelimit')] })) as { now(): number };

/** Now on the Redis driver's clock, in seconds. */
function redisDriverSeconds(): number {
  return redisDriverClock.now() / 1000;
}

/** Memory drivers kept per policy for the clients seen last (createWindowCounter); ~150 bytes each. */
export const KEPT_MEMORY_DRIVERS = 1024;

/** The memory driver's entry: `remaining` before the window's next request (koa-ratelimit's count). */
interface MemoryEntry {
  remaining: number;
  reset: number;
  total: number;
}

/** A memory store's table of windows: at most `maxTrackedClients`, the least spent forgotten first when full. */
export function memoryWindowStore(maxTrackedClients: number): BoundedWindowStore<MemoryEntry> {
  return new BoundedWindowStore<MemoryEntry>(maxTrackedClients, memoryDriverSeconds, (window) => window.total - window.remaining);
}

export type WindowCounterStore =
  | { kind: 'memory'; db: Map<string, unknown> }
  | { kind: 'primary'; client: PrimaryStoreClient }
  | { kind: 'redis'; client: Redis; keyPrefix: string };

/**
 * One policy's counter. `storeName` keys its windows (memory and Redis keep koa-ratelimit's `<namespace>:<client>`
 * keys, so counts carry over an upgrade); `windowPolicy` names them in the primary.
 */
export function createWindowCounter(store: WindowCounterStore, options: { storeName: string; windowPolicy: string; max: number; windowMs: number }): WindowCounter {
  const { storeName, windowPolicy, max, windowMs } = options;
  if (store.kind === 'primary') {
    const leaseSeconds = () => leaseClockMs() / 1000;
    return {
      take: async (client) => {
        const window = await store.client.take(windowPolicy, client, max, windowMs);
        return counted(window, epochSeconds(window.reset, leaseSeconds()));
      },
      peek: async (client) => {
        const spent = store.client.exhausted(windowPolicy, client, max);
        if (spent) return { left: 0, total: spent.total, reset: epochSeconds(spent.reset, leaseSeconds()) };
        // What the window has left across the cluster is the primary's to know: this worker vouches for no more than
        // its own unspent tokens, and one while it holds none (the count that follows asks the primary). Told
        // nothing, the in-flight bound let every credential sent at once be checked in a cluster without Redis.
        const held = store.client.held(windowPolicy, client, max);
        return { left: Math.max(1, held?.remaining ?? 0), total: max, reset: held ? epochSeconds(held.reset, leaseSeconds()) : Date.now() / 1000 + windowMs / 1000 };
      },
    };
  }
  if (store.kind === 'redis') {
    const namespace = `${store.keyPrefix}:${storeName}`;
    const driver = (id: string) => new RedisDriver({ db: store.client, id, max, duration: windowMs, namespace });
    // async-ratelimiter floors the reset to the second (its script and get() both do): a second added rounds it up,
    // so Retry-After and X-RateLimit-Reset are never early (they were by up to 1 s).
    return {
      take: async (client) => {
        const window = await driver(client).get();
        return counted(window, epochSeconds(window.reset + 1, redisDriverSeconds()));
      },
      peek: async (client) => {
        // Its `remaining` counts before a request: all of it is left.
        const window = await driver(client).get({ peek: true });
        return { left: Math.max(0, window.remaining), total: window.total, reset: epochSeconds(window.reset + 1, redisDriverSeconds()) };
      },
    };
  }
  const { db } = store;
  // koa-ratelimit's memory driver keys a client's window by `<namespace>:<id>`, a string it builds in its constructor.
  // A driver per request built that string anew every time, and each of its two Map lookups per request had V8
  // flatten and hash it in the runtime (~1.6k of the gateway's ~330k instructions per request, bench/RESULTS.md). A
  // driver holds no count (the windows are all in `db`), so the recent clients' drivers are kept and reused: a
  // client's key is built, flattened and hashed once. Bounded; dropping them all forgets no window.
  const driverOf = remembered((client): Driver => new MemoryDriver({ db, id: client, max, duration: windowMs, namespace: storeName }), { capacity: KEPT_MEMORY_DRIVERS });
  return {
    take: async (client) => {
      const window = await driverOf(client).get();
      return counted(window, epochSeconds(window.reset, memoryDriverSeconds()));
    },
    peek: async (client) => {
      const entry = db.get(`${storeName}:${client}`) as MemoryEntry | undefined;
      const now = memoryDriverSeconds();
      // None, or ended: the next request opens a window with all of it.
      if (entry === undefined || entry.reset < now) return { left: max, total: max, reset: Date.now() / 1000 + windowMs / 1000 };
      // The driver spends a request by taking one off `remaining` first: at 1 the next one is refused.
      return { left: Math.max(0, entry.remaining - 1), total: entry.total, reset: epochSeconds(entry.reset, now) };
    },
  };
}

/**
 * The memory store's windows kept across config reloads in one process, per policy (`name|max|windowMs`), so
 * an unchanged limit keeps counting where it was. `sweep` forgets policies the last build did not ask for.
 */
export class RateLimitWindows {
  private readonly stores = new Map<string, BoundedWindowStore<MemoryEntry>>();
  private asked = new Set<string>();

  for(policy: string, maxTrackedClients: number): BoundedWindowStore<MemoryEntry> {
    // Two limiters of one build with the same policy still count apart. The config makes none (route names and
    // consumer ids are unique, route windows are `route:<name>`): this keeps a slip of the builder from merging two.
    let key = policy;
    for (let n = 2; this.asked.has(key); n++) key = `${policy}#${n}`;
    this.asked.add(key);
    let store = this.stores.get(key);
    if (!store) this.stores.set(key, (store = memoryWindowStore(maxTrackedClients)));
    return store;
  }

  /** Drops the windows of policies not asked for since the last sweep. */
  sweep(): void {
    for (const policy of this.stores.keys()) if (!this.asked.has(policy)) this.stores.delete(policy);
    this.asked = new Set();
  }

  /**
   * Forgets what a build that failed asked for, keeping every window (the running build counts in them). Left
   * asked, its policies made the next build's unchanged limits `policy#2`: fresh, empty windows, every count lost.
   */
  forgetAsked(): void {
    this.asked = new Set();
  }
}
