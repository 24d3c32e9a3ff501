import { randomUUID } from 'node:crypto';
import http from 'node:http';
import http2, { type Http2ServerResponse } from 'node:http2';
import { isIP, type Server, type Socket } from 'node:net';
import tls from 'node:tls';
import { ROOT_CONTEXT, SpanKind, SpanStatusCode, trace, type Attributes, type SpanContext, type Tracer } from '@opentelemetry/api';
import { ATTR_CLIENT_ADDRESS, ATTR_ERROR_TYPE, ATTR_HTTP_REQUEST_METHOD, ATTR_HTTP_REQUEST_METHOD_ORIGINAL, ATTR_HTTP_RESPONSE_STATUS_CODE, ATTR_URL_SCHEME } from '@opentelemetry/semantic-conventions';
import type Koa from 'koa';
import { MAX_RECORDED_METHOD_LENGTH, recordedMethod, spanNameMethod } from './http-method';
import { logLine, type Logger } from './logger';
import { traceresponseOf } from './trace-context-propagator';
import { redactUrl } from './redact-url';
import { isWellFormedRequestId, traceIdFromRequestId, withTraceId } from './trace-ids';
import { ACCESS_LINE_MESSAGE, ATTR, HEADER, HTTP_METHODS, type AccessLine } from './wire-names';

export interface RunServerOptions {
  /** The app; or anything with Koa's `callback()`, such as a reloadable gateway's listener that delegates to the current app. */
  app: Koa | { callback(): http.RequestListener };
  /** Process name for log lines (`gateway`, `user-service`, ...). */
  name: string;
  port: number;
  host: string;
  logger: Logger;
  /** How long in-flight requests may take to finish after SIGTERM, ms. Default 10 s. */
  drainTimeoutMs?: number;
  /** Runs after the server closed, before exit (telemetry flush). */
  onShutdown?: () => Promise<void>;
  /** Called once as the drain begins (SIGTERM, SIGINT or close()), before the listener stops accepting. */
  onDrain?: () => void;
  /** Client timeouts, ms (Node's defaults when absent): whole head, whole request, idle keep-alive. */
  timeouts?: { headersMs: number; requestMs: number; keepAliveMs: number };
  /** Client connections open at once; Node closes further ones at accept. Unbounded when absent. */
  maxConnections?: number;
  /** ConnectionBounds `admitConnection`. */
  admitConnection?: (socket: Socket) => boolean;
  /**
   * Decides, as an HTTP/2 request arrives, whether its stream is served: one refused is reset with
   * REFUSED_STREAM before the app sees it. Every stream is served when absent.
   */
  admitStream?: (stream: http2.ServerHttp2Stream) => boolean;
  /**
   * How long an HTTP/1 connection may hold bytes the client is not taking (watchStalledSends), ms. No bound when
   * absent (the services, which only the gateway and each other call).
   */
  sendTimeoutMs?: number;
  /**
   * Builds the server around the app's listener instead of `http.createServer` (HTTPS with HTTP/2:
   * src/tls.ts, which applies `timeouts` itself). Its URL is `https://` when it is a TLS server.
   */
  createServer?: (listener: http.RequestListener) => PublicServer;
  /**
   * The app answers an HTTP/1.1 request without `Host` itself (the gateway's request-head check: a problem+json
   * 400 with a request id, logged and traced). Otherwise Node answers it with a bare 400 before the app sees it.
   */
  appChecksHost?: boolean;
  /** Counts a request Node's parser refused (the gateway's request metrics); its log line and span are written here. */
  onRejected?: (rejected: RejectedRequest) => void;
  /**
   * A request refused after its head was parsed (its body broke the parser in the read that brought the head, before
   * its pipeline began) keeps its own well-formed `X-Request-Id`, as the pipeline keeps it (the gateway). Otherwise
   * (the services, which believe only the ids the gateway signed) it gets one of the server's.
   */
  keepsInboundRequestId?: boolean;
  /** Records those spans; default the global provider's tracer named after the process. */
  tracer?: Tracer;
  /**
   * The `Strict-Transport-Security` value (src/middleware/hsts.ts) for the answers written here rather than by
   * the app: Node's parser refusals (400, 408, 431), CONNECT's 405, the drain bound's 503. RFC 6797 7.1 wants it
   * on every answer over TLS, and these go to the same browsers. Written only when the server is a TLS one
   * (7.2: never over plain HTTP). None when absent.
   */
  strictTransportSecurity?: string;
}

/** What runServer needs of a server: Node's http.Server, or an HTTPS / HTTP/2 one that can close its connections alike. */
export type PublicServer = Server & { closeIdleConnections(): void; closeAllConnections(): void };

export interface RunningServer {
  server: PublicServer;
  /** The bound address (useful with port 0). */
  url: string;
  /** Stops accepting, lets in-flight requests finish within the drain bound, then runs onShutdown. */
  close(): Promise<void>;
}

/** The HTTP/1 response a connection is answering now (Node's `_httpMessage`), if any. */
function inFlightResponse(socket: Socket): http.ServerResponse | undefined {
  return (socket as Socket & { _httpMessage?: http.ServerResponse | null })._httpMessage ?? undefined;
}

/** Connections whose request in flight is their last: bytes after it broke the parser (answerClientError). */
const closingAfterAnswer = new WeakSet<Socket>();
/** The response to the last request each HTTP/1 connection carried (inTurn records it; `req` is its request). */
const lastResponse = new WeakMap<Socket, http.ServerResponse>();

/** A request Node's parser refused before any app saw it, as answered by answerClientError. */
export interface RejectedRequest {
  status: number;
  code: string;
  /** Its method, when its head was parsed (an HTTP/1 CONNECT) or its request line was whole (a method the parser does not know); unknown otherwise. */
  method?: string;
  /** The id its answer carries: minted, or the request's own when its head was parsed and the server keeps it (keepsInboundRequestId). */
  requestId: string;
  /** The SERVER span recording it. */
  spanContext: SpanContext;
  /** The listener's scheme (its socket's TLS), known without the head: `url.scheme` of its span and metrics. */
  urlScheme: 'http' | 'https';
}

/**
 * A malformed or oversized request never reaches Koa (Node's parser rejects it first); without this the
 * client would get a bare status line. It gets a problem+json body like every other error instead, and is
 * recorded as one (`recordRejected`): no pipeline will log or trace it.
 *
 * A request whose head was parsed is already in the pipeline when its body breaks the parser (a bad chunk) or
 * the request timeout fires: if nothing was answered yet it is answered here through its own response, with
 * the request id the pipeline gave it, so the access log and the span record the 400 or 408 (not a client that
 * left). Once the answer has started, the connection can only be cut.
 */
function answerClientError(error: NodeJS.ErrnoException, socket: Socket, recordRejected: RecordRejected, ownHeaders: OwnHeaders): void {
  // A TLS connection whose handshake never finished (its timeout, a bad ClientHello) has no HTTP to answer in:
  // ending it with an HTTP answer writes nothing and leaves it open for good, holding a connection slot.
  if (socket instanceof tls.TLSSocket && !(socket as tls.TLSSocket & { _secureEstablished?: boolean })._secureEstablished) {
    socket.destroy();
    return;
  }
  // The client closed or reset the connection mid-request: a client that left, not a request to answer. Or it
  // asked for a TLS renegotiation (src/tls.ts disables them): its handshake would go on under an HTTP answer.
  if (error.code === 'HPE_INVALID_EOF_STATE' || error.code === 'ECONNRESET' || error.code === 'ERR_TLS_RENEGOTIATION_DISABLED') {
    socket.destroy();
    return;
  }
  const problem = withOwnHeaders(parserProblem(error), ownHeaders);
  const inFlight = inFlightResponse(socket);
  // The request in flight was read whole: the error is in bytes after it (a malformed next request, data after
  // its `Connection: close`), not in it. Its answer goes out as it will (streaming or not yet begun), and the
  // connection closes after it.
  if (inFlight?.req?.complete) {
    if (closingAfterAnswer.has(socket)) return;
    closingAfterAnswer.add(socket);
    closeAfterAnswer(inFlight);
    inFlight.once('finish', () => socket.end());
    return;
  }
  if (!socket.writable || inFlight?.headersSent) {
    // Its own body broke (too slow, a bad chunk) after its answer started: the answer is cut, by the server.
    if (inFlight?.headersSent && socket.writable) markServerAnswer(inFlight, problem.code);
    socket.destroy();
    return;
  }
  // The body of a request already answered (a 401 before its upload was read) broke: that answer stands, and
  // nothing after the broken body can be framed.
  const last = lastResponse.get(socket);
  if (!inFlight && last && !last.req.complete && last.writableFinished) {
    socket.destroy();
    return;
  }
  // The headers the pipeline set so far stay (traceresponse, HSTS, CORS), as on any error it answers. The
  // pipeline then finds its response ended (Koa's respond and the error handler leave it alone) and the
  // request aborted.
  if (inFlight?.hasHeader(HEADER.requestId)) return void answerProblem(inFlight, problem);
  // A request whose pipeline has not begun (the public listener runs it a turn later: src/request-arrival.ts) broke
  // in the read that brought its head: recorded here, as a refusal of the parser's, and its pipeline never runs
  // (handleAfterTurn finds it answered). Answered with an id none of its records had, it then ran on the ended
  // response and failed setting its first header ('unhandled gateway error'), its span never ended.
  if (inFlight) {
    const rejection = recordRejected({ status: problem.status, code: problem.code, method: inFlight.req.method, request: inFlight.req }, socket);
    answerProblem(inFlight, answering(problem, rejection), rejection.requestId);
    return void rejection.record();
  }
  // A connection that never sent a byte (a browser's or a balancer's pre-connect) timed out: no request to record.
  if (socket.bytesRead === 0) return void endWithProblem(socket, problem);
  const rejection = recordRejected({ status: problem.status, code: problem.code, method: problem.code === METHOD_NOT_IMPLEMENTED.code ? requestLineMethod(error) : undefined }, socket);
  endWithProblem(socket, answering(problem, rejection), rejection.requestId);
  rejection.record();
}

/** The answer to a request Node's parser or timers refused, by its error. */
function parserProblem(error: NodeJS.ErrnoException): ServerProblem {
  if (error.code === 'HPE_HEADER_OVERFLOW') return { status: 431, title: 'Request header fields too large', code: 'headers_too_large', detail: 'The request headers are too large.' };
  if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') return REQUEST_TIMEOUT;
  if (unknownMethod(error)) return METHOD_NOT_IMPLEMENTED;
  if (unsupportedVersion(error)) return VERSION_NOT_SUPPORTED;
  return { status: 400, title: 'Bad request', code: 'bad_request', detail: 'The request could not be parsed as HTTP.' };
}

/**
 * An internal listener's (admin, metrics, the HTTP redirect) answer to what Node's parser or timers refused, and to
 * CONNECT: problem+json with a request id, as the public listener answers, where Node wrote a bare `408` or `400`
 * and closed a CONNECT without a word. Nothing is recorded: these listeners' requests are not the pipeline's.
 */
function answerInternalClientError(error: NodeJS.ErrnoException, socket: Socket): void {
  // A client that left, or a request whose answer has begun (Node's own rule): nothing to write.
  if (error.code === 'HPE_INVALID_EOF_STATE' || error.code === 'ECONNRESET' || !socket.writable || inFlightResponse(socket) !== undefined) return void socket.destroy();
  endWithProblem(socket, parserProblem(error));
}

/**
 * Writes a server problem (with `requestId`, else a minted one) on a socket no HTTP response owns, and ends it; the
 * socket is destroyed ANSWERED_LINGER_MS later. Node's server keeps a socket open after its own end until the client
 * closes too (half-open), and nothing else watched these: a client that read the 400 or 408 and never closed held
 * its connection slot (and its client address's) for good, and made shutdown wait its whole drain bound.
 */
function endWithProblem(socket: Socket, problem: ServerProblem, requestId?: string): void {
  const { body, headers } = problemAnswer(requestId, problem);
  const head = Object.entries(headers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
  socket.end(`HTTP/1.1 ${problem.status} ${problem.title}\r\n${head}\r\n${body}`);
  // A timer, not the socket's idle timeout: bytes the client keeps sending would restart that one.
  const linger = setTimeout(() => socket.destroy(), ANSWERED_LINGER_MS);
  linger.unref();
  socket.once('close', () => clearTimeout(linger));
}

const CONNECT_REFUSED: ServerProblem = { status: 405, title: 'Method not allowed', code: 'method_not_allowed', detail: 'The gateway opens no tunnels (CONNECT).', headers: { Allow: HTTP_METHODS.join(', ') } };

/** How long a connection the gateway answered itself and ended stays open for its answer to be read, ms. */
const ANSWERED_LINGER_MS = 1000;

/**
 * An HTTP/1 CONNECT (a request for a tunnel, RFC 9110 9.3.6) never reaches the pipeline: Node hands its socket
 * over on 'connect' and, with no listener, closes it without a word, so the client got no answer and nothing
 * recorded it. The gateway opens no tunnels: 405 with the methods it serves and a request id, recorded as the
 * parser's refusals are, then the connection closes. (A CONNECT pipelined behind a request still being answered
 * gets no 405: the connection closes once that answer is out, as Node closed it.)
 */
function refuseConnect(request: http.IncomingMessage, socketOrResponse: Socket | Http2ServerResponse, recordRejected: RecordRejected, ownHeaders: OwnHeaders): void {
  const refused = { status: CONNECT_REFUSED.status, code: CONNECT_REFUSED.code, method: 'CONNECT' };
  // No pipeline set anything on this answer (an HTTP/2 CONNECT's response never went through it either).
  const refusal = withOwnHeaders(CONNECT_REFUSED, ownHeaders);
  if (socketOrResponse instanceof http2.Http2ServerResponse) {
    // An HTTP/2 CONNECT stream: answered on it, the connection serves on.
    const rejection = recordRejected(refused, request.socket);
    answerProblem(socketOrResponse, answering(refusal, rejection), rejection.requestId);
    return rejection.record();
  }
  const socket = socketOrResponse;
  // Node no longer watches this socket (no timer of the server's covers it): a client's reset must not become an
  // uncaught error, and nothing may leave it open.
  socket.on('error', () => socket.destroy());
  // The last request parsed before it (requests may queue behind the one in flight, inTurn): its answer, and
  // those before it, go out as they will (each is bounded like any other); then the connection is closed.
  const last = lastResponse.get(socket);
  if (last && !last.writableFinished) {
    last.once('close', () => socket.destroy());
    return;
  }
  if (!socket.writable) return void socket.destroy();
  const rejection = recordRejected(refused, socket);
  endWithProblem(socket, answering(refusal, rejection), rejection.requestId);
  rejection.record();
}

/** A refused request being recorded: its id and SERVER span exist before its answer is written, so the answer names both. */
interface Rejection {
  /** Minted: nothing of the request can be trusted (its X-Request-Id included), but the answer still carries an id. */
  requestId: string;
  /** The `traceresponse` naming its span, as every answer of the pipeline carries one; none when nothing traces. */
  traceresponse: string | undefined;
  /** Ends its span and writes its access line and count: called once the answer is written. */
  record(): void;
}

type RecordRejected = (refused: Omit<RejectedRequest, 'spanContext' | 'requestId' | 'urlScheme'> & { request?: http.IncomingMessage }, socket: Socket) => Rejection;

/** The answer to a refused request: `problem` with the `traceresponse` of its span. */
function answering(problem: ServerProblem, rejection: Rejection): ServerProblem {
  return rejection.traceresponse === undefined ? problem : { ...problem, headers: { ...problem.headers, [HEADER.traceresponse]: rejection.traceresponse } };
}

/**
 * Records a request the parser refused as the pipeline records every request: a SERVER span whose trace id is
 * the answer's request id (so that id opens the trace, as for every request), an access-log line with it, and
 * `onRejected` (the gateway's request metrics). Method, path and duration are unknown when the head never parsed.
 * When it did (`refused.request`: its body broke the parser in the read that brought its head, before its pipeline
 * began), its path is logged and its own well-formed request id kept where the server keeps inbound ids: an outside
 * review found the client's id kept or replaced by how the client's bytes fell into TCP segments. Its trace is still
 * a new one of random id (its `traceparent` is not weighed here, nor is a client's id made a trace id).
 */
function rejectionRecorder(tracer: Tracer, logger: Logger, onRejected: ((rejected: RejectedRequest) => void) | undefined, keepsInboundRequestId: boolean): RecordRejected {
  return (refused, socket) => {
    const { status, code, method, request } = refused;
    const inbound = keepsInboundRequestId ? request?.headers[HEADER.requestId] : undefined;
    const inboundId = typeof inbound === 'string' && isWellFormedRequestId(inbound) ? inbound : undefined;
    const requestId = inboundId ?? newRequestId();
    const attributes: Attributes = {};
    // A head that never parsed has no method: `_OTHER`, as the metrics count it.
    const recorded = recordedMethod(method);
    attributes[ATTR_HTTP_REQUEST_METHOD] = recorded;
    // A method the gateway does not know (the 501's `FOO`) is `_OTHER`, with what the client sent beside it (semconv).
    if (method !== undefined && method !== recorded) attributes[ATTR_HTTP_REQUEST_METHOD_ORIGINAL] = method;
    attributes[ATTR_HTTP_RESPONSE_STATUS_CODE] = status;
    // Known without the head: the listener's (an HTTP/2 CONNECT's socket stands for its session's TLS socket).
    const urlScheme = (socket as Partial<tls.TLSSocket>).encrypted === true ? 'https' : 'http';
    attributes[ATTR_URL_SCHEME] = urlScheme;
    attributes[ATTR.errorCode] = code;
    attributes[ATTR.requestId] = requestId;
    if (socket.remoteAddress !== undefined) attributes[ATTR_CLIENT_ADDRESS] = socket.remoteAddress;
    // A 5xx (the 501 to a method the parser does not know) is the server's error, as src/middleware/tracing.ts
    // records one (semconv: SERVER span status); a 4xx is the client's.
    if (status >= 500) attributes[ATTR_ERROR_TYPE] = String(status);
    const span = withTraceId(inboundId === undefined ? traceIdFromRequestId(requestId) : undefined, () => tracer.startSpan(spanNameMethod(recorded), { kind: SpanKind.SERVER, attributes }, ROOT_CONTEXT));
    // Its line stays at warn below all the same: the client's doing, as the pipeline logs it over HTTP/2.
    if (status >= 500) span.setStatus({ code: SpanStatusCode.ERROR, message: code });
    return {
      requestId,
      // The minted id is random, and so is the trace id made of it (the Level 2 random flag).
      traceresponse: traceresponseOf(span, ROOT_CONTEXT, true),
      record() {
        span.end();
        const fields: AccessLine = { method: method ?? null, url: request?.url === undefined ? null : redactUrl(loggedTarget(request.url)), status, duration_ms: null, request_id: requestId, route: null, user_id: null, error_code: code, consumer_id: null, cache: null, client_address: socket.remoteAddress ?? null };
        logLine(logger, 'warn', ACCESS_LINE_MESSAGE, fields, trace.setSpan(ROOT_CONTEXT, span));
        onRejected?.({ ...refused, requestId, spanContext: span.spanContext(), urlScheme });
      },
    };
  };
}

/**
 * Handles pipelined HTTP/1.1 requests one at a time. Node parses and emits every request of a pipeline at once,
 * while it answers them in order: a request behind one whose answer closes the connection (`Connection: close`,
 * a refused upload) would still be forwarded, and a DELETE run by a service whose answer nobody can receive
 * (RFC 9112 9.6: no further requests are processed after a close). A request whose response has no connection
 * yet waits until it is its turn, and is never handled when the connection closes first.
 */
function inTurn(handle: http.RequestListener, logger: Logger, openHttp2Responses: Set<Http2ServerResponse>, draining: () => boolean, admitStream?: (stream: http2.ServerHttp2Stream) => boolean): http.RequestListener {
  /** Requests parsed on each connection and waiting for their turn. */
  const waiting = new WeakMap<Socket, number>();
  return (request, response) => {
    // HTTP/2 streams are independent (and the compatibility response's socket is a proxy).
    if (!(response instanceof http.ServerResponse)) {
      const stream = response as unknown as Http2ServerResponse;
      // Refused before anything is made of it; REFUSED_STREAM tells the client it was not processed (RFC 9113 8.7).
      if (admitStream && !admitStream(stream.stream)) return void resetStream(stream.stream, http2.constants.NGHTTP2_REFUSED_STREAM);
      // Kept until it closes, so the drain bound can tell the streams it cuts from those clients left.
      openHttp2Responses.add(stream);
      stream.once('close', () => openHttp2Responses.delete(stream));
      return handle(request, response);
    }
    // Node's parser stops at the end of a request it takes for an upgrade (`Upgrade` with `Connection: upgrade`)
    // and, with no 'upgrade' listener, drops whatever else that read held, then parses the next read as a new
    // request: a request pipelined behind it would vanish, and a front proxy's next request could be cut apart,
    // its body run as requests of its own. The gateway upgrades nothing (RFC 9110 7.8 lets it ignore `Upgrade`):
    // it answers the request and closes the connection after it.
    if (request.headers.upgrade !== undefined) closeAfterAnswer(response);
    lastResponse.set(request.socket, response);
    const handleIfOpen = () => {
      // The answer before this one ended the connection (Node parsed this request from bytes already read).
      if (!response.socket?.writable) return void response.destroy();
      // Bytes after it did not parse while the answer before it was already under way (too late for its
      // `Connection: close`): the connection ends once that answer is out, and nothing queued behind runs. Node
      // hands the connection on as that answer finishes, before its end: a POST queued there was forwarded, on a
      // connection already condemned, where one queued behind an answer not yet begun never ran.
      if (closingAfterAnswer.has(request.socket)) return;
      // Queued before the drain began, behind an answer under way: the drain marked that answer and the requests
      // arriving after it, not this one, which went out keep-alive on a connection about to be half-closed.
      if (draining()) closeAfterAnswer(response);
      handle(request, response);
    };
    if (response.socket) return handleIfOpen();
    // Node keeps parsing while the queued requests wait (they write nothing yet, so nothing pauses the socket):
    // a client pipelining thousands of requests at once would have them all held in memory. nginx and Envoy
    // read the next request only after the current answer; past a bound, the connection is closed.
    const socket = request.socket;
    const queued = (waiting.get(socket) ?? 0) + 1;
    if (queued > MAX_PIPELINED_REQUESTS) {
      if (!socket.destroyed) logger.warn('closed a connection that pipelined too many requests', { queued, limit: MAX_PIPELINED_REQUESTS, remote_address: socket.remoteAddress });
      socket.destroy();
      return;
    }
    waiting.set(socket, queued);
    response.once('socket', () => {
      waiting.set(socket, waiting.get(socket)! - 1);
      handleIfOpen();
    });
  };
}

/** Requests one connection may have waiting behind the one being answered (browsers pipeline none). */
const MAX_PIPELINED_REQUESTS = 32;

/** A request id for an answer the server writes itself: 32 hex, as the pipeline mints them, so it can be a trace id. */
function newRequestId(): string {
  return randomUUID().replaceAll('-', '');
}

/** An answer a server writes itself as problem+json (RFC 9457), outside any pipeline. */
export interface ServerProblem {
  status: number;
  title: string;
  code: string;
  detail: string;
  headers?: Record<string, string>;
}

/** Headers every answer a server writes itself carries (runServer: `Strict-Transport-Security` on a TLS listener). */
type OwnHeaders = Readonly<Record<string, string>>;

/** `problem` carrying the server's own headers too. */
function withOwnHeaders(problem: ServerProblem, ownHeaders: OwnHeaders): ServerProblem {
  return { ...problem, headers: { ...ownHeaders, ...problem.headers } };
}

/**
 * A problem+json answer the server writes itself, outside the pipeline: with the request id the pipeline chose
 * (`chosen`), else a new one, and `Connection: close`.
 */
function problemAnswer(chosen: unknown, problem: ServerProblem): { body: string; headers: Record<string, string | number>; requestId: string } {
  const requestId = typeof chosen === 'string' ? chosen : newRequestId();
  const { status, title, code, detail } = problem;
  const body = JSON.stringify({ type: `urn:koa-gateway:problem:${code}`, title, status, detail, code, requestId });
  // No-store as every problem answer of the gateway's (src/middleware/errors.ts): its body names one request.
  return { body, requestId, headers: { 'Content-Type': 'application/problem+json', 'Content-Length': Buffer.byteLength(body), 'X-Request-Id': requestId, 'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff', ...problem.headers, Connection: 'close' } };
}

/** How long a client may leave an answer's bytes untaken before the rate below applies, ms (`server.sendTimeoutMs`). */
export const DEFAULT_SEND_TIMEOUT_MS = 10_000;

/** Least average rate, bytes/s, at which a client must take an answer's bytes once the send timeout has passed. */
const MIN_SEND_BYTES_PER_SECOND = 240;

/**
 * The rule both protocols hold a client that is sent an answer to (HTTP/1 connections here, HTTP/2 streams in
 * src/tls.ts), judged window by window of `sendMs`: an average since the bytes began to wait would let a client
 * that read fast for a while then stop for (bytes read / 240) seconds. Progress is counted on what the client is
 * sent, as a request body's is (Kestrel's MinResponseDataRate): a client reading a large answer steadily is never
 * cut, one taking a byte now and then is.
 *
 * `bursts`, for HTTP/2 streams: flow control moves a steady reader's bytes in bursts (a client opens its stream's
 * window again only once it has read half of it: 32 KB every 8 s for a reader at 4 KB/s with the default 64 KB),
 * so a window may see none. The bytes the key took before its first window count in it, and what a window took
 * beyond its due carries into the next, up to one window's due: a burst covers two windows, no more.
 */
export function createSendWindows<Key extends object>(sendMs: number, options: { bursts?: boolean } = {}) {
  const windows = new WeakMap<Key, { since: number; taken: number; credit: number }>();
  const due = (elapsedMs: number) => (MIN_SEND_BYTES_PER_SECOND * elapsedMs) / 1000;
  return {
    /** How often a sweep looks, ms. */
    sweepMs: Math.min(1000, Math.max(50, sendMs / 4)),
    /**
     * What the least rate moves in half a window, bytes: progress counted in pieces no larger than this (HTTP/2
     * streams, src/http2-sent-bytes.ts) shows a reader at twice the least rate moving in every window.
     */
    halfWindowBytes: due(sendMs / 2),
    /**
     * Whether `key`, having taken `taken` bytes by `now` (its connection's over HTTP/1, its own over HTTP/2), took
     * less than the least rate over a whole window; the first look starts its window, a window passed starts the next.
     */
    tooSlow(key: Key, now: number, taken: number): boolean {
      const window = windows.get(key);
      if (window === undefined) {
        windows.set(key, { since: now, taken: options.bursts ? 0 : taken, credit: 0 });
        return false;
      }
      const elapsedMs = now - window.since;
      if (elapsedMs < sendMs) return false;
      const surplus = taken - window.taken + window.credit - due(elapsedMs);
      if (surplus < 0) return true;
      windows.set(key, { since: now, taken, credit: options.bursts ? Math.min(surplus, due(sendMs)) : 0 });
      return false;
    },
    /** Nothing of `key`'s is waiting any more: its next wait starts a new window. */
    forget(key: Key): void {
      windows.delete(key);
    },
  };
}

/**
 * Bytes of this connection the kernel has taken: what Node handed to libuv less what libuv still queues (Node's
 * own progress test for socket timeouts during a large write, net.Socket `_onTimeout`). A TLS socket's own queue
 * counts records not yet encrypted; the TCP socket under it says what went out.
 */
function bytesTakenByKernel(socket: Socket): number {
  type Internals = Socket & { _parent?: Socket | null; _bytesDispatched?: number; _handle?: { writeQueueSize?: number } | null };
  const transport = ((socket as Internals)._parent ?? socket) as Internals;
  return (transport._bytesDispatched ?? 0) - (transport._handle?.writeQueueSize ?? 0);
}

/** The server's open connections (a TLS server's once their handshake is done), kept as they open and close. */
function openSockets(server: Server): Set<Socket> {
  const sockets = new Set<Socket>();
  server.on(server instanceof tls.Server ? 'secureConnection' : 'connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  return sockets;
}

/**
 * HTTP/1's slow-read bound, as src/tls.ts keeps HTTP/2's: a client that stops reading holds its answer's last
 * bytes, the connection and its slot under `maxConnections` for ever. Node's timers do not see it: the
 * request is whole, the keep-alive timer starts only once the answer is out, and the proxy's deadline no
 * longer applies to an answer the service has finished. A connection that has had bytes waiting for the
 * client (Node's queue, past the kernel's buffers) for `sendMs`, while the kernel took less than
 * MIN_SEND_BYTES_PER_SECOND on average over that window (each `sendMs` a new one), is closed, and its answer
 * recorded `client_read_timeout`. One sweep per listener; HTTP/2 connections have their own, per stream.
 */
function watchStalledSends(sockets: Set<Socket>, sendMs: number): NodeJS.Timeout {
  const windows = createSendWindows<Socket>(sendMs);
  const sweep = setInterval(() => {
    const now = performance.now();
    for (const socket of sockets) {
      if ((socket as tls.TLSSocket).alpnProtocol === 'h2') continue;
      if (socket.writableLength === 0 || socket.destroyed) {
        windows.forget(socket);
        continue;
      }
      if (!windows.tooSlow(socket, now, bytesTakenByKernel(socket))) continue;
      const response = inFlightResponse(socket);
      if (response && !response.writableFinished) markServerAnswer(response, 'client_read_timeout');
      socket.destroy();
    }
  }, windows.sweepMs);
  sweep.unref();
  return sweep;
}

/** Why the server itself answered or cut a response the pipeline was handling (its error code). */
const serverAnswers = new WeakMap<object, string>();

export function markServerAnswer(response: object, code: string): void {
  serverAnswers.set(response, code);
}

/** HTTP/2 streams the gateway itself reset: a client's rapid-reset budget (src/tls.ts) counts only the client's. */
const gatewayResets = new WeakSet<http2.Http2Stream>();

/** Resets an HTTP/2 stream on the gateway's decision (a cut answer, a timeout), marked as such. */
export function resetStream(stream: http2.Http2Stream, code: number): void {
  gatewayResets.add(stream);
  if (!stream.destroyed && !stream.closed) stream.close(code);
}

/**
 * How long an answer's END_STREAM may take to go out before its stream is reset regardless (a client that reads
 * nothing holds it in the socket), ms.
 */
const END_STREAM_WAIT_MS = 1000;

/**
 * Ends an HTTP/2 stream whose answer is out while its client is still sending the request (an early 413, 401 or
 * 408): RST_STREAM NO_ERROR, as RFC 9113 8.1 has a server do once its response is complete. Left open, the
 * stream held its slot until the request timeout, which then recorded the finished answer as `request_timeout`.
 * Call it once the answer finished (its stream's 'finish'); the reset is the gateway's, no sign of abuse (a client
 * that resets the stream itself meanwhile, as Go's does on an answer ended before its upload, is not counted).
 * 'finish' is not the answer's end on the wire: Node's compatibility response ends it by empty trailers, sent an
 * immediate later, and nghttp2 sends a RST_STREAM queued meanwhile ahead of them, so the client got an answer
 * without END_STREAM, cut by the reset (h2spec http2/8.1/1 showed it; Go's client fails reading such an answer:
 * "stream error: NO_ERROR; received from peer"). The reset waits until nghttp2 has sent the END_STREAM
 * (`state.localClose`), at most END_STREAM_WAIT_MS. What the request still holds unread is dropped at once, as
 * Node's HTTP/1 server drops an unread body: Node closes a stream reset with NO_ERROR only once its request was
 * read to the end, and a 413 refused by its declared length left it unread, the stream open for good.
 */
export function stopRequestOnceAnswered(response: Http2ServerResponse): void {
  const { stream } = response;
  if (stream.destroyed || stream.closed || stream.state.remoteClose || gatewayResets.has(stream)) return;
  response.req.resume();
  gatewayResets.add(stream);
  const started = performance.now();
  let waitMs = 1;
  const resetOnceEnded = () => {
    if (stream.destroyed || stream.closed) return;
    if (!stream.state.localClose && performance.now() - started < END_STREAM_WAIT_MS) {
      setTimeout(resetOnceEnded, waitMs).unref();
      waitMs = Math.min(2 * waitMs, 100);
      return;
    }
    resetStream(stream, http2.constants.NGHTTP2_NO_ERROR);
  };
  setImmediate(resetOnceEnded);
}

/** Whether the gateway, not the client, reset this stream. */
export function resetByGateway(stream: http2.Http2Stream): boolean {
  return gatewayResets.has(stream);
}

/**
 * The error code of a response the server answered or cut outside the pipeline (`request_timeout` for a body
 * that did not arrive in time, `shutting_down` at the drain bound), or undefined. The pipeline's access log,
 * metrics and span read it when the response closes (src/response-closed.ts recordedStatus), so those answers
 * are recorded with their cause, not as a client that left or an unexplained status.
 */
export function serverAnswerCode(response: object): string | undefined {
  return serverAnswers.get(response);
}

/** A request not received whole within `server.requestTimeoutMs`, over either protocol. */
const REQUEST_TIMEOUT: ServerProblem = { status: 408, title: 'Request timeout', code: 'request_timeout', detail: 'The request did not arrive in time.' };
/** The 501's detail for a method the gateway does not implement, over either protocol (src/middleware/http2-requests.ts). */
export const METHOD_NOT_IMPLEMENTED_DETAIL = 'The gateway does not implement the request method.';
const METHOD_NOT_IMPLEMENTED: ServerProblem = { status: 501, title: 'Method not implemented', code: 'method_not_implemented', detail: METHOD_NOT_IMPLEMENTED_DETAIL };

/** A request line as RFC 9112 3 frames it, its method any token: what Node's parser refused was the method alone. */
const REQUEST_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\xff]+ HTTP\/1\.[01]\r?\n/;

/**
 * A well-formed request line whose method Node's parser does not know (`FOO`, `get`, WebDAV's `SEARCH` aside):
 * 501, as RFC 9110 9.1 and 15.6.2 say of a method a server does not recognise, where a 400 told the client its
 * request was malformed. Bytes that are no request line (a TLS ClientHello on the plain port) stay a 400.
 */
function unknownMethod(error: NodeJS.ErrnoException & { rawPacket?: Buffer }): boolean {
  return error.code === 'HPE_INVALID_METHOD' && error.rawPacket !== undefined && REQUEST_LINE.test(error.rawPacket.toString('latin1', 0, 8192));
}

/**
 * The method of a request line `unknownMethod` took for whole, for its span (`http.request.method_original`), log
 * line and metrics (as `_OTHER`); none when longer than MAX_RECORDED_METHOD_LENGTH.
 */
function requestLineMethod(error: NodeJS.ErrnoException & { rawPacket?: Buffer }): string | undefined {
  const space = error.rawPacket?.indexOf(0x20) ?? -1;
  return space > 0 && space <= MAX_RECORDED_METHOD_LENGTH ? error.rawPacket!.toString('latin1', 0, space) : undefined;
}

const VERSION_NOT_SUPPORTED: ServerProblem = { status: 505, title: 'HTTP version not supported', code: 'http_version_not_supported', detail: 'The gateway speaks HTTP/1.0, HTTP/1.1 and HTTP/2 (by ALPN over TLS).' };

/** A request line whose version is well formed (RFC 9112 2.3: `HTTP/` DIGIT `.` DIGIT), whatever its number. */
const VERSIONED_REQUEST_LINE = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\xff]+ HTTP\/\d\.\d\r?\n/;

/**
 * A well-formed request line naming a version Node's parser does not take (`HTTP/1.2`, `HTTP/3.0`; it takes 0.9 and
 * 2.0, which src/middleware/request-head.ts answers): 505, as for those two and as RFC 9110 15.6.6 says, where a 400
 * told the client its request was malformed. A version that is not `HTTP/d.d` (`HTTP/1.10`) stays a 400.
 */
function unsupportedVersion(error: NodeJS.ErrnoException & { rawPacket?: Buffer }): boolean {
  return error.code === 'HPE_INVALID_VERSION' && error.rawPacket !== undefined && VERSIONED_REQUEST_LINE.test(error.rawPacket.toString('latin1', 0, 8192));
}

/** A response of either protocol the pipeline is handling. */
type PipelineResponse = http.ServerResponse | Http2ServerResponse;

/**
 * Answers a request the pipeline has not answered yet with a server problem (problemAnswer), under the request id
 * the pipeline gave it (or `chosen`); returns that id.
 */
function answerProblem(response: PipelineResponse, problem: ServerProblem, chosen: unknown = response.getHeader(HEADER.requestId)): string {
  markServerAnswer(response, problem.code);
  const { body, headers, requestId } = problemAnswer(chosen, problem);
  if (response instanceof http.ServerResponse) {
    response.writeHead(problem.status, problem.title, headers);
    response.end(body);
    return requestId;
  }
  // HTTP/2 has no reason phrase and no connection-specific header: the stream ends, not the connection. A
  // client still sending its request is told to stop without error once the answer is whole (RFC 9113 8.1).
  delete headers.Connection;
  response.writeHead(problem.status, headers);
  // A HEAD's stream takes no DATA (Node ends its writable side as the request arrives): writing the body reset it.
  const whenAnswered = () => stopRequestOnceAnswered(response);
  if (response.req.method === 'HEAD') response.end(whenAnswered);
  else response.end(body, whenAnswered);
  return requestId;
}

/**
 * HTTP/2's request timeout (src/tls.ts; Node's HTTP/2 server has none): a stream whose client has not sent its
 * whole request within `server.requestTimeoutMs` is answered 408 with its request id and the headers the
 * pipeline set on it (the gateway's HSTS among them: its first middleware), as HTTP/1.1's is, or,
 * when its answer already started, cut (CANCEL); recorded as `request_timeout` either way, not as a client
 * that left.
 */
export function answerHttp2RequestTimeout(response: Http2ServerResponse): void {
  if (!response.headersSent) return void answerProblem(response, REQUEST_TIMEOUT);
  markServerAnswer(response, REQUEST_TIMEOUT.code);
  resetStream(response.stream, http2.constants.NGHTTP2_CANCEL);
}

/** How long close() waits, past the drain bound, for cut requests to settle before flushing telemetry, ms (twice at most). */
export const SETTLE_MS = 1000;

/** How long close() lets requests in flight finish before what has not started its answer gets 503, ms (`drainTimeoutMs`). */
export const DEFAULT_DRAIN_TIMEOUT_MS = 10_000;

/** Resolves once `condition` holds (checked every 10 ms), or after `boundMs` regardless. */
async function until(condition: () => boolean, boundMs: number): Promise<void> {
  const deadline = Date.now() + boundMs;
  while (!condition() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 10));
}

/** How long a connection the drain half-closed may stay open for its client to close its side, ms. */
const CLOSE_LINGER_MS = 1000;

/**
 * Half-closes an HTTP/1 connection that carries no request (a kept-alive one between requests): FIN, then its
 * client's FIN or CLOSE_LINGER_MS, whichever comes first, ends it. HTTP/2 connections are closed by GOAWAY.
 */
function closeIdleGently(socket: Socket): void {
  if ((socket as tls.TLSSocket).alpnProtocol === 'h2' || socket.destroyed || socket.writableEnded || inFlightResponse(socket)) return;
  socket.end();
  const linger = setTimeout(() => socket.destroy(), CLOSE_LINGER_MS);
  linger.unref();
  socket.once('close', () => clearTimeout(linger));
}

/** Marks an HTTP/1 answer not yet begun to close its connection once written. */
function closeAfterAnswer(response: unknown): void {
  if (response instanceof http.ServerResponse && !response.headersSent) response.setHeader('Connection', 'close');
}

/**
 * Whether an answer the drain bound wrote is out, so the connections can be closed under it. An HTTP/2 one once its
 * stream closed: a HEAD's stream reports itself finished as its HEADERS are only queued (Node ended its writable
 * side as the request arrived), and closing the connections at once dropped the 503 unsent.
 */
function answerLeft(response: PipelineResponse): boolean {
  if (response.destroyed) return true;
  if (response instanceof http.ServerResponse) return response.writableFinished;
  return response.stream.closed || response.stream.destroyed;
}

/** The answer to a request still waiting at the drain bound: 503 problem+json with its request id, and the connection closes. */
function answerShuttingDown(response: PipelineResponse, ownHeaders: OwnHeaders): PipelineResponse {
  answerProblem(response, withOwnHeaders({ status: 503, title: 'Shutting down', code: 'shutting_down', detail: 'The gateway stopped before this request was answered; retry it.', headers: { 'Retry-After': '1' } }, ownHeaders));
  return response;
}

/** `http://host:port`, an IPv6 host in brackets. */
function urlOf(host: string, port: number, scheme = 'http'): string {
  return `${scheme}://${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/**
 * Whether a request's `Host` names an IP address (v4, or v6 in brackets) or localhost, with or without a port,
 * or is absent: what operators' tools, probes and `kubectl port-forward` send to an internal listener. A page
 * on attacker.example whose name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name instead, and
 * must not read instance addresses and failures as same-origin content.
 */
export function isLocalHost(host: string | undefined): boolean {
  if (host === undefined || host === '') return true;
  const name = host.toLowerCase().replace(/:\d*$/, '');
  if (name.startsWith('[') && name.endsWith(']')) return isIP(name.slice(1, -1)) === 6;
  return isIP(name) === 4 || name === 'localhost' || name.endsWith('.localhost');
}

/** One DNS label: a compose service or a cluster-local short Service name (`gateway`, `koa-gateway-metrics`). */
const SINGLE_LABEL = /^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$/;

/**
 * isLocalHost, or a single-label name: the Host Prometheus sends when it scrapes a container by its service name
 * (`gateway:9464` in compose), which the metrics listener refused, so the shipped stack never scraped it. A
 * rebinding page needs a name its author's DNS answers for, and such a name has a dot; a single label resolves
 * only through the scraper's own search domains. The admin listener, which can reload, keeps isLocalHost.
 */
export function isScrapeHost(host: string | undefined): boolean {
  return isLocalHost(host) || SINGLE_LABEL.test(host!.toLowerCase().replace(/:\d*$/, ''));
}

/** A request target as the pipeline logs it: an absolute-form one as the origin-form target it stands for (its authority is the Host's). */
function loggedTarget(target: string): string {
  return target.charCodeAt(0) === 47 /* / */ ? target : (absoluteFormTarget(target)?.originForm ?? target);
}

/** `http://authority/path?query` (RFC 9112 3.2.2), split into the authority and the origin-form rest. */
const ABSOLUTE_FORM = /^https?:\/\/([^/?#]*)([^#]*)$/i;

/**
 * An http or https absolute-form target as the authority that takes the place of `Host` and the origin-form
 * target it stands for (`/` when it names no path); undefined for any other target, and for one with userinfo.
 */
export function absoluteFormTarget(target: string): { authority: string; originForm: string } | undefined {
  // A `#` is in neither part, so no target holding one is this form; refused before the expression, which tried
  // every split of a long authority before failing on it (16 KiB: 0.2-0.35 s of the event loop).
  if (target.includes('#')) return undefined;
  const absolute = ABSOLUTE_FORM.exec(target);
  if (!absolute || absolute[1]!.includes('@')) return undefined;
  const rest = absolute[2] || '/';
  return { authority: absolute[1]!, originForm: rest.charCodeAt(0) === 47 ? rest : `/${rest}` };
}

/**
 * How many field lines named `lowerCaseName` a request head carries. Node keeps the first of several Host,
 * Authorization (and other single-value fields) in `headers` and drops the rest, where another hop may read the last.
 */
export function fieldLineCount(rawHeaders: readonly string[], lowerCaseName: string): number {
  let lines = 0;
  const { length } = lowerCaseName;
  for (let i = 0; i < rawHeaders.length; i += 2) if (rawHeaders[i]!.length === length && rawHeaders[i]!.toLowerCase() === lowerCaseName) lines++;
  return lines;
}

/** Which hosts a listener for operators answers (DNS rebinding: isLocalHost, isScrapeHost). */
export interface ServedHosts {
  /** Whether a request naming this authority (its Host, or its absolute-form target's) is answered. */
  allows(host: string | undefined): boolean;
  /** Those hosts in words, for the 421 (`an IP address or localhost`). */
  description: string;
}

/** The connections a listener holds: refused ones are closed at accept. */
export interface ConnectionBounds {
  /** Client connections open at once. Unbounded when absent. */
  maxConnections?: number;
  /**
   * Decides at accept (the TCP connection, before any TLS handshake) whether a connection may stay: one it refuses
   * is closed at once, as one over `maxConnections` is. Every connection stays when absent.
   */
  admitConnection?: (socket: Socket) => boolean;
}

/** Applies `bounds` to a server about to listen. */
function boundConnections(server: Server, bounds: ConnectionBounds): void {
  const { maxConnections, admitConnection } = bounds;
  if (maxConnections !== undefined) {
    server.maxConnections = maxConnections;
    // In a cluster worker, a connection over the cap would go back to the primary, which offers it to another
    // worker and otherwise keeps it open: closed at accept instead, as with one process.
    (server as Server & { dropMaxConnection?: boolean }).dropMaxConnection = true;
  }
  if (admitConnection) server.on('connection', (socket: Socket) => void (admitConnection(socket) || socket.destroy()));
}

export interface InternalListenerOptions {
  port: number;
  host: string;
  /** Bounds on its connections (a public one's: the HTTPS redirect listener). INTERNAL_MAX_CONNECTIONS when absent. */
  connections?: ConnectionBounds;
  /** Client timeouts, ms, as on the public listener (`server.*`). */
  timeouts: { headersMs: number; requestMs: number; keepAliveMs: number };
  /**
   * The hosts it answers; others get 421. With it, the request head is also held to one authority before the
   * handler sees it (servingHosts). Without it (the HTTPS redirect listener, which judges its own), neither.
   */
  servedHosts?: ServedHosts;
  /** The slow-read bound (watchStalledSends), ms: `server.sendTimeoutMs`. Default DEFAULT_INTERNAL_SEND_TIMEOUT_MS. */
  sendTimeoutMs?: number;
}

/** An internal listener's slow-read bound when none is given, ms (`server.sendTimeoutMs`'s default). */
const DEFAULT_INTERNAL_SEND_TIMEOUT_MS = 10_000;

export interface InternalListener {
  /** The bound address (useful with port 0). */
  url: string;
  close(): Promise<void>;
}

/**
 * Connections an operators' listener (admin, metrics) holds at once; further ones are closed at accept. Their
 * clients are a scraper or two and a person: unbounded, the metrics listener (on 0.0.0.0 in the shipped compose
 * file and pods) held as many silent connections as anyone who reached it opened, ~10 KiB and a descriptor each.
 */
export const INTERNAL_MAX_CONNECTIONS = 256;

/**
 * A listener beside the public one, for operators and scrapers (admin, metrics). Plain, not runServer: that
 * one owns the process's signals and exit, and two of them would race; the public listener's shutdown closes
 * these. Their requests are short reads, so nothing is drained.
 */
export async function listenInternal(handler: http.RequestListener, options: InternalListenerOptions): Promise<InternalListener> {
  const { headersMs, requestMs, keepAliveMs } = options.timeouts;
  const served = options.servedHosts === undefined ? handler : servingHosts(options.servedHosts, handler);
  // Checked every second, as the public listener's: at Node's default (30 s) a connection that sent nothing, or a
  // head a few bytes at a time, was held up to 30 s past its bound, the redirect listener's 10,000 slots (which the
  // load balancer's probes need) a quarter as costly to fill.
  // `requireHostHeader: false`: an HTTP/1.1 request without Host got Node's bare 400; servingHosts (or the redirect
  // listener's own check) answers it as every other refusal here.
  const server = http.createServer({ headersTimeout: headersMs, requestTimeout: requestMs, keepAliveTimeout: keepAliveMs, connectionsCheckingInterval: Math.min(1000, headersMs), requireHostHeader: false }, served);
  // No handler here reads a body: `Expect: 100-continue` gets the answer, never Node's 100 first. It invited the
  // upload, and over the HTTP redirect listener a client sent its login body in cleartext before reading the 308.
  // Any other expectation is answered by the handler as well (not Node's bare 417).
  server.on('checkContinue', (request: http.IncomingMessage, response: http.ServerResponse) => server.emit('request', request, response));
  server.on('checkExpectation', (request: http.IncomingMessage, response: http.ServerResponse) => server.emit('request', request, response));
  server.on('clientError', answerInternalClientError);
  server.on('connect', (_request: http.IncomingMessage, socket: Socket) => {
    // Node takes its own error listener off a CONNECT's socket: a reset during the answer was an uncaught 'error'.
    socket.on('error', () => socket.destroy());
    endWithProblem(socket, CONNECT_REFUSED);
  });
  boundConnections(server, options.connections ?? { maxConnections: INTERNAL_MAX_CONNECTIONS });
  // A client that stops reading an answer (a redirect's pipelined 308s, a scrape larger than the kernel's buffers)
  // held its connection and slot for good: Node's timers end with the request, the keep-alive one starts after the
  // answer. The public listener's sweep, here too.
  const sockets = openSockets(server);
  const stalledSends = watchStalledSends(sockets, options.sendTimeoutMs ?? DEFAULT_INTERNAL_SEND_TIMEOUT_MS);
  await new Promise<void>((resolve, reject) => {
    // Only a failure to listen stops the sweep: a later server error (an accept that hit EMFILE) must not.
    const failedToListen = (error: Error) => {
      clearInterval(stalledSends);
      reject(error);
    };
    server.once('error', failedToListen);
    server.listen(options.port, options.host, () => {
      server.off('error', failedToListen);
      resolve();
    });
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  return {
    url: urlOf(options.host, port),
    close: () =>
      new Promise<void>((resolve) => {
        clearInterval(stalledSends);
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}

/**
 * The request head an internal listener (admin, metrics) holds before its handler runs, here once so the
 * listeners cannot drift apart (the admin listener had neither of the first two when the metrics one got them):
 * - more than one Host field line: 400 (RFC 9112 3.2). Node keeps the first of several, so the host check would
 *   judge one host while a proxy in front that keeps the last had routed by another;
 * - an absolute-form target (`GET http://127.0.0.1:9901/ready`, as a tool sends it through a forward proxy) is
 *   served (RFC 9112 3.2.2: a server MUST accept it) as its origin form, its authority taking the place of Host;
 * - that one authority must be one `hosts` allows, else 421: a DNS-rebinding page's name in the target is
 *   refused whatever Host says;
 * - any other target but a path (userinfo in the authority, another scheme): 400, as on the public listener. Koa's
 *   URL parser took `http://x@attacker.example/admin/config` for the path `/admin/config`, judged by Host alone.
 * Answered as problem+json with a request id, as every answer the gateway writes itself.
 */
function servingHosts(hosts: ServedHosts, handler: http.RequestListener): http.RequestListener {
  const misdirected: ServerProblem = { status: 421, title: 'Misdirected request', code: 'host_not_allowed', detail: `This listener answers requests for ${hosts.description} only.` };
  return function serveOwnHostsOnly(req, res) {
    const hostLines = fieldLineCount(req.rawHeaders, 'host');
    if (hostLines > 1) return answerInternal(res, TWO_HOST_LINES);
    if (hostLines === 0 && req.httpVersion === '1.1') return answerInternal(res, NO_HOST_LINE);
    const target = req.url ?? '';
    if (target.charCodeAt(0) !== 47 /* / */ && target !== '*') {
      const absolute = absoluteFormTarget(target);
      if (!absolute) return answerInternal(res, NOT_A_TARGET);
      req.headers.host = absolute.authority;
      req.url = absolute.originForm;
    }
    if (!hosts.allows(req.headers.host)) return answerInternal(res, misdirected);
    handler(req, res);
  };
}

const NOT_A_TARGET: ServerProblem = { status: 400, title: 'Bad request', code: 'bad_request', detail: 'The request target must be a path (or an http or https URL without userinfo).' };

const NO_HOST_LINE: ServerProblem = { status: 400, title: 'Bad request', code: 'bad_request', detail: 'An HTTP/1.1 request must carry a Host header field.' };

const TWO_HOST_LINES: ServerProblem = { status: 400, title: 'Bad request', code: 'bad_request', detail: 'The request carries more than one Host field line.' };

/** Answers on an internal listener (admin, metrics) as every answer the gateway writes itself: problem+json with a request id. */
export function answerInternal(response: http.ServerResponse, problem: ServerProblem): void {
  const { body, headers } = problemAnswer(undefined, problem);
  response.writeHead(problem.status, problem.title, headers).end(body);
}

/** Listens, answers parser errors as JSON, and shuts down gracefully on SIGTERM / SIGINT. */
export async function runServer(options: RunServerOptions): Promise<RunningServer> {
  const { app, logger } = options;
  const { timeouts } = options;
  const openHttp2Responses = new Set<Http2ServerResponse>();
  const listener = inTurn(app.callback(), logger, openHttp2Responses, () => closing !== undefined, options.admitStream);
  const server: PublicServer = options.createServer
    ? options.createServer(listener)
    : http.createServer(
        // Node checks these timeouts every connectionsCheckingInterval (30 s by default); slow clients are
        // cut close to the configured bound only if it checks often.
        timeouts ? { headersTimeout: timeouts.headersMs, requestTimeout: timeouts.requestMs, keepAliveTimeout: timeouts.keepAliveMs, connectionsCheckingInterval: Math.min(1000, timeouts.headersMs) } : {},
        listener,
      );
  if (options.appChecksHost) (server as PublicServer & { requireHostHeader: boolean }).requireHostHeader = false;
  const recordRejected = rejectionRecorder(options.tracer ?? trace.getTracer(options.name), logger, options.onRejected, options.keepsInboundRequestId ?? false);
  const ownHeaders: OwnHeaders = options.strictTransportSecurity !== undefined && server instanceof tls.Server ? { 'Strict-Transport-Security': options.strictTransportSecurity } : {};
  server.on('clientError', (error: NodeJS.ErrnoException, socket: Socket) => answerClientError(error, socket, recordRejected, ownHeaders));
  // The HTTP/2 server emits 'connect' too, for a CONNECT stream, with its compatibility response (not a socket to
  // write HTTP/1.1 on: that was a `:status 200` carrying the text of a 405).
  server.on('connect', (request: http.IncomingMessage, socketOrResponse: Socket | Http2ServerResponse) => refuseConnect(request, socketOrResponse, recordRejected, ownHeaders));
  boundConnections(server, { maxConnections: options.maxConnections, admitConnection: options.admitConnection });
  // Per connection (not per request): what the drain bound still finds in flight is answered or cut at close.
  const sockets = openSockets(server);
  const stalledSends = options.sendTimeoutMs === undefined ? undefined : watchStalledSends(sockets, options.sendTimeoutMs);
  // `Expect: 100-continue` goes to the pipeline like any request; whatever reads the body sends 100 Continue
  // once the checks before it passed (src/middleware/request-head.ts continueIfExpected). Node would send it
  // at once, inviting an upload the gateway then refuses.
  server.on('checkContinue', (request: http.IncomingMessage, response: http.ServerResponse) => server.emit('request', request, response));
  // Other expectations reach the pipeline too: answered there (417) with a request id, a log line and a span,
  // instead of Node's bare 417. (An HTTP/1 CONNECT is answered outside it, refuseConnect: a response built on the
  // socket Node had let go of crashed on a reset.)
  server.on('checkExpectation', (request: http.IncomingMessage, response: http.ServerResponse) => server.emit('request', request, response));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port, options.host, () => resolve());
  });
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : options.port;
  const url = urlOf(options.host, port, server instanceof tls.Server ? 'https' : 'http');

  let closing: Promise<void> | undefined;
  const close = () =>
    (closing ??= (async () => {
      options.onDrain?.();
      // Idle keep-alive connections are half-closed, not destroyed: Node's server.close() (through
      // closeIdleConnections) destroys them, and a request the client wrote just as the drain began was then in the
      // kernel unread, so the close sent RST instead of FIN: the client saw its request reset, unanswered, with no
      // sign whether it was processed. Sent FIN first, it sees a clean close it may retry on a new connection (RFC
      // 9112 9.6, as nginx's lingering close); a request that still arrives is never processed (inTurn destroys a
      // request on a connection no longer writable), and the connection is destroyed once its client closes its
      // side, or after CLOSE_LINGER_MS.
      const closeIdle = () => {
        for (const socket of sockets) closeIdleGently(socket);
      };
      server.closeIdleConnections = closeIdle;
      const drained = new Promise<void>((resolve) => server.close(() => resolve()));
      // Answers from now on say `Connection: close`, so a client does not send its next request on a connection
      // that is about to be closed (it would race the idle sweep below). HTTP/2 has GOAWAY.
      for (const socket of sockets) closeAfterAnswer(inFlightResponse(socket));
      server.on('request', (_request: unknown, response: unknown) => closeAfterAnswer(response));
      // Keep-alive connections become idle as their last response ends; close each as soon as it does.
      closeIdle();
      const idleSweep = setInterval(closeIdle, 100);
      const drainTimeoutMs = options.drainTimeoutMs ?? DEFAULT_DRAIN_TIMEOUT_MS;
      let timer: NodeJS.Timeout | undefined;
      const timedOut = new Promise<void>((resolve) => (timer = setTimeout(resolve, drainTimeoutMs)));
      const inTime = await Promise.race([drained.then(() => true), timedOut.then(() => false)]);
      clearTimeout(timer);
      clearInterval(idleSweep);
      if (!inTime) {
        // What has not started its answer by the bound gets one (503, its request id, Retry-After), not a cut
        // connection; what is streaming is cut. Then the pipeline's close handlers run (spans end, access lines
        // are written: 503, not a client that left) before onShutdown flushes them.
        const answered: PipelineResponse[] = [];
        for (const response of [...[...sockets].map(inFlightResponse), ...openHttp2Responses]) {
          if (response && !response.headersSent) answered.push(answerShuttingDown(response, ownHeaders));
        }
        await until(() => answered.every(answerLeft), SETTLE_MS);
        // Those still streaming are cut by the gateway, not left by their clients.
        const streaming = [...[...sockets].map(inFlightResponse), ...openHttp2Responses];
        for (const response of streaming) if (response && !response.writableFinished && !serverAnswers.has(response)) markServerAnswer(response, 'shutting_down');
      }
      server.closeAllConnections();
      clearInterval(stalledSends);
      await until(() => sockets.size === 0, SETTLE_MS);
      // Close events are handled on the next turns: let the pipeline end its spans before they are flushed.
      await new Promise<void>((resolve) => setImmediate(() => setImmediate(resolve)));
      try {
        await options.onShutdown?.();
      } finally {
        // Only now: until the exit, a repeated signal must find onSignal (below), not Node's default.
        process.off('SIGTERM', onSignal);
        process.off('SIGINT', onSignal);
      }
    })());

  /** Whether a signal asked to stop: the first one closes (or joins a close under way) and exits after it. */
  let signalled = false;
  function onSignal(signal: NodeJS.Signals) {
    // A second SIGTERM or SIGINT during the drain (a supervisor repeating itself, Ctrl-C reaching a process group
    // twice) found no listener and took Node's default: the process died at once, its requests in flight cut
    // without their 503, their spans never flushed, exit 143 or 130. The drain is bounded already; SIGKILL stops
    // at once. A cluster primary ignores repeats alike (src/workers.ts stop).
    if (signalled) return void logger.warn(`${options.name} already stopping; ${signal} ignored`, { signal });
    signalled = true;
    logger.info(`${options.name} stopping`, { signal });
    close().then(
      () => process.exit(0),
      (error: unknown) => {
        logger.error(`${options.name} failed to stop cleanly`, { error: String(error) });
        process.exit(1);
      },
    );
  }
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  return { server, url, close };
}
