import type { Context as OtelContext } from '@opentelemetry/api';
import type {} from 'koa';
import type { CacheResult } from '../otel/wire-names';
import type { Consumer } from './consumers';
import type { CheckedRateLimit } from './middleware/rate-limit';
import type { ResponseTap, Revalidation } from './response-cache';
import type { CompiledRoute } from './routes';

/** The caller, as proven by a verified token. */
export interface AuthenticatedUser {
  id: string;
  email: string;
  role: string;
}

/** Per-request state, typed once. Each field is written by exactly one middleware, named beside it. */
export interface GatewayState {
  /** createRequestId: the id echoed in `X-Request-Id` and carried in logs, spans and error bodies. */
  requestId: string;
  /**
   * createTracing: the request's trace context (its SERVER span, the Level 2 random flag). Not entered there:
   * createRequestId enters it together with the request id's baggage, so a request switches context once.
   */
  traceContext?: OtelContext;
  /**
   * createTracing: the request's trace continues a trusted caller's (`traceparent`), set only then. Its trace id is
   * then the caller's, shared by every request of that trace (a page's calls), so it is no request's id.
   */
  traceContinued?: true;
  /** createRouteMatcher: the route this request matched, and the upstream path it maps to. */
  route?: CompiledRoute;
  upstreamPath?: string;
  /** createAuthenticate: set only after the token verified. */
  user?: AuthenticatedUser;
  /** createAuthenticate: set only after an API key verified (then `user` stays unset). */
  consumer?: Consumer;
  /** createCors: the gateway applied its CORS policy; upstream CORS headers must not override it. */
  corsApplied?: boolean;
  /** The CORS policy refused this preflight (403 `forbidden`): no credential was judged, so no auth failure is counted. */
  corsRefused?: boolean;
  /** onResponseClosed (src/response-closed.ts): what runs once the response is over, in order. */
  onResponseClosed?: (() => void)[];
  /** createRateLimiter: every limit policy this request met, most restrictive first, for the rate-limit fields. */
  rateLimits?: CheckedRateLimit[];
  /**
   * createCallerRateLimit: the route's per-caller limit counted this request. On a route limited by caller, one
   * that ends before it (a 400, a 401, a `Max-Forwards: 0` answer) spends the client network's budget instead.
   */
  callerCounted?: boolean;
  /** createErrorHandler: the error code of a failed request, for the access log. */
  errorCode?: string;
  /** createResponseCache: how the cache answered, for the access log (routes with `cache` only). */
  cache?: CacheResult;
  /** createResponseCache: sees the service's response as the proxy forwards it, to store a copy. */
  responseTap?: ResponseTap;
  /** createResponseCache: the validators of a stale copy the proxy asks the service about, and where its 304 goes. */
  revalidation?: Revalidation;
  /**
   * createResponseCache: whether a stale copy answers instead of the service's answer with this status (a 500, 502,
   * 503 or 504 within the copy's stale-if-error, RFC 5861 4); the proxy then sends none of the service's answer.
   */
  staleStandsIn?: (status: number) => boolean;
  /**
   * createResponseCache: what the proxy waits for, given the service's status and the URLs its answer names in
   * `Location` and `Content-Location` as the client will see them, before it sends the answer on (a successful
   * write's invalidation of the stored copies); none, or undefined from it, sends it at once.
   */
  holdResponse?: (status: number, locations: readonly string[]) => Promise<unknown> | undefined;
  /**
   * createResponseCache: when this request began waiting for another's fetch of the same answer (performance.now()),
   * set only when that fetch failed (no answer from the service): the route's `deadlineMs` counts from then, so a
   * request that waited out a failed fetch does not wait as long again for its own, nor reach the service once its
   * deadline has passed. A fetch the service answered in time, with nothing this request could use, leaves it a
   * whole deadline.
   */
  upstreamWaitSince?: number;
}

declare module 'koa' {
  interface DefaultState extends GatewayState {}
}
