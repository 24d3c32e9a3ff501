/**
 * Builds the OpenTelemetry Node SDK from a `TelemetryConfig`: exporters, batch processors, the request-id span
 * processor, the chosen instrumentations and the resource. Nothing global happens until `start()`.
 * This is the only module that loads the SDK; `telemetry.ts` requires it lazily, so a disabled process
 * never pays for it (~0.4 s and ~40 MB: sdk-node loads every exporter it supports, gRPC included).
 */
import type { RequestOptions } from 'node:http';
import { diag, DiagLogLevel } from '@opentelemetry/api';
import { ExportResultCode, setGlobalErrorHandler } from '@opentelemetry/core';
import { OTLPLogExporter as OtlpJsonLogExporter } from '@opentelemetry/exporter-logs-otlp-http';
import { OTLPMetricExporter as OtlpJsonMetricExporter } from '@opentelemetry/exporter-metrics-otlp-http';
import { OTLPMetricExporter as OtlpProtoMetricExporter } from '@opentelemetry/exporter-metrics-otlp-proto';
import { OTLPTraceExporter as OtlpJsonTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { OTLPExporterBase } from '@opentelemetry/otlp-exporter-base';
import { convertLegacyHttpOptions, createOtlpHttpExportDelegate } from '@opentelemetry/otlp-exporter-base/node-http';
import {
  LogsExporterMetricsHelper,
  ProtobufLogsSerializer,
  ProtobufTraceSerializer,
  TraceExporterMetricsHelper,
  type IExportLogsServiceResponse,
  type IExportTraceServiceResponse,
  type IExporterMetricsHelper,
  type ISerializer,
} from '@opentelemetry/otlp-transformer';
import type { Instrumentation } from '@opentelemetry/instrumentation';
import { HttpInstrumentation } from '@opentelemetry/instrumentation-http';
import { KoaInstrumentation } from '@opentelemetry/instrumentation-koa';
import { UndiciInstrumentation } from '@opentelemetry/instrumentation-undici';
import { defaultResource, resourceFromAttributes } from '@opentelemetry/resources';
import {
  BatchLogRecordProcessor,
  ConsoleLogRecordExporter,
  SimpleLogRecordProcessor,
  type LogRecordExporter,
  type LogRecordProcessor,
  type ReadableLogRecord,
} from '@opentelemetry/sdk-logs';
import {
  ConsoleMetricExporter,
  PeriodicExportingMetricReader,
  type CollectionResult,
  type MetricProducer,
  type MetricReader,
  type PushMetricExporter,
} from '@opentelemetry/sdk-metrics';
import { NodeSDK } from '@opentelemetry/sdk-node';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  ParentBasedSampler,
  SimpleSpanProcessor,
  TraceIdRatioBasedSampler,
  type ReadableSpan,
  type Sampler,
  type SpanExporter,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace';
import { ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION } from '@opentelemetry/semantic-conventions';
import { encodeLogsExportRequest, encodeTraceExportRequest } from './otlp-protobuf-encoding';
import { RequestIdSpanProcessor } from './request-id-span-processor';
import { createTextMapPropagator } from './trace-context-propagator';
import { ClientTraceIdSampler, RequestedTraceIdGenerator } from './trace-ids';
import { createTelemetryDiagnostics, type TelemetryDiagnostics } from './telemetry-diagnostics';
import { UNTRACED_PATHS, type InstrumentationName, type MetricsConfig, type SamplerConfig, type SignalConfig, type TelemetryConfig } from './telemetry-config';

/** Incubating in semantic-conventions 1.45 (not exported from the stable entry point). */
const ATTR_DEPLOYMENT_ENVIRONMENT_NAME = 'deployment.environment.name';

export interface Telemetry {
  readonly config: TelemetryConfig;
  /** Registers instrumentations, providers, propagators and, unless `OTEL_LOG_LEVEL` is set, the quiet diagnostics. */
  start(): void;
  /**
   * Flushes what is queued and stops exporting. Resolves `true` when done within `timeoutMs`, `false` when it
   * gave up (a hung collector), never rejects.
   */
  shutdown(timeoutMs: number): Promise<boolean>;
  /** True when an export failed recently; a flush at exit is then not worth a long wait. */
  exportFailedRecently(): boolean;
  /**
   * Adds `producer`'s metrics to every later export of the metric readers (the gateway's prom-client registry,
   * which exists only once main.ts has built the gateway). False, and nothing kept, when metric export is off.
   */
  registerMetricProducer(producer: MetricProducer): boolean;
}

export interface CreateTelemetryOptions {
  /** Writes one diagnostic line; default stderr. */
  write?: (line: string) => void;
}

/**
 * The SDK for one process, not started. Traces: the request-id processor, then a BatchSpanProcessor per OTLP
 * exporter (SimpleSpanProcessor for console). Logs: a BatchLogRecordProcessor per OTLP exporter. Metrics: a
 * PeriodicExportingMetricReader per exporter, reading the SDK's instruments (the http and undici
 * instrumentations record request durations once a MeterProvider exists) and the producers registered later;
 * none with OTEL_METRICS_EXPORTER=none, and then no MeterProvider either. The sampler is the one
 * OTEL_TRACES_SAMPLER(_ARG) names, wrapped so a client-chosen trace id cannot steer it. Propagators are W3C
 * Trace Context Level 2 and W3C Baggage (trace-context-propagator.ts; OTEL_PROPAGATORS is not read). Resource
 * detectors and span limits are left to NodeSDK, which reads OTEL_NODE_RESOURCE_DETECTORS and
 * OTEL_RESOURCE_ATTRIBUTES (the latter override the resource set here).
 */
export function createTelemetry(config: TelemetryConfig, options: CreateTelemetryOptions = {}): Telemetry {
  const diagnostics = createTelemetryDiagnostics({ destination: otlpDestination(config), write: options.write });
  const spanProcessors = config.traces.exporters.map((name) => spanProcessor(name, config.traces));
  const logRecordProcessors = config.logs.exporters.map((name) => logRecordProcessor(name, config.logs));
  const lateProducers = metricProducerList();
  // With OTEL_LOG_LEVEL set the SDK reports failures itself, unfiltered.
  const quiet = config.sdkLogLevel === undefined ? diagnostics : undefined;
  const metricReaders = config.metrics.exporters.map((name) => metricReader(name, config.metrics, lateProducers.producer, quiet));
  let sdk: NodeSDK | undefined;

  return {
    config,
    start() {
      if (sdk !== undefined) return;
      if (config.sdkLogLevel === undefined) installQuietDiagnostics(diagnostics);
      // Instrumentations patch modules as soon as they are constructed, so they are built here, not above.
      sdk = new NodeSDK({
        resource: defaultResource().merge(
          resourceFromAttributes({
            [ATTR_SERVICE_NAME]: config.serviceName,
            [ATTR_DEPLOYMENT_ENVIRONMENT_NAME]: config.environment,
            ...(config.serviceVersion === undefined ? {} : { [ATTR_SERVICE_VERSION]: config.serviceVersion }),
          }),
        ),
        // Lets the gateway give a request's root span the trace id its X-Request-Id stands for.
        idGenerator: new RequestedTraceIdGenerator(),
        // ...and keeps that id, which the client chose, out of the sampling decision.
        sampler: new ClientTraceIdSampler(sampler(config.sampler)),
        // Level 2 trace context: strict tracestate and the random flag kept (the SDK's default propagator does neither).
        textMapPropagator: createTextMapPropagator(),
        // The request-id processor runs first so the attribute is on the span before any exporter sees it.
        spanProcessors: spanProcessors.length > 0 ? [new RequestIdSpanProcessor(), ...spanProcessors] : [],
        logRecordProcessors,
        metricReaders,
        instrumentations: instrumentations(config.instrumentations, isOtlpExport(config)),
      });
      sdk.start();
    },
    async shutdown(timeoutMs) {
      if (sdk === undefined) return true;
      let timer: NodeJS.Timeout | undefined;
      const gaveUp = new Promise<boolean>((resolve) => {
        timer = setTimeout(() => resolve(false), timeoutMs);
        timer.unref();
      });
      const flushed = sdk.shutdown().then(
        () => true,
        (error: unknown) => {
          diagnostics.reportExportError(error);
          return false;
        },
      );
      try {
        return await Promise.race([flushed, gaveUp]);
      } finally {
        clearTimeout(timer);
      }
    },
    exportFailedRecently: () => diagnostics.exportFailedRecently(),
    registerMetricProducer(producer) {
      if (metricReaders.length === 0) return false;
      lateProducers.add(producer);
      return true;
    },
  };
}

function installQuietDiagnostics(diagnostics: TelemetryDiagnostics): void {
  diag.setLogger(diagnostics.logger, { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true });
  setGlobalErrorHandler((error) => {
    // Already reported, with the exporter's own error, by reportingFailures() below.
    if (error instanceof Error && error.message.startsWith(METRIC_READER_FAILURE)) return;
    diagnostics.reportExportError(error);
  });
}

/** The sampler OTEL_TRACES_SAMPLER(_ARG) names, built as NodeSDK would (sdk-node's createSamplerFromEnv). */
export function sampler({ name, ratio }: SamplerConfig): Sampler {
  const parentBased = name.startsWith('parentbased_');
  const base = name.replace(/^parentbased_/, '');
  const root = base === 'always_on' ? new AlwaysOnSampler() : base === 'always_off' ? new AlwaysOffSampler() : new TraceIdRatioBasedSampler(ratio);
  return parentBased ? new ParentBasedSampler({ root }) : root;
}

/** Where OTLP goes, for messages: the collector's origin, or each signal's URL when they go to different ones. */
function otlpDestination(config: TelemetryConfig): string {
  const signals = [config.traces, config.logs, config.metrics].filter((s) => s.exporters.includes('otlp'));
  const origins = new Set(signals.map((s) => new URL(s.url).origin));
  return origins.size === 1 ? [...origins][0]! : signals.map((s) => s.url).join(' / ');
}

function spanProcessor(name: SignalConfig['exporters'][number], signal: SignalConfig): SpanProcessor {
  if (name === 'console') return new SimpleSpanProcessor({ exporter: new ConsoleSpanExporter() });
  const exporter = signal.protocol === 'http/json' ? new OtlpJsonTraceExporter({ url: signal.url }) : otlpProtoTraceExporter(signal.url);
  return new BatchSpanProcessor({ exporter, ...signal.batch });
}

/**
 * What the SDK's OTLP/HTTP protobuf exporters are (exporter-trace-otlp-proto's OTLPTraceExporter and
 * exporter-logs-otlp-proto's OTLPLogExporter, 0.300.0), assembled exactly as their constructors do: the same
 * HTTP transport, headers, env configuration (OTEL_EXPORTER_OTLP_*), compression, retries and timeouts. Only
 * the request body comes from our one-pass encoder (otlp-protobuf-encoding.ts); responses are read by the SDK.
 */
function otlpProtoExporter<Records, Response>(
  url: string,
  signal: { name: 'TRACES' | 'LOGS'; path: string; componentType: string; metricsHelper: IExporterMetricsHelper<Records> },
  encode: (records: Records) => Uint8Array,
  sdkSerializer: ISerializer<Records, Response>,
): OTLPExporterBase<Records> {
  const serializer: ISerializer<Records, Response> = { serializeRequest: encode, deserializeResponse: (data) => sdkSerializer.deserializeResponse(data) };
  const options = convertLegacyHttpOptions({ url }, signal.name, signal.path, { 'Content-Type': 'application/x-protobuf' });
  return new OTLPExporterBase(createOtlpHttpExportDelegate(options, serializer, signal.componentType, signal.metricsHelper, undefined));
}

function otlpProtoTraceExporter(url: string): SpanExporter {
  const signal = { name: 'TRACES', path: 'v1/traces', componentType: 'otlp_http_span_exporter', metricsHelper: TraceExporterMetricsHelper } as const;
  return otlpProtoExporter<ReadableSpan[], IExportTraceServiceResponse>(url, signal, encodeTraceExportRequest, ProtobufTraceSerializer);
}

function otlpProtoLogExporter(url: string): LogRecordExporter {
  const signal = { name: 'LOGS', path: 'v1/logs', componentType: 'otlp_http_log_exporter', metricsHelper: LogsExporterMetricsHelper } as const;
  return otlpProtoExporter<ReadableLogRecord[], IExportLogsServiceResponse>(url, signal, encodeLogsExportRequest, ProtobufLogsSerializer);
}

function logRecordProcessor(name: SignalConfig['exporters'][number], signal: SignalConfig): LogRecordProcessor {
  if (name === 'console') return new SimpleLogRecordProcessor({ exporter: new ConsoleLogRecordExporter() });
  const exporter = signal.protocol === 'http/json' ? new OtlpJsonLogExporter({ url: signal.url }) : otlpProtoLogExporter(signal.url);
  return new BatchLogRecordProcessor({ exporter, ...signal.batch });
}

/**
 * One reader per exporter; each collects the SDK's instruments plus `producer`. OTLP goes through the SDK's own
 * metric exporters (the serializer's cost matters little once a minute); their temporality follows
 * OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE (default cumulative), which they read themselves.
 */
function metricReader(
  name: MetricsConfig['exporters'][number],
  metrics: MetricsConfig,
  producer: MetricProducer,
  diagnostics: TelemetryDiagnostics | undefined,
): MetricReader {
  const exporter =
    name === 'console'
      ? new ConsoleMetricExporter()
      : metrics.protocol === 'http/json'
        ? new OtlpJsonMetricExporter({ url: metrics.url })
        : new OtlpProtoMetricExporter({ url: metrics.url });
  return new PeriodicExportingMetricReader({
    exporter: diagnostics === undefined ? exporter : reportingFailures(exporter, diagnostics),
    exportIntervalMillis: metrics.exportIntervalMillis,
    exportTimeoutMillis: metrics.exportTimeoutMillis,
    metricProducers: [producer],
  });
}

/** How sdk-metrics 3.0's PeriodicExportingMetricReader begins the Error it hands the global error handler. */
const METRIC_READER_FAILURE = 'PeriodicExportingMetricReader: metrics export failed';

/**
 * The exporter, reporting its own failed exports. The reader reports them too, but as a new Error holding only
 * the text of the exporter's (`... failed (error AggregateError)` when both addresses of localhost refused);
 * the exporter's error itself lets the one line say `connect ECONNREFUSED 127.0.0.1:4318`, as for spans.
 */
function reportingFailures(exporter: PushMetricExporter, diagnostics: TelemetryDiagnostics): PushMetricExporter {
  return {
    export(metrics, resultCallback) {
      exporter.export(metrics, (result) => {
        if (result.code !== ExportResultCode.SUCCESS) diagnostics.reportExportError(result.error ?? new Error('metrics export failed'));
        resultCallback(result);
      });
    },
    forceFlush: () => exporter.forceFlush(),
    shutdown: () => exporter.shutdown(),
    selectAggregationTemporality: exporter.selectAggregationTemporality?.bind(exporter),
    selectAggregation: exporter.selectAggregation?.bind(exporter),
  };
}

/**
 * Producers registered after start: a reader takes its producers when it is built, so it is given this one,
 * which asks whatever has been added by the time of each collection.
 */
function metricProducerList(): { producer: MetricProducer; add(producer: MetricProducer): void } {
  const producers: MetricProducer[] = [];
  return {
    add: (producer) => void producers.push(producer),
    producer: {
      async collect(options): Promise<CollectionResult> {
        const results = await Promise.all(producers.map((p) => p.collect(options)));
        return {
          // Ignored: the reader sends the SDK's resource.
          resourceMetrics: { resource: defaultResource(), scopeMetrics: results.flatMap((r) => r.resourceMetrics.scopeMetrics) },
          errors: results.flatMap((r) => r.errors),
        };
      },
    },
  };
}

/**
 * The instrumentations, configured for this project; http-server and http-client share one instrumentation.
 * Koa keeps its per-middleware spans: our middleware are named functions (STYLE.md), so each shows up as
 * `middleware - <name>`.
 */
function instrumentations(names: readonly InstrumentationName[], isExport: (options: RequestOptions) => boolean): Instrumentation[] {
  const result: Instrumentation[] = [];
  if (names.includes('http-server') || names.includes('http-client')) {
    result.push(
      new HttpInstrumentation({
        disableIncomingRequestInstrumentation: !names.includes('http-server'),
        disableOutgoingRequestInstrumentation: !names.includes('http-client'),
        ignoreIncomingRequestHook: (request) => UNTRACED_PATHS.includes((request.url ?? '').split('?')[0] ?? ''),
        ignoreOutgoingRequestHook: isExport,
      }),
    );
  }
  if (names.includes('koa')) result.push(new KoaInstrumentation());
  if (names.includes('undici')) result.push(new UndiciInstrumentation());
  return result;
}

/**
 * True for the OTLP exporters' own requests (they use `http.request`). Their spans are suppressed already, but
 * the http instrumentation still counted each one in `http.client.request.duration`: every export added a
 * point about exporting.
 */
function isOtlpExport(config: TelemetryConfig): (options: RequestOptions) => boolean {
  const key = (protocol: string | null | undefined, hostname: string, port: string | number | null | undefined, path: string) =>
    `${hostname.replace(/^\[(.*)\]$/, '$1')}:${port === undefined || port === null || port === '' ? (protocol === 'https:' ? 443 : 80) : port}${path.split('?')[0]}`;
  const endpoints = new Set(
    [config.traces, config.logs, config.metrics]
      .filter((signal) => signal.exporters.includes('otlp'))
      .map((signal) => new URL(signal.url))
      .map((url) => key(url.protocol, url.hostname, url.port, url.pathname)),
  );
  return (options) => endpoints.has(key(options.protocol, options.hostname ?? options.host ?? '', options.port, options.path ?? '/'));
}
