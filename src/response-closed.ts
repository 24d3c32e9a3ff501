import http2 from 'node:http2';
import type Koa from 'koa';
import type { Context } from 'koa';
import { resetStream, serverAnswerCode } from '../otel/lifecycle';
import { ERROR_TYPE } from '../otel/wire-names';

/** nginx's "client closed request", the access log's status for a client that left before its response ended. */
const CLIENT_CLOSED_REQUEST = 499;

/**
 * Runs `callback` once the response is really over (finished, or aborted by the client), after the callbacks
 * registered before it. Tracing, the access log and the metrics each wait for that moment on every request;
 * sharing one 'close' listener per response instead of adding one each keeps that per-request cost flat.
 */
export function onResponseClosed(ctx: Context, callback: () => void): void {
  const callbacks = ctx.state.onResponseClosed;
  if (callbacks !== undefined) {
    callbacks.push(callback);
    return;
  }
  const registered = [callback];
  ctx.state.onResponseClosed = registered;
  const runRegistered = () => {
    for (const each of registered) each();
  };
  // The pipeline starts a turn after its request arrived (src/request-arrival.ts): a client that left meanwhile
  // closed its response before anything here listened, and its 'close' does not come again. The callbacks then
  // run once those registered in this same step of the pipeline are in.
  if (hasClosed(ctx)) process.nextTick(runRegistered);
  else ctx.res.once('close', runRegistered);
}

/** Whether the response's 'close' came already (or, on HTTP/2, its stream closed, its 'close' due). */
function hasClosed(ctx: Context): boolean {
  const response: unknown = ctx.res;
  if (response instanceof http2.Http2ServerResponse) return response.stream.closed;
  // OutgoingMessage's `closed` (set as 'close' is emitted); @types/node does not declare it.
  return (ctx.res as { closed?: boolean }).closed === true;
}

/**
 * Whether the response is already over before its answer: the client reset its HTTP/2 stream or closed its
 * connection (or the server cut it). Its 'close' has come, or is due, so a 'close' listener added now may never
 * run: work that relies on one to stop (an upstream exchange) checks this first. An HTTP/2 reset that arrives
 * with its stream's HEADERS, as rapid-reset clients send it, is taken before the pipeline runs a single step.
 */
export function responseClosed(ctx: Context): boolean {
  const response: unknown = ctx.res;
  if (response instanceof http2.Http2ServerResponse) return response.stream.closed || response.stream.destroyed;
  return ctx.res.destroyed || ctx.req.socket.destroyed;
}

/** What a client's own connection fails with: a reset or closed socket, an HTTP/2 session or stream its client broke. */
const CLIENT_CONNECTION_ERRORS: ReadonlySet<string> = new Set(['ECONNRESET', 'EPIPE', 'ERR_HTTP2_ERROR', 'ERR_HTTP2_STREAM_ERROR', 'ERR_HTTP2_SESSION_ERROR']);

/**
 * Whether `error` (what Koa's error channel got) is the client's connection failing under its answer: a TCP reset
 * mid-answer (`write ECONNRESET`), a stream its client reset with an error code, an HTTP/2 session its client broke
 * (nghttp2's GOAWAY PROTOCOL_ERROR: every answer still held on it fails so). Not the gateway's error: the access
 * line records the request (its span and metrics too), and one such client made one error-level line per stream.
 */
export function clientConnectionFailed(ctx: Context, error: NodeJS.ErrnoException): boolean {
  return error.code !== undefined && CLIENT_CONNECTION_ERRORS.has(error.code) && responseClosed(ctx);
}

/**
 * Whether an answer can no longer be given: its head is out already, or the client is gone. Koa's own
 * `ctx.writable` read an HTTP/2 stream's writable side, which Node ends as a HEAD request arrives (its answer
 * carries no DATA), so every HEAD the gateway refused itself (a 404, a 401, a 429) was taken for a client gone and
 * its stream reset with INTERNAL_ERROR, the status never sent (nghttp, `curl -I --http2`: an error). An HTTP/2
 * response's state is asked here (the gateway's app.response has the same rule: installHttp2AwareWritable).
 */
export function cannotAnswer(ctx: Context): boolean {
  if (ctx.res.headersSent) return true;
  const response: unknown = ctx.res;
  if (response instanceof http2.Http2ServerResponse) return responseClosed(ctx) || response.writableEnded;
  return !ctx.writable;
}

/**
 * Whether the client went away before its response ended. A response the server answered or cut itself (a
 * service that died mid-body, a deadline, a body that did not arrive in time, the drain bound at shutdown) did not
 * see its client leave: `ctx.state.errorCode`, set before the cut or here from serverAnswerCode, says why.
 */
export function clientLeft(ctx: Context): boolean {
  // Answered or cut by the server outside the pipeline: that is what the client got, whatever the pipeline threw after it.
  const serverCode = serverAnswerCode(ctx.res);
  if (serverCode !== undefined) ctx.state.errorCode = serverCode;
  // writableEnded too: an HTTP/2 stream the client reset reports itself finished (Node's compatibility API).
  return !(ctx.res.writableFinished && ctx.res.writableEnded) && ctx.state.errorCode === undefined;
}

/**
 * The status the access log records once the response closed: the one sent, or 499 when the client went away
 * before the end (as nginx logs it; no status anyone sent, so spans and metrics use sentStatus instead).
 */
export function recordedStatus(ctx: Context): number {
  return clientLeft(ctx) ? CLIENT_CLOSED_REQUEST : ctx.res.statusCode;
}

/**
 * `http.response.status_code` as the HTTP semantic conventions record it once the response closed: the status
 * sent, or undefined when none was (the client left first), "if and only if one was sent".
 */
export function sentStatus(ctx: Context): number | undefined {
  return ctx.res.headersSent ? ctx.res.statusCode : undefined;
}

/**
 * Whether a response that closed with `status` failed after it started, though its status may be 200: cut
 * midway (a service that died mid-body, a deadline), or a server stream that ended with an `{"error": ...}` line
 * (src/middleware/grpc-transcode.ts). `errorCode` (what the request recorded when its response closed) says why.
 */
export function failedAfterStarting(ctx: Context, status: number, errorCode: string | undefined): boolean {
  return errorCode !== undefined && (!ctx.res.writableFinished || status < 400);
}

/**
 * `error.type` of a request whose response closed, as the HTTP semantic conventions have a server record it, on
 * its SERVER span and in `http_server_request_duration_seconds` alike: a 5xx is the server's error (its status);
 * a response that failed after it started, or before any status went out, its error code; a client that left
 * before the end `client_closed` (a request "cancelled" before the response was sent fully is an error). A 4xx is
 * the client's error, not the server's: none ("SHOULD NOT" be set when the request completed successfully).
 */
export function serverErrorType(ctx: Context, status: number | undefined, errorCode: string | undefined, left: boolean): string | undefined {
  if (status !== undefined && status >= 500) return String(status);
  if (errorCode !== undefined && (status === undefined || failedAfterStarting(ctx, status, errorCode))) return errorCode;
  return left ? ERROR_TYPE.clientClosed : undefined;
}

/** Whether a response's framing tells a client its body ended short: chunked without the last chunk, or a length. */
function framingShowsCut(res: Context['res']): boolean {
  if ((res as { chunkedEncoding?: boolean }).chunkedEncoding === true) return true;
  const length = Number(res.getHeader('content-length'));
  return Number.isInteger(length) && length > 0;
}

/**
 * Ends a response that already started and cannot be finished (a service that died mid-body, a deadline): the
 * client must see it broken, not complete. HTTP/1.1 closes the connection. On HTTP/2, destroying the compatibility
 * response ends the stream as if the body were whole, a truncated 200 the client takes for the answer; the
 * stream is reset (INTERNAL_ERROR) instead.
 */
export function cutResponse(ctx: Context): void {
  const response: unknown = ctx.res;
  if (response instanceof http2.Http2ServerResponse) {
    resetStream(response.stream, http2.constants.NGHTTP2_INTERNAL_ERROR);
    return;
  }
  // Node holds a written head until the first body byte: a service that sent its head and died before any body
  // left the client with no answer at all, which on a kept-alive connection reads as one closed while idle (a POST
  // the service took, answered with nothing). The head goes out first, so the client sees the status and a body
  // its framing shows short (as nginx does): only where the framing can show it (chunked, or a length). An HTTP/1.0
  // client's body without a length ends where the connection does: its head alone read as a whole empty answer.
  // A no-op once the head is out; none is written when none was set.
  if (ctx.res.headersSent && !ctx.res.destroyed && framingShowsCut(ctx.res)) ctx.res.flushHeaders();
  ctx.res.destroy();
}

/**
 * Koa's last resort, `ctx.onerror` (what handleErrors could not answer: a failure of Koa's own write of the answer),
 * made unable to throw. It answers by removing every header and writing a plain 500; when that write throws as well
 * (Node's HTTP/2 response keeps a `date` through removeHeader, so a value Node refused is refused again), the throw
 * left Koa's request promise rejected, which ended the process and every request in flight. The response is cut
 * instead (cutResponse), after Koa reported the first failure to `app.on('error')`.
 */
export function installUncaughtAnswerCut(context: Koa['context']): void {
  const answerWithKoa = context.onerror;
  context.onerror = function answerOrCut(this: Context, error: Error) {
    try {
      answerWithKoa.call(this, error);
    } catch (unwritable) {
      this.app.emit('error', unwritable, this);
      // The gateway's failure, recorded as handleErrors records one before its cut: with no code, the access line,
      // the span and the metric took the unfinished answer for a client that left (499, client_closed).
      this.state.errorCode ??= 'internal';
      cutResponse(this);
    }
  };
}
