import { trace } from '@opentelemetry/api';
import type { Redis } from 'ioredis';
import type { Context, Middleware } from 'koa';
import ratelimit from 'koa-ratelimit';
import type { Logger } from '../../otel/logger';
import { ATTR } from '../../otel/wire-names';
import { GatewayError } from '../errors';

/** The state koa-ratelimit's memory driver keeps per client; `reset` is in epoch seconds. */
interface WindowEntry {
  reset: number;
}

/**
 * The memory driver's store. koa-ratelimit never deletes from its Map, so a stream of distinct client ids
 * would grow it forever; this one sweeps expired windows when full and then drops the oldest ones.
 */
export class BoundedWindowStore extends Map<string, WindowEntry> {
  constructor(private readonly maxEntries: number) {
    super();
  }

  override set(key: string, value: WindowEntry): this {
    if (this.size >= this.maxEntries && !this.has(key)) this.makeRoom();
    return super.set(key, value);
  }

  private makeRoom(): void {
    const nowSeconds = Date.now() / 1000;
    for (const [key, entry] of this) if (entry.reset < nowSeconds) this.delete(key);
    // Still full: every window is live. Drop the oldest tenth rather than one per insert.
    if (this.size >= this.maxEntries) {
      let excess = Math.max(1, Math.floor(this.maxEntries / 10));
      for (const key of this.keys()) {
        if (excess-- <= 0) break;
        this.delete(key);
      }
    }
  }
}

/** Where windows are counted: per process, or shared by every replica through Redis. */
export type RateLimitStore = { kind: 'memory'; maxTrackedClients: number } | { kind: 'redis'; client: Redis; keyPrefix: string };

export interface RateLimiterOptions {
  /** Policy name, shown in `RateLimit-Policy` and part of the store key. */
  name: string;
  max: number;
  windowMs: number;
  store: RateLimitStore;
  /** When the store cannot answer: `allow` (default) or `reject` with 503. */
  onStoreFailure?: 'allow' | 'reject';
  logger: Logger;
  /** Who is limited; default the client address (`ctx.ip`). */
  clientKey?: (ctx: Context) => string;
}

export interface RateLimiter {
  readonly name: string;
  /** Calls `next` when the client is under its limit, throws `rate_limited` otherwise. */
  check(ctx: Context, next: () => Promise<void>): Promise<void>;
}

/** How often a store outage is logged while it lasts, ms. */
const STORE_FAILURE_LOG_INTERVAL_MS = 10_000;

/**
 * One limit policy: koa-ratelimit's window counting with its `X-RateLimit-*` headers, plus the IETF
 * `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) and an integer
 * `Retry-After`. Exceeding the limit becomes a `rate_limited` GatewayError (429). koa-ratelimit has no
 * answer for a store that fails, so that case is decided here by `onStoreFailure`, logged once per interval
 * and recorded on the request's span.
 */
export function createRateLimiter(options: RateLimiterOptions): RateLimiter {
  const { store, logger } = options;
  const windowSeconds = Math.ceil(options.windowMs / 1000);
  const policy = `"${options.name}";q=${options.max};w=${windowSeconds}`;
  const onStoreFailure = options.onStoreFailure ?? 'allow';
  const limit = ratelimit({
    ...(store.kind === 'redis'
      ? { driver: 'redis' as const, db: store.client, namespace: `${store.keyPrefix}:${options.name}` }
      : { driver: 'memory' as const, db: new BoundedWindowStore(store.maxTrackedClients), namespace: options.name }),
    duration: options.windowMs,
    max: options.max,
    id: options.clientKey ?? ((ctx) => ctx.ip),
  });
  let lastFailureLog = 0;

  async function storeFailed(ctx: Context, next: () => Promise<void>, error: unknown): Promise<void> {
    const decision = onStoreFailure === 'allow' ? 'store_down_allowed' : 'store_down_rejected';
    trace.getActiveSpan()?.setAttribute(ATTR.rateLimitDecision, decision);
    if (Date.now() - lastFailureLog >= STORE_FAILURE_LOG_INTERVAL_MS) {
      lastFailureLog = Date.now();
      logger.warn('rate limit store failed', { policy: options.name, decision, error: error instanceof Error ? error.message : String(error) });
    }
    if (onStoreFailure === 'reject') {
      throw new GatewayError('rate_limit_unavailable', 'Rate limiting is unavailable; try again shortly.', { cause: error, headers: { 'Retry-After': '1' } });
    }
    await next();
  }

  return {
    name: options.name,
    async check(ctx, next) {
      let passed = false;
      try {
        await limit(ctx, async () => {
          passed = true;
          writeStandardHeaders(ctx, policy, options.name);
          await next();
        });
      } catch (error) {
        if (passed) throw error;
        return storeFailed(ctx, next, error);
      }
      if (passed) return;
      const retryAfter = Math.max(1, writeStandardHeaders(ctx, policy, options.name));
      trace.getActiveSpan()?.setAttribute(ATTR.rateLimitDecision, 'limited');
      throw new GatewayError('rate_limited', `Rate limit of ${options.max} requests per ${windowSeconds} s exceeded; retry in ${retryAfter} s.`, {
        headers: { 'Retry-After': String(retryAfter) },
      });
    },
  };
}

/** Writes the IETF fields beside koa-ratelimit's and returns the whole seconds until the window resets. */
function writeStandardHeaders(ctx: Context, policy: string, name: string): number {
  // The memory driver reports a fractional epoch; clients expect whole seconds.
  const resetAt = Number(ctx.response.get('X-RateLimit-Reset'));
  const secondsLeft = Math.max(0, Math.ceil(resetAt - Date.now() / 1000));
  const remaining = Number(ctx.response.get('X-RateLimit-Remaining'));
  ctx.set('X-RateLimit-Reset', String(Math.ceil(resetAt)));
  ctx.set('RateLimit-Policy', policy);
  ctx.set('RateLimit', `"${name}";r=${remaining};t=${secondsLeft}`);
  return secondsLeft;
}

export interface RouteRateLimitOptions {
  /** The limit of routes without their own. */
  fallback: RateLimiter;
  /** Limits of routes that have their own, by route name. */
  byRoute: ReadonlyMap<string, RateLimiter>;
}

/** Applies the matched route's limit (or the global one) before any token is verified. */
export function createRouteRateLimit(options: RouteRateLimitOptions): Middleware {
  return async function limitRate(ctx, next) {
    const routeName = ctx.state.route?.name;
    const limiter = (routeName && options.byRoute.get(routeName)) || options.fallback;
    await limiter.check(ctx, next);
  };
}
