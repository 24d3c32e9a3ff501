import type { TLSSocket } from 'node:tls';
import type { Middleware } from 'koa';

export interface StrictTransportSecurityOptions {
  /** How long browsers remember to use HTTPS only, s. */
  maxAgeSeconds: number;
  includeSubDomains: boolean;
  preload: boolean;
}

/**
 * The `Strict-Transport-Security` field value `options` describe (`max-age=600; includeSubDomains`): what the
 * middleware below sends, and what runServer writes on the answers it gives outside the pipeline (src/main.ts).
 */
export function strictTransportSecurityValue(options: StrictTransportSecurityOptions): string {
  return [`max-age=${options.maxAgeSeconds}`, ...(options.includeSubDomains ? ['includeSubDomains'] : []), ...(options.preload ? ['preload'] : [])].join('; ');
}

/**
 * `Strict-Transport-Security` (RFC 6797) on every response sent over HTTPS (7.1), error responses included: it
 * is mounted first, so it is set before anything can answer or throw. The answers written outside the pipeline
 * (Node's parser refusals, CONNECT) carry it through runServer's `strictTransportSecurity`.
 *
 * Never over plain HTTP (7.2), the redirect listener's `/health` included: the gateway's own socket decides, not
 * `ctx.protocol`, which with `trustProxy` believes an `X-Forwarded-Proto: https` any peer may send. Mounted only
 * with `tls.hsts`, so the gateway itself terminates TLS.
 */
export function createStrictTransportSecurity(options: StrictTransportSecurityOptions): Middleware {
  const value = strictTransportSecurityValue(options);
  // Not async: nothing to do after next(), so no promise of its own per request.
  return function strictTransportSecurity(ctx, next) {
    // HTTP/2's compatibility request hands out its session's TLS socket here too.
    if ((ctx.req.socket as TLSSocket).encrypted) ctx.set('Strict-Transport-Security', value);
    return next();
  };
}
