import type { Middleware } from 'koa';
import { dashedSpelling, isForeignTraceContextHeader, isLookAlikeName } from '../../otel/wire-names';
import { GatewayError } from '../errors';
import { refuseAtOnce, type Refuse } from './rate-limit';
import { remembered } from '../remembered';
import { forbiddenClientHeaderTest, REMEMBERED_HEADER_NAME_MAX_LENGTH, type UnderscoreHeaderPolicy } from '../upstream-headers';
import { traceContextTrust } from './trusted-proxies';

export interface ClientHeaderPolicyOptions {
  /** Header names with `_` or `.` (look-alikes, isLookAlikeName): `drop` (default), `reject` with 400, or `allow`. */
  underscores: UnderscoreHeaderPolicy;
  /**
   * Clients are trusted with trace context (config `trustTraceparent`): their B3, Jaeger, X-Ray, ... headers pass on
   * as their W3C ones do. Otherwise those are removed (createTracing removes the W3C ones). Default false.
   */
  trustTraceContext?: boolean;
  /** With `trustTraceContext`: only these peers' (config `trustedProxies`) pass on; unset, every peer's. */
  trustedProxies?: readonly string[];
  /** Answers a refusal once it spent a rate limit (createRefusalRateLimit); at once by default. */
  refuse?: Refuse;
}

/** Trace context in a format other than W3C's, in any spelling (a look-alike as its `-` twin): remembered by name. */
const isForeignTraceContext = remembered((name) => isForeignTraceContextHeader(isLookAlikeName(name) ? dashedSpelling(name) : name), {
  maxKeyLength: REMEMBERED_HEADER_NAME_MAX_LENGTH,
});

/**
 * Removes, on every route (public ones included), the client headers the gateway never passes on (owned
 * prefixes such as `x-user-*`, request-rewriting headers, `_` and `.` look-alikes; see isForbiddenClientHeader), so
 * nothing later in the pipeline reads a forged value either. Under the `reject` policy a name with `_` or `.` is
 * answered with 400 instead. Trace context in formats other than W3C's goes too, in any spelling, unless clients are
 * trusted with it (a service reading B3 or X-Ray would otherwise continue a client's trace). The proxy applies the
 * same rule again (but for trace context, removed here for good) when it assembles the upstream request
 * (src/upstream-headers.ts), where the gateway's own headers are written last.
 */
export function createClientHeaderPolicy(options: ClientHeaderPolicyOptions): Middleware {
  const { underscores } = options;
  const refuse = options.refuse ?? refuseAtOnce;
  const trusts = traceContextTrust(options.trustTraceContext ?? false, options.trustedProxies);
  const isForbidden = forbiddenClientHeaderTest(underscores);
  // Not async: nothing to do after next(), so no promise and await of its own per request.
  return function screenClientHeaders(ctx, next) {
    const headers = ctx.req.headers;
    const dropTraceContext = !trusts(ctx.req.socket.remoteAddress);
    for (const name of Object.keys(headers)) {
      if (underscores === 'reject' && isLookAlikeName(name)) {
        return refuse(ctx, new GatewayError('header_not_allowed', `Header names with "_" or "." are not accepted (${name}).`));
      }
      if (isForbidden(name) || (dropTraceContext && isForeignTraceContext(name))) delete headers[name];
    }
    return next();
  };
}
