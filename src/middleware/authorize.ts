import type { Middleware } from 'koa';
import { GatewayError, quotedPath } from '../errors';
import { DEFAULT_REALM } from './authenticate';

export interface AuthorizeOptions {
  /** `realm` of the 403's `WWW-Authenticate` challenge, the one authenticate's 401s name. Default DEFAULT_REALM. */
  realm?: string;
}

/**
 * Role rules per route: after authenticate, a route with `roles` admits only callers whose token (or API-key
 * consumer) carries one of them; others get 403 before anything is forwarded, with the challenge of the credential
 * they sent and `insufficient_scope` (RFC 6750 3 and 3.1: a token that does not enable access MUST be answered with
 * one), so a client tells "this token is not enough here" from "this token is bad".
 */
export function createAuthorize(options: AuthorizeOptions = {}): Middleware {
  const realm = options.realm ?? DEFAULT_REALM;
  const description = 'error_description="the caller\'s role is not allowed on this route"';
  const tokenChallenge = { 'WWW-Authenticate': `Bearer realm="${realm}", error="insufficient_scope", ${description}` };
  const keyChallenge = { 'WWW-Authenticate': `ApiKey realm="${realm}", error="insufficient_scope", ${description}` };
  // Not async: nothing to do after next(), so no promise and await of its own per request (a throw still rejects).
  return function authorize(ctx, next) {
    const roles = ctx.state.route?.roles;
    const { user, consumer } = ctx.state;
    const role = user?.role ?? consumer?.role;
    if (roles && (role === undefined || !roles.has(role))) {
      const headers = user ? tokenChallenge : consumer ? keyChallenge : undefined;
      throw new GatewayError('forbidden', `${ctx.method} ${quotedPath(ctx.path)} needs the role ${[...roles].join(' or ')}.`, headers ? { headers } : undefined);
    }
    return next();
  };
}
