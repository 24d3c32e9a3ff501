import type { IncomingMessage, RequestListener, ServerResponse } from 'node:http';

/** When the server handed the gateway a request (a performance.now() reading), kept on the request itself. */
const ARRIVED_AT = Symbol('koa-gateway.arrivedAt');

type ArrivedRequest = IncomingMessage & { [ARRIVED_AT]?: number };

/**
 * The public listener's request handler, run once the event loop's turn that parsed the request has handled the
 * rest of its I/O (setImmediate), instead of inside the parser's callback. The answers that came back from the
 * services in that turn then go out before the new requests' pipelines run, and the pipelines run one after
 * another. Measured with `bench/paired.mjs` (wrk at 50 connections, 12 alternating slices of 3 s, each order once,
 * 2026-12-05): CPU per request 0.885 and 0.92 of the handler run at once, traced with metrics; 0.87 and 0.93
 * with telemetry off (bench/RESULTS.md, thirty-second session).
 *
 * The request's arrival is taken here, so its SERVER span, its access line and its metrics time it from when it
 * was parsed, its wait for the turn included (arrivalOf). A client that leaves during that wait has closed its
 * response before the pipeline sees it: src/response-closed.ts (onResponseClosed) records it all the same.
 */
export function handleAfterTurn(handle: RequestListener): RequestListener {
  return (request: ArrivedRequest, response: ServerResponse) => {
    request[ARRIVED_AT] = performance.now();
    setImmediate(runUnlessAnswered, handle, request, response);
  };
}

/**
 * A request the server answered while it waited for its turn (a bad chunk in the read that brought its head: 400,
 * recorded by otel/lifecycle.ts as the parser's refusals are) is not run: its pipeline would set headers on an
 * answer already sent.
 */
function runUnlessAnswered(handle: RequestListener, request: IncomingMessage, response: ServerResponse): void {
  if (!response.headersSent) handle(request, response);
}

/** When `request` arrived (handleAfterTurn), as a performance.now() reading; now, for one handed over directly. */
export function arrivalOf(request: IncomingMessage): number {
  return (request as ArrivedRequest)[ARRIVED_AT] ?? performance.now();
}
