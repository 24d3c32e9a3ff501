import type { Middleware } from 'koa';
import { HTTP_METHODS } from '../config';
import { HEADER } from '../../otel/wire-names';
import { withoutEdgeWhitespace } from '../../otel/field-whitespace';

/**
 * The largest count the gateway sends on: RFC 9110 7.6.2 has an intermediary send "the lesser of" the count less one
 * and its own maximum, so a count too long for a number (`99999999999999999999`) goes on as this.
 */
export const MAX_FORWARDS_SUPPORTED = 10 ** 15 - 1;

/**
 * The count a request's `Max-Forwards` holds, if it holds one: leading zeros of any length are no count of their own
 * (`0000000000000000` is 0); a field sent twice (two HTTP/2 header fields, which Node hands over as a list) counts
 * by its first, as Node keeps only the first over HTTP/1.1.
 */
export function maxForwardsOf(value: string | string[] | undefined): number | undefined {
  const first = Array.isArray(value) ? value[0] : value;
  if (typeof first !== 'string') return undefined;
  // A Max-Forwards value (RFC 9110 7.6.2: `1*DIGIT`, any length, within optional whitespace); anything else is not
  // one, and is left as it came. Scanned, not matched by `/^[\t ]*0*(\d+)[\t ]*$/`: its `0*` before `\d+` made a long
  // run of zeros followed by anything else quadratic (16 KiB of them held the event loop for 0.45 s).
  const digits = withoutEdgeWhitespace(first);
  if (!ALL_DIGITS.test(digits)) return undefined;
  let start = 0;
  while (start < digits.length - 1 && digits.charCodeAt(start) === 0x30) start++;
  const count = digits.slice(start);
  return count.length > 15 ? MAX_FORWARDS_SUPPORTED + 1 : Number(count);
}

/** One or more ASCII digits and nothing else (one pass: nothing to backtrack into). */
const ALL_DIGITS = /^[0-9]+$/;

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
