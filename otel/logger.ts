import { context, propagation, trace } from '@opentelemetry/api';
import winston from 'winston';
import { LOG_CONTEXT, OtlpLogTransport } from './otlp-log-transport';
import { isLogExportActive } from './telemetry';
import { BAGGAGE_REQUEST_ID, LOG_FIELD } from './wire-names';

export type Logger = winston.Logger;

export interface LoggerOptions {
  /** `service.name` written on every line. */
  serviceName: string;
  /** winston level; default `info`. */
  level?: string;
  /** Drop every line (tests that do not read logs). Default false. */
  silent?: boolean;
  /** Extra transports besides stdout (tests capture lines through one). */
  transports?: winston.transport[];
  /**
   * Also emit every line as an OpenTelemetry log record (OTLP, to Loki), with the line's trace context and its
   * fields as attributes. Default: on when the telemetry bootstrap (`otel/register`) is exporting logs.
   */
  exportToOtel?: boolean;
}

/**
 * Adds the correlation fields from the active OpenTelemetry context. Read at log time, so a line written
 * anywhere inside a request carries that request's trace, span and request id without passing them around.
 */
const correlation = winston.format((info) => {
  const active = context.active();
  const spanContext = trace.getSpanContext(active);
  if (spanContext && trace.isSpanContextValid(spanContext)) {
    info[LOG_FIELD.traceId] ??= spanContext.traceId;
    info[LOG_FIELD.spanId] ??= spanContext.spanId;
  }
  const requestId = propagation.getBaggage(active)?.getEntry(BAGGAGE_REQUEST_ID)?.value;
  if (requestId !== undefined) info[LOG_FIELD.requestId] ??= requestId;
  // For OtlpLogTransport: winston may hand the line to transports after this context has ended.
  info[LOG_CONTEXT] = active;
  return info;
});

/** A JSON-lines winston logger on stdout, one per process, passed to whatever needs to log. */
export function createLogger(options: LoggerOptions): Logger {
  const otel = (options.exportToOtel ?? isLogExportActive()) ? [new OtlpLogTransport()] : [];
  return winston.createLogger({
    level: options.level ?? 'info',
    silent: options.silent ?? false,
    defaultMeta: { [LOG_FIELD.serviceName]: options.serviceName },
    format: winston.format.combine(winston.format.timestamp(), correlation(), winston.format.json()),
    transports: [new winston.transports.Console(), ...otel, ...(options.transports ?? [])],
  });
}
