/**
 * Builds the OpenTelemetry Node SDK from a `TelemetryConfig`: exporters, batch processors, the request-id span
 * processor, the chosen instrumentations and the resource. Nothing global happens until `start()`.
 * This is the only module that loads the SDK; `telemetry.ts` requires it lazily, so a disabled process
 * never pays for it. It builds the SDK's providers itself, as NodeSDK's `start()` does (sdk-node 0.300), rather
 * than through NodeSDK: sdk-node requires every exporter it supports up front (gRPC, Zipkin, Prometheus, B3,
 * its YAML configuration), ~270 modules and ~18 MiB of RSS that no process here uses (docs/architecture.md).
 * Exporters and instrumentations are required only when the configuration names them.
 */
import { randomUUID } from 'node:crypto';
import type { IncomingHttpHeaders, IncomingMessage, RequestOptions } from 'node:http';
import { context, diag, DiagConsoleLogger, DiagLogLevel, logs, metrics, propagation, trace, type Attributes, type Tracer, type TracerProvider as ApiTracerProvider } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { diagLogLevelFromString, ExportResultCode, getNumberFromEnv, getStringListFromEnv, setGlobalErrorHandler } from '@opentelemetry/core';
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
import { registerInstrumentations, type Instrumentation } from '@opentelemetry/instrumentation';
import {
  defaultResource,
  detectResources,
  envDetector,
  hostDetector,
  osDetector,
  processDetector,
  resourceFromAttributes,
  serviceInstanceIdDetector,
  type Resource,
  type ResourceDetector,
} from '@opentelemetry/resources';
import {
  BatchLogRecordProcessor,
  ConsoleLogRecordExporter,
  LoggerProvider,
  SimpleLogRecordProcessor,
  type LogRecordExporter,
  type LogRecordProcessor,
  type ReadableLogRecord,
} from '@opentelemetry/sdk-logs';
import {
  ConsoleMetricExporter,
  MeterProvider,
  PeriodicExportingMetricReader,
  type CollectionResult,
  type MetricProducer,
  type MetricReader,
  type PushMetricExporter,
} from '@opentelemetry/sdk-metrics';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  ParentBasedSampler,
  SimpleSpanProcessor,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type ReadableSpan,
  type Sampler,
  type SpanExporter,
  type SpanLimits,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace';
import { ATTR_HTTP_REQUEST_METHOD_ORIGINAL, ATTR_SERVICE_NAME, ATTR_SERVICE_VERSION, ATTR_URL_FULL, ATTR_URL_PATH, ATTR_URL_QUERY } from '@opentelemetry/semantic-conventions';
import { droppedRecordsReporter, type DroppedRecords, type DroppedRecordsReporter } from './dropped-records';
import { createGatewayTracer, GATEWAY_SCHEMA_URL, GATEWAY_TRACER_NAME } from './gateway-tracer';
import { recordedMethod, spanNameMethod } from './http-method';
import { encodeLogsExportRequest, encodeTraceExportRequest } from './otlp-protobuf-encoding';
import { DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT, logRecordValueLengthLimit, positiveNumberFromEnv } from './attribute-values';
import { redactCredentialShapes, redactQuery, redactUrl } from './redact-url';
import { GrpcServerSpanStatusProcessor } from './grpc-server-span-status';
import { RequestIdSpanProcessor } from './request-id-span-processor';
import { createTextMapPropagator } from './trace-context-propagator';
import { ClientTraceIdSampler, RandomTraceIdRatioSampler, RequestedTraceIdGenerator } from './trace-ids';
import { createTelemetryDiagnostics, withoutSdkSpanDrops, type TelemetryDiagnostics } from './telemetry-diagnostics';
import { HEADER } from './wire-names';
import { UNTRACED_PATHS, type BatchOptions, type InstrumentationName, type MetricsConfig, type SamplerConfig, type SignalConfig, type TelemetryConfig } from './telemetry-config';

/** Incubating in semantic-conventions 1.45 (not exported from the stable entry point). */
const ATTR_DEPLOYMENT_ENVIRONMENT_NAME = 'deployment.environment.name';
const ATTR_SERVICE_INSTANCE_ID = 'service.instance.id';

/** How a shutdown's last flush ended (Telemetry.shutdown). */
export type ShutdownOutcome = 'flushed' | 'failed' | 'timed_out';

export interface Telemetry {
  readonly config: TelemetryConfig;
  /** Registers instrumentations, providers, propagators and the quiet diagnostics (the SDK's own at `OTEL_LOG_LEVEL` when set). */
  start(): void;
  /**
   * Flushes what is queued and stops exporting, each signal on its own: `flushed` when all did within `timeoutMs`,
   * `failed` when one or more exports were refused (the others still had their whole flush), `timed_out` when it gave
   * up waiting (a hung collector). Never rejects.
   */
  shutdown(timeoutMs: number): Promise<ShutdownOutcome>;
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
  /**
   * Whether an inbound HTTP request's `traceparent`, `tracestate` and `baggage` are continued; when false they are
   * dropped before the http instrumentation reads them, and its server span starts a trace of its own. Asked per
   * request; default: always continued.
   */
  continuesTraceContext?: (request: IncomingMessage) => boolean;
}

/**
 * The SDK for one process, not started. Traces: the request-id processor, then a BatchSpanProcessor per OTLP
 * exporter (SimpleSpanProcessor for console). Logs: a BatchLogRecordProcessor per OTLP exporter. Metrics: a
 * PeriodicExportingMetricReader per exporter, reading the SDK's instruments (the http and undici
 * instrumentations record request durations once a MeterProvider exists) and the producers registered later;
 * none with OTEL_METRICS_EXPORTER=none, and then no MeterProvider either. The sampler is the one
 * OTEL_TRACES_SAMPLER(_ARG) names, wrapped so a client-chosen trace id cannot steer it. Propagators are W3C
 * Trace Context Level 2 and W3C Baggage (trace-context-propagator.ts; OTEL_PROPAGATORS is not read). Resource
 * detectors and span limits are read from the environment as NodeSDK reads them (OTEL_NODE_RESOURCE_DETECTORS,
 * OTEL_RESOURCE_ATTRIBUTES, which override the resource set here, and the OTEL_*_LIMIT variables); the gateway's
 * own tracer (gateway-tracer.ts) gets the same limits, sampler and processors as the SDK's.
 */
export function createTelemetry(config: TelemetryConfig, options: CreateTelemetryOptions = {}): Telemetry {
  const diagnostics = createTelemetryDiagnostics({ destination: otlpDestination(config), write: options.write });
  // Each batch processor's count of what it dropped on a full queue, said again at shutdown (dropped-records.ts).
  const droppedReporters: DroppedRecordsReporter[] = [];
  const droppedReporter = (what: DroppedRecords) => {
    const reporter = droppedRecordsReporter(what);
    droppedReporters.push(reporter);
    return reporter;
  };
  const spanProcessors = config.traces.exporters.map((name) => spanProcessor(name, config.traces, droppedReporter));
  const logRecordProcessors = config.logs.exporters.map((name) => logRecordProcessor(name, config.logs, droppedReporter));
  const lateProducers = metricProducerList();
  const metricReaders = config.metrics.exporters.map((name) => metricReader(name, config.metrics, lateProducers.producer, diagnostics));
  let providers: { shutdown(): Promise<void> }[] | undefined;

  return {
    config,
    start() {
      if (providers !== undefined) return;
      if (config.sdkLogLevel === undefined) diag.setLogger(diagnostics.logger, { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true });
      else diag.setLogger(withoutSdkSpanDrops(new DiagConsoleLogger()), { logLevel: diagLogLevelFromString(config.sdkLogLevel) });
      // Failed exports are reported sparingly whatever OTEL_LOG_LEVEL says: the SDK's own handler wrote every
      // failure with the collector's whole answer (12 MB of stderr in 10 s from a collector answering 400 with 4 MB).
      installExportErrorHandler(diagnostics);
      // Instrumentations patch modules as soon as they are constructed, so they are built here, not above.
      providers = startProviders({
        resource: defaultResource().merge(
          resourceFromAttributes({
            [ATTR_SERVICE_NAME]: config.serviceName,
            [ATTR_DEPLOYMENT_ENVIRONMENT_NAME]: config.environment,
            // One per process: the gateway's cluster workers (src/workers.ts) are told apart by it, and their
            // cumulative metrics are separate series instead of one series that jumps between them. The default
            // detectors set none; OTEL_RESOURCE_ATTRIBUTES may still name one (then shared by all workers).
            [ATTR_SERVICE_INSTANCE_ID]: randomUUID(),
            ...(config.serviceVersion === undefined ? {} : { [ATTR_SERVICE_VERSION]: config.serviceVersion }),
          }),
        ),
        // Lets the gateway give a request's root span the trace id its X-Request-Id stands for.
        idGenerator: new RequestedTraceIdGenerator(),
        // ...and keeps that id, which the client chose, out of the sampling decision.
        sampler: new ClientTraceIdSampler(sampler(config.sampler)),
        // Level 2 trace context: strict tracestate and the random flag kept (the SDK's default propagator does neither).
        textMapPropagator: createTextMapPropagator(),
        // The request-id processor runs first so the attribute is on the span before any exporter sees it; with the
        // gRPC instrumentation loaded, its SERVER spans' status is corrected before any exporter sees it too.
        spanProcessors: spanProcessors.length > 0 ? [new RequestIdSpanProcessor(), ...(loadsGrpcInstrumentation(config.instrumentations) ? [new GrpcServerSpanStatusProcessor()] : []), ...spanProcessors] : [],
        logRecordProcessors,
        metricReaders,
        instrumentations: instrumentations(config.instrumentations, isOtlpExport(config), options.continuesTraceContext),
        gatewayScopeVersion: config.serviceVersion,
      });
    },
    async shutdown(timeoutMs) {
      if (providers === undefined) return 'flushed';
      const running = providers;
      let timer: NodeJS.Timeout | undefined;
      const gaveUp = new Promise<ShutdownOutcome>((resolve) => {
        timer = setTimeout(() => resolve('timed_out'), timeoutMs);
        timer.unref();
      });
      // Each signal's flush runs to its end: with Promise.all, the span provider's refused export (a trace endpoint
      // answering 404) rejected at once, the shutdown returned, and the process exited under the log records and
      // metrics still being flushed.
      const flushed = Promise.allSettled(running.map((provider) => provider.shutdown())).then((results): ShutdownOutcome => {
        const refused = results.flatMap((result) => (result.status === 'rejected' ? [result.reason as unknown] : []));
        for (const error of refused) diagnostics.reportExportError(error);
        return refused.length === 0 ? 'flushed' : 'failed';
      });
      try {
        return await Promise.race([flushed, gaveUp]);
      } finally {
        clearTimeout(timer);
        // What was dropped and not yet said, and the reports held back since the last of their kind: the process
        // ends next, and with it the timers that would have said them.
        for (const reporter of droppedReporters) reporter.flush();
        diagnostics.flush();
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

interface ProviderOptions {
  resource: Resource;
  idGenerator: RequestedTraceIdGenerator;
  sampler: Sampler;
  textMapPropagator: ReturnType<typeof createTextMapPropagator>;
  spanProcessors: SpanProcessor[];
  logRecordProcessors: LogRecordProcessor[];
  metricReaders: MetricReader[];
  instrumentations: Instrumentation[];
  /** The version of the gateway tracer's scope (the process's own: its spans are the gateway's code). */
  gatewayScopeVersion: string | undefined;
}

/**
 * Registers what NodeSDK's `start()` registers (sdk-node 0.300, same order and defaults): the instrumentations,
 * the AsyncLocalStorage context manager, the propagator, the resource merged with the detected one
 * (OTEL_NODE_RESOURCE_DETECTORS, else env, process and host), a MeterProvider when there are readers, a
 * TracerProvider with the span limits of OTEL_*_LIMIT when there are span processors, and a LoggerProvider with
 * the log record limits when there are log record processors. Returns what `shutdown` must flush.
 * One addition: the gateway's own tracer is the lean one (gateway-tracer.ts), built from the TracerProvider's
 * options, so its spans go to the same processors.
 */
function startProviders(options: ProviderOptions): { shutdown(): Promise<void> }[] {
  const started: { shutdown(): Promise<void> }[] = [];
  registerInstrumentations({ instrumentations: options.instrumentations });
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(options.textMapPropagator);
  const resource = options.resource.merge(detectResources({ detectors: resourceDetectors() }));
  if (options.metricReaders.length > 0) {
    const meterProvider = new MeterProvider({ resource, views: [], readers: options.metricReaders });
    metrics.setGlobalMeterProvider(meterProvider);
    for (const instrumentation of options.instrumentations) instrumentation.setMeterProvider(metrics.getMeterProvider());
    started.push(meterProvider);
  }
  if (options.spanProcessors.length > 0) {
    const tracerOptions = { sampler: options.sampler, spanLimits: spanLimitsFromEnv(), resource, idGenerator: options.idGenerator, spanProcessors: options.spanProcessors };
    const tracerProvider = new TracerProvider(tracerOptions);
    const gatewayScope = { name: GATEWAY_TRACER_NAME, version: options.gatewayScopeVersion, schemaUrl: GATEWAY_SCHEMA_URL };
    trace.setGlobalTracerProvider(withGatewayTracer(tracerProvider, createGatewayTracer({ ...gatewayScope, ...tracerOptions })));
    // Flushed and shut down through the SDK's provider: the processors are shared, so that covers both tracers.
    started.push(tracerProvider);
  }
  if (options.logRecordProcessors.length > 0) {
    const logRecordLimits = {
      attributeCountLimit: positiveNumberFromEnv('OTEL_LOGRECORD_ATTRIBUTE_COUNT_LIMIT') ?? positiveNumberFromEnv('OTEL_ATTRIBUTE_COUNT_LIMIT'),
      attributeValueLengthLimit: logRecordValueLengthLimit(),
    };
    const loggerProvider = new LoggerProvider({ logRecordLimits, resource, processors: options.logRecordProcessors });
    logs.setGlobalLoggerProvider(loggerProvider);
    started.push(loggerProvider);
  }
  return started;
}

/**
 * The global tracer provider: `gatewayTracer` for the gateway's scope (`trace.getTracer('koa-gateway')` in
 * src/gateway.ts, asked without version or schema URL: its spans carry the process's version and
 * GATEWAY_SCHEMA_URL), the SDK's tracers for every other scope (instrumentations).
 * By name, so src/gateway.ts and main.ts stay as they are and a gateway built without the bootstrap (tests,
 * telemetry off) gets what it got before. Flush and shutdown go to the SDK's provider.
 */
function withGatewayTracer(sdkProvider: TracerProvider, gatewayTracer: Tracer): ApiTracerProvider & Pick<TracerProvider, 'forceFlush' | 'shutdown'> {
  return {
    getTracer: (name, version, options) =>
      name === GATEWAY_TRACER_NAME && version === undefined && options?.schemaUrl === undefined ? gatewayTracer : sdkProvider.getTracer(name, version, options),
    forceFlush: (options) => sdkProvider.forceFlush(options),
    shutdown: () => sdkProvider.shutdown(),
  };
}

/** The resource detectors NodeSDK would use: OTEL_NODE_RESOURCE_DETECTORS (`all`, `none` or names), else env, process, host. */
function resourceDetectors(): ResourceDetector[] {
  const byName: Record<string, ResourceDetector> = { host: hostDetector, os: osDetector, serviceinstance: serviceInstanceIdDetector, process: processDetector, env: envDetector };
  const names = getStringListFromEnv('OTEL_NODE_RESOURCE_DETECTORS');
  if (names === undefined) return [envDetector, processDetector, hostDetector];
  if (names.includes('all')) return Object.values(byName);
  if (names.includes('none')) return [];
  return names.flatMap((name) => {
    const detector = byName[name];
    if (!detector) diag.warn(`Invalid resource detector "${name}" specified in the environment variable OTEL_NODE_RESOURCE_DETECTORS`);
    return detector ? [detector] : [];
  });
}

/** Span limits from OTEL_SPAN_* / OTEL_ATTRIBUTE_* (sdk-node's createSpanLimitsFromEnv); unset ones keep the SDK's defaults, but for the value length (DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT). */
function spanLimitsFromEnv(): SpanLimits {
  return {
    attributeCountLimit: getNumberFromEnv('OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT') ?? getNumberFromEnv('OTEL_ATTRIBUTE_COUNT_LIMIT'),
    // As log records read it (0 or less is no limit to the tracer, so a 0 took every bound off client-sized values).
    attributeValueLengthLimit: positiveNumberFromEnv('OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT') ?? positiveNumberFromEnv('OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT') ?? DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT,
    eventCountLimit: getNumberFromEnv('OTEL_SPAN_EVENT_COUNT_LIMIT'),
    linkCountLimit: getNumberFromEnv('OTEL_SPAN_LINK_COUNT_LIMIT'),
    attributePerEventCountLimit: getNumberFromEnv('OTEL_SPAN_ATTRIBUTE_PER_EVENT_COUNT_LIMIT'),
    attributePerLinkCountLimit: getNumberFromEnv('OTEL_SPAN_ATTRIBUTE_PER_LINK_COUNT_LIMIT'),
  };
}

function installExportErrorHandler(diagnostics: TelemetryDiagnostics): void {
  setGlobalErrorHandler((error) => {
    // Already reported, with the exporter's own error, by reportingFailures() below.
    if (error instanceof Error && error.message.startsWith(METRIC_READER_FAILURE)) return;
    diagnostics.reportExportError(error);
  });
}

/**
 * The sampler OTEL_TRACES_SAMPLER(_ARG) names, built as NodeSDK would (sdk-node's createSamplerFromEnv), except that
 * a plain `traceidratio`, which decides children from their trace id too, draws only from ids that are random
 * (RandomTraceIdRatioSampler). Under a parent-based sampler the ratio decides root spans alone.
 */
export function sampler({ name, ratio }: SamplerConfig): Sampler {
  if (name === 'traceidratio') return new RandomTraceIdRatioSampler(ratio);
  const parentBased = name.startsWith('parentbased_');
  const base = name.replace(/^parentbased_/, '');
  const root = base === 'always_on' ? new AlwaysOnSampler() : base === 'always_off' ? new AlwaysOffSampler() : new TraceIdRatioBasedSampler(ratio);
  return parentBased ? new ParentBasedSampler({ root }) : root;
}

/** Where OTLP goes, for messages: the collector's origin, or each signal's URL when they go to different ones. */
function otlpDestination(config: TelemetryConfig): string {
  const signals = [config.traces, config.logs, config.metrics].filter((s) => s.exporters.includes('otlp'));
  const origins = new Set(signals.map((s) => new URL(s.url).origin));
  return origins.size === 1 ? [...origins][0]! : signals.map((s) => redactUrl(s.url)).join(' / ');
}

function spanProcessor(name: SignalConfig['exporters'][number], signal: SignalConfig, droppedReporter: (what: DroppedRecords) => DroppedRecordsReporter): SpanProcessor {
  if (name === 'console') return new SimpleSpanProcessor({ exporter: new ConsoleSpanExporter() });
  const concurrencyLimit = exportsInFlight(signal.batch);
  const exporter = signal.protocol === 'http/json' ? new (lazy('@opentelemetry/exporter-trace-otlp-http') as typeof import('@opentelemetry/exporter-trace-otlp-http')).OTLPTraceExporter({ url: signal.url, concurrencyLimit, ...exportAgentOptions('TRACES', 'v1/traces', signal.url) }) : otlpProtoTraceExporter(signal.url, concurrencyLimit);
  return new BatchSpanProcessor({ exporter, ...signal.batch, selfObsMeterProvider: droppedReporter('spans').meterProvider });
}

/** The batch processors' defaults (sdk-trace's and sdk-logs' alike) where OTEL_BSP_* / OTEL_BLRP_* leave them. */
const SDK_MAX_QUEUE_SIZE = 2048;
const SDK_MAX_EXPORT_BATCH_SIZE = 512;

/**
 * Exports of one signal that may be open at once (the SDK's default is 30). The batch processor sends one batch at a
 * time and gives up waiting after its export timeout (OTEL_BSP_EXPORT_TIMEOUT), but the request stays open until the
 * transport's own timeout, which counts silence only: a collector that reads a body slowly, or answers a byte at a
 * time, kept requests open as the processor sent more, each holding its encoded batch (up to ~6 MiB with attribute
 * values at their limit): 30 of them, past the memory the attribute limit was chosen to keep within. The span
 * processor's flush (and so shutdown) sends the whole queue at once, batch by batch, beside the export under way: that
 * many, and no more (the log record processor's flush sends one batch at a time: a bound to spare).
 */
export function exportsInFlight(batch: BatchOptions): number {
  const queue = batch.maxQueueSize ?? SDK_MAX_QUEUE_SIZE;
  return Math.ceil(queue / Math.min(batch.maxExportBatchSize ?? SDK_MAX_EXPORT_BATCH_SIZE, queue)) + 1;
}

/** The longest delay a Node timer takes, ms. */
const MAX_TIMER_MS = 2 ** 31 - 1;

/** How the SDK's OTLP/HTTP transport gets its agent (its env configuration's: certificates, or keep-alive). */
type ExportAgentFactory = ReturnType<typeof convertLegacyHttpOptions>['agentFactory'];

/** What a request's deadline does to it: ended as a failure, with this message. */
export const EXPORT_DEADLINE_PASSED = (deadlineMs: number) => `no whole answer within ${deadlineMs} ms (OTEL_EXPORTER_OTLP_TIMEOUT)`;

/**
 * The agent `factory` makes, each of whose requests is ended `deadlineMs` after it was made, answered or not. The
 * SDK's transport times a request out on silence only (`req.setTimeout`): a collector, or a proxy before it, that
 * answers a byte at a time kept each export open for good, and once the exports in flight (exportsInFlight) were all
 * such, every later one was refused by the limit: nothing of that signal was exported again, even after the
 * collector recovered (an outside review's trickling collector). Ended, the export fails (not retried) and frees its
 * place. The hook is the agent's `addRequest`, which every request made through it passes (the transport takes no
 * signal or wrapper); each request's timer is cleared when it closes.
 */
function withExportDeadline(factory: ExportAgentFactory, deadlineMs: number): ExportAgentFactory {
  // A timer takes at most 2^31-1 ms (24.8 days); past it Node fires at once, and every export failed at its start.
  if (deadlineMs > MAX_TIMER_MS) return factory;
  return async (protocol) => {
    const agent = (await factory(protocol)) as Awaited<ReturnType<ExportAgentFactory>> & { addRequest(request: import('node:http').ClientRequest, options: unknown): void };
    const addRequest = agent.addRequest;
    agent.addRequest = function addRequestWithDeadline(request, options) {
      const deadline = setTimeout(() => request.destroy(new Error(EXPORT_DEADLINE_PASSED(deadlineMs))), deadlineMs);
      deadline.unref();
      request.once('close', () => clearTimeout(deadline));
      return addRequest.call(this, request, options);
    };
    return agent;
  };
}

/**
 * The agent one signal's SDK-built exporters (http/json, metrics) take, as they would make it themselves from
 * OTEL_EXPORTER_OTLP_* (certificates included), with the export deadline (withExportDeadline).
 */
/** The SDK's OTLP metric exporters' options: the URL, and the agent with the export deadline. */
const otlpMetricsOptions = (url: string) => ({ url, ...exportAgentOptions('METRICS', 'v1/metrics', url) });

function exportAgentOptions(signal: 'TRACES' | 'LOGS' | 'METRICS', path: string, url: string): { httpAgentOptions: ExportAgentFactory } {
  const options = convertLegacyHttpOptions({ url }, signal, path, {});
  return { httpAgentOptions: withExportDeadline(options.agentFactory, options.timeoutMillis) };
}

/**
 * What the SDK's OTLP/HTTP protobuf exporters are (exporter-trace-otlp-proto's OTLPTraceExporter and
 * exporter-logs-otlp-proto's OTLPLogExporter, 0.300.0), assembled exactly as their constructors do: the same
 * HTTP transport, headers, env configuration (OTEL_EXPORTER_OTLP_*), compression, retries and timeouts, but for the
 * exports open at once (`concurrencyLimit`, exportsInFlight). Only the request body comes from our one-pass encoder
 * (otlp-protobuf-encoding.ts); responses are read by the SDK.
 */
function otlpProtoExporter<Records, Response>(
  target: { url: string; concurrencyLimit: number },
  signal: { name: 'TRACES' | 'LOGS'; path: string; componentType: string; metricsHelper: IExporterMetricsHelper<Records> },
  encode: (records: Records) => Uint8Array,
  sdkSerializer: ISerializer<Records, Response>,
): OTLPExporterBase<Records> {
  const serializer: ISerializer<Records, Response> = { serializeRequest: encode, deserializeResponse: (data) => sdkSerializer.deserializeResponse(data) };
  const options = convertLegacyHttpOptions(target, signal.name, signal.path, { 'Content-Type': 'application/x-protobuf' });
  options.agentFactory = withExportDeadline(options.agentFactory, options.timeoutMillis);
  return new OTLPExporterBase(createOtlpHttpExportDelegate(options, serializer, signal.componentType, signal.metricsHelper, undefined));
}

/** The OTLP/HTTP protobuf span exporter (exported for its tests). */
export function otlpProtoTraceExporter(url: string, concurrencyLimit: number): SpanExporter {
  const signal = { name: 'TRACES', path: 'v1/traces', componentType: 'otlp_http_span_exporter', metricsHelper: TraceExporterMetricsHelper } as const;
  return otlpProtoExporter<ReadableSpan[], IExportTraceServiceResponse>({ url, concurrencyLimit }, signal, encodeTraceExportRequest, ProtobufTraceSerializer);
}

function otlpProtoLogExporter(url: string, concurrencyLimit: number): LogRecordExporter {
  const signal = { name: 'LOGS', path: 'v1/logs', componentType: 'otlp_http_log_exporter', metricsHelper: LogsExporterMetricsHelper } as const;
  return otlpProtoExporter<ReadableLogRecord[], IExportLogsServiceResponse>({ url, concurrencyLimit }, signal, encodeLogsExportRequest, ProtobufLogsSerializer);
}

function logRecordProcessor(name: SignalConfig['exporters'][number], signal: SignalConfig, droppedReporter: (what: DroppedRecords) => DroppedRecordsReporter): LogRecordProcessor {
  if (name === 'console') return new SimpleLogRecordProcessor({ exporter: new ConsoleLogRecordExporter() });
  const concurrencyLimit = exportsInFlight(signal.batch);
  const exporter = signal.protocol === 'http/json' ? new (lazy('@opentelemetry/exporter-logs-otlp-http') as typeof import('@opentelemetry/exporter-logs-otlp-http')).OTLPLogExporter({ url: signal.url, concurrencyLimit, ...exportAgentOptions('LOGS', 'v1/logs', signal.url) }) : otlpProtoLogExporter(signal.url, concurrencyLimit);
  return new BatchLogRecordProcessor({ exporter, ...signal.batch, selfObsMeterProvider: droppedReporter('log records').meterProvider });
}

/**
 * One reader per exporter; each collects the SDK's instruments plus `producer`. OTLP goes through the SDK's own
 * metric exporters (the serializer's cost matters little once a minute); the SDK instruments' temporality follows
 * OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE (default cumulative), which the exporters read themselves. A
 * producer's metrics are added as they come: the gateway's (the prom-client bridge) are always cumulative.
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
        ? new (lazy('@opentelemetry/exporter-metrics-otlp-http') as typeof import('@opentelemetry/exporter-metrics-otlp-http')).OTLPMetricExporter(otlpMetricsOptions(metrics.url))
        : new (lazy('@opentelemetry/exporter-metrics-otlp-proto') as typeof import('@opentelemetry/exporter-metrics-otlp-proto')).OTLPMetricExporter(otlpMetricsOptions(metrics.url));
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
function instrumentations(names: readonly InstrumentationName[], isExport: (options: RequestOptions) => boolean, continuesTraceContext?: (request: IncomingMessage) => boolean): Instrumentation[] {
  const result: Instrumentation[] = [];
  if (names.includes('http-server') || names.includes('http-client')) {
    const { HttpInstrumentation } = lazy('@opentelemetry/instrumentation-http') as typeof import('@opentelemetry/instrumentation-http');
    result.push(
      new HttpInstrumentation({
        disableIncomingRequestInstrumentation: !names.includes('http-server'),
        disableOutgoingRequestInstrumentation: !names.includes('http-client'),
        ignoreIncomingRequestHook: (request) => UNTRACED_PATHS.includes((request.url ?? '').split('?')[0] ?? ''),
        // The instrumentation redacts a few exact parameter names in `url.query`; the gateway forwards every query
        // byte for byte, so a service's span would carry the `?token=` the gateway's log redacts. Same rules here.
        startIncomingSpanHook: (request) => {
          // Called before the instrumentation extracts the caller's context (instrumentation-http 0.300), so a
          // request the process does not believe (a service's, not signed by the gateway) starts a trace of its own.
          if (continuesTraceContext !== undefined && !continuesTraceContext(request)) dropTraceContext(request.headers);
          const url = (request as { url?: string }).url ?? '';
          const queryStart = url.indexOf('?');
          const attributes: Attributes = queryStart === -1 ? {} : { [ATTR_URL_QUERY]: redactQuery(url.slice(queryStart + 1)) };
          // A credential known by its shape in the path (a magic link's token), as the gateway's own span redacts it.
          const path = queryStart === -1 ? url : url.slice(0, queryStart);
          const redactedPath = redactCredentialShapes(path);
          if (redactedPath !== path) attributes[ATTR_URL_PATH] = redactedPath;
          return attributes;
        },
        ignoreOutgoingRequestHook: isExport,
        // It records a method outside the conventions' list as `_OTHER` but still names the span after it
        // (`PROPFIND`); the conventions name it `HTTP` (+ route), as the gateway's spans do.
        applyCustomAttributesOnSpan: (span, request) => {
          const { method } = request;
          const name = (span as Partial<ReadableSpan>).name;
          if (method && name?.startsWith(method) && spanNameMethod(recordedMethod(method)) !== method) span.updateName(`HTTP${name.slice(method.length)}`);
        },
      }),
    );
  }
  // gRPC rides on HTTP/2, so the `http` names cover @grpc/grpc-js too: a SERVER span per call that continues the
  // caller's `traceparent` metadata, and CLIENT spans that inject it (services/notifications, services/orders).
  if (loadsGrpcInstrumentation(names)) result.push(new (lazy('@opentelemetry/instrumentation-grpc') as typeof import('@opentelemetry/instrumentation-grpc')).GrpcInstrumentation());
  if (names.includes('koa')) result.push(new (lazy('@opentelemetry/instrumentation-koa') as typeof import('@opentelemetry/instrumentation-koa')).KoaInstrumentation());
  if (names.includes('undici')) result.push(new (lazy('@opentelemetry/instrumentation-undici') as typeof import('@opentelemetry/instrumentation-undici')).UndiciInstrumentation({ startSpanHook: undiciSpanCorrections }));
  return result;
}

/** Whether `instrumentations` loads instrumentation-grpc (with either half of `http`). */
function loadsGrpcInstrumentation(names: readonly InstrumentationName[]): boolean {
  return names.includes('http-server') || names.includes('http-client');
}

/** Removes the W3C trace context and baggage a request carried. */
function dropTraceContext(headers: IncomingHttpHeaders): void {
  delete headers[HEADER.traceparent];
  delete headers[HEADER.tracestate];
  delete headers[HEADER.baggage];
}

/**
 * What instrumentation-undici (0.34) gets wrong at span start, undone: it writes `http.request.method_original`
 * on every span, which the conventions want "if and only if it's different than `http.request.method`", and
 * `url.query` as the URL's `search` (`""` without a query, `"?a=1"` with one, secrets and all), where the
 * conventions want the query component, only when there is one, redacted (with `url.full`) as every process
 * redacts queries. These hook attributes replace the instrumentation's, and one set to undefined is dropped by
 * the tracer. Its method is a known method in upper case, so an original that is a known method as written is
 * the same.
 */
function undiciSpanCorrections(request: { origin: string; method: string; path: string }): Attributes {
  const corrections: Attributes = {};
  if (recordedMethod(request.method) === request.method) corrections[ATTR_HTTP_REQUEST_METHOD_ORIGINAL] = undefined;
  const queryStart = request.path.indexOf('?');
  const query = queryStart === -1 ? '' : request.path.slice(queryStart + 1);
  if (query === '') {
    corrections[ATTR_URL_QUERY] = undefined;
    return corrections;
  }
  const redacted = redactQuery(query);
  corrections[ATTR_URL_QUERY] = redacted;
  if (redacted !== query) {
    try {
      corrections[ATTR_URL_FULL] = new URL(`${request.path.slice(0, queryStart)}?${redacted}`, request.origin).toString();
    } catch {
      // The instrumentation could not parse it either, and then starts no span.
    }
  }
  return corrections;
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

/** Exporters and instrumentations are required when the configuration uses them: most processes need one or two. */
function lazy(name: string): unknown {
  return require(name);
}
