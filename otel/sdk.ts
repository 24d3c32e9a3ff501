/**
 * Builds the OpenTelemetry Node SDK from a `TelemetryConfig`: exporters, batch processors, the request-id span
 * processor, the chosen instrumentations and the resource. Nothing global happens until `start()`.
 * This is the only module that loads the SDK; `telemetry.ts` requires it lazily, so a disabled process
 * never pays for it (~0.4 s and ~40 MB: sdk-node loads every exporter it supports, gRPC included).
 */
import { diag, DiagLogLevel } from '@opentelemetry/api';
import { setGlobalErrorHandler } from '@opentelemetry/core';
import { OTLPLogExporter as OtlpJsonLogExporter } from '@opentelemetry/exporter-logs-otlp-http';
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
import { ClientTraceIdSampler, RequestedTraceIdGenerator } from './trace-ids';
import { createTelemetryDiagnostics, type TelemetryDiagnostics } from './telemetry-diagnostics';
import { UNTRACED_PATHS, type InstrumentationName, type SamplerConfig, type SignalConfig, type TelemetryConfig } from './telemetry-config';

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
}

export interface CreateTelemetryOptions {
  /** Writes one diagnostic line; default stderr. */
  write?: (line: string) => void;
}

/**
 * The SDK for one process, not started. Traces: the request-id processor, then a BatchSpanProcessor per OTLP
 * exporter (SimpleSpanProcessor for console). Logs: a BatchLogRecordProcessor per OTLP exporter. Metrics: none
 * (no reader, so no metrics exporter). The sampler is the one OTEL_TRACES_SAMPLER(_ARG) names, wrapped so a
 * client-chosen trace id cannot steer it. Propagators, resource detectors and span limits are left to NodeSDK,
 * which reads OTEL_PROPAGATORS, OTEL_NODE_RESOURCE_DETECTORS and OTEL_RESOURCE_ATTRIBUTES (the latter
 * override the resource set here).
 */
export function createTelemetry(config: TelemetryConfig, options: CreateTelemetryOptions = {}): Telemetry {
  const diagnostics = createTelemetryDiagnostics({ destination: otlpDestination(config), write: options.write });
  const spanProcessors = config.traces.exporters.map((name) => spanProcessor(name, config.traces));
  const logRecordProcessors = config.logs.exporters.map((name) => logRecordProcessor(name, config.logs));
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
        // The request-id processor runs first so the attribute is on the span before any exporter sees it.
        spanProcessors: spanProcessors.length > 0 ? [new RequestIdSpanProcessor(), ...spanProcessors] : [],
        logRecordProcessors,
        metricReaders: [],
        instrumentations: instrumentations(config.instrumentations),
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
  };
}

function installQuietDiagnostics(diagnostics: TelemetryDiagnostics): void {
  diag.setLogger(diagnostics.logger, { logLevel: DiagLogLevel.WARN, suppressOverrideMessage: true });
  setGlobalErrorHandler((error) => diagnostics.reportExportError(error));
}

/** The sampler OTEL_TRACES_SAMPLER(_ARG) names, built as NodeSDK would (sdk-node's createSamplerFromEnv). */
export function sampler({ name, ratio }: SamplerConfig): Sampler {
  const parentBased = name.startsWith('parentbased_');
  const base = name.replace(/^parentbased_/, '');
  const root = base === 'always_on' ? new AlwaysOnSampler() : base === 'always_off' ? new AlwaysOffSampler() : new TraceIdRatioBasedSampler(ratio);
  return parentBased ? new ParentBasedSampler({ root }) : root;
}

/** Where OTLP goes, for messages: the collector's origin, or both URLs when traces and logs go to different ones. */
function otlpDestination(config: TelemetryConfig): string {
  const origins = new Set(
    [config.traces, config.logs].filter((s) => s.exporters.includes('otlp')).map((s) => new URL(s.url).origin),
  );
  return origins.size === 1 ? [...origins][0]! : `${config.traces.url} / ${config.logs.url}`;
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
 * The instrumentations, configured for this project; http-server and http-client share one instrumentation.
 * Koa keeps its per-middleware spans: our middleware are named functions (STYLE.md), so each shows up as
 * `middleware - <name>`.
 */
function instrumentations(names: readonly InstrumentationName[]): Instrumentation[] {
  const result: Instrumentation[] = [];
  if (names.includes('http-server') || names.includes('http-client')) {
    result.push(
      new HttpInstrumentation({
        disableIncomingRequestInstrumentation: !names.includes('http-server'),
        disableOutgoingRequestInstrumentation: !names.includes('http-client'),
        ignoreIncomingRequestHook: (request) => UNTRACED_PATHS.includes((request.url ?? '').split('?')[0] ?? ''),
      }),
    );
  }
  if (names.includes('koa')) result.push(new KoaInstrumentation());
  if (names.includes('undici')) result.push(new UndiciInstrumentation());
  return result;
}
