import type { Middleware } from 'koa';
import { GATEWAY_OWNED_HEADER_PREFIXES } from '../../otel/wire-names';

/**
 * Removes, on every route (public ones included), every header the gateway owns: identity headers such as
 * `X-User-Id` and `X-User-Role`. Services can then trust what they see, because only the gateway can have put
 * it there. (Forwarding headers from untrusted peers are removed by createTrustedProxies.)
 */
export function createStripOwnedHeaders(): Middleware {
  return async function stripOwnedHeaders(ctx, next) {
    const headers = ctx.req.headers;
    for (const name of Object.keys(headers)) {
      if (GATEWAY_OWNED_HEADER_PREFIXES.some((prefix) => name.startsWith(prefix))) delete headers[name];
    }
    await next();
  };
}
