import { Redis } from 'ioredis';
import type { Logger } from '../otel/logger';

export interface RedisStoreOptions {
  url: string;
  /** Longest a limit check may wait for Redis, ms; then the store counts as down. */
  commandTimeoutMs: number;
  logger: Logger;
}

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
  return redis;
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
