import type { Middleware } from 'koa';
import { GatewayError } from '../errors';

/**
 * Role rules per route: after authenticate, a route with `roles` admits only callers whose token carries one
 * of them; others get 403 before anything is forwarded.
 */
export function createAuthorize(): Middleware {
  return async function authorize(ctx, next) {
    const roles = ctx.state.route?.roles;
    const user = ctx.state.user;
    if (roles && (!user || !roles.has(user.role))) {
      throw new GatewayError('forbidden', `${ctx.method} ${ctx.path} needs the role ${[...roles].join(' or ')}.`);
    }
    await next();
  };
}
