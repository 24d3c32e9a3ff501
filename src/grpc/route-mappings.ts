import type { GatewayConfig, GrpcKeepalive } from '../config';
import type { GatewayMetrics } from '../metrics';
import { createUpstreamPools, type UpstreamPool, type UpstreamPoolCache } from '../upstream-pool';
import { grpcChannelKey } from './grpc-clients';
import { loadGrpcServiceMapping, type GrpcServiceMapping } from './http-rules';
import type { ProtoSources } from './proto-sources';

/** What the translation needs for one route: its compiled REST mapping and the instances of the service's gRPC interface. */
export interface GrpcRoute {
  readonly mapping: GrpcServiceMapping;
  readonly pool: UpstreamPool;
  /** The service's HTTP/2 keepalive for its channels (config `services.<name>.keepalive`); none when absent. */
  readonly keepalive?: GrpcKeepalive;
}

/**
 * Every route with `grpc`, by route name: protos loaded and annotations compiled once, when the gateway is
 * built (start-up and every config reload), never per request. A proto that does not load or compile stops
 * start-up with one line naming the route's key. Each service's gRPC interface (`grpcUrl`, default `url`)
 * gets one pool of its own, with its own passive health, shared by the routes that call it; `kept` hands an
 * unchanged service's pool from one build to the next, as the HTTP pools are (a reload made ejected instances
 * healthy again).
 */
export function compileGrpcRoutes(config: GatewayConfig, metrics?: GatewayMetrics, kept?: UpstreamPoolCache, protoSources?: ProtoSources): ReadonlyMap<string, GrpcRoute> {
  const called = new Set(config.routes.filter((route) => route.grpc).map((route) => route.service));
  const interfaces = Object.fromEntries(
    [...called].map((name) => {
      const { grpcUrl, url, ejectAfterFailures, ejectMs } = config.services[name]!;
      return [name, { url: grpcUrl ?? url, ejectAfterFailures, ejectMs }];
    }),
  );
  const pools = createUpstreamPools(interfaces, metrics, kept);
  const routes = new Map<string, GrpcRoute>();
  config.routes.forEach((route, index) => {
    if (!route.grpc) return;
    try {
      routes.set(route.name, { mapping: loadGrpcServiceMapping(route.grpc.proto, route.grpc.service, protoSources), pool: pools.get(route.service)!, keepalive: config.services[route.service]!.keepalive });
    } catch (error) {
      throw new Error(`config: routes.${index}.grpc: ${(error as Error).message}`, { cause: error });
    }
  });
  return routes;
}

/** The channels (GrpcClientCache keys) `routes` call on: each instance of each route's service, with its keepalive. */
export function grpcChannelKeys(routes: ReadonlyMap<string, GrpcRoute>): Set<string> {
  const keys = new Set<string>();
  for (const { pool, keepalive } of routes.values()) for (const { origin } of pool.health()) keys.add(grpcChannelKey(origin, keepalive));
  return keys;
}

/**
 * Services whose `url` speaks only gRPC (gRPC routes call them and they have no separate `grpcUrl`): they answer
 * no HTTP `GET /health`, so the HTTP readiness probes skip them.
 */
export function grpcOnlyServices(config: GatewayConfig): ReadonlySet<string> {
  const http = new Set(config.routes.filter((route) => !route.grpc).map((route) => route.service));
  http.add('users'); // login checks credentials with it over HTTP
  return new Set(config.routes.filter((route) => route.grpc && !http.has(route.service) && config.services[route.service]?.grpcUrl === undefined).map((route) => route.service));
}
