import { randomUUID } from 'node:crypto';
import { context, propagation, trace, type Baggage, type BaggageEntry } from '@opentelemetry/api';
import type { Middleware } from 'koa';
import { OneEntryBaggage, OrderedBaggage } from '../../otel/baggage-propagator';
import { isValidSpanContext } from '../../otel/gateway-tracer';
import { isWellFormedRequestId } from '../../otel/trace-ids';
import { ATTR, BAGGAGE_REQUEST_ID, HEADER } from '../../otel/wire-names';

export { isWellFormedRequestId, MAX_REQUEST_ID_LENGTH } from '../../otel/trace-ids';

/**
 * The id a service answers and logs a request under: the one it received when the request is believed (signed by
 * the gateway) and the id is well formed, none when none came, else one of its own. A peer's forged or malformed id
 * (10 KB, quoted, on an unsigned /health) is never echoed or logged.
 */
export function serviceRequestId(inbound: string | undefined, believed: boolean): string | undefined {
  return believed && (inbound === undefined || isWellFormedRequestId(inbound)) ? inbound : mintRequestId();
}

/** 32 lower-case hex characters: the shape of a W3C trace id, so a minted id can double as one. */
export function mintRequestId(): string {
  return randomUUID().replaceAll('-', '');
}

export interface RequestIdOptions {
  /** Makes new ids; default `mintRequestId`. */
  generate?: () => string;
}

/**
 * Decides the request id: a well-formed inbound `X-Request-Id` is kept; otherwise it is the trace id of the
 * request's span when the request began that trace (so it opens the trace in Jaeger), or a fresh id when tracing is
 * off or the trace continues a trusted caller's (whose trace id all of that caller's requests share). The id is echoed on
 * every response (errors included), forwarded upstream (the proxy writes `X-Request-Id` from `ctx.state`) and as W3C baggage `request.id`,
 * and set on the gateway's span.
 */
export function createRequestId(options: RequestIdOptions = {}): Middleware {
  const generate = options.generate ?? mintRequestId;
  return async function requestId(ctx, next) {
    const inboundId = ctx.req.headers[HEADER.requestId];
    // The trace context createTracing built (not yet entered), else whatever is active (tests, tracing off).
    const active = ctx.state.traceContext ?? context.active();
    const span = trace.getSpan(active);
    const traceId = span?.spanContext().traceId;
    // The trace id only of a trace this request began: a continued trace's is shared by every request of it.
    const ownTraceId = traceId && ctx.state.traceContinued !== true && isValidSpanContext(span!.spanContext()) ? traceId : undefined;
    const id = typeof inboundId === 'string' && isWellFormedRequestId(inboundId) ? inboundId : (ownTraceId ?? generate());
    ctx.state.requestId = id;
    // Straight to Node: Koa's ctx.set builds arrays and closures per call, for a header set on every request.
    ctx.res.setHeader(HEADER.requestId, id);
    span?.setAttribute(ATTR.requestId, id);
    const inbound = propagation.getBaggage(active);
    // First of all entries: the W3C propagator sends at most 180 entries and 8192 bytes, keeping the first, so a
    // trusted client's full baggage would otherwise push request.id out of what the services receive.
    // Its own class when it is the only entry: no Map per request, and its header formatted once for every call made.
    const baggage = inbound === undefined ? new OneEntryBaggage(BAGGAGE_REQUEST_ID, { value: id }) : requestIdFirst(inbound, id);
    await context.with(propagation.setBaggage(active, baggage), next);
  };
}

/** `request.id` = `id`, then the client's entries in their order (its own `request.id` dropped). */
function requestIdFirst(inbound: Baggage, id: string): Baggage {
  // A Map, in order: an object (the API's createBaggage) put a client's `0`, `1`, ... keys before request.id.
  const entries = new Map<string, BaggageEntry>([[BAGGAGE_REQUEST_ID, { value: id }]]);
  for (const [key, entry] of inbound.getAllEntries()) if (key !== BAGGAGE_REQUEST_ID) entries.set(key, entry);
  return new OrderedBaggage(entries);
}
