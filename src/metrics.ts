import http from 'node:http';
import { TraceFlags, type SpanContext } from '@opentelemetry/api';
import { Counter, Gauge, Histogram, Registry, type LabelValues, type OpenMetricsContentType } from 'prom-client';
import { listenInternal, type InternalListener, type InternalListenerOptions } from '../otel/lifecycle';
import type { Logger } from '../otel/logger';
import { EXEMPLAR_LABEL, METRIC, METRIC_LABEL, RATE_LIMIT_DECISIONS, type RateLimitDecision } from '../otel/wire-names';
import type { ErrorCode } from './errors';

/**
 * The gateway's metrics, recorded with prom-client rather than the OpenTelemetry metrics SDK: no published
 * version of that SDK records exemplars (sdk-metrics 3.0.0 and 3.1.1 checked), and the trace id on a latency
 * bucket is what links a slow request in Grafana to its trace. Recorded for every request, whatever the trace
 * sampling; exemplars only for sampled ones.
 */

/** Bucket bounds of both duration histograms, s: the semantic conventions' advice for `http.server.request.duration`. */
export const DURATION_BUCKETS_SECONDS: readonly number[] = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

/** Error codes counted as authentication or authorization failures (`gateway_auth_failures_total`). */
export const AUTH_FAILURE_CODES: readonly ErrorCode[] = ['missing_token', 'invalid_token', 'auth_unavailable', 'forbidden', 'invalid_credentials', 'invalid_api_key'];

type RequestLabel = typeof METRIC_LABEL.method | typeof METRIC_LABEL.route | typeof METRIC_LABEL.statusCode | typeof METRIC_LABEL.routeName | typeof METRIC_LABEL.errorType;
type UpstreamLabel = typeof METRIC_LABEL.upstreamService | typeof METRIC_LABEL.serverAddress | typeof METRIC_LABEL.upstreamOutcome;

export interface GatewayMetrics {
  /**
   * This gateway's own registry (never prom-client's global one: tests build many gateways in one process),
   * OpenMetrics content type. The scrape listener serves `registry.metrics()`; an OTLP bridge reads
   * `registry.getMetricsAsJSON()` (histogram bucket values carry their `exemplar`).
   */
  readonly registry: Registry<OpenMetricsContentType>;
  /** Whole request, s, until the response closed. Labels: method, route template, status, route name, error code. */
  readonly requestDuration: Histogram<RequestLabel>;
  /** Requests between arrival and response close, by method. */
  readonly activeRequests: Gauge<typeof METRIC_LABEL.method>;
  /** One attempt at a service (a retry is another observation), s, until the response to the client finished. */
  readonly upstreamDuration: Histogram<UpstreamLabel>;
  readonly rateLimitDecisions: Counter<typeof METRIC_LABEL.rateLimitPolicy | typeof METRIC_LABEL.rateLimitDecision>;
  readonly authFailures: Counter<typeof METRIC_LABEL.errorType>;
  readonly upstreamEjections: Counter<typeof METRIC_LABEL.upstreamService | typeof METRIC_LABEL.serverAddress>;
  readonly upstreamRetries: Counter<typeof METRIC_LABEL.upstreamService>;
  /** Response-cache lookups of routes with `cache`, by route name and result (CACHE_RESULTS). */
  readonly cacheLookups: Counter<typeof METRIC_LABEL.routeName | typeof METRIC_LABEL.cacheResult>;
  /** Which observations of requestDuration / upstreamDuration carry an exemplar (one gate each). */
  readonly requestExemplars: ExemplarGate;
  readonly upstreamExemplars: ExemplarGate;
}

/**
 * prom-client renames a counter registered as `x_total` to `x` on the first OpenMetrics scrape (the format
 * appends `_total` to counter samples itself); registering the family name keeps the name stable for
 * `getMetricsAsJSON()` readers. PromQL sees `x_total` either way.
 */
function counterFamily(name: string): string {
  return name.replace(/_total$/, '');
}

/** A fresh set of instruments in a fresh registry. No side effects: build one per gateway. */
export function createGatewayMetrics(): GatewayMetrics {
  // OpenMetrics before any instrument exists: only that format carries exemplars, and prom-client refuses
  // an exemplar-enabled instrument on a registry of the older text format.
  const registry = new Registry<OpenMetricsContentType>();
  registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
  const registers = [registry];
  const metrics: GatewayMetrics = {
    registry,
    requestDuration: new Histogram({
      name: METRIC.requestDuration,
      help: 'Duration of HTTP server requests (until the response closed), by route template.',
      labelNames: [METRIC_LABEL.method, METRIC_LABEL.route, METRIC_LABEL.statusCode, METRIC_LABEL.routeName, METRIC_LABEL.errorType],
      buckets: [...DURATION_BUCKETS_SECONDS],
      enableExemplars: true,
      registers,
    }),
    activeRequests: new Gauge({ name: METRIC.activeRequests, help: 'HTTP server requests in progress.', labelNames: [METRIC_LABEL.method], registers }),
    upstreamDuration: new Histogram({
      name: METRIC.upstreamDuration,
      help: 'Duration of one attempt at forwarding a request to a service instance, by outcome.',
      labelNames: [METRIC_LABEL.upstreamService, METRIC_LABEL.serverAddress, METRIC_LABEL.upstreamOutcome],
      buckets: [...DURATION_BUCKETS_SECONDS],
      enableExemplars: true,
      registers,
    }),
    rateLimitDecisions: new Counter({
      name: counterFamily(METRIC.rateLimitDecisions),
      help: 'Rate-limit decisions, by policy and decision.',
      labelNames: [METRIC_LABEL.rateLimitPolicy, METRIC_LABEL.rateLimitDecision],
      registers,
    }),
    authFailures: new Counter({ name: counterFamily(METRIC.authFailures), help: 'Requests refused by authentication or authorization, by error code.', labelNames: [METRIC_LABEL.errorType], registers }),
    upstreamEjections: new Counter({
      name: counterFamily(METRIC.upstreamEjections),
      help: 'Service instances ejected by passive health checks.',
      labelNames: [METRIC_LABEL.upstreamService, METRIC_LABEL.serverAddress],
      registers,
    }),
    upstreamRetries: new Counter({ name: counterFamily(METRIC.upstreamRetries), help: 'Requests retried on another instance of a service.', labelNames: [METRIC_LABEL.upstreamService], registers }),
    cacheLookups: new Counter({ name: counterFamily(METRIC.cacheLookups), help: 'Response-cache lookups, by route and result (hit, miss, stale, bypass).', labelNames: [METRIC_LABEL.routeName, METRIC_LABEL.cacheResult], registers }),
    requestExemplars: createExemplarGate(),
    upstreamExemplars: createExemplarGate(),
  };
  // Known from the start, so "none yet" reads as 0 rather than as a missing series.
  for (const code of AUTH_FAILURE_CODES) metrics.authFailures.inc({ [METRIC_LABEL.errorType]: code }, 0);
  return metrics;
}

/**
 * Least time between two exemplars of one series and bucket, ms. Prometheus keeps one exemplar per series and
 * bucket per scrape (every 15 s in compose), so more than one a second is bookkeeping nobody reads: prom-client
 * hashes the labels again and validates the exemplar on every observation that carries one.
 */
export const EXEMPLAR_INTERVAL_MS = 1000;

/** Chooses the exemplar of an observation, or none: see createExemplarGate. */
export type ExemplarGate = (series: string, value: number, spanContext: SpanContext | undefined) => LabelValues<string> | undefined;

/**
 * The exemplar of an observation of `series` (a key the caller builds from the labels): the trace id when its
 * span was sampled (W3C flag 01; an exemplar pointing at a trace that was never exported would be a dead link),
 * at most once per EXEMPLAR_INTERVAL_MS for each series and bucket. A hot bucket then costs one exemplar a
 * second, while a rare one (the slow tail worth opening) still gets its exemplar at once. Remembered per series
 * and bucket, both bounded by the config.
 */
export function createExemplarGate(buckets: readonly number[] = DURATION_BUCKETS_SECONDS, now: () => number = Date.now): ExemplarGate {
  const nextAllowedAt = new Map<string, number>();
  return (series, value, spanContext) => {
    if (spanContext === undefined || (spanContext.traceFlags & TraceFlags.SAMPLED) === 0) return undefined;
    let bucket = 0;
    while (bucket < buckets.length && value > buckets[bucket]!) bucket++;
    const key = `${series}\u0000${bucket}`;
    const time = now();
    if ((nextAllowedAt.get(key) ?? 0) > time) return undefined;
    nextAllowedAt.set(key, time + EXEMPLAR_INTERVAL_MS);
    return { [EXEMPLAR_LABEL.traceId]: spanContext.traceId };
  };
}

/** One counter child per decision of one policy, created (at 0) when the policy is, so counting looks nothing up. */
export function rateLimitDecisionCounters(metrics: GatewayMetrics, policy: string): Readonly<Record<RateLimitDecision, Counter.Internal>> {
  const counters = {} as Record<RateLimitDecision, Counter.Internal>;
  for (const decision of RATE_LIMIT_DECISIONS) {
    const labels = { [METRIC_LABEL.rateLimitPolicy]: policy, [METRIC_LABEL.rateLimitDecision]: decision };
    metrics.rateLimitDecisions.inc(labels, 0);
    counters[decision] = metrics.rateLimitDecisions.labels(labels);
  }
  return counters;
}

/**
 * `GET /metrics` (query ignored): the registry in the OpenMetrics text format; 404 for anything else. A plain
 * handler, not a Koa app: Prometheus is its only client and a scrape should cost as little as possible.
 */
export function metricsRequestListener(registry: Registry<OpenMetricsContentType>, logger?: Logger): http.RequestListener {
  return function serveMetrics(req, res) {
    const path = (req.url ?? '').split('?', 1)[0];
    if (path !== '/metrics' || (req.method !== 'GET' && req.method !== 'HEAD')) {
      res.writeHead(404, { 'content-type': 'text/plain; charset=utf-8' }).end('Not found: the metrics are at GET /metrics.\n');
      return;
    }
    registry.metrics().then(
      (text) => {
        res.writeHead(200, { 'content-type': registry.contentType, 'cache-control': 'no-store' });
        res.end(req.method === 'HEAD' ? undefined : text);
      },
      (error: unknown) => {
        logger?.error('metrics scrape failed', { error: error instanceof Error ? error.message : String(error) });
        res.writeHead(500, { 'content-type': 'text/plain; charset=utf-8' }).end('The metrics could not be collected.\n');
      },
    );
  };
}

export interface MetricsListenerOptions extends InternalListenerOptions {
  logger?: Logger;
}

export type MetricsListener = InternalListener;

/**
 * Listens with the scrape endpoint (`metrics.port`, loopback by default), never on the public listener: the
 * series name routes, services and instance addresses.
 */
export function listenMetrics(metrics: GatewayMetrics, options: MetricsListenerOptions): Promise<MetricsListener> {
  return listenInternal(metricsRequestListener(metrics.registry, options.logger), options);
}
