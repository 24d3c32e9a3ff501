import type { Middleware } from 'koa';
import { GatewayError } from '../errors';
import type { RouteTable } from '../routes';

export interface RouteMatchOptions {
  routes: RouteTable;
}

/** Finds the route for the (already guarded) path; no route is 404, a wrong method 405 with `Allow`. */
export function createRouteMatch(options: RouteMatchOptions): Middleware {
  return async function matchRoute(ctx, next) {
    const match = options.routes.match(ctx.path, ctx.method);
    if (!match) throw new GatewayError('route_not_found', `No route matches ${ctx.method} ${ctx.path}.`);
    if (match.kind === 'method_not_allowed') {
      const allow = match.allowed.join(', ');
      throw new GatewayError('method_not_allowed', `${ctx.path} accepts ${allow}.`, { headers: { Allow: allow } });
    }
    const { route } = match;
    ctx.state.route = route;
    ctx.state.upstreamPath = match.upstreamPath;
    await next();
  };
}
