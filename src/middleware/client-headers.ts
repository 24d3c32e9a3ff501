import type { Middleware } from 'koa';
import { isLookAlikeName } from '../../otel/wire-names';
import { GatewayError } from '../errors';
import { isForbiddenClientHeader, type UnderscoreHeaderPolicy } from '../upstream-headers';

export interface ClientHeaderPolicyOptions {
  /** Header names with `_` or `.` (look-alikes, isLookAlikeName): `drop` (default), `reject` with 400, or `allow`. */
  underscores: UnderscoreHeaderPolicy;
}

/**
 * Removes, on every route (public ones included), the client headers the gateway never passes on (owned
 * prefixes such as `x-user-*`, request-rewriting headers, `_` and `.` look-alikes; see isForbiddenClientHeader), so
 * nothing later in the pipeline reads a forged value either. Under the `reject` policy a name with `_` or `.` is
 * answered with 400 instead. The proxy applies the same rule again when it assembles the upstream request
 * (src/upstream-headers.ts), where the gateway's own headers are written last.
 */
export function createClientHeaderPolicy(options: ClientHeaderPolicyOptions): Middleware {
  const { underscores } = options;
  // Not async: nothing to do after next(), so no promise and await of its own per request (a throw still rejects).
  return function screenClientHeaders(ctx, next) {
    const headers = ctx.req.headers;
    for (const name of Object.keys(headers)) {
      if (underscores === 'reject' && isLookAlikeName(name)) {
        throw new GatewayError('header_not_allowed', `Header names with "_" or "." are not accepted (${name}).`);
      }
      if (isForbiddenClientHeader(name, underscores)) delete headers[name];
    }
    return next();
  };
}
