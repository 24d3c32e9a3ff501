import { trace, type Tracer } from '@opentelemetry/api';
import Koa from 'koa';
import type { Logger } from '../otel/logger';
import type { Redis } from 'ioredis';
import type { GatewayConfig, RateLimitConfig } from './config';
import { createServiceKeySigner } from './gateway-signature';
import type { ProtoSources } from './grpc/proto-sources';
import './context';
import { installDirectAccessors, installFasterRequestAccessors, installFasterResponseAccessors, installHttp2AwareWritable } from './koa-context-accessors';
import { createAccessLog } from './middleware/access-log';
import { createAuthenticate } from './middleware/authenticate';
import { createAuthorize } from './middleware/authorize';
import { createResponseCache } from './middleware/cache';
import { createCors } from './middleware/cors';
import { createErrorHandler } from './middleware/errors';
import { createHealth, createProbeEndpoints, createReadiness } from './middleware/health';
import { createAccountKey, createLogin, createLoginEndpoint } from './middleware/login';
import { createPathGuard } from './middleware/path-guard';
import { createProxy } from './middleware/proxy';
import { createRequestMetrics } from './middleware/request-metrics';
import { createCallerRateLimit, createRateLimiter, createRefusalRateLimit, createRouteRateLimit, type RateLimiter, type RateLimiterOptions, type RateLimitStore } from './middleware/rate-limit';
import { createRequestId } from './middleware/request-id';
import { createMaxForwards } from './middleware/max-forwards';
import { createRouteMatch } from './middleware/route-match';
import { createTracing } from './middleware/tracing';
import { createTrustedProxies } from './middleware/trusted-proxies';
import { createClientHeaderPolicy } from './middleware/client-headers';
import { createHostGuard, hostRefusal } from './middleware/host-guard';
import { createStrictTransportSecurity } from './middleware/hsts';
import { createHttp2Requests } from './middleware/http2-requests';
import { createRequestHeadCheck, createRequestTargetForm } from './middleware/request-head';
import { compileRoutes } from './routes';
import { createTokenService } from './tokens';
import { createConsumerRegistry } from './consumers';
import { compileHeaderRules, GATEWAY_RESPONSE_HEADERS } from './header-rules';
import { createBackgroundFetches, type BackgroundWork } from './cache-background-fetch';
import { cacheKey } from './response-cache';
import { createResponseStore, type PeerInvalidations } from './response-store';
import { createUpstreamPools, type UpstreamPool } from './upstream-pool';
import { createAdminApp, type ConfigControl } from './admin';
import type { KeptAcrossReloads } from './config-reload';
import type { PrimaryStoreClient } from './rate-limit-store';
import { createReadinessCheck } from './readiness';
import { clientConnectionFailed, installUncaughtAnswerCut } from './response-closed';
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
  /** Windows counted in the cluster primary for all workers (src/workers.ts); used when Redis is not. */
  primaryStore?: PrimaryStoreClient;
  /** What a config reload keeps from the previous build (src/config-reload.ts). Default: everything fresh. */
  kept?: KeptAcrossReloads;
  /** The running config's version: a span attribute on every request (src/config-reload.ts). */
  configVersion?: string;
  /** `GET /admin/config` and `POST /admin/reload` on the internal listener; absent: no such endpoints. */
  control?: ConfigControl;
  /** The other cluster workers' memory response caches (src/worker-link.ts); unused with Redis (one shared store). */
  cachePeers?: PeerInvalidations;
  /** Whether the process is draining (main.ts, from runServer's onDrain): both `/ready` answer 503 `stopping`. Default never. */
  stopping?: () => boolean;
  /** The response cache's background fetches of every build, which main.ts waits for as it stops (src/cache-background-fetch.ts). */
  backgroundWork?: BackgroundWork;
  /** The gRPC routes' proto sources as the config's version read them (ActiveConfig); absent: read from the disk now (tests). */
  protoSources?: ProtoSources;
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
export function createGatewayApps(config: GatewayConfig, deps: GatewayDependencies): GatewayApps {
  const { logger, redis, tracer = trace.getTracer('koa-gateway'), metrics: given, kept } = deps;
  // `false`: nothing is recorded (no scrape listener and no metric export); absent: a fresh set (tests).
  const metrics = given === false ? undefined : (given ?? createGatewayMetrics());
  // maxIpsCount: only the right-most N X-Forwarded-For entries, the ones trusted proxies wrote, are believed.
  const app = new Koa({ proxy: config.trustProxy, maxIpsCount: config.trustedProxyHops });
  installDirectAccessors(app.context);
  installFasterRequestAccessors(app.request);
  installFasterResponseAccessors(app.response);
  // Koa's answers to a HEAD over HTTP/2 (their Content-Length) as over HTTP/1.1.
  installHttp2AwareWritable(app.response);
  installUncaughtAnswerCut(app.context);
  const pools = createUpstreamPools(config.services, metrics, kept?.pools);
  // One check for both listeners: a call on either reuses the other's round.
  // gRPC-only services answer no HTTP `GET /health`; their readiness is not probed (yet).
  // Loaded only for a config with a gRPC route: @grpc/grpc-js and protobufjs are ~110 modules and ~5 MiB that
  // every other gateway would carry for nothing.
  const grpc = config.routes.some((route) => route.grpc) ? loadGrpcTranslation() : undefined;
  const grpcOnly = grpc ? grpc.grpcOnlyServices(config) : new Set<string>();
  const readiness = createReadinessCheck({ pools: grpcOnly.size === 0 ? pools : new Map([...pools].filter(([name]) => !grpcOnly.has(name))), cacheMs: config.readinessCacheMs });
  const routes = compileRoutes(config, pools);
  // Protos loaded and their HTTP annotations compiled here, once per built gateway (start-up, reload).
  const grpcRoutes = grpc ? grpc.compileGrpcRoutes(config, metrics, kept?.grpcPools, deps.protoSources) : new Map();
  const tokenOptions = { secret: config.auth.secret, issuer: config.auth.issuer, audience: config.auth.audience, tokenTtlSeconds: config.auth.tokenTtlSeconds, clockToleranceSeconds: config.auth.clockToleranceSeconds, jwks: config.auth.jwks, cacheSize: config.auth.verifiedTokenCacheSize };
  // Kept across reloads that leave these alone (the provider's key set, the verified tokens: KeptAcrossReloads).
  const tokens = kept ? kept.tokenService(JSON.stringify(tokenOptions), () => createTokenService(tokenOptions)) : createTokenService(tokenOptions);

  if (config.rateLimit.redisUrl && !redis) throw new Error('rateLimit.redisUrl is set but no Redis client was passed to createGateway');
  const store: RateLimitStore = redis
    ? { kind: 'redis', client: redis, keyPrefix: config.rateLimit.redisKeyPrefix }
    : deps.primaryStore
      ? { kind: 'primary', client: deps.primaryStore }
      : { kind: 'memory', maxTrackedClients: config.rateLimit.maxTrackedClients, windows: kept?.windows };
  const limiter = (name: string, limit: RateLimitConfig, { owner = 'gateway', onStoreFailure = config.rateLimit.onStoreFailure, hiddenUntilRefused }: Partial<Pick<RateLimiterOptions, 'owner' | 'onStoreFailure' | 'hiddenUntilRefused'>> = {}): RateLimiter =>
    createRateLimiter({ name, owner, max: limit.max, windowMs: limit.windowMs, onStoreFailure: limit.onStoreFailure ?? onStoreFailure, ipv6PrefixLength: config.rateLimit.ipv6PrefixLength, store, logger, metrics, hiddenUntilRefused });
  // Login fails closed with the store down (an outage must not mean unlimited password guesses) unless its
  // own policy says `allow`; the per-account limit follows the per-client one unless it says otherwise.
  const loginOnStoreFailure = config.auth.loginRateLimit.onStoreFailure ?? 'reject';
  const loginLimiter = limiter('login', config.auth.loginRateLimit, { onStoreFailure: loginOnStoreFailure });
  // Every client's attempts spend an account's window: its count is shown to none but the one it refuses.
  const loginAccountLimiter = limiter('login-account', config.auth.loginAccountRateLimit, { onStoreFailure: loginOnStoreFailure, hiddenUntilRefused: true });
  const routeLimiters = new Map(routes.routes.flatMap((route) => (route.rateLimit ? [[route.name, limiter(route.name, route.rateLimit, { owner: 'route' })] as const] : [])));
  // API keys only when consumers are declared; caller-keyed limits only where a route or consumer asks for one.
  const consumers = config.consumers.length > 0 ? createConsumerRegistry(config.consumers) : undefined;
  const byCaller = new Set(routes.routes.flatMap((route) => (route.rateLimit && route.rateLimit.by !== 'ip' ? [route.name] : [])));
  const limitCallers = createCallerRateLimit({
    byRoute: new Map([...routeLimiters].filter(([name]) => byCaller.has(name))),
    byConsumer: new Map(config.consumers.flatMap((consumer) => (consumer.rateLimit ? [[consumer.id, limiter(`consumer-${consumer.id}`, consumer.rateLimit)] as const] : []))),
  });

  // Every request to a service carries the gateway's signature, made with that service's own key (derived from the
  // gateway's: src/gateway-signature.ts serviceSigningKey).
  const sign = config.proxy.signingKey === undefined ? undefined : createServiceKeySigner(config.proxy.signingKey);
  // Bodies the gateway reads itself (login, gRPC translation) are held to the rate the proxy holds uploads to.
  const bodyRate = { minBytesPerSecond: config.server.minBodyBytesPerSecond, graceMs: config.server.bodyGracePeriodMs };
  const cachedRoutes = new Map(config.routes.flatMap((route) => (route.cache ? [[route.name, route.cache] as const] : [])));
  // What a cached route's answers depend on in the config (the service it asks, the path and request rules it asks
  // with, whether Authorization goes along, the cache's own settings, and its public prefix: a copy's Location and
  // Content-Location name it, and the service built its links from the X-Forwarded-Prefix it was told), not what
  // only guards or times it (limits, CORS, roles, timeouts, the service's instances): replicas that differ in those
  // share their copies.
  const cacheKeyScopes = new Map(
    config.routes.flatMap((route) =>
      route.cache ? [[route.name, cacheKey([JSON.stringify([route.service, route.prefix, route.upstreamPath, route.headers?.request ?? null, route.forwardAuthorization, route.cache])])] as const] : [],
    ),
  );
  const hideUpstreamHeaders = [
    ...config.proxy.hideUpstreamHeaders,
    // The request id, trace and rate-limit state the gateway wrote: a service's would replace them.
    ...GATEWAY_RESPONSE_HEADERS,
    // A service's own cache status header would pass for the gateway's.
    ...(cachedRoutes.size > 0 ? [config.cache.statusHeader] : []),
    // With `tls.hsts` the policy is the gateway's: a service's (helmet's default, or `max-age=0`, which makes
    // browsers forget the policy) would replace it, or reach the client beside it (RFC 6797 6.1: one only).
    ...(config.tls?.hsts ? ['strict-transport-security'] : []),
  ];
  const headerRules = new Map(config.routes.map((route) => [route.name, compileHeaderRules({ rules: route.headers, hideUpstreamHeaders })] as const));

  // What a request no route or probe takes (404, 405) spends before its answer, its route's limit or the default,
  // and one refused before its route is looked up (its target, path, Host or header fields) the default.
  const routeLimits = { fallback: limiter('default', config.rateLimit), byRoute: routeLimiters, byCaller };
  const refuse = createRefusalRateLimit(routeLimits);
  // Answered by the gateway itself: the probes (exact paths, GET and HEAD) and the login.
  const probes = createProbeEndpoints({ health: createHealth(), ready: createReadiness({ check: readiness, stopping: deps.stopping }), refuse });
  // Login matches as routes do (any case, a trailing slash): a client's `/api/auth/login/` is the login.
  const login = createLoginEndpoint(config.auth.loginPath, createLogin({ tokens, tracer, logger, sign, users: pools.get('users')!, bodyLimitBytes: config.auth.loginBodyLimitBytes, bodyRate, clientLimit: loginLimiter, accountLimit: loginAccountLimiter, accountKey: createAccountKey(config.auth.secret) }), refuse);

  // First, with `tls.hsts`: the policy goes on every HTTPS answer (RFC 6797 7.1), so also on those of the
  // request-head check and the error handler below.
  if (config.tls?.hsts) app.use(createStrictTransportSecurity(config.tls.hsts));
  // Then the target and Host everything below reads (an absolute-form target names the host itself).
  app.use(createRequestTargetForm());
  // Then which peer's X-Forwarded-* count must be settled before anything reads ctx.ip (Koa caches it).
  app.use(createTrustedProxies({ trustProxy: config.trustProxy, trustedProxies: config.trustedProxies, trustedProxyHops: config.trustedProxyHops }));
  app.use(createTracing({ tracer, trustTraceparent: config.trustTraceparent, trustedProxies: config.trustedProxies, mapRequestIdToTraceId: config.mapRequestIdToTraceId, configVersion: deps.configVersion }));
  app.use(createRequestId());
  if (metrics) app.use(createRequestMetrics({ metrics }));
  app.use(createAccessLog({ logger }));
  app.use(createErrorHandler({ logger }));
  app.use(createRequestHeadCheck({ refuse, hostRefusal: hostRefusal(config.allowedHosts) }));
  // With TLS: HTTP/2 requests made to mean what they say on the wire.
  if (config.tls) app.use(createHttp2Requests({ refuse }));
  app.use(createPathGuard({ refuse }));
  const guardHost = createHostGuard({ allowedHosts: config.allowedHosts, refuse });
  if (guardHost) app.use(guardHost);
  app.use(createClientHeaderPolicy({ underscores: config.headersWithUnderscores, trustTraceContext: config.trustTraceparent, trustedProxies: config.trustedProxies, refuse }));
  app.use(createCors({ defaults: config.cors, byRoute: new Map(config.routes.flatMap((route) => (route.cors === undefined ? [] : [[route.name, route.cors] as const]))), routes }));
  app.use(probes);
  app.use(login);
  app.use(createRouteMatch({ routes, refuse }));
  app.use(createRouteRateLimit(routeLimits));
  app.use(createMaxForwards());
  app.use(createAuthenticate({ tokens, consumers }));
  if (limitCallers) app.use(limitCallers);
  app.use(createAuthorize());
  // Routes with `grpc` end here (REST/JSON -> gRPC); the others go on to the HTTP proxy.
  if (grpc && grpcRoutes.size > 0) app.use(grpc.createGrpcTranscode({ routes: grpcRoutes, tracer, logger, underscores: config.headersWithUnderscores, clients: kept?.grpcClients, bodyRate, sign, maxCallsPerInstance: config.proxy.maxSockets + config.proxy.maxPendingRequests, metrics, maxBodyBytes: config.proxy.maxBodyBytes }));
  // Last before the proxy: a stored answer is only given to a request that passed every check. Its store takes
  // the peers' invalidations over from the running build's; nothing built after it throws, so a reload whose
  // build fails leaves them with the store that still serves.
  const proxy = createProxy({
    tracer,
    metrics,
    maxSockets: config.proxy.maxSockets,
    maxPendingRequests: config.proxy.maxPendingRequests,
    maxBodyBytes: config.proxy.maxBodyBytes,
    requestBufferBytes: config.proxy.requestBufferBytes,
    minBodyBytesPerSecond: config.server.minBodyBytesPerSecond,
    bodyGracePeriodMs: config.server.bodyGracePeriodMs,
    underscores: config.headersWithUnderscores,
    upstreams: kept?.upstreamAgent(config.proxy.maxSockets),
    headerRules,
    sign,
  });
  if (cachedRoutes.size > 0) {
    // A stale copy fetched again under stale-while-revalidate goes through the same proxy, as a request of the cache's own.
    const background = createBackgroundFetches({ forward: (ctx) => proxy(ctx, async () => {}), tracer, logger, work: deps.backgroundWork, stopping: deps.stopping });
    app.use(createResponseCache({ routes: cachedRoutes, keyScopes: cacheKeyScopes, routeTable: routes, cachedRoutesOfService: cachedRoutesOfService(config.routes), store: createResponseStore(config, redis, logger, deps.cachePeers, kept?.newestCacheStore), statusHeader: config.cache.statusHeader, maxEntryBytes: config.cache.maxEntryBytes, lockTimeoutMs: config.cache.lockTimeoutMs, headerRules, underscores: config.headersWithUnderscores, logger, metrics, background }));
  } else {
    // No cached route left: the running build's store goes with its app instead of staying held (its entries
    // up to cache.maxBytes) by the peers' subscription; their invalidations are still confirmed, with nothing to drop.
    deps.cachePeers?.subscribe(undefined);
    if (kept) kept.newestCacheStore.current = undefined;
  }
  app.use(proxy);

  // Last, once nothing above threw: the channels of earlier builds that no route of this one calls go (closed once
  // those builds drain, by KeptAcrossReloads.retireReplaced).
  kept?.keepOnlyGrpcChannels(grpc ? grpc.grpcChannelKeys(grpcRoutes) : new Set());

  // Errors are answered by handleErrors; this channel only sees what Koa itself could not hand to it, and a
  // client's connection failing under its answer (clientConnectionFailed), which is the client's, not the gateway's.
  app.on('error', (error: NodeJS.ErrnoException, ctx?: Koa.Context) => {
    if (ctx && clientConnectionFailed(ctx, error)) return;
    logger.error('unhandled gateway error', { error: error.message });
  });
  // The pools gRPC translation acts on, by service, for the internal /ready.
  const grpcPools = new Map<string, UpstreamPool>();
  for (const route of config.routes) if (route.grpc) grpcPools.set(route.service, grpcRoutes.get(route.name)!.pool);
  return { gateway: app, admin: createAdminApp({ readiness, pools, grpcPools, logger, control: deps.control, stopping: deps.stopping }) };
}

/** REST/JSON -> gRPC translation (src/grpc/, src/middleware/grpc-transcode.ts), required on first use. */
function loadGrpcTranslation(): typeof import('./grpc/route-mappings') & typeof import('./middleware/grpc-transcode') {
  return { ...(require('./grpc/route-mappings') as typeof import('./grpc/route-mappings')), ...(require('./middleware/grpc-transcode') as typeof import('./middleware/grpc-transcode')) };
}

/** The routes with a cache of each service, by service (createResponseCache's `cachedRoutesOfService`). */
function cachedRoutesOfService(routes: GatewayConfig['routes']): Map<string, string[]> {
  const byService = new Map<string, string[]>();
  for (const route of routes) if (route.cache) byService.set(route.service, [...(byService.get(route.service) ?? []), route.name]);
  return byService;
}
