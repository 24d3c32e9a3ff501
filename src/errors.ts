/**
 * The gateway's error catalog. Middleware throws a `GatewayError` with one of these codes; the error
 * middleware (src/middleware/errors.ts) turns it into an RFC 9457 problem response, once. Callers branch
 * on `code`, never on message text.
 */
export const ERROR_CATALOG = {
  bad_request: { status: 400, title: 'Bad request' },
  bad_path: { status: 400, title: 'Path not allowed' },
  header_not_allowed: { status: 400, title: 'Header not allowed' },
  invalid_body: { status: 400, title: 'Invalid request body' },
  missing_token: { status: 401, title: 'Authentication required' },
  invalid_token: { status: 401, title: 'Invalid token' },
  invalid_api_key: { status: 401, title: 'Invalid API key' },
  invalid_credentials: { status: 401, title: 'Invalid credentials' },
  forbidden: { status: 403, title: 'Forbidden' },
  route_not_found: { status: 404, title: 'Not found' },
  method_not_allowed: { status: 405, title: 'Method not allowed' },
  /** The metrics listener's (src/metrics.ts): an `Accept` that takes neither exposition format. */
  not_acceptable: { status: 406, title: 'Not acceptable' },
  request_timeout: { status: 408, title: 'Request timeout' },
  /** A content-coded login body without Content-Length (src/middleware/login.ts): what bounds its coded bytes. */
  length_required: { status: 411, title: 'Length required' },
  payload_too_large: { status: 413, title: 'Payload too large' },
  /** A path over MAX_PATH_LENGTH (src/middleware/path-guard.ts): RFC 9110 15.5.15's status for a target too long to serve. */
  uri_too_long: { status: 414, title: 'URI too long' },
  unsupported_media_type: { status: 415, title: 'Unsupported media type' },
  /** An `Expect` the gateway cannot meet (anything but 100-continue). */
  expectation_failed: { status: 417, title: 'Expectation failed' },
  host_not_allowed: { status: 421, title: 'Misdirected request' },
  /** A config reload (`POST /admin/reload`) refused the file; the running config keeps serving. */
  config_invalid: { status: 422, title: 'Configuration refused' },
  rate_limited: { status: 429, title: 'Too many requests' },
  /** An HTTP/2 header list over the HTTP/1 listener's bound (HTTP/1.1's parser answers its own, otel/lifecycle.ts). */
  headers_too_large: { status: 431, title: 'Request header fields too large' },
  // A gRPC service's own answers (src/grpc/status-errors.ts), named by the gRPC status they stand for.
  grpc_invalid_argument: { status: 400, title: 'Invalid argument' },
  grpc_failed_precondition: { status: 400, title: 'Failed precondition' },
  grpc_out_of_range: { status: 400, title: 'Out of range' },
  grpc_unauthenticated: { status: 401, title: 'Unauthenticated' },
  grpc_permission_denied: { status: 403, title: 'Permission denied' },
  grpc_not_found: { status: 404, title: 'Not found' },
  grpc_already_exists: { status: 409, title: 'Already exists' },
  grpc_aborted: { status: 409, title: 'Aborted' },
  grpc_resource_exhausted: { status: 429, title: 'Resource exhausted' },
  /** A request body in a transfer coding other than chunked (RFC 9112 6.1: 501); its bytes would reach a service still coded. */
  unsupported_transfer_coding: { status: 501, title: 'Transfer coding not implemented' },
  /** A method the gateway cannot carry to a service (RFC 9110 9.1: 501 for an unrecognised method); HTTP/1.1's parser's are otel/lifecycle.ts's. */
  method_not_implemented: { status: 501, title: 'Method not implemented' },
  upstream_unimplemented: { status: 501, title: 'Not implemented by the upstream' },
  internal: { status: 500, title: 'Internal error' },
  upstream_refused: { status: 502, title: 'Upstream refused the connection' },
  upstream_reset: { status: 502, title: 'Upstream connection failed' },
  upstream_bad_response: { status: 502, title: 'Upstream answered badly' },
  upstream_unavailable: { status: 503, title: 'No healthy upstream' },
  upstream_busy: { status: 503, title: 'Upstream busy' },
  rate_limit_unavailable: { status: 503, title: 'Rate limiting unavailable' },
  auth_unavailable: { status: 503, title: 'Token verification unavailable' },
  upstream_timeout: { status: 504, title: 'Upstream timed out' },
  /** `Cache-Control: only-if-cached` and no stored answer (RFC 9111 5.2.1.7). */
  not_cached: { status: 504, title: 'Not in the cache' },
  http_version_not_supported: { status: 505, title: 'HTTP version not supported' },
} as const satisfies Record<string, { status: number; title: string }>;

export type ErrorCode = keyof typeof ERROR_CATALOG;

/**
 * 5xx answers the request alone brings about (RFC 9110 answers a method or coding the server does not implement,
 * or a version it does not speak, with 5xx), not a failure of the gateway or a service: logged as other
 * client-caused answers are (warn, no `request failed` line), so no client can write error-level lines at will.
 * Their SERVER span is still an error (semconv: every 5xx), as HTTP/1.1's parser records its own (otel/lifecycle.ts).
 */
export const REQUEST_CAUSED_SERVER_ERRORS: ReadonlySet<string> = new Set<ErrorCode>(['method_not_implemented', 'unsupported_transfer_coding', 'http_version_not_supported']);

/**
 * Why an answer already under way was cut when the client caused it: it did not take the answer (`client_read_timeout`,
 * otel/lifecycle.ts) or did not send the rest of its body (`request_timeout`). Logged at warn as other client-caused
 * answers are: at error, any client that stopped reading wrote error-level lines at will.
 */
export const CLIENT_CAUSED_CUTS: ReadonlySet<string> = new Set(['client_read_timeout', 'request_timeout']);

/** `Retry-After` of a 503 that names no better time, s. */
export const DEFAULT_RETRY_AFTER_SECONDS = 1;

export interface GatewayErrorOptions {
  /** Response headers that belong to this error (`WWW-Authenticate`, `Retry-After`, `Allow`). */
  headers?: Record<string, string>;
  /** The underlying failure, kept for logs and spans; never sent to the client. */
  cause?: unknown;
}

export class GatewayError extends Error {
  readonly code: ErrorCode;
  readonly status: number;
  readonly title: string;
  readonly headers: Record<string, string>;
  /** 5xx details are internal by default; 4xx details help the client fix its request. */
  readonly expose: boolean;

  constructor(code: ErrorCode, detail: string, options: GatewayErrorOptions = {}) {
    super(detail, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'GatewayError';
    this.code = code;
    this.status = ERROR_CATALOG[code].status;
    this.title = ERROR_CATALOG[code].title;
    this.headers = options.headers ?? {};
    // Every 503 and 429 says when to come back (RFC 9110 10.2.3, RFC 6585 4), so no caller can forget it: a gRPC
    // service's RESOURCE_EXHAUSTED (429) went out without one. The rate limits and the login set their own.
    if ((this.status === 503 || this.status === 429) && !Object.keys(this.headers).some((name) => name.toLowerCase() === 'retry-after')) {
      this.headers = { ...this.headers, 'Retry-After': String(DEFAULT_RETRY_AFTER_SECONDS) };
    }
    // Upstream failures are the gateway's own words about its upstream, safe and useful to show; a 501 or 505 the
    // request caused says what the client may send instead (its title alone went out: "HTTP version not supported").
    this.expose = this.status < 500 || code.startsWith('upstream_') || REQUEST_CAUSED_SERVER_ERRORS.has(code);
  }
}

export function isGatewayError(error: unknown): error is GatewayError {
  return error instanceof GatewayError;
}

/**
 * A request body that does not parse as JSON. The detail is fixed: a parser's own message quotes the body around
 * the error (V8: `Unexpected token 'B', ..."password":Builder-20"... is not valid JSON`), and no part of a body is
 * ever echoed (it may hold a secret, or a log-injection payload). Nor is the parser's error kept as the cause.
 */
export function invalidJsonBody(parserError?: unknown): GatewayError {
  // Valid JSON all the same, but a bare value (`null`, `5`): the parser (co-body, strict) takes objects and arrays only.
  if (parserError instanceof SyntaxError && parserError.message === NOT_OBJECT_OR_ARRAY) return new GatewayError('invalid_body', 'The request body must be a JSON object.');
  return new GatewayError('invalid_body', 'The request body is not valid JSON.');
}

/** co-body's refusal (under the body parsers, strict) of a body that is JSON but neither an object nor an array. */
const NOT_OBJECT_OR_ARRAY = 'invalid JSON, only supports object and array';

/** Koa and its middleware (body parser, router) throw `http-errors`; they carry `status` and `expose`. */
interface HttpErrorLike {
  status: number;
  expose?: boolean;
  message: string;
  headers?: Record<string, string>;
}

function isHttpErrorLike(error: unknown): error is HttpErrorLike {
  return typeof error === 'object' && error !== null && typeof (error as { status?: unknown }).status === 'number';
}

const CODE_BY_STATUS: Partial<Record<number, ErrorCode>> = {
  400: 'bad_request',
  401: 'missing_token',
  403: 'forbidden',
  404: 'route_not_found',
  405: 'method_not_allowed',
  408: 'request_timeout',
  413: 'payload_too_large',
  415: 'unsupported_media_type',
  429: 'rate_limited',
};

/** Maps anything thrown inside the pipeline onto the catalog; unknown errors become `internal`. */
export function toGatewayError(error: unknown): GatewayError {
  if (isGatewayError(error)) return error;
  if (isHttpErrorLike(error) && error.status >= 400 && error.status < 500) {
    const code = CODE_BY_STATUS[error.status] ?? 'bad_request';
    const detail = error.expose === false ? ERROR_CATALOG[code].title : error.message;
    return new GatewayError(code, detail, { cause: error, headers: error.headers ?? {} });
  }
  return new GatewayError('internal', 'The gateway failed to handle the request.', { cause: error });
}

/**
 * Longest path an error quotes, characters: the path a 414 refuses may be up to the 16 KiB request line, and every
 * error body quoted all of it back, as `instance` and again in a 404's or 403's detail (a 3,000-character path made a
 * 3,230-byte body); past this, the path's start and `...`.
 */
export const MAX_QUOTED_PATH_LENGTH = 256;

/** The first half of a surrogate pair: a cut after it would leave half a character. */
const isHighSurrogate = (code: number) => code >= 0xd800 && code <= 0xdbff;

/** A request's path as an error's text quotes it: whole up to MAX_QUOTED_PATH_LENGTH, else its start and `...`. */
export function quotedPath(path: string): string {
  if (path.length <= MAX_QUOTED_PATH_LENGTH) return path;
  return `${path.slice(0, isHighSurrogate(path.charCodeAt(MAX_QUOTED_PATH_LENGTH - 1)) ? MAX_QUOTED_PATH_LENGTH - 1 : MAX_QUOTED_PATH_LENGTH)}...`;
}

/**
 * Translates a failed call to a service (proxy hop, login check, readiness probe) at the boundary, keeping
 * the cause: refused -> 502, timed out -> 504, anything else on the connection -> 502. The detail, which every
 * client is shown (upstream errors are exposed), says what happened in the client's terms; what only an operator
 * needs (the errno, llhttp's words about the bytes) stays in the cause, which the `request failed` line and the
 * span's exception carry: `could not be reached (EHOSTUNREACH)` told any caller of a public route how the network
 * behind the gateway failed, where the internal listener keeps failure reasons to itself.
 */
export function upstreamFailure(service: string, failure: unknown): GatewayError {
  const code = networkErrorCode(failure);
  if (code === 'ECONNREFUSED') {
    return new GatewayError('upstream_refused', `The ${service} service refused the connection.`, { cause: failure });
  }
  if (upstreamUnreachable(failure)) {
    return new GatewayError('upstream_refused', `The ${service} service could not be reached.`, { cause: failure });
  }
  if (upstreamSentContinue(failure)) {
    return new GatewayError('upstream_bad_response', `The ${service} service sent an interim 100 (Continue) the gateway cannot read past.`, { cause: failure });
  }
  if (upstreamSwitchedProtocolsUnasked(failure)) {
    return new GatewayError('upstream_bad_response', `The ${service} service switched protocols (101) for a request that asked for no upgrade.`, { cause: failure });
  }
  // Told apart from a malformed answer: it is HTTP, with more header bytes than the gateway's HTTP client reads.
  if (code === 'UND_ERR_HEADERS_OVERFLOW') {
    return new GatewayError('upstream_bad_response', `The ${service} service answered with headers larger than the gateway reads.`, { cause: failure });
  }
  if (upstreamAnswerMalformed(failure)) {
    return new GatewayError('upstream_bad_response', `The ${service} service answered with something that is not HTTP the gateway can forward.`, { cause: failure });
  }
  if (code === 'ETIMEDOUT' || code === 'TimeoutError' || code === 'UND_ERR_HEADERS_TIMEOUT' || code === 'UND_ERR_BODY_TIMEOUT') {
    return new GatewayError('upstream_timeout', `The ${service} service did not answer in time.`, { cause: failure });
  }
  return new GatewayError('upstream_reset', `The connection to the ${service} service failed.`, { cause: failure });
}

/** No connection could be made: the name does not resolve, or no route to it (said apart from a reset one). */
const UNREACHABLE_CODES = new Set(['ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EADDRNOTAVAIL']);

/** Whether the connection to a service could not be made at all (refused, unresolvable, unroutable). */
export function upstreamUnreachable(failure: unknown): boolean {
  const code = networkErrorCode(failure);
  return code === 'ECONNREFUSED' || (code !== undefined && UNREACHABLE_CODES.has(code));
}

/**
 * Whether the service answered, but not with HTTP the gateway can read: llhttp's refusals (undici's
 * HTTPParserError, whose `code` may be unset), a header block over the limit.
 */
function upstreamAnswerMalformed(failure: unknown): boolean {
  const code = networkErrorCode(failure);
  if (code !== undefined) return code.startsWith('HPE_') || code === 'UND_ERR_HEADERS_OVERFLOW';
  return (failure as { name?: unknown } | undefined)?.name === 'HTTPParserError';
}

/**
 * Whether the service sent an interim `100 Continue` (one the gateway never asked for: it answers a client's
 * `Expect` itself and does not forward it), which RFC 9110 15.2 has a client read and ignore. undici cannot: its
 * HTTP/1.1 parser (lib/dispatcher/client-h1.js, 8.13.1 and 8.14.0) destroys the connection on any 100 with
 * SocketError "bad response" before a handler sees it (its `expectContinue` is for HTTP/2 only; nodejs/undici#197,
 * labelled wontfix). Its message is the only mark (the code is every socket failure's). Taken for a reset, a
 * GET was resent to the same answer and the instance, which is not failing, ejected: the whole service went 503
 * over one endpoint. It is the service's answer the gateway cannot forward (502), neither retried nor blamed.
 */
export function upstreamSentContinue(failure: unknown): boolean {
  const { code, message } = (failure ?? {}) as { code?: unknown; message?: unknown };
  return code === 'UND_ERR_SOCKET' && message === 'bad response';
}

/**
 * Whether the service switched protocols (`101` with `Upgrade`) for a request that asked for no upgrade (the
 * gateway forwards none): undici destroys the connection with SocketError "bad upgrade", the same code as every
 * socket failure. As with an unasked 100, it is one endpoint's answer: taken for a reset, the GET was resent and
 * the instance ejected after three, and the whole service answered 503.
 */
export function upstreamSwitchedProtocolsUnasked(failure: unknown): boolean {
  const { code, message } = (failure ?? {}) as { code?: unknown; message?: unknown };
  return code === 'UND_ERR_SOCKET' && message === 'bad upgrade';
}

/** The errno-style code of a network failure, looking through fetch's `cause` and DOMException names. */
function networkErrorCode(failure: unknown): string | undefined {
  let current: unknown = failure;
  for (let depth = 0; depth < 4 && typeof current === 'object' && current !== null; depth++) {
    const { code, name, cause } = current as { code?: unknown; name?: unknown; cause?: unknown };
    if (typeof code === 'string') return code;
    if (name === 'TimeoutError') return 'TimeoutError';
    current = cause;
  }
  return undefined;
}
