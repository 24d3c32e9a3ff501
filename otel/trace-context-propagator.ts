import {
  createContextKey,
  trace,
  type Context,
  type Span,
  type SpanContext,
  type TextMapGetter,
  type TextMapPropagator,
  type TextMapSetter,
} from '@opentelemetry/api';
import { CompositePropagator, isTracingSuppressed } from '@opentelemetry/core';
import { BaggagePropagator } from './baggage-propagator';
import { isValidSpanContext } from './gateway-tracer';
import { formatTraceparent, parseTraceparent, parseTracestate, TRACE_FLAG_RANDOM, TRACE_FLAG_SAMPLED, trimOws, W3CTraceState } from './trace-context';
import { HEADER } from './wire-names';

/**
 * Whether a trace's id is random (the Level 2 `random` flag), kept in the context beside the span. It cannot
 * live on the spans: the SDK's Tracer (sdk-trace 3.0) gives every span it starts the flags of its sampling
 * decision alone (SAMPLED or NONE), so bit 0x02 of a parent never reaches a child. Keyed by trace id, so a
 * context that later holds another trace's span does not lend it the flag.
 */
const RANDOM_TRACE_ID = createContextKey('koa-gateway: W3C random trace id flag');

interface RandomTraceId {
  traceId: string;
  random: boolean;
}

/** Records in `context` whether trace `traceId` has a random id; every later inject for that trace sends the flag so. */
export function setRandomTraceIdFlag(context: Context, traceId: string, random: boolean): Context {
  return context.setValue(RANDOM_TRACE_ID, { traceId, random } satisfies RandomTraceId);
}

/**
 * The flags to send for `spanContext` (in `traceparent` or `traceresponse`): its sampled bit, and the random bit
 * recorded for its trace in `context`; else its own bit 0x02 (a remote parent keeps what was received); else, for
 * a trace started in this process, `localTraceIdsAreRandom`.
 */
export function outgoingTraceFlags(context: Context, spanContext: SpanContext, localTraceIdsAreRandom = false): number {
  const recorded = context.getValue(RANDOM_TRACE_ID) as RandomTraceId | undefined;
  const random =
    recorded?.traceId === spanContext.traceId ? recorded.random : (spanContext.traceFlags & TRACE_FLAG_RANDOM) !== 0 || (!spanContext.isRemote && localTraceIdsAreRandom);
  return (spanContext.traceFlags & TRACE_FLAG_SAMPLED) | (random ? TRACE_FLAG_RANDOM : 0);
}

/**
 * The `traceresponse` (Trace Context Level 2) naming `span` as the callee's operation, its flags as
 * outgoingTraceFlags gives them; undefined when the span does not record and its context is invalid or the
 * caller's own (no tracer provider: the API's no-op tracer hands back the remote parent, and the caller would
 * read its own span as its callee).
 */
export function traceresponseOf(span: Span, context: Context, localTraceIdsAreRandom = false): string | undefined {
  const spanContext = span.spanContext();
  if (!span.isRecording() && (spanContext.isRemote === true || !isValidSpanContext(spanContext))) return undefined;
  return formatTraceparent({ traceId: spanContext.traceId, parentId: spanContext.spanId, traceFlags: outgoingTraceFlags(context, spanContext, localTraceIdsAreRandom) });
}

export interface TraceContextPropagatorOptions {
  /**
   * Traces this process starts have random ids (true where the SDK's id generator is random), so their outgoing
   * `traceparent` carries the random flag. Default false: no claim is made about ids of unknown origin.
   */
  localTraceIdsAreRandom?: boolean;
}

/** A valid `tracestate` as it came, several header fields as one list (RFC 9110 5.3), without the blanks around it. */
function receivedTracestate(header: string | string[]): string {
  return trimOws(typeof header === 'string' ? header : header.join(','));
}

/**
 * W3C Trace Context Level 2 for OpenTelemetry, in place of @opentelemetry/core's W3CTraceContextPropagator
 * (3.0), which skips invalid `tracestate` members one by one instead of dropping the list, still knows only the
 * old multi-tenant key grammar, keeps 32 of 33 members, and loses the random flag at the first child span.
 * Extract: the strict parser of trace-context.ts. Inject: the span's ids, its sampled bit, the trace's random
 * bit, and the `tracestate` it inherited.
 */
export class TraceContextPropagator implements TextMapPropagator {
  private readonly localTraceIdsAreRandom: boolean;

  constructor(options: TraceContextPropagatorOptions = {}) {
    this.localTraceIdsAreRandom = options.localTraceIdsAreRandom ?? false;
  }

  inject(context: Context, carrier: unknown, setter: TextMapSetter): void {
    const spanContext = trace.getSpanContext(context);
    if (!spanContext || isTracingSuppressed(context) || !isValidSpanContext(spanContext)) return;
    const traceFlags = outgoingTraceFlags(context, spanContext, this.localTraceIdsAreRandom);
    setter.set(carrier, HEADER.traceparent, formatTraceparent({ traceId: spanContext.traceId, parentId: spanContext.spanId, traceFlags }));
    // A remote span context is the caller's own, sent on as it came (no span of ours between): W3C Trace Context
    // then forbids modifying `tracestate` ("If the value of the traceparent field wasn't changed before
    // propagation, tracestate MUST NOT be modified as well"), so neither the 512-character cut nor dropping a repeat.
    const received = spanContext.isRemote && spanContext.traceState instanceof W3CTraceState ? spanContext.traceState.received : undefined;
    const traceState = received ?? spanContext.traceState?.serialize();
    if (traceState) setter.set(carrier, HEADER.tracestate, traceState);
  }

  extract(context: Context, carrier: unknown, getter: TextMapGetter): Context {
    const parent = parseTraceparent(getter.get(carrier, HEADER.traceparent));
    if (!parent) return context;
    // Read only once traceparent is valid (the spec forbids it otherwise); an invalid list is dropped whole.
    const header = getter.get(carrier, HEADER.tracestate);
    const members = parseTracestate(header);
    const spanContext: SpanContext = {
      traceId: parent.traceId,
      spanId: parent.parentId,
      traceFlags: parent.traceFlags,
      isRemote: true,
      ...(members && members.length > 0 ? { traceState: new W3CTraceState(members, receivedTracestate(header!)) } : {}),
    };
    return setRandomTraceIdFlag(trace.setSpanContext(context, spanContext), parent.traceId, (parent.traceFlags & TRACE_FLAG_RANDOM) !== 0);
  }

  fields(): string[] {
    return [HEADER.traceparent, HEADER.tracestate];
  }
}

/**
 * The propagators every process registers (otel/sdk.ts): Trace Context Level 2 as above, and W3C Baggage
 * (baggage-propagator.ts), which carries the request id (`request.id`) beside `traceparent`. The SDK's id
 * generator is random in every process except for the trace ids the gateway derives from a client's request id,
 * and the gateway records those as not random (src/middleware/tracing.ts), so traces started here claim the
 * random flag.
 */
export function createTextMapPropagator(): TextMapPropagator {
  return new CompositePropagator({ propagators: [new TraceContextPropagator({ localTraceIdsAreRandom: true }), new BaggagePropagator()] });
}
