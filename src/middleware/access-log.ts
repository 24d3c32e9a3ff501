import { context } from '@opentelemetry/api';
import type { Middleware } from 'koa';
import { sentMethod } from '../../otel/http-method';
import { logLine, type Logger } from '../../otel/logger';
import { redactUrl } from '../../otel/redact-url';
import { ACCESS_LINE_MESSAGE, type AccessLine } from '../../otel/wire-names';
import { CLIENT_CAUSED_CUTS, REQUEST_CAUSED_SERVER_ERRORS } from '../errors';
import { arrivalOf } from '../request-arrival';
import { failedAfterStarting, onResponseClosed, recordedStatus } from '../response-closed';

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
    // From the request's arrival, its wait for the pipeline included (src/request-arrival.ts).
    const started = arrivalOf(ctx.req);
    const url = redactUrl(ctx.originalUrl);
    // None past a length, as a refused HTTP/1.1 request line's (otel/lifecycle.ts): HTTP/2 carries a `:method` of any.
    const method = sentMethod(ctx.method) ?? null;
    // 'close' listeners run outside the request's context; the line is written with it.
    const requestContext = context.active();
    onResponseClosed(ctx, () => {
      const durationMs = performance.now() - started;
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
        // The span's `client.address` (a trusted proxy's client, else the peer): a flood of 401s or 429s whose spans
        // were sampled out could not be told apart by source from the log alone (an outside review).
        client_address: ctx.ip || null,
      };
      // A response that failed after it started (its status may be 200) failed all the same; a 5xx the request
      // itself brought about (an unknown method) is the client's doing, as over HTTP/1.1's parser (otel/lifecycle.ts).
      const serverFailed = status >= 500 && (state.errorCode === undefined || !REQUEST_CAUSED_SERVER_ERRORS.has(state.errorCode));
      const cutByServer = failedAfterStarting(ctx, status, state.errorCode) && !CLIENT_CAUSED_CUTS.has(state.errorCode!);
      const level = serverFailed || cutByServer ? 'error' : status >= 400 || state.errorCode !== undefined ? 'warn' : 'info';
      logLine(logger, level, ACCESS_LINE_MESSAGE, entry, requestContext);
    });
    await next();
  };
}
