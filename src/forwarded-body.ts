import type { IncomingMessage } from 'node:http';
import type { Http2ServerRequest } from 'node:http2';
import { PassThrough, type Readable } from 'node:stream';

/**
 * The client's request body as the proxy streams it to a service, ending only where the client ended it; `readAhead`
 * is its start, already read.
 *
 * Through a stream of its own: undici destroys a body it gives up on, and destroying the request would take the
 * client's socket (and the 413 or 502 the gateway still owes it) down with it.
 *
 * An HTTP/2 client that resets its stream mid-upload (RST_STREAM, whatever the code) gets its request ended
 * normally by Node's compatibility API: 'aborted', then 'end'. Piped on as it was, a body without Content-Length
 * then went on with its last chunk unless the response's 'close' (which aborts the exchange) came first, and with
 * NO_ERROR it comes only once the gateway's side of the stream is done too: during an answer its client held back,
 * the service took the truncated POST for a whole one, every time. A body its client broke off is destroyed
 * instead (`onBrokenOff` called first): undici resets the connection, and the service sees its request aborted.
 * Node's HTTP/1 server never ends such a body ('aborted' and 'error', no 'end'); it is cut at once too, rather
 * than when the response closes.
 */
export function forwardedBody(request: IncomingMessage | Http2ServerRequest, onBrokenOff: () => void, readAhead: readonly Buffer[] = []): Readable {
  const body = new PassThrough();
  // What the gateway read before it took a connection (src/request-buffer.ts) goes first; the rest as it arrives.
  for (const chunk of readAhead) body.write(chunk);
  // undici listens for the body's 'error' only once a connection takes its request: destroyed while still queued in a
  // pool (every connection busy), it had no listener, and the error ended the process. The destruction is what undici
  // acts on (its own listener, or the destroyed body when the queued request is taken); the error is only its reason.
  body.on('error', ignoreBrokenOff);
  const breakOff = () => {
    if (body.destroyed) return;
    onBrokenOff();
    body.destroy(new Error('the client broke off its request body'));
  };
  request.once('aborted', breakOff);
  request.pipe(body, { end: false });
  const ended = () => (request.aborted ? breakOff() : body.end());
  // A body read ahead up to its last chunk (the chunk past the read-ahead limit was its last) ended as that chunk was
  // taken, a tick before the proxy got here: waiting for its 'end', the service waited for the rest until it timed out.
  if (request.readableEnded) ended();
  else request.once('end', ended);
  // So could its client's leaving (HTTP/1 ends no such body).
  if (request.aborted) breakOff();
  return body;
}

/** The client's breaking off was recorded (onBrokenOff) before the body was destroyed with it. */
function ignoreBrokenOff(): void {}
