import { HTTP_METHODS, isServiceInternal, type AuthMethod, type GatewayConfig, type RouteRateLimitConfig } from './config';
import type { UpstreamPool } from './upstream-pool';

/** A route with everything derived once at startup, so matching does no parsing per request. */
export interface CompiledRoute {
  readonly name: string;
  readonly prefix: string;
  /** The route as spans and metrics name it (`http.route`): `/api/users/*` for a prefix route, the path of an exact one. */
  readonly template: string;
  readonly service: string;
  /** The service's instances. */
  readonly pool: UpstreamPool;
  readonly upstreamPath: string;
  /**
   * An HTTP route to its service's root (`upstreamPath` ""): it would pass any path on, `/internal/...` too. A gRPC
   * route's paths are its proto's HTTP rules, and its calls go to the gRPC port, never to `/internal`.
   */
  readonly forwardsAnyPath: boolean;
  /**
   * The public path prefix the route takes off before forwarding, told to the service as `X-Forwarded-Prefix`
   * (strippedPrefixOf): `/api` for `/api/orders` -> `/orders`. Empty when the upstream path is not the public one
   * with a prefix taken off (`/api/auth/register` -> `/users`), or nothing is taken off.
   */
  readonly strippedPrefix: string;
  readonly exact: boolean;
  /** Allowed methods (`HEAD` wherever `GET` is), or undefined for any. */
  readonly methods: ReadonlySet<string> | undefined;
  /** `required`: a caller must prove who it is with one of `authMethods`; `public`: nobody has to. */
  readonly auth: 'required' | 'public';
  /** Credentials accepted when `auth` is `required` (empty for public routes). */
  readonly authMethods: ReadonlySet<AuthMethod>;
  /** Upstream idle timeout, ms. */
  readonly timeoutMs: number;
  /** Longest whole upstream exchange, ms. */
  readonly deadlineMs: number;
  readonly rateLimit: RouteRateLimitConfig | undefined;
  /** Roles allowed on this route, or undefined for any authenticated caller. */
  readonly roles: ReadonlySet<string> | undefined;
  /** The client's `Authorization` header goes on to the service. */
  readonly forwardAuthorization: boolean;
}

export interface RouteMatch {
  kind: 'matched';
  route: CompiledRoute;
  /** The upstream path: the route's `upstreamPath`, then the rest of the path byte for byte as the client sent it. */
  upstreamPath: string;
}

/** The route that owns the path does not take this method. */
export interface MethodMismatch {
  kind: 'method_not_allowed';
  route: CompiledRoute;
  /** The owning route's methods, for `Allow`. */
  allowed: string[];
}

export interface RouteTable {
  readonly routes: readonly CompiledRoute[];
  /**
   * The route that owns a path (createPathGuard already accepted it): the most specific route whose prefix
   * covers the path's canonical form (see `routeKey`), an exact route before a prefix route of the same path.
   * Undefined when none covers it, or when the path is another spelling of one the gateway answers itself.
   */
  owner(rawPath: string): CompiledRoute | undefined;
  /**
   * The owner's decision for this method. A method the owner does not take is `method_not_allowed`: it never
   * falls through to a less specific route with weaker rules. `HEAD` is `GET` for every rule.
   */
  match(rawPath: string, method: string): RouteMatch | MethodMismatch | undefined;
}

/**
 * The form every spelling of one resource shares, which routing decides on: percent-decoded (encoded
 * slashes, dots, backslashes, malformed escapes and a `%` left after one decoding never get here:
 * createPathGuard refuses them, so one decoding is unambiguous and the last), case-folded (most upstream routers, @koa/router and Express among them, match without
 * case), and without a trailing slash (which they ignore too). `/API/%75sers/` and `/api/users` are one key,
 * so a rule on one holds for the other.
 */
export function routeKey(rawPath: string): string {
  let key = rawPath.includes('%') ? decodeURIComponent(rawPath) : rawPath;
  key = key.toLowerCase();
  return key.length > 1 && key.endsWith('/') ? key.slice(0, -1) : key;
}

/** Paths the gateway answers itself (login, health, readiness); other spellings of them reach no service. */
export function ownPaths(config: GatewayConfig): string[] {
  return [config.auth.loginPath, '/health', '/ready'];
}

export function compileRoutes(config: GatewayConfig, pools: ReadonlyMap<string, UpstreamPool>): RouteTable {
  // `required` accepts every method the gateway has: API keys only once consumers are declared.
  const allMethods: readonly AuthMethod[] = config.consumers.length > 0 ? ['jwt', 'apiKey'] : ['jwt'];
  const routes: CompiledRoute[] = config.routes.map((route) => ({
    name: route.name,
    prefix: route.prefix,
    template: route.exact ? route.prefix : `${route.prefix}/*`,
    service: route.service,
    pool: pools.get(route.service)!,
    upstreamPath: route.upstreamPath,
    forwardsAnyPath: route.upstreamPath === '' && route.grpc === undefined,
    strippedPrefix: strippedPrefixOf(route.prefix, route.upstreamPath),
    exact: route.exact,
    // `HEAD` is a `GET` without the body (RFC 9110 9.3.2): whatever takes GET takes HEAD under the same rules.
    methods: route.methods ? new Set(route.methods.includes('GET') ? [...route.methods, 'HEAD'] : route.methods) : undefined,
    auth: route.auth === 'public' ? 'public' : 'required',
    authMethods: new Set(route.auth === 'public' ? [] : route.auth === 'required' ? allMethods : route.auth.methods),
    timeoutMs: route.timeoutMs ?? config.proxy.timeoutMs,
    deadlineMs: route.deadlineMs ?? config.proxy.deadlineMs,
    rateLimit: route.rateLimit,
    roles: route.roles ? new Set(route.roles) : undefined,
    forwardAuthorization: route.forwardAuthorization,
  }));
  // Prefixes are plain segments, so their keys are just their lower-case form. More segments = more specific.
  const bySpecificity = routes
    .map((route) => ({ route, key: route.prefix.toLowerCase(), segments: route.prefix.split('/').length }))
    .sort((a, b) => b.segments - a.segments || Number(b.route.exact) - Number(a.route.exact));
  const reserved = new Set(ownPaths(config).map(routeKey));

  /**
   * The route that owns a key, and whether it owns it through a format suffix: `/api/admin.json` is `/api/admin`
   * to Rails (`(.:format)`) and to Spring MVC before 5.3 (suffix patterns), so a route whose prefix is the path
   * but for a last-segment `.ext` owns it when no route with as many segments covers it plainly; otherwise
   * `/api/admin.json` fell to an enclosing `/api` route with weaker rules.
   */
  function ownerOf(key: string): { route: CompiledRoute; suffixed: boolean } | undefined {
    let suffixed: (typeof bySpecificity)[number] | undefined;
    for (const entry of bySpecificity) {
      const { route, key: prefixKey } = entry;
      if (suffixed && entry.segments < suffixed.segments) break;
      // Segment boundary: `/api/users` covers `/api/users/1`, never `/api/usersX`.
      if (key === prefixKey || (!route.exact && key.startsWith(prefixKey) && key.charCodeAt(prefixKey.length) === 47 /* / */)) return { route, suffixed: false };
      // Of the routes a suffix leaves to, the longest prefix: `/api/report.internal.json` is `/api/report.internal`'s
      // (Rails' format has no dot, Spring takes the most specific pattern), not `/api/report`'s, in any config order.
      if (key.startsWith(prefixKey) && key.charCodeAt(prefixKey.length) === 46 /* . */ && !key.includes('/', prefixKey.length) && (!suffixed || prefixKey.length > suffixed.key.length)) suffixed = entry;
    }
    return suffixed && { route: suffixed.route, suffixed: true };
  }

  /** The gateway's own paths, also with a format suffix (`/health.json`): no service answers them. */
  function isReserved(key: string): boolean {
    if (reserved.has(key)) return true;
    // Most paths have no dot in their last segment: no second lookup, no string built for them.
    // The first dot of the last segment: `/health.v1.json` is `/health` too.
    const dot = key.indexOf('.', key.lastIndexOf('/'));
    return dot !== -1 && reserved.has(key.slice(0, dot));
  }

  function owner(rawPath: string): CompiledRoute | undefined {
    const key = routeKey(rawPath);
    if (isReserved(key)) return undefined;
    return ownerOf(key)?.route;
  }

  return {
    routes,
    owner,
    match(rawPath, method) {
      const key = routeKey(rawPath);
      if (isReserved(key)) return undefined;
      const owned = ownerOf(key);
      if (!owned) return undefined;
      const { route } = owned;
      const rest = owned.suffixed ? formatSuffix(rawPath, route.prefix) : restOf(rawPath, route.prefix);
      const upstreamPath = route.upstreamPath + rest;
      // A route to the service's root passes any path on, `/internal/...` too: none reaches the services' own
      // endpoints (the config refuses an upstream path under it), so that one is no route's, for every method.
      if (route.forwardsAnyPath && isServiceInternal(routeKey(upstreamPath))) return undefined;
      if (route.methods ? !route.methods.has(method) : NOT_TAKEN_BY_DEFAULT.has(method)) {
        return { kind: 'method_not_allowed', route, allowed: route.methods ? [...route.methods] : [...HTTP_METHODS] };
      }
      // A suffix on a route to the service's root (`upstreamPath` ""): `/.json`, never `.json`, which is no target
      // (undici refused it, and the refusal counted against the instance).
      return { kind: 'matched', route, upstreamPath: upstreamPath.startsWith('/') ? upstreamPath : `/${upstreamPath}` };
    },
  };
}

/**
 * What a service must put before the path it receives to name the public one (a service building links, as
 * Spring's ForwardedHeaderFilter, Werkzeug's ProxyFix or ASP.NET's UsePathBase read `X-Forwarded-Prefix`; Traefik's
 * StripPrefix sends it): the route's prefix without its upstream path at the end, which both start a segment
 * with. Nothing when that is not how the route maps paths, or the prefix is the root.
 */
function strippedPrefixOf(prefix: string, upstreamPath: string): string {
  if (prefix === '/' || !prefix.endsWith(upstreamPath)) return '';
  return prefix.slice(0, prefix.length - upstreamPath.length);
}

/**
 * Methods a route without `methods` still does not take (and `methods` cannot name): a service answering TRACE
 * as it should echoes the request, its Cookie and a forwarded Authorization included, to whatever script sent
 * it (cross-site tracing); CONNECT and TRACK ask for a tunnel or the same echo. nginx and Envoy refuse them too.
 */
const NOT_TAKEN_BY_DEFAULT = new Set(['TRACE', 'TRACK', 'CONNECT']);

/**
 * The part of the raw path after the route's prefix, as the client sent it. The prefix may be spelled
 * differently in the raw path (case, encoded letters), but never across a `/` (encoded slashes are refused),
 * so it spans exactly as many segments as the prefix has.
 */
function restOf(rawPath: string, prefix: string): string {
  // Counted, not split: this runs on every routed request.
  let slashes = 0;
  for (let at = prefix.indexOf('/'); at !== -1; at = prefix.indexOf('/', at + 1)) slashes++;
  let index = 0;
  while (slashes > 0) {
    index = rawPath.indexOf('/', index + 1);
    if (index === -1) return '';
    slashes--;
  }
  return rawPath.slice(index);
}

/**
 * The format suffix (`.json`) of a path its route owns through one (ownerOf), as the client spelt it: from the
 * dot that follows the prefix's last segment, plain or encoded (`%2e`), in the path's last segment.
 */
function formatSuffix(rawPath: string, prefix: string): string {
  // A trailing slash (which routing ignores) goes on with the suffix.
  const slash = rawPath.length > 1 && rawPath.endsWith('/') ? '/' : '';
  const path = slash ? rawPath.slice(0, -1) : rawPath;
  const segment = path.slice(path.lastIndexOf('/') + 1);
  const dotsInPrefix = prefix.slice(prefix.lastIndexOf('/') + 1).split('.').length - 1;
  const dots = /\.|%2e/gi;
  for (let seen = 0, found = dots.exec(segment); found; found = dots.exec(segment), seen++) {
    if (seen === dotsInPrefix) return segment.slice(found.index) + slash;
  }
  return slash;
}
