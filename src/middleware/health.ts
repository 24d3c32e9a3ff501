import type { Context, Middleware } from 'koa';
import { PROBE_METHODS } from '../../otel/telemetry-config';
import { HEADER } from '../../otel/wire-names';
import { DEFAULT_RETRY_AFTER_SECONDS, GatewayError } from '../errors';
import { isServiceUp, type ProbeRound, type ReadinessCheck } from '../readiness';
import type { UpstreamPool } from '../upstream-pool';
import { refuseAtOnce, type Refuse } from './rate-limit';

/**
 * `GET /health`: the gateway process itself is serving. Touches no dependency. Its uptime is the process's, on
 * the monotonic clock: counted from the app's build, every reload looked like a restart, and a clock step moved it.
 */
export function createHealth(): Middleware {
  return async function health(ctx) {
    ctx.set('Cache-Control', 'no-store');
    ctx.body = { status: 'ok', service: 'gateway', uptimeSeconds: Math.round(process.uptime()) };
  };
}

export interface ReadinessOptions {
  /** The shared, cached probe of every instance (src/readiness.ts). */
  check: ReadinessCheck;
  /** Whether this process is draining (SIGTERM): it will not be ready again. Default never. */
  stopping?: () => boolean;
}

export interface ReadinessDetailsOptions extends ReadinessOptions {
  /** The pools the proxy uses, for their passive health (ejections), read live at each call. */
  pools: ReadonlyMap<string, UpstreamPool>;
  /** The pools gRPC translation uses, by service (src/grpc/route-mappings.ts). */
  grpcPools?: ReadonlyMap<string, UpstreamPool>;
}

/**
 * Status and headers shared by both readiness answers. This 503 is an answer, not an error (its body is the
 * readiness report, not a problem), so it sets the `Retry-After` a GatewayError would have carried; asking
 * again before the cached round expires would only get the same answer.
 */
function answerReadiness(ctx: Context, ready: boolean, cacheMs: number): void {
  ctx.set('Cache-Control', 'no-store');
  ctx.status = ready ? 200 : 503;
  if (!ready) ctx.set(HEADER.retryAfter, String(Math.max(DEFAULT_RETRY_AFTER_SECONDS, Math.ceil(cacheMs / 1000))));
}

/**
 * The answer while the process drains: 503 `stopping`, without a probe round. It said `ready` until the process
 * exited, to a balancer's health check on a kept-alive connection and to an operator watching the internal
 * listener, which stays open through the drain for that. Its Retry-After, as every 503's (RFC 9110 10.2.3): this
 * process will not be ready again, but whatever answers at its address after the drain (a replacement) may be.
 */
function answerStopping(ctx: Context): void {
  ctx.set('Cache-Control', 'no-store');
  ctx.set(HEADER.retryAfter, String(DEFAULT_RETRY_AFTER_SECONDS));
  ctx.status = 503;
  ctx.body = { status: 'stopping' };
}

function summarize(round: ProbeRound): { ready: boolean; services: Record<string, 'up' | 'down'> } {
  const services = Object.fromEntries([...round.services].map(([name, probes]) => [name, isServiceUp(probes) ? ('up' as const) : ('down' as const)]));
  return { ready: Object.values(services).every((status) => status === 'up'), services };
}

/**
 * Public `GET /ready`: ready (200) when every service has an instance that answers, 503 otherwise, and only
 * `up` / `down` per service. Addresses, instance counts, latencies, ejections and failure reasons stay on
 * the internal listener (`createReadinessDetails`): this answer is unauthenticated.
 */
export function createReadiness(options: ReadinessOptions): Middleware {
  const { check, stopping } = options;
  return async function ready(ctx) {
    if (stopping?.()) return answerStopping(ctx);
    const { ready, services } = summarize(await check.current(ctx.state.requestId));
    answerReadiness(ctx, ready, check.cacheMs);
    ctx.body = { status: ready ? 'ready' : 'degraded', services };
  };
}

/**
 * Internal `GET /ready` (admin listener only): the same round as the public answer, with every instance's
 * origin, probe result and passive health. Passive health is read now, not from the round: it costs no
 * request, and an ejection should show the moment it happens.
 */
export function createReadinessDetails(options: ReadinessDetailsOptions): Middleware {
  const { check, pools, grpcPools, stopping } = options;
  return async function readyDetails(ctx) {
    if (stopping?.()) return answerStopping(ctx);
    const round = await check.current(ctx.state.requestId);
    const { ready } = summarize(round);
    const services = Object.fromEntries(
      [...pools].map(([name, pool]) => {
        // A gRPC-only service is in no round (it answers no HTTP `GET /health`): `not_probed`, not `down` beside an
        // overall `ready` that never counted it, and its instances are its gRPC pool's (its HTTP pool carries
        // nothing). A service with both interfaces lists its gRPC instances apart (`grpcInstances`).
        const probes = round.services.get(name);
        const grpcPool = grpcPools?.get(name);
        const listed = probes === undefined && grpcPool ? grpcPool : pool;
        const instances = listed.health().map((passive) => ({ ...passive, probe: probes?.get(passive.origin) ?? null }));
        const status = probes === undefined ? 'not_probed' : isServiceUp(probes) ? 'up' : 'down';
        return [name, { status, instances, ...(grpcPool && grpcPool !== listed && { grpcInstances: grpcPool.health() }) }];
      }),
    );
    answerReadiness(ctx, ready, check.cacheMs);
    ctx.body = { status: ready ? 'ready' : 'degraded', checkedAt: round.startedAt, services };
  };
}

export interface ProbeEndpointsOptions {
  /** `GET /health` (createHealth). */
  health: Middleware;
  /** `GET /ready` (createReadiness). */
  ready: Middleware;
  /** Answers another method's 405 once it spent the rate limit (gateway.ts, createRefusalRateLimit); at once when absent. */
  refuse?: Refuse;
}

/** What a probe's 405 names in `Allow`. */
export const ALLOWED_PROBE_METHODS = PROBE_METHODS.join(', ');

/**
 * The gateway's own `/health` and `/ready` on the public listener: exact paths, case-sensitive, no trailing slash
 * (`/HEALTH` and `/health/` are not these, and go on to route matching). Any method but GET and HEAD is 405 with
 * `Allow: GET, HEAD`, as the internal listener and every route answer one (it fell through to route matching and
 * answered 404 `not_found` for a resource that exists). `ctx.routerPath` names the probe for spans and metrics.
 */
export function createProbeEndpoints(options: ProbeEndpointsOptions): Middleware {
  const { health, ready } = options;
  const refuse = options.refuse ?? refuseAtOnce;
  return function answerProbe(ctx, next) {
    const path = ctx.path;
    const probe = path === '/health' ? health : path === '/ready' ? ready : undefined;
    if (probe === undefined) return next();
    ctx.routerPath = path;
    if (!PROBE_METHODS.includes(ctx.method)) {
      // Not a probe: a refusal like a route's 405, limited as one (a probe itself never is).
      return refuse(ctx, new GatewayError('method_not_allowed', `${path} accepts ${ALLOWED_PROBE_METHODS}.`, { headers: { Allow: ALLOWED_PROBE_METHODS } }));
    }
    return probe(ctx, next);
  };
}
