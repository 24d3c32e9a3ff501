import { trace } from '@opentelemetry/api';
import type { Middleware } from 'koa';
import type { RejectedRequest } from '../../otel/lifecycle';
import { arrivalOf } from '../request-arrival';
import { clientLeft, onResponseClosed, sentStatus, serverErrorType } from '../response-closed';
import { isProbeRequest } from '../../otel/telemetry-config';
import { KNOWN_HTTP_METHODS, OTHER_HTTP_METHOD, recordedMethod } from '../../otel/http-method';
import { METRIC_LABEL, METRIC_LABEL_VALUE } from '../../otel/wire-names';
import { AUTH_FAILURE_CODES, urlScheme, type GatewayMetrics, type UrlScheme } from '../metrics';
import { counterSeries, gaugeSeries, type GaugeSeries } from '../metric-series';

export interface RequestMetricsOptions {
  metrics: GatewayMetrics;
}

/**
 * `http_server_request_duration_seconds`, `http_server_active_requests` and `gateway_auth_failures_total` for
 * every request but the probes (GET or HEAD `/health`, `/ready`: health checks every few seconds would swamp the
 * rates, as they would the traces; any other method there is counted, on the labels any request gets). Recorded
 * when the response is really over, as the access log is, so streamed responses are timed whole. A client that left before the end counts with the status sent (`""` when none was)
 * and `error_type="client_closed"`, as its SERVER span records it (the access log writes 499).
 *
 * Labels are bounded by the config, never by what a client sends: `http_route` is the route template as the
 * span names it (`/api/users/*`, an exact route's path, the router path of the gateway's own endpoints,
 * `unmatched` otherwise), never the raw path. Auth failures are counted here, from the error code
 * handleErrors recorded, so every place that refuses a caller (authenticate, authorize, login) counts the
 * same way without a hook of its own.
 */
export function createRequestMetrics(options: RequestMetricsOptions): Middleware {
  const { activeRequests, authFailures, requestSeries } = options.metrics;
  // A method's series appears on its first request, not before: a scrape lists the methods (and schemes) seen.
  const activeOf = (scheme: UrlScheme) =>
    new Map<string, GaugeSeries>([...KNOWN_HTTP_METHODS, OTHER_HTTP_METHOD].map((method) => [method, gaugeSeries(activeRequests, { [METRIC_LABEL.method]: method, [METRIC_LABEL.urlScheme]: scheme })] as const));
  const active: Readonly<Record<UrlScheme, Map<string, GaugeSeries>>> = { http: activeOf('http'), https: activeOf('https') };
  const authFailure = new Map(AUTH_FAILURE_CODES.map((code) => [code as string, counterSeries(authFailures, { [METRIC_LABEL.errorType]: code })] as const));

  // Not async: it has nothing to do after next(), so it hands next()'s promise on instead of awaiting it.
  return function recordRequestMetrics(ctx, next) {
    if (isProbeRequest(ctx.path, ctx.method)) return next();
    // From the request's arrival, its wait for the pipeline included (src/request-arrival.ts).
    const started = arrivalOf(ctx.req);
    // As the SERVER span records it: a method outside the conventions' list is `_OTHER`, so a client cannot mint series.
    const method = recordedMethod(ctx.method);
    // Required beside the method on both server metrics (semconv); as the SERVER span's `url.scheme`, bounded.
    const scheme = urlScheme(ctx.protocol);
    const inProgress = active[scheme].get(method)!;
    inProgress.inc();
    // traceRequest's SERVER span, current here; read once, its context does not change.
    const spanContext = trace.getActiveSpan()?.spanContext();

    onResponseClosed(ctx, () => {
      inProgress.dec();
      const left = clientLeft(ctx);
      const { route, errorCode } = ctx.state;
      // As the SERVER span records them: the status sent (none when the client left before one was), and `error.type`
      // only where the request ended with an error (a 5xx, a response cut, a client that left: serverErrorType),
      // which the conventions make Conditionally Required there and say SHOULD NOT be set otherwise. The gateway's
      // own error code goes beside it, a 4xx's too: `error_type` held it, so a 401 or a 404 counted as an error.
      const sent = sentStatus(ctx);
      const errorType = serverErrorType(ctx, sent, errorCode, left) ?? '';
      const ended = performance.now();
      const series = requestSeries(method, scheme, route?.template ?? ctx.routerPath ?? METRIC_LABEL_VALUE.unmatchedRoute, sent ?? '', route ? route.name : '', errorType, errorCode ?? '');
      series.observe((ended - started) / 1000, spanContext, ended);
      // A refused CORS preflight is a 403 `forbidden` too, but carries no credential: any page's visitors would
      // raise the series that flags role violations.
      if (errorCode !== undefined && ctx.state.corsRefused !== true) authFailure.get(errorCode)?.inc();
    });
    return next();
  };
}

/**
 * Counts a request Node's HTTP/1 parser refused before the pipeline (runServer's `onRejected`: 400, 408, 431,
 * and 405 for a CONNECT) in `http_server_request_duration_seconds` on the `unmatched` route, as `_OTHER` when its
 * method never parsed; its duration is unknown (recorded as 0). Its exemplar is the SERVER span runServer recorded.
 */
export function rejectedRequestMetrics(metrics: GatewayMetrics): (rejected: RejectedRequest) => void {
  // Its span's `error.type`: the status of a 5xx (the 501), none for a 4xx.
  return (rejected) => {
    const errorType = rejected.status >= 500 ? String(rejected.status) : '';
    const series = metrics.requestSeries(recordedMethod(rejected.method), rejected.urlScheme, METRIC_LABEL_VALUE.unmatchedRoute, rejected.status, '', errorType, rejected.code);
    series.observe(0, rejected.spanContext, performance.now());
  };
}
