import { context } from '@opentelemetry/api';
import type { Middleware } from 'koa';
import { logLine, type Logger } from '../../otel/logger';

/** Query parameters whose values never reach a log (tokens in URLs are still tokens). */
const SECRET_QUERY_PARAM = /token|password|passwd|secret|key|code|signature|auth/i;

/** `ctx.originalUrl` with the values of secret-looking query parameters replaced. */
export function redactUrl(url: string): string {
  const queryStart = url.indexOf('?');
  if (queryStart === -1) return url;
  const query = url
    .slice(queryStart + 1)
    .split('&')
    .map((pair) => {
      const name = pair.split('=', 1)[0]!;
      return SECRET_QUERY_PARAM.test(name) && pair.includes('=') ? `${name}=[REDACTED]` : pair;
    })
    .join('&');
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
    ctx.res.once('close', () => {
      const durationMs = Number(process.hrtime.bigint() - started) / 1e6;
      const status = ctx.res.writableFinished ? ctx.res.statusCode : 499;
      const state = ctx.state;
      const entry = {
        method,
        url,
        status,
        duration_ms: Math.round(durationMs * 1000) / 1000,
        request_id: state.requestId,
        route: state.route?.name ?? null,
        user_id: state.user?.id ?? null,
        error_code: state.errorCode ?? null,
      };
      const level = status >= 500 ? 'error' : status >= 400 ? 'warn' : 'info';
      logLine(logger, level, 'request completed', entry, requestContext);
    });
    await next();
  };
}
