import type { Context, Middleware } from 'koa';
import { UNTRACED_PATHS } from '../../otel/telemetry-config';
import { GatewayError } from '../errors';
import { refuseAtOnce, type Refuse } from './rate-limit';

export interface HostGuardOptions {
  /** Host names served (`api.example.com`, `*.example.com`); undefined = any. */
  allowedHosts: readonly string[] | undefined;
  /** Answers a refusal once it spent a rate limit (createRefusalRateLimit); at once by default. */
  refuse?: Refuse;
}

/**
 * Answers 421 for a host the gateway does not serve. Services build absolute links from `X-Forwarded-Host`;
 * without this a client's `Host: evil.example` would become that header (host-header poisoning of password
 * reset links, cache keys, redirects). The host is the one Koa settled on: a trusted proxy's
 * `X-Forwarded-Host`, else `Host`; compared without port and case. Health probes (`/health`, `/ready`) are
 * exempt: orchestrators call them by address.
 */
export function createHostGuard(options: HostGuardOptions): Middleware | undefined {
  if (options.allowedHosts === undefined) return undefined;
  const refuse = options.refuse ?? refuseAtOnce;
  const refusal = hostRefusal(options.allowedHosts)!;

  // Not async: nothing to do after next(), so no promise and await of its own per request.
  return function guardHost(ctx, next) {
    if (!UNTRACED_PATHS.includes(ctx.path)) {
      const refused = refusal(ctx);
      if (refused) return refuse(ctx, refused);
    }
    return next();
  };
}

/**
 * The 421 of a request to a host the gateway does not serve, or undefined; no check at all (undefined) without
 * `allowedHosts`. Also asked where a request is answered before the guard runs (`OPTIONS *`, createRequestHeadCheck).
 */
export function hostRefusal(allowedHosts: readonly string[] | undefined): ((ctx: Context) => GatewayError | undefined) | undefined {
  if (allowedHosts === undefined) return undefined;
  const allowed = createHostMatcher(allowedHosts);
  return (ctx) => {
    const hostname = ctx.hostname.toLowerCase().replace(/^\[(.*)\]$/, '$1');
    return allowed(hostname) ? undefined : new GatewayError('host_not_allowed', `This gateway does not serve the host ${JSON.stringify(hostname.slice(0, 100))}.`);
  };
}

/**
 * Whether a host name (lower case, an IPv6 address without brackets) is one of `allowedHosts`: an exact name
 * or address, or a subdomain of a `*.` entry (not the bare domain). Shared by this guard and the HTTPS
 * redirect listener (src/tls.ts), so both listeners serve the same names.
 */
export function createHostMatcher(allowedHosts: readonly string[]): (hostname: string) => boolean {
  const exact = new Set<string>();
  const suffixes: string[] = [];
  for (const host of allowedHosts.map((entry) => entry.toLowerCase())) {
    if (host.startsWith('*.')) suffixes.push(host.slice(1));
    else exact.add(canonicalAddress(host.replace(/^\[(.*)\]$/, '$1')));
  }
  return (hostname) => exact.has(canonicalAddress(hostname)) || suffixes.some((suffix) => hostname.endsWith(suffix) && hostname.length > suffix.length);
}

/**
 * An IPv6 address (without brackets) in its one RFC 5952 spelling, a name as it is. Koa's hostname holds the short
 * form and the redirect listener the client's: an entry `[2001:db8:0:0:0:0:0:1]` was refused (421) on HTTPS while
 * the redirect sent clients there, and `[2001:db8::1]` the other way round.
 */
function canonicalAddress(hostname: string): string {
  if (!hostname.includes(':')) return hostname;
  const url = `http://[${hostname}]`;
  return URL.canParse(url) ? new URL(url).hostname.slice(1, -1) : hostname;
}
