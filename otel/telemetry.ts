/**
 * The process-wide telemetry handle: started once by `otel/register` (preloaded with `--require`), flushed by
 * each `main.ts` after it closes its server. Light on purpose: `main.ts` and `logger.ts` import it even when
 * telemetry is off, and it loads the SDK (`./sdk`) only when telemetry is on.
 */
import type { IncomingMessage } from 'node:http';
import type { MetricProducer } from '@opentelemetry/sdk-metrics';
import type { PromClientMetricProducerOptions, PromClientRegistry } from './prom-client-otlp-bridge';
import { redactUrl } from './redact-url';
import { readTelemetryConfig, type TelemetryConfig } from './telemetry-config';
import type { Telemetry } from './sdk';

/** How long `shutdownTelemetry` waits for the last export, ms; shorter when the collector is known to be down. */
export const SHUTDOWN_TIMEOUT_MS = 5_000;
const SHUTDOWN_TIMEOUT_COLLECTOR_DOWN_MS = 1_000;

let started = false;
let active: Telemetry | undefined;
let propagating = false;
let continuesTraceContext: ((request: IncomingMessage) => boolean) | undefined;
let stopping: Promise<void> | undefined;
let write = (line: string) => {
  process.stderr.write(`${line}\n`);
};

export interface StartTelemetryOptions {
  /** Default: `readTelemetryConfig()` (the `OTEL_*` variables, the entry script, package.json's version). */
  config?: TelemetryConfig;
  /** Writes one line; default stderr. */
  write?: (line: string) => void;
}

/**
 * Starts the SDK for this process, once; later calls do nothing. Says in one line where telemetry goes. A
 * failure to start is reported and swallowed: the service then runs without telemetry.
 */
export function startTelemetry(options: StartTelemetryOptions = {}): void {
  if (started) return;
  started = true;
  if (options.write !== undefined) write = options.write;
  let config: TelemetryConfig;
  let telemetry: Telemetry | undefined;
  try {
    config = options.config ?? readTelemetryConfig();
    for (const warning of config.warnings) write(`telemetry: ${warning}`);
    if (!config.enabled) {
      write('telemetry: off (OTEL_SDK_DISABLED=true)');
      return;
    }
    // Required here, not imported above, so a process with telemetry off never loads the SDK.
    const { createTelemetry } = require('./sdk') as typeof import('./sdk');
    telemetry = createTelemetry(config, { write, continuesTraceContext: (request) => continuesTraceContext?.(request) ?? true });
    telemetry.start();
    active = telemetry;
    write(`telemetry: ${describeDestination(config)}`);
  } catch (error) {
    write(`telemetry: could not start (${error instanceof Error ? error.message : String(error)}); running without it`);
    void telemetry?.shutdown(0);
  }
}

/**
 * From now on, an inbound HTTP request's `traceparent`, `tracestate` and `baggage` are continued only when
 * `check` says so; otherwise its server span (the http instrumentation's) starts a trace of its own. For a
 * service that believes only what the gateway signed: a peer's forged trace context must not put its request
 * into someone else's trace. Set by a process's main (services/shared/service-main.ts), after the bootstrap
 * started; asked once per request, so it must be cheap.
 */
export function continueTraceContextOnlyWhen(check: (request: IncomingMessage) => boolean): void {
  continuesTraceContext = check;
}

/**
 * Registers the context manager and the propagators (W3C Trace Context Level 2 and W3C Baggage) as the SDK
 * registers them, when it did not: telemetry off (`OTEL_SDK_DISABLED=true`) or `otel/register` not preloaded.
 * For a process that passes its callers' trace context on without tracing anything: W3C Trace Context says a
 * participant that receives a valid `traceparent` MUST propagate it, and without these the API's no-op
 * propagator sends nothing and the no-op context manager loses the request's context before the call is made.
 * With no tracer provider the gateway's span is the caller's own, so the caller's `traceparent` goes on
 * unchanged, as with `OTEL_TRACES_EXPORTER=none`. Does nothing when the SDK started, or a second time.
 */
export function startPropagation(): void {
  if (active !== undefined || propagating) return;
  propagating = true;
  // Required here, not imported above, so a process that never propagates does not load them.
  const { context, propagation } = require('@opentelemetry/api') as typeof import('@opentelemetry/api');
  const { AsyncLocalStorageContextManager } = require('@opentelemetry/context-async-hooks') as typeof import('@opentelemetry/context-async-hooks');
  const { createTextMapPropagator } = require('./trace-context-propagator') as typeof import('./trace-context-propagator');
  context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
  propagation.setGlobalPropagator(createTextMapPropagator());
}

/**
 * Flushes queued spans and log records and stops exporting; call it after the HTTP server has closed, so the
 * last requests' spans are included. Waits at most `SHUTDOWN_TIMEOUT_MS` (1 s when exports are failing anyway),
 * never rejects, and does nothing when telemetry is off or `otel/register` was not loaded. Idempotent.
 */
export function shutdownTelemetry(): Promise<void> {
  const telemetry = active;
  if (telemetry === undefined) return Promise.resolve();
  stopping ??= (async () => {
    const timeoutMs = telemetry.exportFailedRecently() ? SHUTDOWN_TIMEOUT_COLLECTOR_DOWN_MS : SHUTDOWN_TIMEOUT_MS;
    const outcome = await telemetry.shutdown(timeoutMs);
    if (outcome === 'timed_out') write(`telemetry: the last export did not finish within ${timeoutMs} ms; it was dropped`);
    else if (outcome === 'failed') write('telemetry: the last export was refused; what it carried was dropped');
  })();
  return stopping;
}

/** True while the bootstrap is running and exporting logs: `createLogger` then ships each line as OTLP too. */
export function isLogExportActive(): boolean {
  return active !== undefined && stopping === undefined && active.config.logs.exporters.length > 0;
}

/** True once the SDK has started in this process. */
export function isTelemetryActive(): boolean {
  return active !== undefined;
}

/** What of a request's trace context a process carries itself (traceContextByHand). */
export interface TraceContextByHand {
  /** Makes an incoming request's `traceparent`, `tracestate` and `baggage` current. */
  continueIncoming: boolean;
  /** Writes the current ones on its HTTP calls (undici's request API). */
  injectHttpCalls: boolean;
  /** Writes them into its gRPC calls' metadata. */
  injectGrpcCalls: boolean;
}

/**
 * Where the instrumentations this process loaded carry trace context and where it must be carried by hand (none
 * loaded: telemetry off; or some disabled with OTEL_NODE_DISABLED_INSTRUMENTATIONS): `continueIncoming` without
 * http-server (which makes a request's traceparent current), `injectHttpCalls` without undici (which writes it on
 * undici's calls), `injectGrpcCalls` without the grpc instrumentation (loaded with either half of http, sdk.ts).
 * W3C Trace Context: a participant that receives a valid traceparent MUST pass it on, whichever are loaded.
 */
export function traceContextByHand(): TraceContextByHand {
  const loaded = active?.config.instrumentations ?? [];
  return {
    continueIncoming: !loaded.includes('http-server'),
    injectHttpCalls: !loaded.includes('undici'),
    injectGrpcCalls: !loaded.includes('http-server') && !loaded.includes('http-client'),
  };
}

/**
 * Adds metrics recorded outside the OpenTelemetry SDK to this process's metric exports, from the next one on:
 * the bootstrap starts before main.ts builds what records them. False, and nothing kept, when telemetry or
 * metric export is off or shutting down.
 */
export function registerMetricProducer(producer: MetricProducer): boolean {
  if (active === undefined || stopping !== undefined) return false;
  return active.registerMetricProducer(producer);
}

/** Whether this process exports metrics (OTEL_METRICS_EXPORTER not `none`, telemetry on and started). */
export function metricExportEnabled(): boolean {
  return active !== undefined && stopping === undefined && active.config.metrics.exporters.length > 0;
}

/**
 * Sends a prom-client registry over OTLP with this process's other metrics (otel/prom-client-otlp-bridge.ts),
 * so a registry that is scraped can also be pushed, through the same exporter and settings. The bridge (and
 * the metrics SDK) is loaded only when metric export is on. Call it right after creating the registry: its
 * cumulative points start then (`options.startTimeMs`).
 */
export function exportPromClientRegistry(registry: PromClientRegistry, options?: PromClientMetricProducerOptions): boolean {
  if (active === undefined || stopping !== undefined || active.config.metrics.exporters.length === 0) return false;
  const { createPromClientMetricProducer } = require('./prom-client-otlp-bridge') as typeof import('./prom-client-otlp-bridge');
  return registerMetricProducer(createPromClientMetricProducer(registry, options));
}

/** The start-up line: where each signal goes, and what to do when nothing listens there. */
export function describeDestination(config: TelemetryConfig): string {
  const parts: string[] = [];
  const otlp: string[] = [];
  for (const [signal, settings] of [
    ['traces', config.traces],
    ['logs', config.logs],
    ['metrics', config.metrics],
  ] as const) {
    // An endpoint's user:password (http.request sends it as Basic auth) or `?api_key=` never reaches a log line.
    if (settings.exporters.includes('otlp')) otlp.push(`${signal} to ${redactUrl(settings.url)}`);
    if (settings.exporters.includes('console')) parts.push(`prints ${signal} to stdout`);
    if (settings.exporters.length === 0) parts.push(`exports no ${signal}`);
  }
  if (otlp.length > 0) {
    const protocol = [config.traces, config.logs, config.metrics].find((s) => s.exporters.includes('otlp'))!.protocol;
    parts.unshift(`sends ${listed(otlp)} (OTLP ${protocol})`);
  }
  const hint =
    otlp.length > 0
      ? '. Nothing listening there? Start the compose stack, or set OTEL_TRACES_EXPORTER=console, or OTEL_SDK_DISABLED=true.'
      : '.';
  return `${config.serviceName} ${parts.join(', ')}${hint}`;
}

/** `a`, `a and b`, `a, b and c`. */
function listed(items: readonly string[]): string {
  return items.length <= 2 ? items.join(' and ') : `${items.slice(0, -1).join(', ')} and ${items.at(-1)}`;
}
