import type { Context as KoaContext } from 'koa';
import { bodyStalledError, bodyTooLarge, bodyTooSlowError, watchBodyRate, type BodyRate } from './body-rate';
import type { GatewayError } from './errors';

/**
 * Bytes of request bodies still being read ahead, per process, at most: past it a body is no longer read ahead, and
 * goes on to its service as it arrives (as every body did before). Counted as bytes arrive, never as a body declares
 * them: a budget taken by declarations would be spent by clients that declare much and send little, and every body
 * would then stream again; this one is spent only by bytes a client really sent, and only while it is still sending.
 * A body given back whole waits for its connection among the instance's `maxPendingRequests`: held until the whole
 * exchange ended, 1,040 ordinary 64 KiB uploads to a service answering in 6 s spent the budget, and the next slow
 * client streamed again.
 */
export const REQUEST_BUFFERS_TOTAL_BYTES = 64 * 1024 * 1024;
let requestBufferBytesInUse = 0;

/** What was read of a body before its service was asked (bufferRequestBody). */
export type BufferedBody =
  /** The whole body: it goes to the service as this one buffer. */
  | { complete: true; bytes: number; body: Buffer }
  /** Its start, in order: the rest follows these chunks as it arrives. */
  | { complete: false; bytes: number; chunks: Buffer[] };

export interface RequestBuffering {
  /** Bytes of one body read before its service is asked (`proxy.requestBufferBytes`); 0 = none. */
  limitBytes: number;
  /** Largest body, bytes (`proxy.maxBodyBytes`): 413 beyond. */
  maxBodyBytes: number;
  bodyRate: BodyRate;
  /** No byte for this long, ms: 408 (the route's `timeoutMs`, as the idle timeout of a streamed body). */
  idleTimeoutMs: number;
  /** performance.now() at which the route's exchange deadline comes: 408 if the body is still arriving. */
  deadlineAt: number;
  /** The 408's words when the deadline came first. */
  deadlineError: () => GatewayError;
}

/**
 * Reads the client's body before any connection to its service is taken (nginx's `proxy_request_buffering`, in
 * memory): up to `limitBytes`, the whole of it when it is no longer. A streamed body held a service's connection for
 * as long as its client took to send it: uploads just above the minimum rate from three addresses took every one of
 * `maxSockets` until the deadline, and every other request of the service got 503. Read ahead, a slow body holds
 * only its own bytes here; the connection is taken once they are all in, or once the client has sent `limitBytes`
 * (a larger body then streams on, as before).
 *
 * Settles with what was read, or `undefined` if the client left first (nothing is forwarded); rejects with the
 * 408/413 a streamed body gets for the same fault. A body that finds the process's budget (REQUEST_BUFFERS_TOTAL_BYTES)
 * spent is given back as not complete at once, to stream.
 */
export function bufferRequestBody(ctx: KoaContext, buffering: RequestBuffering): Promise<BufferedBody | undefined> {
  const { req, res } = ctx;
  const chunks: Buffer[] = [];
  let bytes = 0;
  /** Bytes this body holds of the process's budget, while it is read. */
  let held = 0;
  return new Promise((resolve, reject) => {
    let stopRateWatch = () => {};
    const timers: NodeJS.Timeout[] = [];
    const stop = () => {
      req.off('data', onData);
      req.off('end', onEnd);
      req.off('aborted', onClientGone);
      req.off('error', onClientGone);
      res.off('close', onClientGone);
      timers.forEach(clearTimeout);
      stopRateWatch();
      requestBufferBytesInUse -= held;
      held = 0;
    };
    const settle = (complete: boolean) => {
      stop();
      resolve(complete ? { complete, bytes, body: Buffer.concat(chunks, bytes) } : { complete, bytes, chunks });
    };
    const fail = (error: GatewayError) => {
      stop();
      reject(error);
    };
    function onData(chunk: Buffer) {
      bytes += chunk.length;
      idle.refresh();
      if (bytes > buffering.maxBodyBytes) return fail(bodyTooLarge(buffering.maxBodyBytes));
      chunks.push(chunk);
      held += chunk.length;
      requestBufferBytesInUse += chunk.length;
      if (bytes > buffering.limitBytes || requestBufferBytesInUse > REQUEST_BUFFERS_TOTAL_BYTES) {
        // The rest streams: paused here, the proxy's pipe resumes it.
        req.pause();
        settle(false);
      }
    }
    function onEnd() {
      // Node ends an HTTP/2 request its client reset ('aborted' first): that body is not whole.
      if (req.aborted) return onClientGone();
      settle(true);
    }
    function onClientGone() {
      stop();
      resolve(undefined);
    }
    const idle = setTimeout(() => fail(bodyStalledError(buffering.idleTimeoutMs)), buffering.idleTimeoutMs);
    timers.push(idle, setTimeout(() => fail(buffering.deadlineError()), Math.max(0, buffering.deadlineAt - performance.now())));
    stopRateWatch = watchBodyRate(req, buffering.bodyRate, () => bytes, () => fail(bodyTooSlowError(buffering.bodyRate)));
    req.on('data', onData);
    req.once('end', onEnd);
    req.once('aborted', onClientGone);
    req.once('error', onClientGone);
    res.once('close', onClientGone);
  });
}
