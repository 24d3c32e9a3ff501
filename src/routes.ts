import type { GatewayConfig, RateLimitConfig, RouteConfig } from './config';
import type { UpstreamPool } from './upstream-pool';

/** A route with everything derived once at startup, so matching does no parsing per request. */
export interface CompiledRoute {
  readonly name: string;
  readonly prefix: string;
  readonly service: string;
  /** The service's instances. */
  readonly pool: UpstreamPool;
  readonly upstreamPath: string;
  readonly exact: boolean;
  /** Allowed methods, or undefined for any. */
  readonly methods: ReadonlySet<string> | undefined;
  readonly auth: RouteConfig['auth'];
  /** Upstream idle timeout, ms. */
  readonly timeoutMs: number;
  readonly rateLimit: RateLimitConfig | undefined;
  /** Roles allowed on this route, or undefined for any authenticated caller. */
  readonly roles: ReadonlySet<string> | undefined;
}

export interface RouteMatch {
  kind: 'matched';
  route: CompiledRoute;
  /** The upstream path (prefix replaced, rest of the path kept byte for byte). */
  upstreamPath: string;
}

/** The path has routes, but none for this method. */
export interface MethodMismatch {
  kind: 'method_not_allowed';
  allowed: string[];
}

export interface RouteTable {
  readonly routes: readonly CompiledRoute[];
  /**
   * Matches a path that createPathGuard already accepted: longest prefix first, an exact route before a
   * prefix route of the same path, and a route limited to other methods is passed over for the next one.
   */
  match(path: string, method: string): RouteMatch | MethodMismatch | undefined;
}

export function compileRoutes(config: GatewayConfig, pools: ReadonlyMap<string, UpstreamPool>): RouteTable {
  const routes: CompiledRoute[] = config.routes.map((route) => ({
    name: route.name,
    prefix: route.prefix,
    service: route.service,
    pool: pools.get(route.service)!,
    upstreamPath: route.upstreamPath,
    exact: route.exact,
    methods: route.methods ? new Set(route.methods) : undefined,
    auth: route.auth,
    timeoutMs: route.timeoutMs ?? config.proxy.timeoutMs,
    rateLimit: route.rateLimit,
    roles: route.roles ? new Set(route.roles) : undefined,
  }));
  const bySpecificity = [...routes].sort((a, b) => b.prefix.length - a.prefix.length || Number(b.exact) - Number(a.exact));

  return {
    routes,
    match(path, method) {
      const allowed = new Set<string>();
      for (const route of bySpecificity) {
        let upstreamPath: string | undefined;
        if (path === route.prefix) upstreamPath = route.upstreamPath || '/';
        // Segment boundary: `/api/users` must not match `/api/usersX`.
        else if (!route.exact && path.startsWith(route.prefix) && path.charCodeAt(route.prefix.length) === 47 /* / */) {
          upstreamPath = route.upstreamPath + path.slice(route.prefix.length);
        }
        if (upstreamPath === undefined) continue;
        if (route.methods && !route.methods.has(method)) {
          route.methods.forEach((allowedMethod) => allowed.add(allowedMethod));
          continue;
        }
        return { kind: 'matched', route, upstreamPath };
      }
      return allowed.size > 0 ? { kind: 'method_not_allowed', allowed: [...allowed] } : undefined;
    },
  };
}
