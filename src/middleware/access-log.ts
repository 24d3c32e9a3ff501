import { context } from '@opentelemetry/api';
import type { Middleware } from 'koa';
import { logLine, type Logger } from '../../otel/logger';
import { ACCESS_LINE_MESSAGE, type AccessLine } from '../../otel/wire-names';
import { onResponseClosed, recordedStatus } from '../response-closed';

/** Query parameters whose values never reach a log (tokens in URLs are still tokens). */
// `sig`: Azure SAS and other signed URLs; `jwt`, `session`, `pwd`, `credential`, `assertion` (SAML), `otp`: the
// other names secrets travel under. A harmless name that contains one (`design`) is redacted too: only safer.
const SECRET_QUERY_PARAM = /token|password|passwd|pwd|secret|key|code|sig|auth|jwt|session|credential|assertion|otp/i;

/** Decodings tried on a parameter name: enough for `%2574oken` (double-encoded) and a little more. */
const MAX_NAME_DECODINGS = 3;

/**
 * Whether a query parameter name means a secret, in any spelling a service could read it as: services decode
 * names (`%74oken` is `token`, `+` is a space), some twice, so every decoding is checked, not only the raw
 * text. A name that does not decode cleanly is judged on what it decoded to so far.
 */
function isSecretName(rawName: string): boolean {
  let name = rawName.replaceAll('+', ' ');
  for (let round = 0; round <= MAX_NAME_DECODINGS; round++) {
    if (SECRET_QUERY_PARAM.test(name)) return true;
    if (!name.includes('%')) return false;
    try {
      name = decodeURIComponent(name);
    } catch {
      // Malformed escapes: decode the well-formed ones only (`%zz%74oken` still reads as `...token`).
      name = name.replace(/%[0-9a-f]{2}/gi, (escape) => String.fromCharCode(parseInt(escape.slice(1), 16)));
    }
  }
  return SECRET_QUERY_PARAM.test(name);
}

/** `ctx.originalUrl` with the value of every secret-looking query parameter replaced, each occurrence. */
export function redactUrl(url: string): string {
  const queryStart = url.indexOf('?');
  if (queryStart === -1) return url;
  // `;` separates parameters for some servers too (HTML 4's recommendation; older Rack, Python < 3.10).
  const query = url.slice(queryStart + 1).replace(/(^|[&;])([^&;=]*)=([^&;]*)/g, (pair, separator: string, name: string) => (isSecretName(name) ? `${separator}${name}=[REDACTED]` : pair));
  return `${url.slice(0, queryStart)}?${query}`;
}

export interface AccessLogOptions {
  logger: Logger;
}

/**
 * One JSON line per request, written when the response is really over (finished or aborted), so proxied
 * responses that stream after the middleware returned are timed and counted correctly. A client that
 * went away before the end is logged with status 499, as nginx does.
 */
export function createAccessLog(options: AccessLogOptions): Middleware {
  const { logger } = options;
  return async function logAccess(ctx, next) {
    const started = process.hrtime.bigint();
    const url = redactUrl(ctx.originalUrl);
    const method = ctx.method;
    // 'close' listeners run outside the request's context; the line is written with it.
    const requestContext = context.active();
    onResponseClosed(ctx, () => {
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      const status = recordedStatus(ctx);
      const state = ctx.state;
      // Every key of AccessLine, written out (no computed keys: see createTracing, src/middleware/tracing.ts).
      const entry: AccessLine = {
        method,
        url,
        status,
        duration_ms: Math.round(durationMs * 1000) / 1000,
        request_id: state.requestId,
        route: state.route?.name ?? null,
        user_id: state.user?.id ?? null,
        error_code: state.errorCode ?? null,
        consumer_id: state.consumer?.id ?? null,
        cache: state.cache ?? null,
      };
      // A response cut after it started (its status may be 200) failed all the same.
      const level = status >= 500 || (!ctx.res.writableFinished && state.errorCode !== undefined) ? 'error' : status >= 400 ? 'warn' : 'info';
      logLine(logger, level, ACCESS_LINE_MESSAGE, entry, requestContext);
    });
    await next();
  };
}
