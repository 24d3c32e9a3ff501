import { context, propagation, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type Tracer } from '@opentelemetry/api';
import {
  ATTR_ERROR_TYPE,
  ATTR_HTTP_REQUEST_METHOD,
  ATTR_HTTP_REQUEST_METHOD_ORIGINAL,
  ATTR_HTTP_REQUEST_RESEND_COUNT,
  ATTR_HTTP_RESPONSE_STATUS_CODE,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_URL_FULL,
} from '@opentelemetry/semantic-conventions';
import { startSpanOwning } from '../otel/gateway-tracer';
import { recordedMethod, spanNameMethod } from '../otel/http-method';
import { redactUrl } from '../otel/redact-url';
import { ATTR } from '../otel/wire-names';
import type { UpstreamInstance } from './upstream-pool';

/**
 * One CLIENT span per call the gateway makes to a service (a proxied request, a credential check), made by
 * hand instead of by the http instrumentation: on the gateway's hot path only these two spans per request
 * exist (see ../shared/NOTES.md on what generic instrumentation cost here).
 */
export interface UpstreamCall {
  method: string;
  instance: UpstreamInstance;
  /** The request target sent: path and query, if any (`url.full` carries it with the query's secrets redacted). */
  target: string;
  service: string;
  /** 1 for the first try; retries count up. */
  attempt?: number;
}

/** How a call to a service ended; recorded on both the client span and the gateway's server span. */
export type UpstreamOutcome =
  | 'ok'
  | 'refused'
  | 'timeout'
  | 'no_connection'
  | 'deadline'
  | 'reset'
  | 'aborted_by_upstream'
  | 'client_closed'
  /** The service closed its connection while the gateway held its answer for a client reading slower: the client's doing. */
  | 'client_backed_up'
  | 'body_too_large'
  | 'body_too_slow'
  | 'bad_response'
  /** The gateway had closed the connections the request was to use (a reload replaced them): not the service's doing. */
  | 'connections_closed';

export function startUpstreamSpan(tracer: Tracer, call: UpstreamCall, parent: Context = context.active()): Span {
  const { instance } = call;
  // Assigned, not a literal with computed keys: see createTracing (src/middleware/tracing.ts).
  const attributes: Attributes = {};
  const method = recordedMethod(call.method);
  attributes[ATTR_HTTP_REQUEST_METHOD] = method;
  if (method !== call.method) attributes[ATTR_HTTP_REQUEST_METHOD_ORIGINAL] = call.method;
  // The query as forwarded, its secrets redacted as in the access log.
  attributes[ATTR_URL_FULL] = instance.origin + redactUrl(call.target);
  attributes[ATTR_SERVER_ADDRESS] = instance.hostname;
  attributes[ATTR_SERVER_PORT] = instance.port;
  attributes[ATTR.upstreamService] = call.service;
  if (call.attempt !== undefined) {
    attributes[ATTR.upstreamAttempts] = call.attempt;
    // The conventions' count of resends, conditionally required on a retried request's span (none on the first).
    if (call.attempt > 1) attributes[ATTR_HTTP_REQUEST_RESEND_COUNT] = call.attempt - 1;
  }
  // Handed over: the gateway's tracer keeps this object as the span's instead of copying it.
  return startSpanOwning(tracer, spanNameMethod(method), { kind: SpanKind.CLIENT, attributes }, parent);
}

/** Writes `traceparent`, `tracestate` and `baggage` for the call's span into outgoing headers (replacing any). */
export function injectTraceHeaders(span: Span, parent: Context, headers: Record<string, unknown>): void {
  propagation.inject(trace.setSpan(parent, span), headers);
}

/** The same, into a fresh header object (for fetch). */
export function traceHeaders(span: Span, parent: Context = context.active()): Record<string, string> {
  const headers: Record<string, string> = {};
  injectTraceHeaders(span, parent, headers);
  return headers;
}

/** Whether the call itself failed: a client that left, or read too slowly, is not the call's failure. */
function failedCall(outcome: UpstreamOutcome): boolean {
  return outcome !== 'ok' && outcome !== 'client_closed' && outcome !== 'client_backed_up';
}

/**
 * A call's `error.type` as the HTTP semantic conventions say for clients, on its CLIENT span and in the upstream
 * histogram alike: a 4xx or 5xx answer's status code as a string, else the outcome of a call that failed without
 * one (UpstreamOutcome, a fixed list), else none. Bounded: statuses are three digits.
 */
export function upstreamErrorType(outcome: UpstreamOutcome, status: number | undefined): string | undefined {
  return status !== undefined && status >= 400 ? String(status) : failedCall(outcome) ? outcome : undefined;
}

/**
 * Ends a call's CLIENT span as the HTTP semantic conventions say for clients: an answer of 4xx or 5xx is an
 * error (a SERVER span leaves 4xx alone: there the client erred), `error.type` its status code as a string; a
 * call that failed without an error status has its outcome (UpstreamOutcome, a fixed list) as `error.type`.
 * A client that left, or read too slowly, is not the call's failure.
 */
export function endUpstreamSpan(span: Span, outcome: UpstreamOutcome, status?: number, error?: unknown): void {
  span.setAttribute(ATTR.upstreamOutcome, outcome);
  if (status !== undefined) span.setAttribute(ATTR_HTTP_RESPONSE_STATUS_CODE, status);
  const failed = failedCall(outcome);
  const errorType = upstreamErrorType(outcome, status);
  if (errorType !== undefined) span.setAttribute(ATTR_ERROR_TYPE, errorType);
  if (failed) {
    if (error instanceof Error) span.recordException(error);
    span.setStatus({ code: SpanStatusCode.ERROR, message: outcome });
  } else if (errorType !== undefined) {
    span.setStatus({ code: SpanStatusCode.ERROR });
  }
  span.end();
}
