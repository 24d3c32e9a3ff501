import type { GatewayConfig, RateLimitConfig, RouteConfig } from './config';

/** A route with everything derived once at startup, so matching does no parsing per request. */
export interface CompiledRoute {
  readonly name: string;
  readonly prefix: string;
  readonly service: string;
  /** Origin of the service, e.g. `http://127.0.0.1:4001`. */
  readonly target: string;
  readonly upstreamPath: string;
  readonly exact: boolean;
  /** Allowed methods, or undefined for any. */
  readonly methods: ReadonlySet<string> | undefined;
  readonly auth: RouteConfig['auth'];
  /** Upstream idle timeout, ms. */
  readonly timeoutMs: number;
  readonly rateLimit: RateLimitConfig | undefined;
}

export interface RouteMatch {
  route: CompiledRoute;
  /** The upstream path (prefix replaced, rest of the path kept byte for byte). */
  upstreamPath: string;
}

export interface RouteTable {
  readonly routes: readonly CompiledRoute[];
  /** Matches a path that createPathGuard already accepted; longest prefix wins. */
  match(path: string): RouteMatch | undefined;
}

export function compileRoutes(config: GatewayConfig): RouteTable {
  const routes: CompiledRoute[] = config.routes.map((route) => ({
    name: route.name,
    prefix: route.prefix,
    service: route.service,
    target: new URL(config.services[route.service]!.url).origin,
    upstreamPath: route.upstreamPath,
    exact: route.exact,
    methods: route.methods ? new Set(route.methods) : undefined,
    auth: route.auth,
    timeoutMs: route.timeoutMs ?? config.proxy.timeoutMs,
    rateLimit: route.rateLimit,
  }));
  const byLongestPrefix = [...routes].sort((a, b) => b.prefix.length - a.prefix.length);

  return {
    routes,
    match(path) {
      for (const route of byLongestPrefix) {
        if (path === route.prefix) return { route, upstreamPath: route.upstreamPath || '/' };
        // Segment boundary: `/api/users` must not match `/api/usersX`.
        if (!route.exact && path.startsWith(route.prefix) && path.charCodeAt(route.prefix.length) === 47 /* / */) {
          return { route, upstreamPath: route.upstreamPath + path.slice(route.prefix.length) };
        }
      }
      return undefined;
    },
  };
}
