/**
 * A winston transport that emits each log line as an OpenTelemetry log record through `logs` from
 * `@opentelemetry/api` 1.10, where sdk-node 0.30x registers its LoggerProvider. It replaces
 * `@opentelemetry/winston-transport` 0.34, which reads the global of `@opentelemetry/api-logs` 0.2xx and so
 * silently sends every record to a no-op logger (research/observability-facts.md §0.1).
 */
import { logs, SeverityNumber, type Context, type Logger as OtelLogger, type LogRecord } from '@opentelemetry/api';
import winston from 'winston';
import { cutAnyValue, logRecordValueLengthLimit } from './attribute-values';
import { LOG_FIELD } from './wire-names';

/**
 * Where `createLogger`'s correlation format leaves the context that was active when the line was logged. The
 * transport emits with that context (trace, span, flags), not whatever is active when winston's streams get to
 * it. A symbol, so it never reaches the JSON line.
 */
export const LOG_CONTEXT: unique symbol = Symbol.for('koa-gateway.otel.log-context');

/** winston's npm levels on the OpenTelemetry scale (the mapping instrumentation-winston uses). */
const SEVERITY: Readonly<Record<string, SeverityNumber>> = {
  error: SeverityNumber.ERROR,
  warn: SeverityNumber.WARN,
  info: SeverityNumber.INFO,
  http: SeverityNumber.DEBUG3,
  verbose: SeverityNumber.DEBUG2,
  debug: SeverityNumber.DEBUG,
  silly: SeverityNumber.TRACE,
};

/**
 * Fields that are not attributes: the message is the body, the level the severity, the timestamp the record's
 * time, trace and span ids the record's own trace context, and `service.name` is on the resource already.
 */
const NOT_ATTRIBUTES: ReadonlySet<string> = new Set([
  'message',
  'level',
  'timestamp',
  LOG_FIELD.traceId,
  LOG_FIELD.spanId,
  LOG_FIELD.serviceName,
]);

export interface OtlpLogTransportOptions {
  /** Instrumentation scope of the records. Default `koa-gateway/winston`. */
  scopeName?: string;
  /** Lowest winston level shipped. Default: the logger's level. */
  level?: string;
}

/**
 * winston's `Transport` base class, reached through winston itself (whose typings expose it only as a type), so
 * this module depends on nothing winston does not already bring.
 */
export const Transport = (
  winston as unknown as {
    Transport: new (options?: winston.transport.TransportStreamOptions) => winston.transport;
  }
).Transport;

export class OtlpLogTransport extends Transport {
  private readonly otelLogger: OtelLogger;
  private readonly valueLengthLimit = logRecordValueLengthLimit();

  constructor(options: OtlpLogTransportOptions = {}) {
    super({ level: options.level });
    this.otelLogger = logs.getLogger(options.scopeName ?? 'koa-gateway/winston');
  }

  override log(info: winston.Logform.TransformableInfo, next: () => void): void {
    try {
      this.otelLogger.emit(toLogRecord(info, this.valueLengthLimit));
    } catch {
      // Telemetry never fails logging; the line is on stdout regardless.
    }
    next();
  }
}

/**
 * The log record for one winston line: body, severity, time, trace context and the other fields as attributes, each
 * cut to `valueLengthLimit` here (cutAnyValue, over the copies toAnyValue makes): cut by the SDK's substring, the
 * access record's `url` still held the client's whole 16 KiB target until exported.
 */
export function toLogRecord(info: winston.Logform.TransformableInfo, valueLengthLimit = Infinity): LogRecord {
  const attributes: Record<string, unknown> = {};
  for (const key of Object.keys(info)) {
    if (NOT_ATTRIBUTES.has(key)) continue;
    const value = toAnyValue(info[key], 0);
    if (value !== undefined) attributes[key] = cutAnyValue(value, valueLengthLimit);
  }
  const record: LogRecord = {
    severityNumber: Object.hasOwn(SEVERITY, info.level) ? SEVERITY[info.level] : SeverityNumber.UNSPECIFIED,
    severityText: info.level,
    body: toAnyValue(info.message, 0) ?? '',
    attributes,
  };
  const timestamp = typeof info.timestamp === 'string' ? new Date(info.timestamp) : undefined;
  if (timestamp !== undefined && !Number.isNaN(timestamp.getTime())) record.timestamp = timestamp;
  const context = info[LOG_CONTEXT] as Context | undefined;
  if (context !== undefined) record.context = context;
  return record;
}

/** JSON-like values pass through; errors become their stack, dates ISO strings; the rest is dropped. */
function toAnyValue(value: unknown, depth: number): unknown {
  if (value === null || typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'number') return Number.isFinite(value) ? value : String(value);
  if (typeof value === 'bigint') return value.toString();
  if (value instanceof Error) return value.stack ?? `${value.name}: ${value.message}`;
  if (value instanceof Date) return value.toISOString();
  if (value instanceof Uint8Array) return value;
  if (typeof value !== 'object' || depth >= 5) return undefined;
  if (Array.isArray(value)) return value.map((item) => toAnyValue(item, depth + 1) ?? null);
  const result: Record<string, unknown> = {};
  for (const [key, item] of Object.entries(value)) {
    const converted = toAnyValue(item, depth + 1);
    if (converted !== undefined) result[key] = converted;
  }
  return result;
}
