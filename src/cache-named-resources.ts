import type { StaleResource } from './cache-invalidations';
import { resourceKey } from './response-cache';
import type { RouteTable } from './routes';

/**
 * The stored resources a successful write's answer names in `Location` and `Content-Location` (RFC 9111 4.4: a
 * cache may invalidate them too). The common REST flows read them next: `POST /orders` answered 201 with
 * `Location: /orders/42`, `POST /orders/42/cancel` answered 303 with `Location: /orders/42`, a `PUT` answered with
 * `Content-Location`. Left stored, the client that wrote read the copy from before its write (a cached 404 of the
 * order it just created, the order before it was cancelled) for the rest of its lifetime.
 */
export interface NamedResourcesOptions {
  /** The gateway's routes: which one, and which upstream path, a named URL is. */
  routeTable: Pick<RouteTable, 'match'>;
  /** The routes with a `cache`, by name. */
  cachedRoutes: ReadonlyMap<string, unknown>;
}

/** The write as the client sent it: its public origin and path, and the route that took it. */
export interface NamingRequest {
  /** `http` or `https`, as the client addressed the gateway. */
  protocol: string;
  /** The Host the client addressed (empty when it sent none). */
  host: string;
  path: string;
  route: { name: string; service: string };
}

/**
 * Resolves the URLs an answer names (as the client sees them: the proxy has made the service's own addresses
 * public) against the request, and keeps only those of the request's own origin (RFC 9111 4.4: another origin's
 * URI must not be invalidated, lest one origin empty another's cache) on a cached route of the same service (the
 * gateway is one origin for many services: one service's answers must not empty another's copies either).
 */
export function createNamedResources(options: NamedResourcesOptions): (request: NamingRequest, urls: readonly string[]) => StaleResource[] {
  return (request, urls) => {
    if (urls.length === 0 || request.host === '') return [];
    const named: StaleResource[] = [];
    let base: URL;
    try {
      base = new URL(`${request.protocol}://${request.host}${request.path}`);
    } catch {
      return [];
    }
    for (const value of urls) {
      let url: URL;
      try {
        // As a browser resolves it before its next request: relative references, dot segments, default ports.
        url = new URL(value, base);
      } catch {
        continue;
      }
      if (url.origin !== base.origin) continue;
      const match = options.routeTable.match(url.pathname, 'GET');
      if (match?.kind !== 'matched' || match.route.service !== request.route.service) continue;
      if (!options.cachedRoutes.has(match.route.name)) continue;
      const query = url.search.slice(1);
      named.push({ route: match.route.name, resource: resourceKey(match.route.name, query ? `${match.upstreamPath}?${query}` : match.upstreamPath) });
    }
    return named;
  };
}
