import type { Middleware } from 'koa';
import { GATEWAY_OWNED_HEADER_PREFIXES } from '../../otel/wire-names';

/** Forwarding headers a client could forge to change who it appears to be. */
export const FORWARDING_HEADERS = ['forwarded', 'x-forwarded-for', 'x-forwarded-host', 'x-forwarded-proto', 'x-forwarded-port', 'x-real-ip'];

export interface StripOwnedHeadersOptions {
  /** Keep inbound `X-Forwarded-*` because a trusted proxy sits in front. Default false. */
  trustProxy?: boolean;
}

/**
 * Removes, on every route (public ones included), every header the gateway owns: identity headers such as
 * `X-User-Id` and `X-User-Role`, and unless a proxy is trusted the forwarding headers. Services can then
 * trust what they see, because only the gateway can have put it there.
 */
export function createStripOwnedHeaders(options: StripOwnedHeadersOptions = {}): Middleware {
  const stripForwarding = !options.trustProxy;
  return async function stripOwnedHeaders(ctx, next) {
    const headers = ctx.req.headers;
    for (const name of Object.keys(headers)) {
      if (GATEWAY_OWNED_HEADER_PREFIXES.some((prefix) => name.startsWith(prefix))) delete headers[name];
    }
    if (stripForwarding) {
      for (const name of FORWARDING_HEADERS) delete headers[name];
    }
    await next();
  };
}
