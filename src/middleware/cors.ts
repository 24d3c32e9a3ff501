import type { Middleware } from 'koa';
import type { CorsConfig } from '../config';
import { GatewayError } from '../errors';
import type { CompiledRoute, RouteTable } from '../routes';
import { PROBE_METHODS, UNTRACED_PATHS } from '../../otel/telemetry-config';
import { FIELD_NAME_TOKEN } from '../../otel/wire-names';

export interface CorsOptions {
  /** The policy of routes without their own; undefined = no cross-origin access unless a route has one. */
  defaults: CorsConfig | undefined;
  /** Per-route policies by route name; `false` refuses cross-origin use of that route. */
  byRoute: ReadonlyMap<string, CorsConfig | false>;
  routes: RouteTable;
}

interface CompiledPolicy {
  anyOrigin: boolean;
  origins: ReadonlySet<string>;
  credentials: boolean;
  allowMethods: string;
  /** What a preflight to a probe (`/health`, `/ready`) offers: the policy's methods of those it takes (GET, HEAD). */
  probeAllowMethods: string;
  allowHeaders: string;
  /**
   * `headers` has `*`: a preflight is allowed the headers it asks for, named. The field's own `*` covers no
   * `Authorization` (Fetch: a "CORS non-wildcard request-header name") and, with credentials, means a header
   * named `*`: a policy of `["*"]` answered every bearer-token preflight with a field the browser refused.
   */
  anyHeader: boolean;
  exposeHeaders: string;
  maxAge: string;
}

function compile(policy: CorsConfig): CompiledPolicy {
  return {
    anyOrigin: policy.origins.includes('*'),
    origins: new Set(policy.origins),
    credentials: policy.credentials,
    allowMethods: policy.methods.join(', '),
    probeAllowMethods: policy.methods.filter((method) => PROBE_METHODS.includes(method)).join(', '),
    allowHeaders: policy.headers.join(', '),
    anyHeader: policy.headers.includes('*'),
    exposeHeaders: policy.exposeHeaders.join(', '),
    maxAge: String(policy.maxAgeSeconds),
  };
}

/**
 * CORS at the gateway, per route: preflights (OPTIONS with `Access-Control-Request-Method`) are answered here,
 * before rate limits and authentication (browsers send no token with them) and never reach a service. For
 * actual requests the headers are set before anything below runs, so error responses (401, 429, 5xx) carry
 * them too and a browser script can read the problem body. A disallowed origin gets no CORS headers (the
 * browser then blocks the response) and its preflight a 403.
 */
export function createCors(options: CorsOptions): Middleware {
  const defaults = options.defaults && compile(options.defaults);
  const byRoute = new Map([...options.byRoute].map(([name, policy]) => [name, policy === false ? undefined : compile(policy)]));
  // The route that owns the path decides for every method on it (its `cors: false` holds for the 405 too).
  const policyOf = (route: CompiledRoute | undefined): CompiledPolicy | undefined => (route && byRoute.has(route.name) ? byRoute.get(route.name) : defaults);
  // A preflight offers only what the route behind the path takes: the policy's methods it does not would get 405.
  const allowMethodsFor = new Map<string, string>();
  const allowedMethods = (route: CompiledRoute | undefined, policy: CompiledPolicy): string => {
    if (!route?.methods) return policy.allowMethods;
    const key = `${route.name} ${policy.allowMethods}`;
    let methods = allowMethodsFor.get(key);
    if (methods === undefined) {
      methods = policy.allowMethods
        .split(', ')
        .filter((method) => route.methods!.has(method))
        .join(', ');
      allowMethodsFor.set(key, methods);
    }
    return methods;
  };
  // A route's `cors: false` is a policy too: left out, a config whose only CORS setting was `false` applied none, and
  // the service's own CORS headers (an origin reflected with credentials) and preflights went through.
  const anyPolicy = defaults !== undefined || byRoute.size > 0;

  return async function applyCors(ctx, next) {
    if (!anyPolicy) return next();
    // Even without Origin: a shared cache must not hand this origin-less answer (no CORS headers) to a
    // cross-origin request, or the reverse (Fetch standard, "CORS protocol and HTTP caches"). Upstream CORS
    // headers are dropped then too: the gateway's policy is the only one.
    ctx.vary('Origin');
    ctx.state.corsApplied = true;
    const origin = ctx.get('origin');
    if (!origin) return next();
    const preflightMethod = ctx.method === 'OPTIONS' ? ctx.get('access-control-request-method') : '';
    const route = options.routes.owner(ctx.path);
    const policy = policyOf(route);
    const allowed = policy !== undefined && (policy.anyOrigin || policy.origins.has(origin));

    if (preflightMethod) {
      if (!allowed) {
        ctx.state.corsRefused = true;
        // Quoted and cut, as the host guard quotes a Host: a 12 KB Origin was copied whole into the answer.
        throw new GatewayError('forbidden', `Cross-origin requests from ${JSON.stringify(origin.slice(0, 100))} are not allowed here.`);
      }
      // The answer names what the preflight asked for: a cache must not give it to one that asked for other headers.
      if (policy.anyHeader) ctx.vary('Access-Control-Request-Headers');
      ctx.set({
        'Access-Control-Allow-Origin': policy.anyOrigin ? '*' : origin,
        // The probes answer 405 to all but GET and HEAD, whichever route's prefix covers their path (`/`).
        'Access-Control-Allow-Methods': UNTRACED_PATHS.includes(ctx.path) ? policy.probeAllowMethods : allowedMethods(route, policy),
        'Access-Control-Allow-Headers': policy.anyHeader ? requestedHeaders(ctx.get('access-control-request-headers')) : policy.allowHeaders,
        'Access-Control-Max-Age': policy.maxAge,
        ...(policy.credentials ? { 'Access-Control-Allow-Credentials': 'true' } : {}),
      });
      ctx.status = 204;
      return;
    }
    if (allowed) {
      ctx.set({
        'Access-Control-Allow-Origin': policy.anyOrigin ? '*' : origin,
        'Access-Control-Expose-Headers': policy.exposeHeaders,
        ...(policy.credentials ? { 'Access-Control-Allow-Credentials': 'true' } : {}),
      });
    }
    await next();
  };
}

/**
 * The header names a preflight asks for (`Access-Control-Request-Headers`, a comma list), lower-cased and checked,
 * as a wildcard policy answers them: a name that is no token is left out (the browser then refuses the request),
 * and so is `*`.
 */
function requestedHeaders(asked: string): string {
  return asked
    .split(',')
    .map((name) => name.trim().toLowerCase())
    .filter((name) => name !== '*' && FIELD_NAME_TOKEN.test(name))
    .join(', ');
}
