import type { Middleware } from 'koa';
import { GatewayError } from '../errors';

/**
 * Role rules per route: after authenticate, a route with `roles` admits only callers whose token (or API-key
 * consumer) carries one of them; others get 403 before anything is forwarded.
 */
export function createAuthorize(): Middleware {
  // Not async: nothing to do after next(), so no promise and await of its own per request (a throw still rejects).
  return function authorize(ctx, next) {
    const roles = ctx.state.route?.roles;
    const role = ctx.state.user?.role ?? ctx.state.consumer?.role;
    if (roles && (role === undefined || !roles.has(role))) {
      throw new GatewayError('forbidden', `${ctx.method} ${ctx.path} needs the role ${[...roles].join(' or ')}.`);
    }
    return next();
  };
}
