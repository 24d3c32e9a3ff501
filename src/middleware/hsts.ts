import type { Middleware } from 'koa';

export interface StrictTransportSecurityOptions {
  /** How long browsers remember to use HTTPS only, s. */
  maxAgeSeconds: number;
  includeSubDomains: boolean;
  preload: boolean;
}

/**
 * `Strict-Transport-Security` (RFC 6797) on every response sent over HTTPS, error responses included (it is set
 * before anything below can throw). Never over plain HTTP: browsers ignore it there (RFC 6797 7.2), and the
 * redirect listener's `/health` is plain. Mounted only with `tls.hsts`.
 */
export function createStrictTransportSecurity(options: StrictTransportSecurityOptions): Middleware {
  const value = [`max-age=${options.maxAgeSeconds}`, ...(options.includeSubDomains ? ['includeSubDomains'] : []), ...(options.preload ? ['preload'] : [])].join('; ');
  return async function strictTransportSecurity(ctx, next) {
    if (ctx.protocol === 'https') ctx.set('Strict-Transport-Security', value);
    await next();
  };
}
