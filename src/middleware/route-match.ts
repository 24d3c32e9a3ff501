import type { Middleware } from 'koa';
import { GatewayError, quotedPath } from '../errors';
import type { RouteTable } from '../routes';
import { HEADER } from '../../otel/wire-names';
import { maxForwardsOf } from './max-forwards';
import { refuseAtOnce, type Refuse } from './rate-limit';

export interface RouteMatchOptions {
  routes: RouteTable;
  /**
   * Answers a request the table refuses (404, 405) once it spent the rate limit (gateway.ts, createRefusalRateLimit);
   * at once when absent.
   */
  refuse?: Refuse;
}

/**
 * Finds the route that owns the (already guarded) path: none is 404, a method the owner does not take is
 * 405 with `Allow`, never a less specific route with weaker rules.
 */
export function createRouteMatch(options: RouteMatchOptions): Middleware {
  const refuse = options.refuse ?? refuseAtOnce;
  // Not async: nothing to do after next(), so no promise and await of its own per request (a throw still rejects).
  return function matchRoute(ctx, next) {
    const match = options.routes.match(ctx.path, ctx.method);
    if (!match) return refuse(ctx, new GatewayError('route_not_found', `No route matches ${ctx.method} ${quotedPath(ctx.path)}.`));
    if (match.kind === 'method_not_allowed') {
      // The route exists: its 405 is recorded under it (span, access line, metrics), not with paths that match none.
      ctx.state.route = match.route;
      // RFC 9110 7.6.2: an OPTIONS with Max-Forwards: 0 is answered by the gateway as its final recipient, 204 with the
      // route's Allow (createMaxForwards, after the rate limit), whichever methods the route forwards: it got 405.
      if (ctx.method === 'OPTIONS' && maxForwardsOf(ctx.req.headers[HEADER.maxForwards]) === 0) return next();
      const allow = match.allowed.join(', ');
      return refuse(ctx, new GatewayError('method_not_allowed', `${quotedPath(ctx.path)} accepts ${allow}.`, { headers: { Allow: allow } }));
    }
    ctx.state.route = match.route;
    ctx.state.upstreamPath = match.upstreamPath;
    return next();
  };
}
