import {
  HTTP_REQUEST_METHOD_VALUE_CONNECT,
  HTTP_REQUEST_METHOD_VALUE_DELETE,
  HTTP_REQUEST_METHOD_VALUE_GET,
  HTTP_REQUEST_METHOD_VALUE_HEAD,
  HTTP_REQUEST_METHOD_VALUE_OPTIONS,
  HTTP_REQUEST_METHOD_VALUE_OTHER,
  HTTP_REQUEST_METHOD_VALUE_PATCH,
  HTTP_REQUEST_METHOD_VALUE_POST,
  HTTP_REQUEST_METHOD_VALUE_PUT,
  HTTP_REQUEST_METHOD_VALUE_TRACE,
} from '@opentelemetry/semantic-conventions';

/**
 * The methods the HTTP semantic conventions call known: RFC 9110's, PATCH and QUERY (the note on
 * `http.request.method`, semconv 1.45; QUERY's enum constant is still only in the incubating entry point, which
 * is not for import, hence the literal). The services' http instrumentation knows the same list. Node's parser
 * accepts some 35 methods (PROPFIND, PURGE, MKCOL...), and the gateway proxies them on routes without `methods`.
 */
export const KNOWN_HTTP_METHODS = [
  HTTP_REQUEST_METHOD_VALUE_CONNECT,
  HTTP_REQUEST_METHOD_VALUE_DELETE,
  HTTP_REQUEST_METHOD_VALUE_GET,
  HTTP_REQUEST_METHOD_VALUE_HEAD,
  HTTP_REQUEST_METHOD_VALUE_OPTIONS,
  HTTP_REQUEST_METHOD_VALUE_PATCH,
  HTTP_REQUEST_METHOD_VALUE_POST,
  HTTP_REQUEST_METHOD_VALUE_PUT,
  'QUERY',
  HTTP_REQUEST_METHOD_VALUE_TRACE,
] as const;

/** `http.request.method` (and the metrics' `http_request_method`) of a method the conventions do not know. */
export const OTHER_HTTP_METHOD = HTTP_REQUEST_METHOD_VALUE_OTHER;

const known = new Map<string, string>(KNOWN_HTTP_METHODS.map((method) => [method, method]));

/**
 * A request's method as spans and metrics record it: a known method as it is, anything else (or a method that
 * never parsed) as `_OTHER`, so a client cannot mint span names or series. Case-sensitive, as the conventions
 * say: `get` is not GET.
 */
export function recordedMethod(method: string | undefined): string {
  return (method !== undefined && known.get(method)) || OTHER_HTTP_METHOD;
}

/**
 * Longest method kept as the client sent it (a span's `http.request.method_original`, an access line's `method`): a
 * method is a token of any length the head allows, and HTTP/2 carries a `:method` of tens of kilobytes.
 */
export const MAX_RECORDED_METHOD_LENGTH = 32;

/**
 * A request's method as records keep what the client sent: itself, or none past MAX_RECORDED_METHOD_LENGTH, alike
 * over HTTP/1.1 (whose parser refused it: otel/lifecycle.ts) and HTTP/2 (whose pipeline answers it).
 */
export function sentMethod(method: string): string | undefined {
  return method.length <= MAX_RECORDED_METHOD_LENGTH ? method : undefined;
}

/** The method part of an HTTP span's name: `HTTP` in place of `_OTHER` (semconv "HTTP span name"). */
export function spanNameMethod(recorded: string): string {
  return recorded === OTHER_HTTP_METHOD ? 'HTTP' : recorded;
}
