import { isValidTraceId, trace, TraceFlags, type Attributes, type Context, type Link, type SpanKind } from '@opentelemetry/api';
import { RandomIdGenerator, SamplingDecision, TraceIdRatioBasedSampler, type Sampler, type SamplingResult } from '@opentelemetry/sdk-trace';
import { isValidSpanContext, type ValidIdGenerator } from './gateway-tracer';
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

/** Lower-case hex digits by value. */
const HEX_DIGITS = new Uint8Array([0x30, 0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x61, 0x62, 0x63, 0x64, 0x65, 0x66]);

/** 32 random bits, as the SDK's RandomIdGenerator draws them (Math.random, not a cryptographic source). */
function random32(): number {
  return (Math.random() * 2 ** 32) >>> 0;
}

/** The hex digit of `word` at `shift`. */
function digit(word: number, shift: number): number {
  return HEX_DIGITS[(word >>> shift) & 15]!;
}

/** Two 32-bit words as 16 lower-case hex characters, made in one flat string (no concatenation). */
function hex64(a: number, b: number): string {
  return String.fromCharCode(
    digit(a, 28), digit(a, 24), digit(a, 20), digit(a, 16), digit(a, 12), digit(a, 8), digit(a, 4), digit(a, 0),
    digit(b, 28), digit(b, 24), digit(b, 20), digit(b, 16), digit(b, 12), digit(b, 8), digit(b, 4), digit(b, 0),
  );
}

/** Four 32-bit words as 32 lower-case hex characters, one flat string. */
function hex128(a: number, b: number, c: number, d: number): string {
  return String.fromCharCode(
    digit(a, 28), digit(a, 24), digit(a, 20), digit(a, 16), digit(a, 12), digit(a, 8), digit(a, 4), digit(a, 0),
    digit(b, 28), digit(b, 24), digit(b, 20), digit(b, 16), digit(b, 12), digit(b, 8), digit(b, 4), digit(b, 0),
    digit(c, 28), digit(c, 24), digit(c, 20), digit(c, 16), digit(c, 12), digit(c, 8), digit(c, 4), digit(c, 0),
    digit(d, 28), digit(d, 24), digit(d, 20), digit(d, 16), digit(d, 12), digit(d, 8), digit(d, 4), digit(d, 0),
  );
}

/**
 * The SDK's id generator for every process; random ids unless the gateway asked for one. The random ids are
 * RandomIdGenerator's (Math.random's bits, an all-zero id made to end in 01 so it stays valid), written as
 * hex here instead of through a shared Buffer's `toString('hex')`, a call into Node's C++ for every id
 * (~1.1k instructions more per id, three ids per proxied request: bench/RESULTS.md).
 */
export class RequestedTraceIdGenerator implements ValidIdGenerator {
  /** Every id it makes is valid (a requested one is checked here), so the gateway's tracer need not scan them. */
  readonly makesValidIds = true;

  generateTraceId(): string {
    const requested = requestedTraceId;
    requestedTraceId = undefined;
    // A request id that is no valid trace id is never asked for (traceIdFromRequestId), but withTraceId takes any string.
    if (requested !== undefined && isValidTraceId(requested)) return requested;
    const a = random32();
    const b = random32();
    const c = random32();
    let d = random32();
    if ((a | b | c | d) === 0) d = 1;
    return hex128(a, b, c, d);
  }

  generateSpanId(): string {
    const high = random32();
    let low = random32();
    if ((high | low) === 0) low = 1;
    return hex64(high, low);
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

/** Longest inbound request id accepted, characters. */
export const MAX_REQUEST_ID_LENGTH = 128;

/**
 * Inbound ids are echoed into response headers, logs and upstream requests, so only a conservative
 * token charset is accepted: no spaces, no CR/LF, no quotes, nothing a log or header parser could trip on.
 */
const WELL_FORMED_REQUEST_ID = new RegExp(`^[A-Za-z0-9._:/+=@-]{1,${MAX_REQUEST_ID_LENGTH}}$`);

/** Whether an inbound `X-Request-Id` is kept as the request's id (src/middleware/request-id.ts; a parser's refusal too, otel/lifecycle.ts). */
export function isWellFormedRequestId(value: string | undefined): value is string {
  return value !== undefined && WELL_FORMED_REQUEST_ID.test(value);
}

/** A UUID as written (8-4-4-4-12 hex digits): any 36 characters of hex digits and dashes (`<32 hex>----`) was taken for one. */
const UUID = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;

/**
 * The trace id a request id stands for: a 32-hex id is one already, a UUID is one without its dashes.
 * Anything else (or the invalid all-zero id) stands for none.
 */
export function traceIdFromRequestId(requestId: string): string | undefined {
  const candidate = (UUID.test(requestId) ? requestId.replaceAll('-', '') : requestId).toLowerCase();
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
    const root = parent === undefined || !isValidSpanContext(parent);
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
    if (parent !== undefined && isValidSpanContext(parent) && (outgoingTraceFlags(context, parent, true) & TRACE_FLAG_RANDOM) === 0) {
      return { decision: (parent.traceFlags & TraceFlags.SAMPLED) !== 0 ? SamplingDecision.RECORD_AND_SAMPLED : SamplingDecision.NOT_RECORD };
    }
    return this.byTraceId.shouldSample(context, traceId);
  }

  toString(): string {
    return `RandomTraceIdRatio{${this.byTraceId.toString()}}`;
  }
}
