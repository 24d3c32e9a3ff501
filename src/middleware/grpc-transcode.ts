import { PassThrough } from 'node:stream';
import * as grpc from '@grpc/grpc-js';
import { context, type Tracer } from '@opentelemetry/api';
import type { Context as KoaContext, Middleware } from 'koa';
import type * as protobuf from 'protobufjs';
import { GatewayError, invalidJsonBody, quotedPath, toGatewayError } from '../errors';
import { createGrpcClients, deserializer, encodedBytes, encodeRequest, type GrpcClientCache, endGrpcSpan, MAX_GRPC_MESSAGE_BYTES, MAX_METADATA_ENTRIES, metadataFromHeaders, startGrpcSpan } from '../grpc/grpc-clients';
import { buildRequestMessage, parseQuery, type HttpBinding } from '../grpc/http-rules';
import { duplicateJsonKey, JsonBodyTooLargeError, JsonMappingError, messageToJson, parseJsonBody, ResponseMappingError } from '../grpc/json-mapping';
import { PathVariableError } from '../grpc/path-template';
import type { GrpcRoute } from '../grpc/route-mappings';
import { grpcFailure, grpcStatusName, isBadAnswer, knownGrpcStatus } from '../grpc/status-errors';
import type { AuthMethod } from '../config';
import type { CompiledRoute } from '../routes';
import type { GatewaySigner } from '../gateway-signature';
import { pickWithRoom, type UpstreamInstance } from '../upstream-pool';
import { upstreamErrorType, type UpstreamOutcome } from '../upstream-span';
import type { GatewayMetrics } from '../metrics';
import { upstreamHeadersFor, type UnderscoreHeaderPolicy } from '../upstream-headers';
import type { Logger } from '../../otel/logger';
import { problemBody, recordFailure } from './errors';
import { continueIfExpected } from './request-head';
import { bodyTooLarge, readWithinRate, type BodyRate } from '../body-rate';
import { responseClosed } from '../response-closed';
import { readsAsUtf8 } from '../unicode-text';

export interface GrpcTranscodeOptions {
  /** The JSON body's least rate (config `server`), as on proxied routes: a body dripped in gets 408. */
  bodyRate: BodyRate;
  /** Each route that targets a gRPC service, by route name: its REST mapping and gRPC instances (built once at start-up). */
  routes: ReadonlyMap<string, GrpcRoute>;
  /** Makes the CLIENT span of each call. */
  tracer: Tracer;
  /** Logs a server stream that fails after its first line (`request failed`), as the error handler logs the others. */
  logger: Logger;
  /** Client header names with `_`: see config `headersWithUnderscores`. */
  underscores: UnderscoreHeaderPolicy;
  /**
   * Largest request body, bytes (`proxy.maxBodyBytes`); 413 beyond. A JSON body for gRPC is never over
   * GRPC_JSON_BODY_MAX_BYTES whatever this says: under a proxy.maxBodyBytes of 64 KiB it took 1 MiB.
   */
  maxBodyBytes?: number;
  /** The channels of earlier builds (config reloads), reused by origin. Default: fresh ones. */
  clients?: GrpcClientCache;
  /** Signs the identity metadata for the services (config `proxy.signingKey`); none without a key. */
  sign?: GatewaySigner;
  /**
   * Calls open at once to one instance (the HTTP proxy's `maxSockets + maxPendingRequests`); beyond, 503
   * `upstream_busy`. Without it, clients that never read a server stream could open calls without end (each
   * holds its buffers until the deadline).
   */
  maxCallsPerInstance: number;
  /** Where each call is recorded as an upstream attempt (`gateway_upstream_request_duration_seconds`), as the HTTP proxy records its own. */
  metrics?: Pick<GatewayMetrics, 'upstreamSeries'>;
}

/** Server-streaming answers: one JSON message per line (https://github.com/ndjson/ndjson-spec). */
export const NDJSON_CONTENT_TYPE = 'application/x-ndjson';

/** Largest JSON body translated to a gRPC message, bytes: its message grows when encoded (docs/architecture.md). */
const GRPC_JSON_BODY_MAX_BYTES = 1024 * 1024;

/**
 * REST/JSON at the edge, gRPC to the service: for a route with `grpc`, finds the method the request maps
 * to by the proto's `google.api.http` annotations, builds the request message from path variables, body
 * and query (proto3 JSON mapping), calls the chosen instance with the route's timeout as the gRPC deadline,
 * request id, identity and trace context as metadata, and answers the response message as JSON. A
 * server-streaming method answers newline-delimited JSON. gRPC statuses become catalog errors
 * (src/grpc/status-errors.ts). Other routes pass on to the HTTP proxy.
 */
export function createGrpcTranscode(options: GrpcTranscodeOptions): Middleware {
  const { routes, tracer } = options;
  const maxBodyBytes = Math.min(options.maxBodyBytes ?? Infinity, GRPC_JSON_BODY_MAX_BYTES);
  const clientFor = createGrpcClients(options.clients);

  return async function transcodeGrpc(ctx, next) {
    const route = ctx.state.route!;
    const grpcRoute = routes.get(route.name);
    if (!grpcRoute) return next();
    const { mapping, pool } = grpcRoute;
    const found = refusingBadInput(() => mapping.find(ctx.method, ctx.state.upstreamPath!));
    if (!found) throw new GatewayError('route_not_found', `No method of ${mapping.service} matches ${ctx.method} ${quotedPath(ctx.path)}.`);
    if (found.kind === 'method_not_allowed') {
      const allow = found.allowed.join(', ');
      throw new GatewayError('method_not_allowed', `${quotedPath(ctx.path)} accepts ${allow}.`, { headers: { Allow: allow } });
    }
    const { binding } = found;
    const body = binding.body === undefined ? undefined : await readWithinRate(ctx.req, options.bodyRate, () => readJsonBody(ctx, maxBodyBytes));
    const message = refusingBadInput(() => buildRequestMessage(binding, found.variables, body, parseQuery(ctx.querystring)));
    const request = encodeRequest(binding.method.requestType, message);
    if (!request) throw new GatewayError('payload_too_large', `The request is larger than the ${MAX_GRPC_MESSAGE_BYTES}-byte gRPC message the gateway sends once encoded.`);

    // A client that left before the call starts (an HTTP/2 stream reset along with its HEADERS, an HTTP/1.1
    // connection closed right after its request head, while its token was checked): its response's 'close' came
    // already, so the listener that cancels the call would never run and the call would stay open at the service
    // until its deadline (a rapid-reset client could keep many open). No call; the access log records the 499.
    // Nothing below awaits before the call and its listener start, so a client leaving later is heard.
    if (responseClosed(ctx)) return;
    // The limit is each instance's, as the HTTP proxy's is: a full one is passed over for another with room.
    const instance = pickWithRoom(pool, NONE_TRIED, (candidate) => openCallsAt(candidate.origin) < options.maxCallsPerInstance);
    if (instance === 'busy') {
      throw new GatewayError('upstream_busy', `${options.maxCallsPerInstance} calls to each instance of the ${route.service} service are already open; try again shortly.`);
    }
    if (!instance) throw new GatewayError('upstream_unavailable', `No instance of the ${route.service} service is available.`);
    const upstreamHeaders = upstreamHeadersFor(ctx, instance.host, {
      underscores: options.underscores,
      forwardAuthorization: route.forwardAuthorization,
      sign: options.sign,
      request: { audience: route.service, method: 'POST', target: binding.method.path },
      strippedPrefix: route.strippedPrefix,
    });
    const metadata = metadataFromHeaders(upstreamHeaders);
    if (!metadata) throw new GatewayError('headers_too_large', `The request carries more header fields than a gRPC call passes on (${MAX_METADATA_ENTRIES}).`);
    const client = clientFor(instance, grpcRoute.keepalive);
    OPEN_CALLS.set(instance.origin, openCallsAt(instance.origin) + 1);
    let settled = false;
    const started = performance.now();
    const span = startGrpcSpan(tracer, binding.method, instance, route.service, context.active(), metadata);
    const call = { client, binding, request, metadata };
    const settle: Settle = (reported, error, badAnswer = false, streaming = false) => {
      if (settled) return;
      settled = true;
      // A malformed status must not reach the span as NaN or undefined.
      const code = knownGrpcStatus(reported);
      const stillOpen = openCallsAt(instance.origin) - 1;
      if (stillOpen > 0) OPEN_CALLS.set(instance.origin, stillOpen);
      else OPEN_CALLS.delete(instance.origin);
      const ended = performance.now();
      // grpc-js ends a call at the gateway's deadline with DEADLINE_EXCEEDED; a service may answer the same status
      // itself, at once (its own database call ran out of time). That is an answer, as an HTTP 504 the service sends
      // is: counted as the instance's silence, any three requests the service was slow on ejected it for everyone.
      const serviceDeadline = code === grpc.status.DEADLINE_EXCEEDED && ended - started < callDeadlineMs(route, binding.method.serverStreaming) - DEADLINE_SLACK_MS;
      if (options.metrics) {
        const outcome = badAnswer ? 'bad_response' : serviceDeadline ? 'ok' : callOutcome(code, binding.method.serverStreaming, responseClosed(ctx));
        // A gRPC call is an HTTP/2 POST whose HTTP status grpc-js keeps to itself (none recorded); its error type is
        // a failed call's outcome, as an HTTP attempt's, else the status name of a call the service refused (as an
        // HTTP answer's 4xx or 5xx status): `NOT_FOUND`, `INTERNAL`.
        const errorType = upstreamErrorType(outcome, undefined) ?? (code === grpc.status.OK || outcome !== 'ok' ? '' : grpcStatusName(code));
        options.metrics
          .upstreamSeries(GRPC_HTTP_METHOD, instance.secure ? 'https' : 'http', route.service, instance.hostname, instance.port, '', errorType, outcome)
          .observe((ended - started) / 1000, span.spanContext(), ended);
      }
      endGrpcSpan(span, code, error);
      // Like the HTTP proxy's passive health: an instance that cannot be reached or answer in time counts a failure.
      // A stream that was flowing and met its deadline did answer: it ran longer than `deadlineMs`, or its client
      // read too slowly and the call was paused for it (the proxy's `deadline` and `client_backed_up`, neither
      // the instance's). Counted, three clients that stopped reading their streams ejected the instance.
      // A call cancelled because its client left says nothing of the instance (the proxy's `client_closed` is
      // neither): counted a success, each abandoned call cleared the failures of calls that met their deadline and
      // put an ejected instance straight back.
      const silent = code === grpc.status.DEADLINE_EXCEEDED && !streaming && !serviceDeadline;
      if (code === grpc.status.UNAVAILABLE || silent) pool.reportFailure(instance, error?.details ?? String(code));
      else if (!(code === grpc.status.CANCELLED && responseClosed(ctx))) pool.reportSuccess(instance);
    };
    if (binding.method.serverStreaming) await streamCall(ctx, route, call, settle, options.logger);
    else await unaryCall(ctx, route, call, settle);
  };
}

/**
 * The calls open to each instance (by origin), whichever build made them: a config reload swaps the build while the
 * old one's calls stay open, and counted per build, each reload started at 0 (with a limit of 2, two reloads let 6
 * calls be open at one instance). Not per channel either: a reload that changes the service's keepalive makes new
 * channels while the old build's calls finish on the old ones. Entries go at zero: bounded by the instances called.
 */
const OPEN_CALLS = new Map<string, number>();

function openCallsAt(origin: string): number {
  return OPEN_CALLS.get(origin) ?? 0;
}

/** A unary call is tried on one instance only (a retried call could run twice at the service). */
const NONE_TRIED: ReadonlySet<UpstreamInstance> = new Set();

/** Every gRPC call's HTTP method (gRPC over HTTP/2: "Request → ... :method POST"). */
const GRPC_HTTP_METHOD = 'POST';

/**
 * A call's end as the HTTP proxy names an attempt's (UpstreamOutcome), for `gateway_upstream_outcome`: a status
 * the service sent is an answer (`ok`, as an HTTP 404 or 500 is), whatever it says. DEADLINE_EXCEEDED is the
 * route's `timeoutMs` for a unary call (its whole deadline: nothing flows until the answer) and `deadlineMs` for a
 * stream; UNAVAILABLE, which grpc-js gives a connection refused or dropped and a service's own refusal alike
 * (only its text tells them apart), counts with the refused connections, as the passive health check does;
 * CANCELLED is a client that left (the gateway cancels its call), or else the service's own. A message with no
 * JSON form is the service's bad answer (`bad_response`, settle's `badAnswer`), as an HTTP answer that does not parse.
 */
function callOutcome(code: grpc.status, serverStreaming: boolean, clientLeft: boolean): UpstreamOutcome {
  switch (code) {
    case grpc.status.DEADLINE_EXCEEDED:
      return serverStreaming ? 'deadline' : 'timeout';
    case grpc.status.UNAVAILABLE:
      return 'refused';
    case grpc.status.CANCELLED:
      return clientLeft ? 'client_closed' : 'ok';
    default:
      return 'ok';
  }
}

/** Runs `step`, turning a hostile path variable (400 bad_path) or input that does not fit the message (400 invalid_body) into catalog errors. */
function refusingBadInput<T>(step: () => T): T {
  try {
    return step();
  } catch (error) {
    if (error instanceof PathVariableError) throw new GatewayError('bad_path', error.message);
    if (error instanceof JsonMappingError) throw new GatewayError('invalid_body', error.message);
    throw error;
  }
}

interface Call {
  client: grpc.Client;
  binding: HttpBinding;
  /** The request message, encoded (encodeRequest). */
  request: Buffer;
  metadata: grpc.Metadata;
}
/**
 * Ends a call's span and its count: `badAnswer` when the service's message had no JSON form, or the call failed on
 * another bad answer of the service's (isBadAnswer: 502 upstream_bad_response, the HTTP proxy's `bad_response`),
 * `streaming` once a stream's first message came (a deadline then is not the instance's).
 */
type Settle = (code: grpc.status, error?: grpc.ServiceError, badAnswer?: boolean, streaming?: boolean) => void;

/**
 * The credentials a service's UNAUTHENTICATED answer is challenged for: the route's, but for a caller whose API key
 * the gateway took and the service did not (notification-service serves users only), the others. Offered its own key
 * again, the consumer was told to send what was just refused; over HTTP the service's own challenge (Bearer) says so.
 */
function challengedMethods(ctx: KoaContext, route: CompiledRoute): ReadonlySet<AuthMethod> {
  if (!ctx.state.consumer) return route.authMethods;
  const others = new Set([...route.authMethods].filter((method) => method !== 'apiKey'));
  return others.size > 0 ? others : route.authMethods;
}

/**
 * A call's deadline after it starts, ms: a stream's `deadlineMs`; a unary call's the route's timeout too, its whole
 * deadline (nothing flows until the answer, so idle = whole).
 */
function callDeadlineMs(route: CompiledRoute, serverStreaming: boolean): number {
  return serverStreaming ? route.deadlineMs : Math.min(route.timeoutMs, route.deadlineMs);
}

/**
 * How much earlier than its deadline a DEADLINE_EXCEEDED may end a call and still be the gateway's own, ms: grpc-js
 * arms its timer from a Date.now() read a little after the call's start was taken, and timers round to the ms.
 */
const DEADLINE_SLACK_MS = 5;

/**
 * A unary call, read as a stream of its answers. grpc-js's own unary call asks the service for one message only: a
 * second one, and the status behind it, were never read, and the call ran to its deadline (504 upstream_timeout,
 * the instance counted silent: three such answers ejected it). Read here, a second message cancels the call and is
 * the service's bad answer, as grpc-js words it ("Too many responses received"), and so is an OK without a message.
 */
async function unaryCall(ctx: KoaContext, route: CompiledRoute, { client, binding, request, metadata }: Call, settle: Settle): Promise<void> {
  const { method } = binding;
  const deadline = Date.now() + callDeadlineMs(route, false);
  const call = client.makeServerStreamRequest(method.path, encodedBytes, deserializer(method.responseType), request, metadata, { deadline });
  let clientGone = false;
  // The client went away: the service need not finish the work.
  const cancel = () => {
    clientGone = true;
    call.cancel();
  };
  const response = await new Promise<{ json: unknown } | undefined>((resolve, reject) => {
    let answer: protobuf.Message | undefined;
    let tooMany = false;
    const fail = (error: grpc.ServiceError) => {
      ctx.res.off('close', cancel);
      settle(error.code, error, isBadAnswer(error));
      // Cancelled because the client left: nobody to answer, and no upstream failure to report.
      if (clientGone) resolve(undefined);
      else reject(grpcFailure(route.service, error, challengedMethods(ctx, route)));
    };
    call.on('data', (value: protobuf.Message) => {
      if (answer === undefined) answer = value;
      else if (!tooMany) {
        tooMany = true;
        call.cancel();
      }
    });
    call.once('error', (error: grpc.ServiceError) => fail(tooMany && !clientGone ? wrongCardinality('Too many responses received', error.metadata) : error));
    call.once('end', () => {
      if (answer === undefined) return fail(wrongCardinality('No message received', new grpc.Metadata()));
      ctx.res.off('close', cancel);
      // Written as JSON before the call is settled, so a message without a JSON form counts as the bad answer it is.
      let json: unknown;
      try {
        json = answerJson(route, method.responseType, answer);
      } catch (failure) {
        settle(grpc.status.OK, undefined, true);
        reject(failure);
        return;
      }
      settle(grpc.status.OK);
      resolve({ json });
    });
    ctx.res.once('close', cancel);
  });
  if (response === undefined) return;
  ctx.status = 200;
  // Always JSON: a well-known type's JSON form can be a bare value (StringValue, Timestamp, a null Value), which Koa
  // would send as text/html when it starts with `<` (markup the service wrote, served from the gateway's origin), as
  // text/plain otherwise, or as a 204 for null.
  ctx.type = 'application/json';
  ctx.body = typeof response.json === 'object' && response.json !== null ? response.json : JSON.stringify(response.json);
}

/** grpc-js's own failure of a unary answer with no message, or more than one (status-errors.ts: the service's bad answer). */
function wrongCardinality(details: 'No message received' | 'Too many responses received', metadata: grpc.Metadata): grpc.ServiceError {
  return Object.assign(new Error(`${grpc.status.UNIMPLEMENTED} UNIMPLEMENTED: ${details}`), { code: grpc.status.UNIMPLEMENTED, details, metadata });
}

/** A service's message as JSON; one without a JSON form is the service's bad answer (502), never a crash or a 500. */
function answerJson(route: CompiledRoute, type: protobuf.Type, message: protobuf.Message): unknown {
  try {
    return messageToJson(type, message);
  } catch (error) {
    if (!(error instanceof ResponseMappingError)) throw error;
    throw new GatewayError('upstream_bad_response', `The ${route.service} service answered ${error.message}.`, { cause: error });
  }
}

/**
 * Newline-delimited JSON, one message per line, with back-pressure (the call pauses while the client is
 * slow). Until the first message the status is open, so an early failure is an ordinary problem response;
 * after it, a failure is written as a last line `{"error": <problem>}` and the stream ends.
 */
async function streamCall(ctx: KoaContext, route: CompiledRoute, { client, binding, request, metadata }: Call, settle: Settle, logger: Logger): Promise<void> {
  const { method } = binding;
  // grpc-js's events run outside the request's context; a failure after the first line is recorded in it.
  const requestContext = context.active();
  const call = client.makeServerStreamRequest(method.path, encodedBytes, deserializer(method.responseType), request, metadata, { deadline: Date.now() + callDeadlineMs(route, true) });
  readAheadOneMessage(call);
  const line = (value: unknown) => `${JSON.stringify(value)}\n`;
  // The client left: the call is cancelled, and settled here too. A call grpc-js had ended while it was paused for
  // this client (the service's last message and OK read, 'end' waiting for the stream to be read) hears neither
  // 'end' nor 'error' once nobody reads it, and stayed counted open at its instance for good (503 upstream_busy).
  const cancel = () => {
    call.cancel();
    settle(grpc.status.CANCELLED);
  };
  ctx.res.once('close', cancel);
  // undefined: the client went away before the first message (the call was cancelled for it); nobody to answer.
  const first = await new Promise<protobuf.Message | null | undefined>((resolve, reject) => {
    const onData = (value: protobuf.Message) => {
      call.off('error', onError).off('end', onEnd);
      call.pause();
      resolve(value);
    };
    const onError = (error: grpc.ServiceError) => {
      call.off('data', onData).off('end', onEnd);
      ctx.res.off('close', cancel);
      settle(error.code, error, isBadAnswer(error));
      // Cancelled because the client left (responseClosed: an HTTP/2 response has no `destroyed` to tell it).
      if (error.code === grpc.status.CANCELLED && responseClosed(ctx)) resolve(undefined);
      else reject(grpcFailure(route.service, error, challengedMethods(ctx, route)));
    };
    const onEnd = () => {
      call.off('data', onData).off('error', onError);
      resolve(null);
    };
    call.once('data', onData).once('error', onError).once('end', onEnd);
  });
  if (first === undefined) return;
  const out = new PassThrough();
  if (first === null) {
    ctx.res.off('close', cancel);
    settle(grpc.status.OK);
    return answerStream(ctx, out.end());
  }
  // Set when a message could not be written as JSON: the call is cancelled and this, not CANCELLED, is the answer.
  let failure: GatewayError | undefined;
  const lineOf = (value: protobuf.Message): string | undefined => {
    if (failure) return undefined;
    try {
      return line(answerJson(route, method.responseType, value));
    } catch (error) {
      // Thrown from grpc-js's 'data' event it would be an uncaught exception: the whole gateway would exit.
      failure = toGatewayError(error);
      call.cancel();
      return undefined;
    }
  };
  // Listening before the first line is made: converting it may cancel the call, and an unheard 'error' would crash.
  call.on('data', (value: protobuf.Message) => {
    const text = lineOf(value);
    if (text !== undefined && !out.write(text)) call.pause();
  });
  out.on('drain', () => call.resume());
  call.once('error', (error: grpc.ServiceError) => {
    ctx.res.off('close', cancel);
    settle(error.code, error, failure !== undefined || isBadAnswer(error), true);
    if (error.code === grpc.status.CANCELLED && responseClosed(ctx)) return;
    const problem = failure ?? grpcFailure(route.service, error, challengedMethods(ctx, route));
    // The 200 went out with the first line: only the last line tells the client. The access line, the metric and
    // the SERVER span read the code when the response closes, so it is recorded before the end, as the proxy
    // records a response it cuts midway; without it the stream would read as a success.
    context.with(requestContext, () => recordFailure(ctx, problem, logger));
    out.end(line({ error: problemBody(problem, ctx.state.requestId, ctx.originalUrl.split('?')[0]!) }));
  });
  call.once('end', () => {
    ctx.res.off('close', cancel);
    settle(grpc.status.OK);
    out.end();
  });
  const firstLine = lineOf(first);
  // Nothing sent yet: an ordinary problem response.
  if (firstLine === undefined) throw failure!;
  answerStream(ctx, out);
  out.write(firstLine);
  call.resume();
}

/**
 * A stream's call asks the service for its next message only while fewer than one waits unread. grpc-js's stream is
 * an object-mode Readable, which reads ahead until Node's default mark for such streams, 16 objects, waits: up to
 * 16 messages of MAX_GRPC_MESSAGE_BYTES (64 MiB) held per client that stopped reading, where the HTTP proxy holds
 * 256 KiB. grpc-js takes no option for it, so the mark is set on the stream's state; the stream pulls one message
 * per read and the service's HTTP/2 flow control holds the rest.
 */
function readAheadOneMessage(call: grpc.ClientReadableStream<unknown>): void {
  // Not thrown when grpc-js's stream is built otherwise: the call is open and counted by now (test/grpc's slow reader
  // test says so if the mark stops applying).
  const state = (call as unknown as { _readableState?: { highWaterMark?: unknown } })._readableState;
  if (typeof state?.highWaterMark === 'number') state.highWaterMark = 1;
}

function answerStream(ctx: KoaContext, out: PassThrough): void {
  ctx.status = 200;
  ctx.type = NDJSON_CONTENT_TYPE;
  ctx.set('Cache-Control', 'no-store');
  ctx.body = out;
}

/**
 * JSON exchanged between systems must be UTF-8 (RFC 8259 section 8.1): other bytes are refused, as in the path and
 * the query, never replaced by U+FFFD, a character the client never sent. A BOM is kept in the text, so
 * JSON.parse refuses it (RFC 8259 forbids it) rather than the decoder dropping it.
 */
const UTF8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * The JSON request body, or undefined when there is none. Only JSON is taken (415 otherwise), at most
 * `limit` bytes (413), and it must be UTF-8 and parse (400).
 */
/**
 * A request's body, at most `limit` bytes, read as it flows ('data'). Read with `for await`, the request is never
 * flowing, so it always read as paused, which the body-rate check takes for the gateway holding it back: a body
 * dripped at a byte a second was never cut (the 408 login gives it). Over the limit: 413, and the rest is never read
 * (the connection closes after the 413, RFC 9112 9.6, as after the proxy's; kept alive, a request behind it on the
 * connection waited unanswered until the idle timeout).
 */
function readBodyWithin(request: KoaContext['req'], limit: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const stop = () => request.off('data', onData).off('end', onEnd).off('error', onError).off('close', onClose);
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      if (size <= limit) return void chunks.push(chunk);
      stop();
      reject(bodyTooLarge(limit));
    };
    const onEnd = () => {
      stop();
      resolve(Buffer.concat(chunks));
    };
    const onError = (error: Error) => {
      stop();
      reject(error);
    };
    // Closed before its end: the client left mid-body (`for await` failed the same way).
    const onClose = () => {
      stop();
      reject(Object.assign(new Error('the request body ended before it was complete'), { code: 'ERR_STREAM_PREMATURE_CLOSE' }));
    };
    request.on('data', onData).on('end', onEnd).on('error', onError).on('close', onClose);
  });
}

async function readJsonBody(ctx: KoaContext, limit: number): Promise<unknown> {
  const declared = ctx.get('content-length');
  if (declared === '0' || (declared === '' && !ctx.get('transfer-encoding'))) return undefined;
  if (!ctx.is('application/json', '+json')) throw new GatewayError('unsupported_media_type', 'The request body must be application/json.');
  // Read as UTF-8 whatever it declared: `charset=iso-8859-1` bytes were taken as UTF-8 text, a body two readers read
  // two ways (login and the services answer it 415).
  if (!readsAsUtf8(ctx.request.charset)) throw new GatewayError('unsupported_media_type', 'The request body must be UTF-8 JSON.');
  // The gateway reads this body itself and decodes no content coding: gzip bytes would be refused as "not UTF-8",
  // telling the client its JSON is broken. RFC 9110 15.5.16: 415, with the codings taken in Accept-Encoding.
  const coding = ctx.get('content-encoding').trim().toLowerCase();
  if (coding !== '' && coding !== 'identity') {
    throw new GatewayError('unsupported_media_type', 'The request body must not be content-coded (Content-Encoding): send the JSON as it is.', { headers: { 'Accept-Encoding': 'identity' } });
  }
  if (declared !== '' && Number(declared) > limit) throw new GatewayError('payload_too_large', `The request body is larger than ${limit} bytes.`);
  continueIfExpected(ctx);
  const bytes = await readBodyWithin(ctx.req, limit);
  let text: string;
  try {
    text = UTF8.decode(bytes);
  } catch {
    throw new GatewayError('invalid_body', 'The request body is not UTF-8.');
  }
  // JSON's own white space only (RFC 8259 2): String#trim also takes a BOM or a no-break space for none, and a body of
  // one was called as if the client had sent no body.
  if (/^[ \t\n\r]*$/.test(text)) return undefined;
  let body: unknown;
  try {
    body = parseJsonBody(text);
  } catch (error) {
    if (error instanceof JsonBodyTooLargeError) throw new GatewayError('payload_too_large', error.message);
    if (error instanceof JsonMappingError) throw new GatewayError('invalid_body', error.message);
    throw invalidJsonBody();
  }
  const twice = duplicateJsonKey(text);
  if (twice !== undefined) throw new GatewayError('invalid_body', `The request body names the key ${JSON.stringify(twice.slice(0, 64))} twice in one object.`);
  return body;
}
