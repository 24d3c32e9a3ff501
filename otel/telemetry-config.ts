/**
 * The telemetry bootstrap's configuration: read once from the standard `OTEL_*` variables, checked, frozen.
 * Pure (the environment, entry script and version are parameters) and light: it loads no OpenTelemetry code,
 * so a process with `OTEL_SDK_DISABLED=true` never loads the SDK.
 * Variables: https://opentelemetry.io/docs/specs/otel/configuration/sdk-environment-variables/
 */
import fs from 'node:fs';
import path from 'node:path';
import { redactUrl } from './redact-url';
import { SERVICE_NAME, type ServiceName } from './wire-names';

/**
 * The instrumentations the bootstrap can enable. http-server: a SERVER span per request, and the incoming
 * `traceparent`/`baggage` made current; http-client: CLIENT spans for `http.request` and those
 * headers injected; koa: one span per named middleware and route; undici: the same as http-client for `fetch`
 * and undici's request API (services/shared/service-app.ts callService).
 */
export const INSTRUMENTATION_NAMES = ['http-server', 'http-client', 'koa', 'undici'] as const;
export type InstrumentationName = (typeof INSTRUMENTATION_NAMES)[number];

/** Names accepted in `OTEL_NODE_*_INSTRUMENTATIONS` for several instrumentations at once. */
const INSTRUMENTATION_GROUPS: Readonly<Record<string, readonly InstrumentationName[]>> = {
  http: ['http-server', 'http-client'],
  none: [],
};

/**
 * Which instrumentations each process gets unless `OTEL_NODE_ENABLED_INSTRUMENTATIONS` says otherwise. When
 * the gateway creates its own server and client spans, its row drops `http-server`/`http-client`/`koa` here.
 */
export const DEFAULT_INSTRUMENTATIONS: Readonly<Record<ServiceName, readonly InstrumentationName[]>> = {
  // The gateway makes its own SERVER and CLIENT spans and injects trace headers itself (src/middleware/
  // tracing.ts, src/upstream-span.ts): generic instrumentation on its hot path cost 55-60% of throughput here.
  [SERVICE_NAME.gateway]: [],
  [SERVICE_NAME.users]: INSTRUMENTATION_NAMES,
  [SERVICE_NAME.orders]: INSTRUMENTATION_NAMES,
  [SERVICE_NAME.notifications]: INSTRUMENTATION_NAMES,
};

/** Entry scripts (compiled or not) and the service each one is, for when `OTEL_SERVICE_NAME` is not set. */
const SERVICE_BY_ENTRY_SCRIPT: ReadonlyArray<readonly [RegExp, ServiceName]> = [
  [/(^|\/)src\/main\.[cm]?[jt]s$/, SERVICE_NAME.gateway],
  [/(^|\/)services\/users\/main\.[cm]?[jt]s$/, SERVICE_NAME.users],
  [/(^|\/)services\/orders\/main\.[cm]?[jt]s$/, SERVICE_NAME.orders],
  [/(^|\/)services\/notifications\/main\.[cm]?[jt]s$/, SERVICE_NAME.notifications],
];

/** The probes' paths: health checks would otherwise fill Jaeger every few seconds (and the metrics with them). */
export const UNTRACED_PATHS: readonly string[] = ['/health', '/ready'];

/**
 * A probe: GET or HEAD (the same endpoints answer both) to a probe's path. Neither traced nor counted; any other
 * method there is a request like any other (a 405), traced and counted as one, so its metric's exemplar has a span.
 */
export function isProbeRequest(path: string, method: string): boolean {
  return PROBE_METHODS.includes(method) && UNTRACED_PATHS.includes(path);
}

/** The methods the probes take (src/middleware/health.ts: any other is their 405; cors.ts: what their preflight offers). */
export const PROBE_METHODS: readonly string[] = ['GET', 'HEAD'];

/**
 * The `OTEL_TRACES_SAMPLER` values the SDK for Node implements (jaeger_remote and xray need extra packages).
 * Default `parentbased_always_on`, as the SDK's.
 */
export const SAMPLER_NAMES = ['always_on', 'always_off', 'traceidratio', 'parentbased_always_on', 'parentbased_always_off', 'parentbased_traceidratio'] as const;
export type SamplerName = (typeof SAMPLER_NAMES)[number];

export interface SamplerConfig {
  name: SamplerName;
  /** Fraction of new traces sampled by the `traceidratio` samplers, 0 to 1, from `OTEL_TRACES_SAMPLER_ARG`; default 1. */
  ratio: number;
}

export const OTLP_PROTOCOLS = ['http/protobuf', 'http/json'] as const;
export type OtlpProtocol = (typeof OTLP_PROTOCOLS)[number];
export type SignalExporterName = 'otlp' | 'console';

/** Batch processor tuning from `OTEL_BSP_*` / `OTEL_BLRP_*`; undefined keeps the SDK default. */
export interface BatchOptions {
  /** Delay between exports, ms. SDK default 5000 for spans, 1000 for logs. */
  scheduledDelayMillis?: number;
  /** How long one export may take, ms. SDK default 30000. */
  exportTimeoutMillis?: number;
  /** Items kept while waiting; more are dropped. SDK default 2048. */
  maxQueueSize?: number;
  /** Items per export request. SDK default 512. */
  maxExportBatchSize?: number;
}

export interface SignalConfig {
  /** Empty when the signal is off (`OTEL_TRACES_EXPORTER=none`). */
  exporters: readonly SignalExporterName[];
  protocol: OtlpProtocol;
  /** Full OTLP URL, e.g. `http://localhost:4318/v1/traces`. */
  url: string;
  batch: Readonly<BatchOptions>;
}

/**
 * Metric export, from `OTEL_METRICS_EXPORTER` and `OTEL_METRIC_EXPORT_*`. One periodic reader per exporter
 * sends what the instrumentations record (the services' `http.server.request.duration`,
 * `http.client.request.duration`) and whatever metric producers the process registers (the gateway's
 * prom-client registry, otel/prom-client-otlp-bridge.ts). `prometheus` is not offered: each process would open
 * its own scrape port (9464 for all of them), and the gateway already serves Prometheus on its metrics listener.
 */
export interface MetricsConfig {
  /** Empty when metric export is off (`OTEL_METRICS_EXPORTER=none`). */
  exporters: readonly SignalExporterName[];
  protocol: OtlpProtocol;
  /** Full OTLP URL, e.g. `http://localhost:4318/v1/metrics`. */
  url: string;
  /** Time between two exports, ms, from `OTEL_METRIC_EXPORT_INTERVAL`; default 60 000 (the spec's). */
  exportIntervalMillis: number;
  /**
   * How long one collect-and-export may take, ms, from `OTEL_METRIC_EXPORT_TIMEOUT`; default 30 000, and never
   * longer than the interval (the SDK's reader refuses that).
   */
  exportTimeoutMillis: number;
}

export interface TelemetryConfig {
  /** False with `OTEL_SDK_DISABLED=true`: nothing is loaded, instrumented or exported. */
  enabled: boolean;
  serviceName: string;
  serviceVersion: string | undefined;
  /** `deployment.environment.name`, from `NODE_ENV`; default `development`. */
  environment: string;
  traces: Readonly<SignalConfig>;
  logs: Readonly<SignalConfig>;
  metrics: Readonly<MetricsConfig>;
  instrumentations: readonly InstrumentationName[];
  /**
   * From `OTEL_TRACES_SAMPLER(_ARG)`, read here rather than by NodeSDK so the bootstrap can wrap the sampler
   * (a client-chosen trace id must not decide sampling: otel/trace-ids.ts).
   */
  sampler: Readonly<SamplerConfig>;
  /**
   * `OTEL_LOG_LEVEL` when set: the SDK then prints its own diagnostics at that level, unfiltered. Unset, the
   * bootstrap prints warnings itself, at most once a minute each. Failed exports are the bootstrap's to report
   * either way, at most once a minute.
   */
  sdkLogLevel: string | undefined;
  /** Problems with the variables, each naming the variable, the value and what was used instead. */
  warnings: readonly string[];
}

type Env = Readonly<Record<string, string | undefined>>;

const DEFAULT_ENDPOINT = 'http://localhost:4318';
/** The spec's defaults for `OTEL_METRIC_EXPORT_INTERVAL` and `OTEL_METRIC_EXPORT_TIMEOUT`, ms. */
export const DEFAULT_METRIC_EXPORT_INTERVAL_MS = 60_000;
export const DEFAULT_METRIC_EXPORT_TIMEOUT_MS = 30_000;

/**
 * Reads the telemetry configuration. Invalid values never throw: each becomes a warning (printed once at
 * start-up) and the default is used, because telemetry must not stop a service from starting.
 */
export function readTelemetryConfig(
  env: Env = process.env,
  entryScript: string | undefined = process.argv[1],
  serviceVersion: string | undefined = readPackageVersion(),
): TelemetryConfig {
  const warnings: string[] = [];
  const serviceName =
    value(env, 'OTEL_SERVICE_NAME') ??
    serviceNameFromResourceAttributes(value(env, 'OTEL_RESOURCE_ATTRIBUTES'), warnings) ??
    serviceNameFromEntryScript(entryScript) ??
    'unknown_service:node';
  // These add to `warnings` as they read; a variable the signals share is read once per signal, and its warning
  // is deduplicated below.
  const traces = signalConfig(env, 'TRACES', 'v1/traces', 'BSP', warnings);
  const logs = signalConfig(env, 'LOGS', 'v1/logs', 'BLRP', warnings);
  const metrics = metricsConfig(env, warnings);
  const enabledInstrumentations = instrumentations(env, serviceName, warnings);
  const sampler = samplerConfig(env, warnings);
  const config: TelemetryConfig = {
    enabled: value(env, 'OTEL_SDK_DISABLED')?.toLowerCase() !== 'true',
    serviceName,
    serviceVersion,
    environment: value(env, 'NODE_ENV') ?? 'development',
    traces,
    logs,
    metrics,
    instrumentations: enabledInstrumentations,
    sampler,
    sdkLogLevel: value(env, 'OTEL_LOG_LEVEL'),
    warnings: [...new Set(warnings)],
  };
  return deepFreeze(config);
}

/** The service an entry script runs, e.g. `dist/services/users/main.js` -> `user-service`. */
export function serviceNameFromEntryScript(entryScript: string | undefined): ServiceName | undefined {
  if (entryScript === undefined) return undefined;
  const normalised = entryScript.split(path.sep).join('/');
  return SERVICE_BY_ENTRY_SCRIPT.find(([pattern]) => pattern.test(normalised))?.[1];
}

/** This project's version from the nearest `package.json` above this file (source or `dist/`). */
export function readPackageVersion(from: string = __dirname): string | undefined {
  for (let dir = from, i = 0; i < 8; dir = path.dirname(dir), i++) {
    try {
      const pkg = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')) as { version?: unknown };
      return typeof pkg.version === 'string' ? pkg.version : undefined;
    } catch {
      // not here; look one level up
    }
  }
  return undefined;
}

/** Empty strings count as unset, as the SDK treats them. */
function value(env: Env, name: string): string | undefined {
  const raw = env[name]?.trim();
  return raw === undefined || raw === '' ? undefined : raw;
}

function list(env: Env, name: string): string[] | undefined {
  return value(env, name)
    ?.split(',')
    .map((item) => item.trim().toLowerCase())
    .filter((item) => item !== '');
}

/** The longest key or value OTEL_RESOURCE_ATTRIBUTES may hold, decoded (the SDK's EnvDetector's limit). */
const MAX_RESOURCE_ATTRIBUTE_LENGTH = 255;

/**
 * `service.name` of OTEL_RESOURCE_ATTRIBUTES as the SDK's resource gets it (@opentelemetry/resources' EnvDetector:
 * pairs split on `,` and `=`, keys and values percent-decoded, the last of a repeated key kept), or none. Any error
 * discards the whole value (the Resource SDK spec: "the entire environment variable value SHOULD be discarded and an
 * error SHOULD be reported"), as the SDK does: read on their own here, `service.name=a%ZZ` or a malformed pair beside
 * it named the logs' service while the exported resource had no such name, and of two the first named it, where
 * the resource took the last.
 */
function serviceNameFromResourceAttributes(raw: string | undefined, warnings: string[]): string | undefined {
  if (raw === undefined) return undefined;
  let serviceName: string | undefined;
  for (const pair of raw.split(',')) {
    if (pair.trim() === '') continue;
    const parts = pair.split('=');
    let key: string;
    let decoded: string;
    try {
      if (parts.length !== 2 || parts[0]!.trim() === '') throw new Error(`"${pair}" is not key=value`);
      key = decodeURIComponent(parts[0]!.trim());
      decoded = decodeURIComponent(parts[1]!.trim());
      if (key.length > MAX_RESOURCE_ATTRIBUTE_LENGTH || decoded.length > MAX_RESOURCE_ATTRIBUTE_LENGTH) throw new Error(`"${key.slice(0, 40)}" is longer than ${MAX_RESOURCE_ATTRIBUTE_LENGTH} characters`);
    } catch (error) {
      warnings.push(`OTEL_RESOURCE_ATTRIBUTES is discarded (${error instanceof URIError ? `"${pair}" is not percent-encoded UTF-8` : (error as Error).message}); ',' and '=' must be percent-encoded in keys and values`);
      return undefined;
    }
    if (key === 'service.name') serviceName = decoded;
  }
  return serviceName === '' ? undefined : serviceName;
}

type SignalVariable = 'TRACES' | 'LOGS' | 'METRICS';

function signalConfig(
  env: Env,
  signal: 'TRACES' | 'LOGS',
  resourcePath: string,
  batchPrefix: 'BSP' | 'BLRP',
  warnings: string[],
): SignalConfig {
  return {
    ...exportTarget(env, signal, resourcePath, warnings),
    batch: {
      scheduledDelayMillis: positiveInteger(env, `OTEL_${batchPrefix}_SCHEDULE_DELAY`, warnings, true),
      exportTimeoutMillis: positiveInteger(env, `OTEL_${batchPrefix}_EXPORT_TIMEOUT`, warnings, true),
      maxQueueSize: positiveInteger(env, `OTEL_${batchPrefix}_MAX_QUEUE_SIZE`, warnings),
      maxExportBatchSize: positiveInteger(env, `OTEL_${batchPrefix}_MAX_EXPORT_BATCH_SIZE`, warnings),
    },
  };
}

/**
 * Metrics read their exporters, protocol and endpoint like the other signals (`otlp` by default), and the
 * reader's interval and timeout from `OTEL_METRIC_EXPORT_*`. A timeout longer than the interval is cut to the
 * interval, with a warning when `OTEL_METRIC_EXPORT_TIMEOUT` asked for it (silently when only the default
 * was longer, as with a short interval in tests).
 */
function metricsConfig(env: Env, warnings: string[]): MetricsConfig {
  const exportIntervalMillis = positiveInteger(env, 'OTEL_METRIC_EXPORT_INTERVAL', warnings, true) ?? DEFAULT_METRIC_EXPORT_INTERVAL_MS;
  const requestedTimeout = positiveInteger(env, 'OTEL_METRIC_EXPORT_TIMEOUT', warnings, true);
  if (requestedTimeout !== undefined && requestedTimeout > exportIntervalMillis) {
    warnings.push(
      `OTEL_METRIC_EXPORT_TIMEOUT="${requestedTimeout}" is longer than the export interval (${exportIntervalMillis} ms); using ${exportIntervalMillis}`,
    );
  }
  return {
    ...exportTarget(env, 'METRICS', 'v1/metrics', warnings),
    exportIntervalMillis,
    exportTimeoutMillis: Math.min(requestedTimeout ?? DEFAULT_METRIC_EXPORT_TIMEOUT_MS, exportIntervalMillis),
  };
}

/** `OTEL_<SIGNAL>_EXPORTER`, and the OTLP protocol and URL for that signal. */
function exportTarget(env: Env, signal: SignalVariable, resourcePath: string, warnings: string[]): Pick<SignalConfig, 'exporters' | 'protocol' | 'url'> {
  const exporterVar = `OTEL_${signal}_EXPORTER`;
  const requested = list(env, exporterVar) ?? ['otlp'];
  const exporters: SignalExporterName[] = [];
  for (const name of new Set(requested)) {
    if (name === 'otlp' || name === 'console') exporters.push(name);
    else if (name !== 'none') warnings.push(`${exporterVar}="${name}" is not supported (otlp, console, none); ignored`);
  }
  if (requested.includes('none') && exporters.length > 0) {
    warnings.push(`${exporterVar} mixes "none" with exporters; "none" is ignored`);
  }

  const protocolVar = value(env, `OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`)
    ? `OTEL_EXPORTER_OTLP_${signal}_PROTOCOL`
    : 'OTEL_EXPORTER_OTLP_PROTOCOL';
  const rawProtocol = value(env, protocolVar) ?? 'http/protobuf';
  let protocol: OtlpProtocol = 'http/protobuf';
  if ((OTLP_PROTOCOLS as readonly string[]).includes(rawProtocol)) protocol = rawProtocol as OtlpProtocol;
  else warnings.push(`${protocolVar}="${rawProtocol}" is not supported (http/protobuf, http/json); using http/protobuf`);

  return { exporters, protocol, url: signalUrl(env, signal, resourcePath, warnings) };
}

/**
 * An endpoint refused as no URL, as a warning shows it: redactUrl's, and whatever stands between `://` and the last
 * `@` (a pasted password holding `/`, `?` or `#` is what made it no URL, and redactUrl's userinfo stops at those).
 */
function shownEndpoint(text: string): string {
  return redactUrl(text).replace(/^([a-z][a-z0-9+.-]*:\/\/)[^\s]*@/i, '$1REDACTED@');
}

/** The per-signal endpoint is used as is; the general one gets `/v1/<signal>` appended (OTLP exporter spec). */
function signalUrl(env: Env, signal: SignalVariable, resourcePath: string, warnings: string[]): string {
  const specificVar = `OTEL_EXPORTER_OTLP_${signal}_ENDPOINT`;
  const specific = value(env, specificVar);
  if (specific !== undefined) {
    if (isHttpUrl(specific)) return specific;
    warnings.push(`${specificVar}="${shownEndpoint(specific)}" is not an http(s) URL; using OTEL_EXPORTER_OTLP_ENDPOINT or the default`);
  }
  let base = value(env, 'OTEL_EXPORTER_OTLP_ENDPOINT') ?? DEFAULT_ENDPOINT;
  if (!isHttpUrl(base)) {
    warnings.push(`OTEL_EXPORTER_OTLP_ENDPOINT="${shownEndpoint(base)}" is not an http(s) URL; using ${DEFAULT_ENDPOINT}`);
    base = DEFAULT_ENDPOINT;
  }
  return `${base.replace(/\/+$/, '')}/${resourcePath}`;
}

/** `collector:4318` parses as a URL with the scheme `collector:`; only http and https reach a collector. */
function isHttpUrl(text: string): boolean {
  return URL.canParse(text) && ['http:', 'https:'].includes(new URL(text).protocol);
}

/**
 * Names are case-insensitive (as the spec asks of enum values). `OTEL_TRACES_SAMPLER_ARG` is read only for the
 * ratio samplers, as the SDK does; a bad value falls back to the SDK's defaults (the sampler
 * `parentbased_always_on`, the ratio 1).
 */
function samplerConfig(env: Env, warnings: string[]): SamplerConfig {
  const raw = value(env, 'OTEL_TRACES_SAMPLER')?.toLowerCase() ?? 'parentbased_always_on';
  let name: SamplerName = 'parentbased_always_on';
  if ((SAMPLER_NAMES as readonly string[]).includes(raw)) name = raw as SamplerName;
  else warnings.push(`OTEL_TRACES_SAMPLER="${raw}" is not supported (${SAMPLER_NAMES.join(', ')}); using parentbased_always_on`);
  if (!name.endsWith('traceidratio')) return { name, ratio: 1 };

  const rawRatio = value(env, 'OTEL_TRACES_SAMPLER_ARG');
  if (rawRatio === undefined) return { name, ratio: 1 };
  const ratio = Number(rawRatio);
  if (Number.isFinite(ratio) && ratio >= 0 && ratio <= 1) return { name, ratio };
  warnings.push(`OTEL_TRACES_SAMPLER_ARG="${rawRatio}" is not a number from 0 to 1; using 1`);
  return { name, ratio: 1 };
}

/** Node's longest timer, ms: a longer one fires after 1 ms (TimeoutOverflowWarning). */
const MAX_TIMER_MS = 2_147_483_647;

/**
 * A count, or with `timer` a duration in ms the SDK hands to setTimeout: decimal digits only (Number() read `0x10` as
 * 16), and a duration no longer than Node's longest timer, since `OTEL_BSP_EXPORT_TIMEOUT=9999999999` ("never") fired
 * at once, failing every export as timed out, and a delay or interval that long exported in a loop.
 */
function positiveInteger(env: Env, name: string, warnings: string[], timer = false): number | undefined {
  const raw = value(env, name);
  if (raw === undefined) return undefined;
  const parsed = Number(raw);
  if (!/^\d+$/.test(raw) || parsed <= 0) {
    warnings.push(`${name}="${raw}" is not a positive integer; using the SDK default`);
    return undefined;
  }
  if (timer && parsed > MAX_TIMER_MS) {
    warnings.push(`${name}="${raw}" is longer than Node's longest timer (${MAX_TIMER_MS} ms, which would fire at once); using the SDK default`);
    return undefined;
  }
  return parsed;
}

/**
 * `OTEL_NODE_ENABLED_INSTRUMENTATIONS` replaces the service's default list (`none` for no instrumentation);
 * `OTEL_NODE_DISABLED_INSTRUMENTATIONS` then removes names from it. Same variables as
 * `@opentelemetry/auto-instrumentations-node`; the `@opentelemetry/instrumentation-` prefix is optional and
 * `http` means both `http-server` and `http-client`.
 */
function instrumentations(env: Env, serviceName: string, warnings: string[]): InstrumentationName[] {
  const read = (variable: string): InstrumentationName[] | undefined =>
    list(env, variable)?.flatMap((raw) => {
      const name = raw.replace(/^@opentelemetry\/instrumentation-/, '');
      const group = Object.hasOwn(INSTRUMENTATION_GROUPS, name) ? INSTRUMENTATION_GROUPS[name] : undefined;
      if (group !== undefined) return group;
      if ((INSTRUMENTATION_NAMES as readonly string[]).includes(name)) return [name as InstrumentationName];
      warnings.push(`${variable} names "${name}", which this bootstrap does not load (http, ${INSTRUMENTATION_NAMES.join(', ')})`);
      return [];
    });
  const serviceDefault = Object.hasOwn(DEFAULT_INSTRUMENTATIONS, serviceName)
    ? DEFAULT_INSTRUMENTATIONS[serviceName as ServiceName]
    : undefined;
  const enabled = read('OTEL_NODE_ENABLED_INSTRUMENTATIONS') ?? serviceDefault ?? INSTRUMENTATION_NAMES;
  const disabled = new Set(read('OTEL_NODE_DISABLED_INSTRUMENTATIONS'));
  return [...new Set(enabled)].filter((name) => !disabled.has(name));
}

function deepFreeze<T>(object: T): T {
  for (const child of Object.values(object as object)) {
    if (typeof child === 'object' && child !== null) deepFreeze(child);
  }
  return Object.freeze(object);
}
