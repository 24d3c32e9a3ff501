import { trace } from '@opentelemetry/api';
import type { Context, Middleware } from 'koa';
import { HEADER, LOG_FIELD } from '../../otel/wire-names';
import type { Logger } from '../../otel/logger';
import { quotedPath, REQUEST_CAUSED_SERVER_ERRORS, toGatewayError, type GatewayError } from '../errors';
import { cannotAnswer, cutResponse } from '../response-closed';
import { isHttp2Request } from './http2-requests';

export const PROBLEM_CONTENT_TYPE = 'application/problem+json';

/** The RFC 9457 body every gateway error carries. */
export interface ProblemBody {
  type: string;
  title: string;
  status: number;
  detail: string;
  code: string;
  requestId: string;
  instance: string;
}

/** `path`: the request's, quoted as `instance` (quotedPath). */
export function problemBody(error: GatewayError, requestId: string, path: string): ProblemBody {
  const instance = quotedPath(path);
  return {
    type: `urn:koa-gateway:problem:${error.code}`,
    title: error.title,
    status: error.status,
    detail: error.expose ? error.message : error.title,
    code: error.code,
    requestId,
    instance,
  };
}

export interface ErrorHandlerOptions {
  logger: Logger;
}

/**
 * The one place errors become HTTP: anything thrown below is mapped onto the catalog and answered as
 * `application/problem+json` with the request id. When the response had already started (an upstream
 * died mid-body), there is nothing left to say, so the client connection is closed at once instead.
 */
export function createErrorHandler(options: ErrorHandlerOptions): Middleware {
  const { logger } = options;
  return async function handleErrors(ctx, next) {
    try {
      await next();
    } catch (thrown) {
      const error = toGatewayError(thrown);
      recordFailure(ctx, error, logger);
      if (cannotAnswer(ctx)) {
        cutResponse(ctx);
        return;
      }
      ctx.status = error.status;
      ctx.set(isHttp2Request(ctx.req) ? withoutConnectionField(error.headers) : error.headers);
      ctx.set(HEADER.requestId, ctx.state.requestId);
      // The body names this request: a cache in front (a CDN) must not give it to another caller. A 404, 405 or
      // 414 would otherwise be stored by default (RFC 9111 4.2.2), and a 429 or 503 says when to retry regardless.
      ctx.set('Cache-Control', 'no-store');
      // The body quotes the request (its path, an Origin): never to be sniffed as anything but the JSON it is.
      ctx.set('X-Content-Type-Options', 'nosniff');
      ctx.type = PROBLEM_CONTENT_TYPE;
      ctx.body = problemBody(error, ctx.state.requestId, ctx.originalUrl.split('?')[0]!);
    }
  };
}

/**
 * An error's headers for an HTTP/2 answer: `Connection: close` (after a body the gateway would not read) is HTTP/1's
 * (RFC 9113 8.2.2); Node drops it from an HTTP/2 response with a warning on stderr, a line no log reader parses.
 */
function withoutConnectionField(headers: Record<string, string>): Record<string, string> {
  const connection = Object.keys(headers).find((name) => name.toLowerCase() === 'connection');
  if (connection === undefined) return headers;
  const { [connection]: _dropped, ...rest } = headers;
  return rest;
}

/**
 * Records why a request failed. The SERVER span, the access line and the metric all take the code (and the span
 * its error status) from `ctx.state.errorCode` when the response closes (src/middleware/tracing.ts): one answer,
 * recorded alike in all three. A failure of the gateway or its upstream (a 5xx the request did not bring about,
 * REQUEST_CAUSED_SERVER_ERRORS) is also logged, and its cause recorded on the active span (the SERVER span, in the
 * request's context). handleErrors records what the
 * pipeline throws; a server stream that fails after its first line (src/middleware/grpc-transcode.ts) records
 * its failure itself, since the pipeline returned long before.
 */
export function recordFailure(ctx: Context, error: GatewayError, logger: Logger): void {
  ctx.state.errorCode = error.code;
  if (error.status >= 500 && !REQUEST_CAUSED_SERVER_ERRORS.has(error.code)) {
    // The request id named here, not left to the context's baggage: with telemetry off no context manager carries it,
    // and the line that says why a 5xx happened could not be found under the id its client was given.
    logger.error('request failed', { code: error.code, error: describeCause(error), [LOG_FIELD.requestId]: ctx.state.requestId });
    trace.getActiveSpan()?.recordException(error.cause instanceof Error ? error.cause : error);
  }
}

function describeCause(error: GatewayError): string {
  const cause = error.cause;
  if (cause instanceof Error) return `${error.message} (${(cause as NodeJS.ErrnoException).code ?? cause.name}: ${cause.message})`;
  return error.message;
}
