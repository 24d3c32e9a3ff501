import type { Middleware } from 'koa';
import { GatewayError } from '../errors';
import type { RouteTable } from '../routes';

export interface RouteMatchOptions {
  routes: RouteTable;
}

/** Finds the route for the (already guarded) path; no route is 404, a wrong method 405 with `Allow`. */
export function createRouteMatch(options: RouteMatchOptions): Middleware {
  return async function matchRoute(ctx, next) {
    const match = options.routes.match(ctx.path);
    if (!match) throw new GatewayError('route_not_found', `No route matches ${ctx.method} ${ctx.path}.`);
    const { route } = match;
    if (route.methods && !route.methods.has(ctx.method)) {
      throw new GatewayError('method_not_allowed', `${route.prefix} accepts ${[...route.methods].join(', ')}.`, {
        headers: { Allow: [...route.methods].join(', ') },
      });
    }
    ctx.state.route = route;
    ctx.state.upstreamPath = match.upstreamPath;
    await next();
  };
}
