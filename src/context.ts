import type {} from 'koa';
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
  /** createRouteMatcher: the route this request matched, and the upstream path it maps to. */
  route?: CompiledRoute;
  upstreamPath?: string;
  /** createAuthenticate: set only after the token verified. */
  user?: AuthenticatedUser;
  /** createCors: the gateway applied its CORS policy; upstream CORS headers must not override it. */
  corsApplied?: boolean;
  /** onResponseClosed (src/response-closed.ts): what runs once the response is over, in order. */
  onResponseClosed?: (() => void)[];
  /** createErrorHandler: the error code of a failed request, for the access log. */
  errorCode?: string;
}

declare module 'koa' {
  interface DefaultState extends GatewayState {}
}
