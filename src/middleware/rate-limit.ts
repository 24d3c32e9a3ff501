import type { Context, Middleware } from 'koa';
import ratelimit from 'koa-ratelimit';
import type { RateLimitConfig } from '../config';
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

export interface RateLimiterOptions extends RateLimitConfig {
  /** Policy name, shown in `RateLimit-Policy`. */
  name: string;
  /** Clients tracked at once. */
  maxTrackedClients: number;
  /** Who is limited; default the client address (`ctx.ip`). */
  clientKey?: (ctx: Context) => string;
}

export interface RateLimiter {
  readonly name: string;
  readonly config: RateLimitConfig;
  /** Calls `next` when the client is under its limit, throws `rate_limited` otherwise. */
  check(ctx: Context, next: () => Promise<void>): Promise<void>;
}

/**
 * One limit policy: koa-ratelimit's window counting with its `X-RateLimit-*` headers, plus the IETF
 * `RateLimit-Policy` / `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers) and an integer
 * `Retry-After`. Exceeding the limit becomes a `rate_limited` GatewayError (429).
 */
export function createRateLimiter(options: RateLimiterOptions): RateLimiter {
  const windowSeconds = Math.ceil(options.windowMs / 1000);
  const policy = `"${options.name}";q=${options.max};w=${windowSeconds}`;
  const limit = ratelimit({
    driver: 'memory',
    db: new BoundedWindowStore(options.maxTrackedClients),
    namespace: options.name,
    duration: options.windowMs,
    max: options.max,
    id: options.clientKey ?? ((ctx) => ctx.ip),
  });

  return {
    name: options.name,
    config: { max: options.max, windowMs: options.windowMs },
    async check(ctx, next) {
      let passed = false;
      await limit(ctx, async () => {
        passed = true;
        writeStandardHeaders(ctx, policy, options.name);
        await next();
      });
      if (passed) return;
      const secondsLeft = writeStandardHeaders(ctx, policy, options.name);
      const retryAfter = Math.max(1, secondsLeft);
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
