import type { Middleware } from 'koa';
import { GatewayError } from '../errors';
import type { RouteTable } from '../routes';

export interface RouteMatchOptions {
  routes: RouteTable;
}

/**
 * Finds the route that owns the (already guarded) path: none is 404, a method the owner does not take is
 * 405 with `Allow`, never a less specific route with weaker rules.
 */
export function createRouteMatch(options: RouteMatchOptions): Middleware {
  // Not async: nothing to do after next(), so no promise and await of its own per request (a throw still rejects).
  return function matchRoute(ctx, next) {
    const match = options.routes.match(ctx.path, ctx.method);
    if (!match) throw new GatewayError('route_not_found', `No route matches ${ctx.method} ${ctx.path}.`);
    if (match.kind === 'method_not_allowed') {
      // The route exists: its 405 is recorded under it (span, access line, metrics), not with paths that match none.
      ctx.state.route = match.route;
      const allow = match.allowed.join(', ');
      throw new GatewayError('method_not_allowed', `${ctx.path} accepts ${allow}.`, { headers: { Allow: allow } });
    }
    ctx.state.route = match.route;
    ctx.state.upstreamPath = match.upstreamPath;
    return next();
  };
}
