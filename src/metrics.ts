import cluster, { type Worker } from 'node:cluster';
import http from 'node:http';
import { gzip } from 'node:zlib';
import * as promClient from 'prom-client';
import { AggregatorRegistry, Counter, Gauge, Histogram, Registry, type OpenMetricsContentType, type RegistryContentType } from 'prom-client';
import { answerInternal, isScrapeHost, listenInternal, type InternalListener, type InternalListenerOptions, type ServedHosts, type ServerProblem } from '../otel/lifecycle';
import type { Logger } from '../otel/logger';
import { HEADER, METRIC, METRIC_LABEL, RATE_LIMIT_DECISIONS, type RateLimitDecision } from '../otel/wire-names';
import type { ErrorCode } from './errors';
import { counterSeries, histogramSeries, seriesByLabels, type CounterSeries, type HistogramSeries } from './metric-series';
import { EXPOSITION_CONTENT_TYPE, negotiateCoding, negotiateExposition, renderExposition, type MetricFamilyJSON } from './metrics-exposition';

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

const REQUEST_LABELS = [METRIC_LABEL.method, METRIC_LABEL.urlScheme, METRIC_LABEL.route, METRIC_LABEL.statusCode, METRIC_LABEL.routeName, METRIC_LABEL.errorType, METRIC_LABEL.errorCode] as const;
/**
 * The attributes semconv's `http.client.request.duration` has (method, status received, `error.type`,
 * `server.address`, `server.port`, `url.scheme`), each under the label the request histogram gives it, beside the
 * gateway's own (service, outcome).
 */
const UPSTREAM_LABELS = [
  METRIC_LABEL.method,
  METRIC_LABEL.urlScheme,
  METRIC_LABEL.upstreamService,
  METRIC_LABEL.serverAddress,
  METRIC_LABEL.serverPort,
  METRIC_LABEL.statusCode,
  METRIC_LABEL.errorType,
  METRIC_LABEL.upstreamOutcome,
] as const;
type RequestLabel = (typeof REQUEST_LABELS)[number];
type UpstreamLabel = (typeof UPSTREAM_LABELS)[number];

export interface GatewayMetrics {
  /**
   * This gateway's own registry (never prom-client's global one: tests build many gateways in one process),
   * OpenMetrics content type. The scrape listener and the OTLP bridge read `registry.getMetricsAsJSON()`
   * (histogram bucket values carry their `exemplar`); src/metrics-exposition.ts renders the scrape.
   */
  readonly registry: Registry<OpenMetricsContentType>;
  /** When the registry began counting, ms since the epoch: its counters' and histograms' `_created`. */
  readonly startedAtMs: number;
  /** Whole request, s, until the response closed. Labels: method, scheme, route template, status, route name, error type, error code. */
  readonly requestDuration: Histogram<RequestLabel>;
  /** Requests between arrival and response close, by method and scheme. */
  readonly activeRequests: Gauge<typeof METRIC_LABEL.method | typeof METRIC_LABEL.urlScheme>;
  /**
   * One attempt at a service (a retry is another observation), s, until the response to the client finished; a
   * gRPC route's call until it ended (src/middleware/grpc-transcode.ts). Labels: method, scheme, service,
   * instance host and port, status received, error type, outcome.
   */
  readonly upstreamDuration: Histogram<UpstreamLabel>;
  readonly rateLimitDecisions: Counter<typeof METRIC_LABEL.rateLimitPolicy | typeof METRIC_LABEL.rateLimitDecision>;
  readonly authFailures: Counter<typeof METRIC_LABEL.errorType>;
  readonly upstreamEjections: Counter<typeof METRIC_LABEL.upstreamService | typeof METRIC_LABEL.serverAddress | typeof METRIC_LABEL.serverPort>;
  readonly upstreamRetries: Counter<typeof METRIC_LABEL.upstreamService>;
  /** Response-cache lookups of routes with `cache`, by route name and result (CACHE_RESULTS). */
  readonly cacheLookups: Counter<typeof METRIC_LABEL.routeName | typeof METRIC_LABEL.cacheResult>;
  /** Successful writes answered while a stored copy may be left (the store failed, peers did not confirm), by route name. */
  readonly cacheInvalidationFailures: Counter<typeof METRIC_LABEL.routeName>;
  /**
   * requestDuration's series by label values, in its label order: method, scheme (urlScheme), route template, status
   * sent (`''` for none: the client left first), route name, `error.type` (`''` when the request did not end with
   * an error: serverErrorType), the gateway's error code (`''` for none). Where requests record, rather than
   * `requestDuration.observe` (src/metric-series.ts).
   */
  readonly requestSeries: (method: string, scheme: UrlScheme, route: string, status: number | '', routeName: string, errorType: string, errorCode: string) => HistogramSeries;
  /**
   * upstreamDuration's series by label values, in its label order: the method sent (`_OTHER` outside the
   * conventions' set: recordedMethod), the instance's scheme, service, the instance's host and port apart (semconv
   * 1.45: `server.address` is the host alone, `server.port` the port; the address was `host:port`), the status the
   * service answered (`''` when none was received), `error.type` (`''` when the attempt did not end with an error:
   * upstreamErrorType), outcome. As semconv's `http.client.request.duration` has them.
   */
  readonly upstreamSeries: (method: string, scheme: UrlScheme, service: string, serverAddress: string, serverPort: number, status: number | '', errorType: string, outcome: string) => HistogramSeries;
}

/** `url_scheme`'s values: the conventions make `url.scheme` Required on both server metrics. */
export type UrlScheme = 'http' | 'https';

/**
 * The scheme a request is counted under: `https` when Koa's `ctx.protocol` says so (a TLS socket, or with
 * `trustProxy` an `X-Forwarded-Proto: https`), `http` otherwise. Never the header's own text: a peer trusted for
 * `X-Forwarded-*` may still pass on whatever its client sent, and every other spelling would be a new series.
 */
export function urlScheme(protocol: string): UrlScheme {
  return protocol.toLowerCase() === 'https' ? 'https' : 'http';
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
  const startedAtMs = Date.now();
  const registers = [registry];
  const requestDuration = new Histogram({
    name: METRIC.requestDuration,
    help: 'Duration of HTTP server requests (until the response closed), by route template.',
    labelNames: REQUEST_LABELS,
    buckets: [...DURATION_BUCKETS_SECONDS],
    enableExemplars: true,
    registers,
  });
  const upstreamDuration = new Histogram({
    name: METRIC.upstreamDuration,
    help: 'Duration of one attempt at forwarding a request to a service instance, by method, status received, error type and outcome.',
    labelNames: UPSTREAM_LABELS,
    buckets: [...DURATION_BUCKETS_SECONDS],
    enableExemplars: true,
    registers,
  });
  const metrics: GatewayMetrics = {
    registry,
    startedAtMs,
    requestDuration,
    activeRequests: new Gauge({ name: METRIC.activeRequests, help: 'HTTP server requests in progress.', labelNames: [METRIC_LABEL.method, METRIC_LABEL.urlScheme], registers }),
    upstreamDuration,
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
      labelNames: [METRIC_LABEL.upstreamService, METRIC_LABEL.serverAddress, METRIC_LABEL.serverPort],
      registers,
    }),
    upstreamRetries: new Counter({ name: counterFamily(METRIC.upstreamRetries), help: 'Requests retried on another instance of a service.', labelNames: [METRIC_LABEL.upstreamService], registers }),
    cacheLookups: new Counter({ name: counterFamily(METRIC.cacheLookups), help: 'Response-cache lookups, by route and result (hit, miss, stale, bypass).', labelNames: [METRIC_LABEL.routeName, METRIC_LABEL.cacheResult], registers }),
    cacheInvalidationFailures: new Counter({
      name: counterFamily(METRIC.cacheInvalidationFailures),
      help: 'Successful writes to a cached route answered while a stored copy of the resource may be left (store failed, or other workers did not confirm in time).',
      labelNames: [METRIC_LABEL.routeName],
      registers,
    }),
    // Label values are bounded by the config (route templates, services, instances), so these are too.
    requestSeries: seriesByLabels(REQUEST_LABELS, (labels) => histogramSeries(requestDuration, labels)),
    upstreamSeries: seriesByLabels(UPSTREAM_LABELS, (labels) => histogramSeries(upstreamDuration, labels)),
  };
  // Known from the start, so "none yet" reads as 0 rather than as a missing series.
  for (const code of AUTH_FAILURE_CODES) metrics.authFailures.inc({ [METRIC_LABEL.errorType]: code }, 0);
  return metrics;
}

/** One counter series per decision of one policy, created (at 0) when the policy is, so counting looks nothing up. */
export function rateLimitDecisionCounters(metrics: GatewayMetrics, policy: string): Readonly<Record<RateLimitDecision, CounterSeries>> {
  const counters = {} as Record<RateLimitDecision, CounterSeries>;
  for (const decision of RATE_LIMIT_DECISIONS) {
    counters[decision] = counterSeries(metrics.rateLimitDecisions, { [METRIC_LABEL.rateLimitPolicy]: policy, [METRIC_LABEL.rateLimitDecision]: decision });
    counters[decision].inc(0);
  }
  return counters;
}

/**
 * `GET /metrics` (query ignored): the registry in the format `Accept` asks for, OpenMetrics (with exemplars) or
 * the Prometheus text format 0.0.4 or 1.0.0 (src/metrics-exposition.ts); 405 for another method, 404 for another path. A plain handler, not a
 * Koa app: Prometheus is its only client and a scrape should cost as little as possible.
 */
export function metricsRequestListener(metrics: Pick<GatewayMetrics, 'registry' | 'startedAtMs'>, logger?: Logger): http.RequestListener {
  return scrapeListener(() => metrics.registry.getMetricsAsJSON() as Promise<unknown> as Promise<MetricFamilyJSON[]>, metrics.startedAtMs, logger);
}

// The listener's refusals, problem+json with a request id as every answer the gateway writes itself (README's
// error table); they were text/plain.
const NOT_FOUND: ServerProblem = { status: 404, title: 'Not found', code: 'route_not_found', detail: 'The metrics are at GET /metrics.' };
const METHOD_NOT_ALLOWED: ServerProblem = { status: 405, title: 'Method not allowed', code: 'method_not_allowed', detail: 'The metrics are read with GET (or HEAD).', headers: { Allow: 'GET, HEAD' } };
const NOT_ACCEPTABLE: ServerProblem = {
  status: 406,
  title: 'Not acceptable',
  code: 'not_acceptable',
  detail: `The metrics are served as ${Object.values(EXPOSITION_CONTENT_TYPE).join(', or ')}.`,
  headers: { Vary: 'Accept' },
};
const SCRAPE_FAILED: ServerProblem = { status: 500, title: 'Internal error', code: 'internal', detail: 'The metrics could not be collected.' };

/**
 * The scrape endpoint around `collect` (the registry as `getMetricsAsJSON()` gives it), counting since
 * `startedAtMs`. The format is negotiated (RFC 9110 12.5.1, as OpenMetrics' "Protocol Negotiation" asks): a
 * client that parses only the text format 0.0.4 (promtool, older scrapers) cannot read OpenMetrics' exemplars.
 */
function scrapeListener(collect: (workerWaitMs: number) => Promise<MetricFamilyJSON[]>, startedAtMs: number, logger?: Logger): http.RequestListener {
  return function serveMetrics(req, res) {
    // One Host line, an absolute-form target taken as its origin form, and the host checked: listenInternal (SCRAPE_HOSTS).
    const path = (req.url ?? '').split('?', 1)[0];
    if (path !== '/metrics') return answerInternal(res, NOT_FOUND);
    // RFC 9110 15.5.6: the resource exists, the method is not one it takes; 405 names the ones it does.
    if (req.method !== 'GET' && req.method !== 'HEAD') return answerInternal(res, METHOD_NOT_ALLOWED);
    const format = negotiateExposition(req.headers.accept);
    if (format === undefined) return answerInternal(res, NOT_ACCEPTABLE);
    const failed = (error: unknown) => {
      logger?.error('metrics scrape failed', { error: error instanceof Error ? error.message : String(error) });
      answerInternal(res, SCRAPE_FAILED);
    };
    // Prometheus asks for gzip on every scrape: the text of a gateway with many routes is mostly repeated labels.
    const coding = negotiateCoding(req.headers['accept-encoding']);
    collect(workerWaitMs(req.headers[HEADER.prometheusScrapeTimeout])).then((families) => {
      const text = renderExposition(families, format, startedAtMs / 1000);
      const headers = { 'content-type': EXPOSITION_CONTENT_TYPE[format], 'cache-control': 'no-store', vary: 'Accept, Accept-Encoding' };
      if (coding === 'identity') return void res.writeHead(200, headers).end(req.method === 'HEAD' ? undefined : text);
      // A HEAD answer carries the headers a GET's would, Content-Encoding included (RFC 9110 9.3.2), and no body.
      if (req.method === 'HEAD') return void res.writeHead(200, { ...headers, 'content-encoding': 'gzip' }).end();
      // Off the event loop (zlib's thread pool): a large exposition would hold the primary's or a worker's requests.
      gzip(text, (error, body) => (error ? failed(error) : res.writeHead(200, { ...headers, 'content-encoding': 'gzip' }).end(body)));
    }, failed);
  };
}

/**
 * The series name instance addresses: not for a page that reached this listener by DNS rebinding. A scrape by a
 * compose service's name (`gateway:9464`) is answered (isScrapeHost).
 */
const SCRAPE_HOSTS: ServedHosts = { allows: isScrapeHost, description: 'an IP address, localhost or a single-label name (a compose service)' };

export interface MetricsListenerOptions extends InternalListenerOptions {
  logger?: Logger;
}

export type MetricsListener = InternalListener;

/**
 * Listens with the scrape endpoint (`metrics.port`, loopback by default), never on the public listener: the
 * series name routes, services and instance addresses.
 */
export function listenMetrics(metrics: GatewayMetrics, options: MetricsListenerOptions): Promise<MetricsListener> {
  return listenInternal(metricsRequestListener(metrics, options.logger), { ...options, servedHosts: SCRAPE_HOSTS });
}

export interface ClusterMetricsListenerOptions extends MetricsListenerOptions {
  /**
   * The workers a scrape asks: those serving. A worker answers prom-client's request only once it has run
   * shareMetricsWithPrimary, which it does before it listens; asked earlier, it would never answer.
   */
  servingWorkers: () => Worker[];
  /** The primary's own series (createPrimaryMetrics), answered beside the workers' sum. */
  primary?: PrimaryMetrics;
}

/**
 * A cluster primary's own series: what no worker can count, because it is about the workers. Without them a
 * worker crashing (a request that kills it, a leak that ends in OOM) and being replaced every few seconds left
 * the scrape unchanged: only the log said so, and no alert could.
 */
export interface PrimaryMetrics {
  readonly registry: Registry;
  /** When the registry began counting, ms since the epoch: the start of its cumulative OTLP points. */
  readonly startedAtMs: number;
  /** One per worker the primary replaced: it exited (crash, signal) or its watchdog killed it. */
  readonly workerRestarts: Counter;
  /** The cluster's config reloads, which the primary decides. */
  readonly reloads: ReloadMetrics;
}

/** Counts config reloads where they are decided (the single process, or a cluster's primary). */
export interface ReloadMetrics {
  /** One reload's end: `true` once its config serves (or it was the running one), `false` when it was refused or not built. */
  reloaded(success: boolean): void;
}

/**
 * `gateway_config_reloads_total{gateway_config_reload_result}` and `gateway_config_last_reload_successful` in `registry`.
 * A SIGHUP has no one to answer, and a refused one left the old config serving with one log line only: an operator
 * who rolled out a file and signalled the gateway saw nothing amiss, and no alert could. The gauge is 1 from start-up
 * (its config validated) and 0 from a failed reload until one succeeds, so `== 0` alerts on a refused file.
 */
export function createReloadMetrics(registry: Registry<RegistryContentType>): ReloadMetrics {
  const registers = [registry];
  const reloads = new Counter({ name: counterFamily(METRIC.configReloads), help: 'Config reloads (SIGHUP, POST /admin/reload), by result.', labelNames: [METRIC_LABEL.configReloadResult], registers });
  for (const result of ['success', 'failure']) reloads.inc({ [METRIC_LABEL.configReloadResult]: result }, 0);
  const lastSuccessful = new Gauge({ name: METRIC.configLastReloadSuccessful, help: 'Whether the last config reload applied (1) or was refused or failed (0); 1 before any.', registers });
  lastSuccessful.set(1);
  return {
    reloaded(success) {
      reloads.inc({ [METRIC_LABEL.configReloadResult]: success ? 'success' : 'failure' });
      lastSuccessful.set(success ? 1 : 0);
    },
  };
}

/** The primary's series: `gateway_worker_restarts_total`, and the workers serving (`servingWorkers`) beside `configured`. */
export function createPrimaryMetrics(configured: number, servingWorkers: () => number): PrimaryMetrics {
  const registry = new Registry();
  const startedAtMs = Date.now();
  const registers = [registry];
  const workerRestarts = new Counter({ name: counterFamily(METRIC.workerRestarts), help: 'Cluster workers the primary replaced (exited or unresponsive).', registers });
  new Gauge({
    name: METRIC.workersServing,
    help: 'Cluster workers serving requests now.',
    registers,
    collect() {
      this.set(servingWorkers());
    },
  });
  new Gauge({ name: METRIC.workersConfigured, help: 'Cluster workers the primary runs when all are up (workers).', registers }).set(configured);
  return { registry, startedAtMs, workerRestarts, reloads: createReloadMetrics(registry) };
}

/**
 * A cluster's scrape endpoint, in the primary (src/workers.ts): every scrape asks each worker for its registry
 * over the cluster channel and answers their sum. Each worker listening on the port itself would answer one
 * worker's counters per scrape, a different one each time: Prometheus would read every switch as a counter
 * reset. Sums are negotiated as one process's scrape is, each bucket with the newest exemplar a live worker has
 * there (withWorkerExemplars); each worker's own series also go out over OTLP. They count since this listener
 * started (their `_created`), before the primary forks any worker; a replaced worker's counts stay in them.
 */
export function listenClusterMetrics(options: ClusterMetricsListenerOptions): Promise<MetricsListener> {
  return listenInternal(scrapeListener(clusterMetricsCollector(options.servingWorkers, options.primary?.registry), Date.now(), options.logger), { ...options, servedHosts: SCRAPE_HOSTS });
}

/** prom-client's cluster messages (lib/cluster.js): its workers answer the request (shareMetricsWithPrimary). */
const WORKER_METRICS_REQUEST = 'prom-client:getMetricsReq';
const WORKER_METRICS_ANSWER = 'prom-client:getMetricsRes';
/**
 * How long a scrape waits for a worker's registry before it answers with that worker's last one, at most: well
 * under Prometheus's default scrape timeout (10 s), and a live worker answers in milliseconds.
 */
const WORKER_METRICS_TIMEOUT_MS = 2_000;
/** What a scrape keeps of the scraper's own timeout for summing, rendering and sending, ms: this, or a tenth, if more. */
const SCRAPE_ANSWER_MARGIN_MS = 250;

/**
 * How long a cluster scrape waits for its workers: WORKER_METRICS_TIMEOUT_MS, or less when the scraper says it
 * gives up sooner (Prometheus sends `X-Prometheus-Scrape-Timeout-Seconds`, its `scrape_timeout`), less a margin.
 * A fixed 2 s outlived a 1 s scrape timeout: with one worker stuck, every scrape of the cluster failed, where its
 * last counts would have done. A value that is no positive number of seconds is ignored.
 */
export function workerWaitMs(scrapeTimeoutSeconds: string | string[] | undefined): number {
  const seconds = typeof scrapeTimeoutSeconds === 'string' ? Number(scrapeTimeoutSeconds) : NaN;
  if (!(seconds > 0) || !Number.isFinite(seconds)) return WORKER_METRICS_TIMEOUT_MS;
  const timeoutMs = seconds * 1000;
  return Math.max(0, Math.min(WORKER_METRICS_TIMEOUT_MS, Math.floor(timeoutMs - Math.max(SCRAPE_ANSWER_MARGIN_MS, timeoutMs / 10))));
}

type WorkerRegistries = Awaited<ReturnType<Registry['getMetricsAsJSON']>>[];

/**
 * prom-client's sum of registries, each and the result as `getMetricsAsJSON()` gives them. Async, so a sum that
 * throws (an answer workerRegistriesOf let through that prom-client still cannot sum) fails that scrape, not the
 * primary: `aggregate` throws synchronously, and it runs in timers and cluster listeners.
 */
async function sumOf(registries: WorkerRegistries): Promise<WorkerRegistries[number]> {
  return AggregatorRegistry.aggregate(registries).getMetricsAsJSON();
}

/** The aggregators prom-client's sum has (by name: `sum`, `first`, ...); its typings leave the table out. */
const AGGREGATORS = (promClient as unknown as { aggregators: Readonly<Record<string, unknown>> }).aggregators;
/** The metric types a registry's JSON names (prom-client writes them as these strings). */
const METRIC_TYPES = new Set(['counter', 'gauge', 'histogram', 'summary']);
/** A metric name as the exposition formats allow it. */
const METRIC_NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
/** A label name as the exposition formats allow it (prom-client's own check); the renderer writes names as they are. */
const LABEL_NAME = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
/** Samples one worker's answer holds at most: the gateway's families are bounded by config, far below this. */
const MAX_WORKER_SAMPLES = 200_000;

/**
 * A worker's answer to a scrape (prom-client's `metrics`: its registries as JSON) when every value in it has the type
 * the sum and the renderer read, else undefined. prom-client's channel passed no check (toPrimaryMessage checks the
 * gateway's own kinds): an answer that was no list, or named an aggregator prom-client does not have, was kept, and the
 * next scrape's sum threw in a timer of the primary's and ended it, and every worker with it. An answer with a label
 * value (or a type) that was an object, kept as the worker's last, failed every later scrape with 500 until that
 * worker answered well again, which a stuck one never does; one written with `{"toString":1}` as its type ended the
 * primary (String() throws on it).
 */
export function workerRegistriesOf(metrics: unknown): WorkerRegistries | undefined {
  if (!Array.isArray(metrics)) return undefined;
  let samples = 0;
  for (const registry of metrics) {
    if (!Array.isArray(registry)) return undefined;
    for (const family of registry as unknown[]) {
      if (typeof family !== 'object' || family === null) return undefined;
      const { name, help, type, aggregator, values } = family as Record<string, unknown>;
      // A Prometheus name, and none an object's prototype has: prom-client's registry keeps families in a plain
      // object, where `constructor` reads as already registered and the sum throws.
      if (typeof name !== 'string' || !METRIC_NAME.test(name) || name in Object.prototype) return undefined;
      if (typeof help !== 'string' || typeof type !== 'string' || !METRIC_TYPES.has(type)) return undefined;
      if (typeof aggregator !== 'string' || !Object.hasOwn(AGGREGATORS, aggregator) || !Array.isArray(values)) return undefined;
      samples += values.length;
      if (samples > MAX_WORKER_SAMPLES) return undefined;
      for (const sample of values as unknown[]) {
        if (typeof sample !== 'object' || sample === null) return undefined;
        const { value, labels, metricName, exemplar } = sample as Record<string, unknown>;
        // The sum hashes every sample's labels and names it by `metricName`, both into strings.
        if (typeof value !== 'number' || !isLabelSet(labels) || (metricName !== undefined && typeof metricName !== 'string')) return undefined;
        if (exemplar !== undefined && exemplar !== null && !isExemplar(exemplar)) return undefined;
      }
    }
  }
  return metrics as WorkerRegistries;
}

/** Labels as the renderer writes them: names it may write as they are, each value a string or a number. */
function isLabelSet(labels: unknown): boolean {
  if (typeof labels !== 'object' || labels === null) return false;
  return Object.entries(labels).every(([name, value]) => LABEL_NAME.test(name) && (typeof value === 'string' || typeof value === 'number'));
}

/** A histogram bucket's exemplar as prom-client writes it: the newest is chosen by `timestamp`, then rendered. */
function isExemplar(exemplar: unknown): boolean {
  if (typeof exemplar !== 'object' || exemplar === null) return false;
  const { labelSet, value, timestamp } = exemplar as Record<string, unknown>;
  return isLabelSet(labelSet) && typeof value === 'number' && (timestamp === undefined || typeof timestamp === 'number');
}

/**
 * The primary's half of prom-client's cluster exchange, kept here because its own (`clusterMetrics()`) sums
 * into the Prometheus text format whatever the registry's type: counters registered by family name
 * (counterFamily) then lose their `_total`, and every dashboard query on `gateway_*_total` finds nothing with
 * more than one worker. The workers' half stays prom-client's; the sum is its `aggregate`, rendered as one
 * process's scrape is (src/metrics-exposition.ts).
 *
 * The sum must never go down while the primary lives: Prometheus reads any decrease of a counter (or of a
 * histogram's buckets, sum and count) as a reset, and rate()/increase() then count the surviving workers'
 * whole totals again. So a scrape sums each worker's last answer, and a worker that exits leaves its last
 * counters and histograms in `retired`, added to every later sum (its gauges, such as requests in progress,
 * are gone with it). What it counted after its last answer is lost, but no series drops below a value served.
 */
function clusterMetricsCollector(servingWorkers: () => Worker[], primary?: Registry): (workerWaitMs: number) => Promise<MetricFamilyJSON[]> {
  let nextRequestId = 0;
  /** Each live worker's last registries, by worker id. */
  const lastAnswers = new Map<number, WorkerRegistries>();
  /** The counters and histograms of the workers that exited, folded into one registry. */
  let retired: WorkerRegistries = [];
  const waiting = new Map<number, { answered: (workerId: number) => void; fail: (error: Error) => void }>();
  cluster.on('message', (worker, message: { type?: unknown; requestId?: unknown; metrics?: unknown; error?: unknown }) => {
    if (message?.type !== WORKER_METRICS_ANSWER) return;
    const request = typeof message.requestId === 'number' ? waiting.get(message.requestId) : undefined;
    // prom-client sends its error's message; anything else is told apart by its type, never turned into a string
    // (String() throws on `{"toString":1}`, and an exception here ends the primary).
    if (message.error !== undefined) return request?.fail(new Error(typeof message.error === 'string' ? message.error.slice(0, 200) : `a worker answered an error of type ${typeof message.error}`));
    // Even late (its scrape already answered): a later scrape then sums it. Not once retired: it would count twice.
    // One the sum could not read is not kept: the worker's last good answer stands in for it, as for a worker late.
    const registries = workerRegistriesOf(message.metrics);
    if (registries && !worker.isDead()) lastAnswers.set(worker.id, registries);
    request?.answered(worker.id);
  });
  // One fold at a time, each on the `retired` the previous one left. Until its fold is done a dead worker's last
  // answer stays in `lastAnswers` (and so in the sums): both change in one step, counting it once throughout.
  let folding = Promise.resolve();
  cluster.on('exit', (worker) => {
    for (const request of waiting.values()) request.answered(worker.id);
    const last = lastAnswers.get(worker.id);
    if (!last) return;
    // The JSON names the type ('counter'), whatever prom-client's typings say (an enum).
    const cumulative = last.map((registry) => registry.filter((metric) => ['counter', 'histogram'].includes(String(metric.type))));
    folding = folding
      .then(async () => {
        retired = [await sumOf([...retired, ...cumulative])];
      })
      // A fold that failed drops that worker's last counts (a series may then read as a reset once), not the primary
      // (an unhandled rejection) nor every later fold, chained behind it.
      .catch(() => undefined)
      .finally(() => lastAnswers.delete(worker.id));
  });
  return (workerWaitMs) =>
    new Promise<MetricFamilyJSON[]>((resolve, reject) => {
      const requestId = nextRequestId++;
      const workers = servingWorkers().filter((worker) => worker.isConnected());
      const pending = new Set(workers.map((worker) => worker.id));
      // A worker that does not answer in time (its event loop stuck until the watchdog replaces it) is summed
      // with its last answer rather than failing the scrape: a 500 would leave a gap for the whole cluster,
      // and its last counts keep every series where it was.
      const timer = setTimeout(settle, workerWaitMs);
      function settle() {
        if (!waiting.delete(requestId)) return;
        clearTimeout(timer);
        const own = primary ? primary.getMetricsAsJSON() : Promise.resolve([]);
        const answers = [...lastAnswers.values()];
        resolve(
          Promise.all([sumOf([...answers.flat(), ...retired]), own]).then(([summed, mine]) => [
            ...withWorkerExemplars(summed as unknown as MetricFamilyJSON[], answers.flat() as unknown as MetricFamilyJSON[][]),
            ...(mine as unknown as MetricFamilyJSON[]),
          ]),
        );
      }
      waiting.set(requestId, {
        answered: (workerId) => pending.delete(workerId) && pending.size === 0 && settle(),
        fail: (error) => {
          if (!waiting.delete(requestId)) return;
          clearTimeout(timer);
          reject(error);
        },
      });
      if (pending.size === 0) return settle();
      for (const worker of workers) worker.send({ type: WORKER_METRICS_REQUEST, requestId });
    });
}

type Exemplar = NonNullable<MetricFamilyJSON['values'][number]['exemplar']>;

/** One sample of a family: its name (a histogram's `_bucket`, ...) and labels, whatever their order. */
function sampleKey(family: string, sample: MetricFamilyJSON['values'][number]): string {
  const labels = Object.entries(sample.labels).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `${family}\n${sample.metricName ?? ''}\n${JSON.stringify(labels)}`;
}

/**
 * The workers' sum with, on each histogram bucket, the newest exemplar any live worker's last answer has there.
 * prom-client's aggregate drops them, so a cluster's scrape had none: with GATEWAY_WORKERS above 1 the dashboard's
 * latency dots and their link to the request's trace were gone, since compose's collector drops the gateway's
 * OTLP copy that keeps each worker's. An exemplar is one observation the bucket counted, and the sum counts every
 * worker's observations, so any worker's is one of the sum's.
 */
function withWorkerExemplars(summed: MetricFamilyJSON[], registries: readonly MetricFamilyJSON[][]): MetricFamilyJSON[] {
  const newest = new Map<string, Exemplar>();
  for (const registry of registries) {
    for (const family of registry) {
      if (family.type !== 'histogram') continue;
      for (const sample of family.values) {
        if (!sample.exemplar) continue;
        const key = sampleKey(family.name, sample);
        const seen = newest.get(key);
        if (!seen || (sample.exemplar.timestamp ?? 0) > (seen.timestamp ?? 0)) newest.set(key, sample.exemplar);
      }
    }
  }
  if (newest.size === 0) return summed;
  return summed.map((family) =>
    family.type !== 'histogram'
      ? family
      : {
          ...family,
          values: family.values.map((sample) => {
            const exemplar = newest.get(sampleKey(family.name, sample));
            return exemplar ? { ...sample, exemplar } : sample;
          }),
        },
  );
}

/** In a cluster worker: answers the primary's scrapes (listenClusterMetrics) with this registry. */
export function shareMetricsWithPrimary(metrics: GatewayMetrics): void {
  AggregatorRegistry.setRegistries(metrics.registry);
  // Constructing one is what makes prom-client answer the primary's requests in this process.
  new AggregatorRegistry();
}

/** prom-client's own cluster messages (AggregatorRegistry), which travel beside the gateway's. */
export function isPromClientMessage(message: unknown): boolean {
  if (typeof message !== 'object' || message === null) return false;
  // Read as it is: a worker's `type` of `{"toString":1}` made String() throw, which ended the primary.
  const { type } = message as { type?: unknown };
  return typeof type === 'string' && type.startsWith('prom-client:');
}
