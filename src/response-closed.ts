import http2 from 'node:http2';
import type { Context } from 'koa';
import { resetStream, serverAnswerCode } from '../otel/lifecycle';

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
  ctx.res.once('close', () => {
    for (const each of registered) each();
  });
}

/**
 * The status a response is recorded with once it closed: the one sent, or 499 when the client went away before
 * the end (as nginx logs it). A response the gateway cut (a service that died mid-body, a deadline) keeps the
 * status it was sent with, and `ctx.state.errorCode`, set before the cut, says why.
 */
export function recordedStatus(ctx: Context): number {
  // Answered or cut by the server outside the pipeline (a body that did not arrive in time, the drain bound at
  // shutdown): that is what the client got, whatever the pipeline threw after it.
  const serverCode = serverAnswerCode(ctx.res);
  if (serverCode !== undefined) ctx.state.errorCode = serverCode;
  // writableEnded too: an HTTP/2 stream the client reset reports itself finished (Node's compatibility API).
  return (ctx.res.writableFinished && ctx.res.writableEnded) || ctx.state.errorCode !== undefined ? ctx.res.statusCode : 499;
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
  ctx.res.destroy();
}
