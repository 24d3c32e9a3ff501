import { trace, TraceFlags, type Attributes, type Context, type Link, type SpanKind } from '@opentelemetry/api';
import { RandomIdGenerator, SamplingDecision, TraceIdRatioBasedSampler, type IdGenerator, type Sampler, type SamplingResult } from '@opentelemetry/sdk-trace';
import { TRACE_FLAG_RANDOM } from './trace-context';
import { outgoingTraceFlags } from './trace-context-propagator';
import { ATTR } from './wire-names';

/**
 * Lets the gateway choose the trace id of the root span it is about to start, so the id a client sees in
 * `X-Request-Id` is the trace id it pastes into Jaeger. The choice is handed over synchronously
 * (`withTraceId` around `tracer.startSpan`), so concurrent requests cannot see each other's id.
 */
let requestedTraceId: string | undefined;

const TRACE_ID = /^[0-9a-f]{32}$/;
const INVALID_TRACE_ID = '0'.repeat(32);

/** The SDK's id generator for every process; random ids unless the gateway asked for one. */
export class RequestedTraceIdGenerator implements IdGenerator {
  private readonly random = new RandomIdGenerator();

  generateTraceId(): string {
    const requested = requestedTraceId;
    requestedTraceId = undefined;
    return requested ?? this.random.generateTraceId();
  }

  generateSpanId(): string {
    return this.random.generateSpanId();
  }
}

/** Runs `start` (which must start a root span synchronously) so that span gets `traceId`. */
export function withTraceId<T>(traceId: string | undefined, start: () => T): T {
  requestedTraceId = traceId;
  try {
    return start();
  } finally {
    requestedTraceId = undefined;
  }
}

/**
 * The trace id a request id stands for: a 32-hex id is one already, a UUID is one without its dashes.
 * Anything else (or the invalid all-zero id) stands for none.
 */
export function traceIdFromRequestId(requestId: string): string | undefined {
  const candidate = (requestId.length === 36 && /^[0-9a-fA-F-]+$/.test(requestId) ? requestId.replaceAll('-', '') : requestId).toLowerCase();
  return TRACE_ID.test(candidate) && candidate !== INVALID_TRACE_ID ? candidate : undefined;
}

/** The value of `ATTR.traceIdSource` that marks a root span whose trace id the client chose. */
export const TRACE_ID_FROM_REQUEST_ID = 'request_id';

/**
 * Wraps the configured sampler so a client cannot steer sampling through its `X-Request-Id`. Ratio samplers
 * decide from the trace id (TraceIdRatioBasedSampler hashes it), so an id the client chose would let it pick
 * ids that are always, or never, sampled. For a root span marked `ATTR.traceIdSource` = `request_id`, the
 * inner sampler is asked with a fresh random trace id instead: a new coin flip at the configured ratio. The
 * span keeps the client-derived id. Every other span (new random traces, children, remote parents) is decided
 * by the inner sampler unchanged.
 */
export class ClientTraceIdSampler implements Sampler {
  private readonly random = new RandomIdGenerator();

  constructor(private readonly inner: Sampler) {}

  shouldSample(context: Context, traceId: string, spanName: string, spanKind: SpanKind, attributes: Attributes, links: Link[]): SamplingResult {
    // A root span, as the SDK's Tracer decides it: no valid parent, so its trace id was generated, not inherited.
    const parent = trace.getSpanContext(context);
    const root = parent === undefined || !trace.isSpanContextValid(parent);
    const clientChosen = root && attributes[ATTR.traceIdSource] === TRACE_ID_FROM_REQUEST_ID;
    return this.inner.shouldSample(context, clientChosen ? this.random.generateTraceId() : traceId, spanName, spanKind, attributes, links);
  }

  toString(): string {
    return `ClientTraceId{${this.inner.toString()}}`;
  }
}

/**
 * `OTEL_TRACES_SAMPLER=traceidratio`: TraceIdRatioBasedSampler, which decides every span (children too, unlike the
 * parent-based samplers) from its trace id, but only where that id is random. W3C Trace Context Level 2 gives the
 * `random` flag for this: consumers may sample "based on these bytes" when it is set. A span of a trace whose id is
 * not known to be random (the gateway's children of a root whose id a client chose through `X-Request-Id`; a
 * service's spans under such a trace, which the gateway sends without the flag; a caller that never sets it) takes
 * its parent's decision instead: decided from the id, a client picking an id the ratio always keeps had every
 * CLIENT span recorded and `sampled` sent to the services, though its root span was a fresh coin flip
 * (ClientTraceIdSampler). A root span is decided from its id as before (the outer ClientTraceIdSampler hands a
 * client-chosen one a random id).
 */
export class RandomTraceIdRatioSampler implements Sampler {
  private readonly byTraceId: TraceIdRatioBasedSampler;

  constructor(ratio: number) {
    this.byTraceId = new TraceIdRatioBasedSampler(ratio);
  }

  shouldSample(context: Context, traceId: string): SamplingResult {
    const parent = trace.getSpanContext(context);
    // A trace started here without a recorded flag has one of the SDK's random ids (localTraceIdsAreRandom).
    if (parent !== undefined && trace.isSpanContextValid(parent) && (outgoingTraceFlags(context, parent, true) & TRACE_FLAG_RANDOM) === 0) {
      return { decision: (parent.traceFlags & TraceFlags.SAMPLED) !== 0 ? SamplingDecision.RECORD_AND_SAMPLED : SamplingDecision.NOT_RECORD };
    }
    return this.byTraceId.shouldSample(context, traceId);
  }

  toString(): string {
    return `RandomTraceIdRatio{${this.byTraceId.toString()}}`;
  }
}
