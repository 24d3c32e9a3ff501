import type { Middleware } from 'koa';
import { HTTP_METHODS } from '../config';
import { HEADER } from '../../otel/wire-names';

/** A Max-Forwards value (RFC 9110 7.6.2: `1*DIGIT`); anything else is not one, and is left as it came. */
const MAX_FORWARDS_VALUE = /^[\t ]*(\d{1,15})[\t ]*$/;

/** The count a request's `Max-Forwards` holds, if it holds one. */
export function maxForwardsOf(value: string | string[] | undefined): number | undefined {
  const count = typeof value === 'string' ? MAX_FORWARDS_VALUE.exec(value) : null;
  return count ? Number(count[1]) : undefined;
}

/**
 * `Max-Forwards: 0` on an OPTIONS request, as RFC 9110 7.6.2 requires of every intermediary: the gateway is the
 * final recipient and answers itself (204 with the route's `Allow`, as `OPTIONS *` is answered); a higher count
 * reaches the service one less (upstreamRequestHeaders). Without it a client probing the chain (`Max-Forwards: 0`
 * asks the first hop what it allows) was answered by the service behind. TRACE, the other method the field
 * applies to, is never forwarded (src/routes.ts). Runs once the route is known: its methods are the answer.
 */
export function createMaxForwards(): Middleware {
  // Not async: nothing to do after next(), so no promise and await of its own per request (a throw still rejects).
  return function countMaxForwards(ctx, next) {
    if (ctx.method !== 'OPTIONS' || maxForwardsOf(ctx.req.headers[HEADER.maxForwards]) !== 0) return next();
    const methods = ctx.state.route?.methods;
    ctx.status = 204;
    ctx.set('Allow', (methods ? [...methods] : HTTP_METHODS).join(', '));
  };
}
