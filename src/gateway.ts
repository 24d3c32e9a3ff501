import Router from '@koa/router';
import { trace, type Tracer } from '@opentelemetry/api';
import Koa from 'koa';
import type { Logger } from '../otel/logger';
import type { Redis } from 'ioredis';
import type { GatewayConfig, RateLimitConfig } from './config';
import './context';
import { createAccessLog } from './middleware/access-log';
import { createAuthenticate } from './middleware/authenticate';
import { createAuthorize } from './middleware/authorize';
import { createCors } from './middleware/cors';
import { createErrorHandler } from './middleware/errors';
import { createHealth, createReadiness } from './middleware/health';
import { createLogin } from './middleware/login';
import { createPathGuard } from './middleware/path-guard';
import { createProxy } from './middleware/proxy';
import { createRequestMetrics } from './middleware/request-metrics';
import { createRateLimiter, createRouteRateLimit, type RateLimiter, type RateLimitStore } from './middleware/rate-limit';
import { createRequestId } from './middleware/request-id';
import { createRouteMatch } from './middleware/route-match';
import { createTracing } from './middleware/tracing';
import { createTrustedProxies } from './middleware/trusted-proxies';
import { createClientHeaderPolicy } from './middleware/client-headers';
import { createHostGuard } from './middleware/host-guard';
import { compileRoutes } from './routes';
import { createTokenService } from './tokens';
import { createUpstreamPools } from './upstream-pool';
import { GatewayError } from './errors';
import { createAdminApp } from './admin';
import { createReadinessCheck } from './readiness';
import { createGatewayMetrics, type GatewayMetrics } from './metrics';

export interface GatewayDependencies {
  logger: Logger;
  /** Shared rate-limit store; required when `rateLimit.redisUrl` is set (main.ts creates it). */
  redis?: Redis;
  /** Default: the global tracer provider's `koa-gateway` tracer (a no-op when telemetry is off). */
  tracer?: Tracer;
  /**
   * Where the gateway records its metrics (src/metrics.ts); main.ts serves its registry on `metrics.port`.
   * Default: a fresh set with its own registry; `false` records nothing (no middleware, no hooks).
   */
  metrics?: GatewayMetrics | false;
}

export interface GatewayApps {
  /** The public listener's app. */
  gateway: Koa;
  /** The internal listener's app (src/admin.ts), over the same pools and readiness cache. */
  admin: Koa;
}

/** The public app alone (the internal one is built and dropped). */
export function createGateway(config: GatewayConfig, deps: GatewayDependencies): Koa {
  return createGatewayApps(config, deps).gateway;
}

/**
 * The request path, top to bottom. Every middleware is built here from the one validated config; nothing
 * registers itself anywhere else. Returns fresh apps (no listening, no globals), so tests build as many
 * as they like on port 0.
 */
export function createGatewayApps(config: GatewayConfig, { logger, redis, tracer = trace.getTracer('koa-gateway'), metrics: given }: GatewayDependencies): GatewayApps {
  // `false`: nothing is recorded (no scrape listener and no metric export); absent: a fresh set (tests).
  const metrics = given === false ? undefined : (given ?? createGatewayMetrics());
  // maxIpsCount: only the right-most N X-Forwarded-For entries, the ones trusted proxies wrote, are believed.
  const app = new Koa({ proxy: config.trustProxy, maxIpsCount: config.trustedProxyHops });
  const pools = createUpstreamPools(config.services, metrics);
  // One check for both listeners: a call on either reuses the other's round.
  const readiness = createReadinessCheck({ pools, cacheMs: config.readinessCacheMs });
  const routes = compileRoutes(config, pools);
  const tokens = createTokenService({ ...config.auth, cacheSize: config.auth.verifiedTokenCacheSize });

  if (config.rateLimit.redisUrl && !redis) throw new Error('rateLimit.redisUrl is set but no Redis client was passed to createGateway');
  const store: RateLimitStore = redis
    ? { kind: 'redis', client: redis, keyPrefix: config.rateLimit.redisKeyPrefix }
    : { kind: 'memory', maxTrackedClients: config.rateLimit.maxTrackedClients };
  const limiter = (name: string, limit: RateLimitConfig, onStoreFailure = config.rateLimit.onStoreFailure): RateLimiter =>
    createRateLimiter({ name, max: limit.max, windowMs: limit.windowMs, onStoreFailure: limit.onStoreFailure ?? onStoreFailure, ipv6PrefixLength: config.rateLimit.ipv6PrefixLength, store, logger, metrics });
  // Login fails closed with the store down (an outage must not mean unlimited password guesses) unless its
  // own policy says `allow`; the per-account limit follows the per-client one unless it says otherwise.
  const loginOnStoreFailure = config.auth.loginRateLimit.onStoreFailure ?? 'reject';
  const loginLimiter = limiter('login', config.auth.loginRateLimit, loginOnStoreFailure);
  const loginAccountLimiter = limiter('login-account', config.auth.loginAccountRateLimit, loginOnStoreFailure);
  const routeLimiters = new Map(routes.routes.flatMap((route) => (route.rateLimit ? [[route.name, limiter(route.name, route.rateLimit)] as const] : [])));

  // Answered by the gateway itself.
  // Case-sensitive and strict, like the route table: `/HEALTH` and `/api/auth/login/` are not these.
  const ownEndpoints = new Router({ sensitive: true, strict: true })
    .get('/health', createHealth())
    .get('/ready', createReadiness({ check: readiness }))
    .post(config.auth.loginPath, ...createLogin({ tokens, tracer, logger, users: pools.get('users')!, bodyLimitBytes: config.auth.loginBodyLimitBytes, clientLimit: loginLimiter, accountLimit: loginAccountLimiter }))
    .all(config.auth.loginPath, () => {
      throw new GatewayError('method_not_allowed', 'Login accepts POST only.', { headers: { Allow: 'POST' } });
    });

  // First: which peer's X-Forwarded-* count must be settled before anything reads ctx.ip (Koa caches it).
  app.use(createTrustedProxies({ trustProxy: config.trustProxy, trustedProxies: config.trustedProxies }));
  app.use(createTracing({ tracer, trustTraceparent: config.trustTraceparent, mapRequestIdToTraceId: config.mapRequestIdToTraceId }));
  app.use(createRequestId());
  if (metrics) app.use(createRequestMetrics({ metrics }));
  app.use(createAccessLog({ logger }));
  app.use(createErrorHandler({ logger }));
  app.use(createPathGuard());
  const guardHost = createHostGuard({ allowedHosts: config.allowedHosts });
  if (guardHost) app.use(guardHost);
  app.use(createClientHeaderPolicy({ underscores: config.headersWithUnderscores }));
  app.use(createCors({ defaults: config.cors, byRoute: new Map(config.routes.flatMap((route) => (route.cors === undefined ? [] : [[route.name, route.cors] as const]))), routes }));
  app.use(ownEndpoints.routes());
  app.use(createRouteMatch({ routes }));
  app.use(createRouteRateLimit({ fallback: limiter('default', config.rateLimit), byRoute: routeLimiters }));
  app.use(createAuthenticate({ tokens }));
  app.use(createAuthorize());
  app.use(
    createProxy({
      tracer,
      metrics,
      maxSockets: config.proxy.maxSockets,
      maxPendingRequests: config.proxy.maxPendingRequests,
      maxBodyBytes: config.proxy.maxBodyBytes,
      minBodyBytesPerSecond: config.server.minBodyBytesPerSecond,
      bodyGracePeriodMs: config.server.bodyGracePeriodMs,
      underscores: config.headersWithUnderscores,
    }),
  );

  // Errors are answered by handleErrors; this channel only sees what Koa itself could not hand to it.
  app.on('error', (error: Error) => logger.error('unhandled gateway error', { error: error.message }));
  return { gateway: app, admin: createAdminApp({ readiness, pools, logger }) };
}
