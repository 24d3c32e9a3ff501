import type { IncomingMessage } from 'node:http';
import type { Http2ServerRequest } from 'node:http2';
import { GatewayError } from './errors';

/** A body's least average rate, enforced once its grace period has passed (config `server`). */
export interface BodyRate {
  /** Bytes/s; 0 = not enforced. */
  minBytesPerSecond: number;
  graceMs: number;
}

/**
 * Calls `tooSlow` once if, after the grace period, fewer than `minBytesPerSecond` x elapsed seconds of the body
 * have arrived; checked again every second until the body is complete or `stop` (the return value) is called.
 * A body its reader paused (back-pressure: the upstream is not reading) is not the client's fault and is not
 * judged. `received` counts the body's bytes so far.
 */
export function watchBodyRate(request: IncomingMessage | Http2ServerRequest, rate: BodyRate, received: () => number, tooSlow: () => void): () => void {
  if (rate.minBytesPerSecond <= 0) return () => {};
  const started = performance.now();
  let timer = setTimeout(function check() {
    if (request.complete) return;
    const seconds = (performance.now() - started) / 1000;
    if (!request.isPaused() && received() < rate.minBytesPerSecond * seconds) {
      tooSlow();
      return;
    }
    timer = setTimeout(check, 1000);
  }, rate.graceMs);
  return () => clearTimeout(timer);
}

/** The 408 a body slower than the rate gets; the connection closes after it (the rest of the body is not read). */
export function bodyTooSlowError(rate: BodyRate): GatewayError {
  return new GatewayError('request_timeout', `The request body arrived slower than ${rate.minBytesPerSecond} bytes/s.`, { headers: { Connection: 'close' } });
}

/** The 413 of a body over `limit` bytes, declared or streamed. */
export function bodyTooLarge(limit: number): GatewayError {
  // `Connection: close` stops Node from reading (and discarding) the rest of a huge upload.
  return new GatewayError('payload_too_large', `The request body is larger than ${limit} bytes.`, { headers: { Connection: 'close' } });
}

/** The 408 a body gets when nothing of it arrived for the route's idle timeout, the client still owing the rest. */
export function bodyStalledError(timeoutMs: number): GatewayError {
  return new GatewayError('request_timeout', `No byte of the request body arrived for ${timeoutMs} ms.`, { headers: { Connection: 'close' } });
}

/**
 * Reads a body with `read` (a parser that consumes the request), failing with 408 if it arrives slower than the
 * rate. Over HTTP/1 bytes are counted on the connection, not with a 'data' listener on the request: one would set
 * the body flowing before a parser that starts listening after an `await` does, and it would lose the first
 * chunks. Over HTTP/2 they are the stream's own, counted on the stream (the connection's counted every stream's
 * bytes and frames, and a stream dripping its body beside a few PINGs a second was never too slow). Node's
 * compatibility request starts listening to its stream on its first read only: a counter listening before it set
 * the stream flowing into the counter alone, and login read an empty body (400) whenever the body arrived before
 * its parser's first read. So the request is asked to read first (`read(0)`: it starts listening and buffers what
 * arrives for the parser, consuming nothing), and the counter listens beside it.
 */
export async function readWithinRate<T>(request: IncomingMessage | Http2ServerRequest, rate: BodyRate, read: () => Promise<T>): Promise<T> {
  const stream = (request as Partial<Http2ServerRequest>).stream;
  let received: () => number;
  let stopCounting = () => {};
  if (stream) {
    let bytes = 0;
    const count = (chunk: Buffer) => void (bytes += chunk.length);
    request.read(0);
    stream.on('data', count);
    received = () => bytes;
    stopCounting = () => void stream.off('data', count);
  } else {
    const socket = request.socket;
    const start = socket.bytesRead;
    received = () => socket.bytesRead - start;
  }
  let fail!: (error: GatewayError) => void;
  const slow = new Promise<never>((_, reject) => (fail = reject));
  const stop = watchBodyRate(request, rate, received, () => fail(bodyTooSlowError(rate)));
  const reading = read();
  // Once the 408 is sent the connection closes and the parser fails too: nobody waits for it any more.
  reading.catch(() => {});
  try {
    return await Promise.race([reading, slow]);
  } finally {
    stop();
    stopCounting();
  }
}
