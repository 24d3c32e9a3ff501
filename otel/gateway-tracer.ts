/**
 * The gateway's own tracer: the SERVER span of src/middleware/tracing.ts and the CLIENT spans of
 * src/upstream-span.ts, two or more per proxied request. It decides and records exactly what the SDK's Tracer
 * and SpanImpl (@opentelemetry/sdk-trace 3.0) would from the same sampler, id generator, span limits, resource
 * and span processors, and its spans are ReadableSpans, so the processors, exporters and our OTLP encoder take
 * them unchanged. What it leaves out is the SDK's general-purpose cost per span (issue 12, tracing at 100%
 * within 20% CPU of telemetry off; figures in docs/architecture.md):
 * - the start attributes copied once, straight into the span's object, instead of cleaned twice (a copy for the
 *   sampler, then a second copy to apply the limits); the second pass runs only when a limit or the sampler's
 *   attributes could change something;
 * - primitive attribute values (all the gateway sets) checked by their type, not through `maybeAddAttribute`'s
 *   options object and `isAnyValue`'s WeakSet per call;
 * - one clock read at start and one at end, instead of Date.now and performance.now at start and
 *   performance.now plus two HrTime conversions and an addition at end;
 * - no TracerMetrics (objects with computed keys for every span, recorded into the no-op meter: otel/sdk.ts
 *   gives the TracerProvider no MeterProvider, so nothing is observable), no MultiSpanProcessor in between.
 * test/unit/gateway-tracer.test.ts pins the equivalence with the SDK's Tracer over generated operations.
 * Built only with telemetry on (otel/sdk.ts); src/ imports startSpanOwning from here, which works with any tracer.
 */
import {
  context,
  diag,
  INVALID_SPAN_CONTEXT,
  isSpanContextValid,
  isValidSpanId,
  isValidTraceId,
  SamplingDecision,
  SpanKind,
  SpanStatusCode,
  trace,
  TraceFlags,
  type Attributes,
  type AttributeValue,
  type Context,
  type Exception,
  type HrTime,
  type Link,
  type Span,
  type SpanAttributes,
  type SpanContext,
  type SpanOptions,
  type SpanStatus,
  type TimeInput,
  type Tracer,
  type TraceState,
} from '@opentelemetry/api';
import {
  cleanAttributes,
  cleanSimpleAttributes,
  hrTime,
  isAnyValue,
  isTimeInput,
  isTimeInputHrTime,
  isTracingSuppressed,
  millisToHrTime,
  type InstrumentationScope,
} from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { IdGenerator, ReadableSpan, Sampler, SpanLimits, SpanProcessor, TimedEvent } from '@opentelemetry/sdk-trace';
import { ATTR_EXCEPTION_MESSAGE, ATTR_EXCEPTION_STACKTRACE, ATTR_EXCEPTION_TYPE } from '@opentelemetry/semantic-conventions';
import { cutAnyValue, cutString } from './attribute-values';

/** The scope name src/gateway.ts asks the global provider for (`trace.getTracer('koa-gateway')`). */
export const GATEWAY_TRACER_NAME = 'koa-gateway';

/**
 * The schema URL of the semantic conventions the gateway's spans follow: those of @opentelemetry/semantic-conventions
 * as installed (test/unit/gateway-tracer.test.ts checks the two agree), so a collector's schema processor or a
 * conformance check knows which version to read them by.
 */
export const GATEWAY_SCHEMA_URL = 'https://opentelemetry.io/schemas/1.45.0';

/** sdk-trace's name for the event `recordException` adds. */
const EXCEPTION_EVENT_NAME = 'exception';

export interface GatewayTracerOptions {
  /** The instrumentation scope's name; default `GATEWAY_TRACER_NAME`. */
  name?: string;
  /** The scope's version and schema URL; default none (the gateway asks for neither). */
  version?: string;
  schemaUrl?: string;
  /** The same sampler the SDK's TracerProvider got (ClientTraceIdSampler in otel/sdk.ts). */
  sampler: Sampler;
  /** The same id generator (RequestedTraceIdGenerator): asked for a trace id by root spans only. */
  idGenerator: IdGenerator;
  /** The same processors, called in this order; the SDK's TracerProvider still owns their flush and shutdown. */
  spanProcessors: readonly SpanProcessor[];
  resource: Resource;
  /** The same limits the TracerProvider got; unset ones take its defaults (128 each, no value length limit). */
  spanLimits?: SpanLimits;
}

/**
 * An id generator that makes only valid ids (lower-case hex of the W3C lengths, never all zeros) and says so: the
 * tracer then takes the ids it makes as checked instead of scanning them (the API's isValidTraceId and
 * isValidSpanId, ~0.9k instructions per proxied request in callgrind). otel/trace-ids.ts's RequestedTraceIdGenerator is one.
 */
export interface ValidIdGenerator extends IdGenerator {
  readonly makesValidIds: true;
}

/** SpanLimits with the SDK TracerProvider's defaults filled in, as its Tracers see them. */
type ResolvedSpanLimits = Required<SpanLimits>;

/**
 * Span times: the monotonic clock (performance.now(), sub-microsecond) placed on the wall clock by an origin that
 * is checked against Date.now() at most once a second and moved only when they disagree by more than a
 * millisecond (Date.now() itself has millisecond steps). So a clock read is one performance.now() and one
 * addition, not SpanImpl's Date.now() and performance.now() per span, and span starts still follow the wall
 * clock that log timestamps use when it is stepped or slewed (NTP, a resumed VM): the SDK anchors every span to
 * Date.now() for that reason (opentelemetry-js #852, #3129, #3434). A span keeps the origin it started on for its
 * end and events, as SpanImpl keeps its offset: read on the moved one, a +1 h step while a span was open exported
 * it as an hour long, and a -1 h step as 0 ms.
 */
const ANCHOR_CHECK_INTERVAL_MS = 1000;
const ANCHOR_TOLERANCE_MS = 1;
let originMs = performance.timeOrigin;
/** Replaced when the origin moves, never written into: a span holds on to the one it started on. */
let origin: HrTime = millisToHrTime(originMs);
let anchorCheckedAt = -Infinity;

/**
 * Where readClock (and GatewaySpan's readTime) leave the time they read: two numbers, so a span's start and end
 * make no HrTime array of their own.
 */
let readSeconds = 0;
let readNanos = 0;

/**
 * The clock's time into readSeconds and readNanos, on the origin checked against the wall clock. `now` is a
 * reading of performance.now() taken earlier (a request's arrival), or none: the clock's now.
 */
function readClock(now = performance.now()): void {
  if (now - anchorCheckedAt >= ANCHOR_CHECK_INTERVAL_MS) {
    // The wall clock against a reading taken with it: `now` may be a request's arrival, read before the pipeline's
    // turn came. Against that, the origin moved by the wait (under load, more than the tolerance), every span for
    // the next second was that much later than the log lines, and spans across the next check lost it.
    const checkedAt = performance.now();
    anchorCheckedAt = checkedAt;
    const wallOriginMs = Date.now() - checkedAt;
    if (Math.abs(wallOriginMs - originMs) > ANCHOR_TOLERANCE_MS) {
      originMs = wallOriginMs;
      origin = millisToHrTime(originMs);
    }
  }
  readOn(origin, now);
}

/**
 * A performance.now() reading placed on the origin `base` into readSeconds and readNanos: `addHrTimes(base,
 * millisToHrTime(now))`, computed in place.
 */
function readOn(base: HrTime, now: number): void {
  // millisToHrTime(now), then addHrTimes with the origin, as @opentelemetry/core 2 computes them.
  let seconds = base[0] + Math.trunc(now / 1000);
  let nanos = base[1] + Math.round((now % 1000) * 1e6);
  if (nanos >= 1e9) {
    nanos -= 1e9;
    seconds += 1;
  }
  readSeconds = seconds;
  readNanos = nanos;
}

const UNSET_STATUS: SpanStatus = Object.freeze({ code: SpanStatusCode.UNSET });

/**
 * A span's events and links until it has one: shared and frozen, replaced by an array of its own on the first
 * addEvent or addLink. Two empty arrays per span, made at its start and kept until its batch was exported, were
 * a quarter of what the gateway's two spans per request left for the young generation to copy (bench/RESULTS.md).
 */
const NO_EVENTS: TimedEvent[] = Object.freeze([]) as unknown as TimedEvent[];
const NO_LINKS: Link[] = Object.freeze([]) as unknown as Link[];

/**
 * The tracer for the gateway's own spans, an `@opentelemetry/api` Tracer. Hand it the options the SDK's
 * TracerProvider got (otel/sdk.ts) and its spans are the SDK's, recorded for less.
 */
export function createGatewayTracer(options: GatewayTracerOptions): Tracer {
  return new GatewayTracer(options);
}

class GatewayTracer implements Tracer {
  readonly instrumentationScope: InstrumentationScope;
  readonly resource: Resource;
  readonly limits: ResolvedSpanLimits;
  /**
   * The value length limit as the SDK applies it: not positive means none. Resolved once, so the SDK's warning
   * about it is written once rather than for every attribute of every span.
   */
  readonly valueLengthLimit: number;
  readonly processors: readonly SpanProcessor[];
  private readonly sampler: Sampler;
  private readonly idGenerator: IdGenerator;
  /** The id generator is a ValidIdGenerator: its ids need no check. */
  private readonly idsValid: boolean;
  /** The limits for the rare second pass over start attributes, with the value length limit resolved. */
  /** The count limit alone, for cleanAttributes: lengths are cut by cutAnyValue. */
  private readonly attributeCountLimit: { attributeCountLimit: number; attributeValueLengthLimit: number };

  constructor(options: GatewayTracerOptions) {
    this.instrumentationScope = { name: options.name ?? GATEWAY_TRACER_NAME, version: options.version, schemaUrl: options.schemaUrl };
    this.resource = options.resource;
    this.sampler = options.sampler;
    this.idGenerator = options.idGenerator;
    this.idsValid = (options.idGenerator as Partial<ValidIdGenerator>).makesValidIds === true;
    this.processors = [...options.spanProcessors];
    const given = options.spanLimits;
    this.limits = {
      attributeCountLimit: given?.attributeCountLimit ?? 128,
      attributeValueLengthLimit: given?.attributeValueLengthLimit ?? Infinity,
      eventCountLimit: given?.eventCountLimit ?? 128,
      linkCountLimit: given?.linkCountLimit ?? 128,
      attributePerEventCountLimit: given?.attributePerEventCountLimit ?? 128,
      attributePerLinkCountLimit: given?.attributePerLinkCountLimit ?? 128,
    };
    const lengthLimit = this.limits.attributeValueLengthLimit;
    if (lengthLimit <= 0) diag.warn(`Invalid attributeValueLengthLimit: must be positive, got ${lengthLimit} (ignoring)`);
    this.valueLengthLimit = lengthLimit <= 0 ? Infinity : lengthLimit;
    this.attributeCountLimit = { attributeCountLimit: this.limits.attributeCountLimit, attributeValueLengthLimit: Infinity };
  }

  startSpan(name: string, options: SpanOptions = {}, parentContext: Context = context.active()): Span {
    let ctx = parentContext;
    if (options.root) ctx = trace.deleteSpan(ctx);
    const parentSpan = trace.getSpan(ctx);
    if (isTracingSuppressed(ctx)) {
      diag.debug('Instrumentation suppressed, returning Noop Span');
      return trace.wrapSpanContext(INVALID_SPAN_CONTEXT);
    }
    const parent = parentSpan?.spanContext();
    // The span id first, then a trace id for a root only: a shared id generator sees the SDK's call order, and
    // the trace id the gateway requested (otel/trace-ids.ts withTraceId) goes to the root span it is meant for.
    const spanId = this.idGenerator.generateSpanId();
    let traceId: string;
    let traceState = undefined as SpanContext['traceState'];
    let validParent: SpanContext | undefined;
    if (parent === undefined || !isValidSpanContext(parent)) {
      traceId = this.idGenerator.generateTraceId();
    } else {
      traceId = parent.traceId;
      traceState = parent.traceState;
      validParent = parent;
    }
    const kind = options.kind ?? SpanKind.INTERNAL;
    // The sampler is handed the links, and they become the span's (addLink replaces the shared empty list first).
    const links = options.links == null || options.links.length === 0 ? NO_LINKS : options.links.map((link) => this.limitedLink(link));

    // The start attributes, copied once with the SDK's validation (its first cleanAttributes, without limits):
    // the sampler must see them before any limit applies, as it does in the SDK. Handed over (startSpanOwning)
    // and every value a primitive the SDK would keep as it is, the caller's object is the span's: no copy.
    let attributes: Attributes;
    let attributeCount = 0;
    let droppedAttributesCount = 0;
    let limitsMayCut = false;
    const given = options.attributes;
    const owned = given !== undefined && given === handedOver ? keptAsGivenCount(given, this.valueLengthLimit) : -1;
    if (owned >= 0) {
      handedOver = undefined;
      attributes = given!;
      attributeCount = owned;
    } else if (typeof given === 'object' && given !== null) {
      attributes = {};
      for (const key in given) {
        if (!Object.hasOwn(given, key)) continue;
        const value = given[key];
        if (value === undefined) continue;
        if (key.length === 0) {
          diag.warn(`Invalid attribute key: ${key}`);
          droppedAttributesCount++;
          continue;
        }
        if (typeof value === 'string') {
          if (!(value.length <= this.valueLengthLimit)) limitsMayCut = true;
          attributes[key] = value;
        } else if (typeof value === 'number' || typeof value === 'boolean') {
          attributes[key] = value;
        } else {
          if (!isAnyValue(value)) {
            diag.warn(`Invalid attribute value set for key: ${key}`);
            droppedAttributesCount++;
            continue;
          }
          attributes[key] = copiedAnyValue(value, Infinity);
          // Arrays, maps and bytes may hold something the length limit cuts; the second pass looks.
          if (value !== null && this.valueLengthLimit !== Infinity) limitsMayCut = true;
        }
        attributeCount++;
      }
    } else {
      attributes = {};
    }

    const sampling = this.sampler.shouldSample(ctx, traceId, name, kind, attributes, links);
    traceState = sampling.traceState ?? traceState;
    const traceFlags = sampling.decision === SamplingDecision.RECORD_AND_SAMPLED ? TraceFlags.SAMPLED : TraceFlags.NONE;
    // Checked here, once: a child's trace id is its valid parent's, and a ValidIdGenerator's ids are valid. The
    // sampler, request-id.ts, the propagator and the child spans then ask isValidSpanContext of it, not the API's
    // two hex scans each.
    const checked = this.idsValid || ((validParent !== undefined || isValidTraceId(traceId)) && isValidSpanId(spanId));
    const spanContext: SpanContext = checked ? new CheckedSpanContext(traceId, spanId, traceFlags, traceState) : { traceId, spanId, traceFlags, traceState };
    if (sampling.decision === SamplingDecision.NOT_RECORD) {
      diag.debug('Recording is off, propagating context in a non-recording span');
      return trace.wrapSpanContext(spanContext);
    }

    // The SDK's second pass (the sampler's attributes merged, then the count and length limits), only where it
    // can change something; it is then the SDK's own cleanAttributes over the same merged object, for the count.
    // The length is cut here (cutAnyValue, over the copies cleanAttributes made): the SDK's substring kept each
    // cut string's whole original alive.
    let spanAttributes = attributes;
    if (sampling.attributes != null || limitsMayCut || attributeCount > this.limits.attributeCountLimit) {
      const limited = cleanAttributes(Object.assign(attributes, sampling.attributes), this.attributeCountLimit);
      spanAttributes = cutAnyValue(limited.attributes ?? {}, this.valueLengthLimit);
      attributeCount = Object.keys(spanAttributes).length;
      droppedAttributesCount += limited.droppedAttributesCount ?? 0;
    }
    return new GatewaySpan(this, ctx, spanContext, name, kind, validParent, links, spanAttributes, attributeCount, droppedAttributesCount, options.startTime);
  }

  startActiveSpan<F extends (span: Span) => unknown>(name: string, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, options: SpanOptions, ctx: Context, fn: F): ReturnType<F>;
  startActiveSpan<F extends (span: Span) => unknown>(name: string, ...rest: unknown[]): ReturnType<F> | undefined {
    // The SDK's argument handling: (fn), (options, fn) or (options, context, fn).
    if (rest.length < 1) return undefined;
    const fn = (rest.length === 1 ? rest[0] : rest.length === 2 ? rest[1] : rest[2]) as F;
    const options = rest.length >= 2 ? (rest[0] as SpanOptions | undefined) : undefined;
    const parentContext = (rest.length >= 3 ? (rest[1] as Context | undefined) : undefined) ?? context.active();
    const span = this.startSpan(name, options, parentContext);
    return context.with(trace.setSpan(parentContext, span), fn as (span: Span) => ReturnType<F>, undefined, span);
  }

  /** A link with its attributes cleaned as the SDK cleans them (per-link count limit, value length limit). */
  limitedLink(link: Link): Link {
    return {
      context: link.context,
      ...cleanAttributes(link.attributes, { attributeCountLimit: this.limits.attributePerLinkCountLimit, attributeValueLengthLimit: this.valueLengthLimit }),
    };
  }
}

/**
 * The span context of a span this tracer started, its ids found valid when it was made: the same fields as the
 * SDK's literal (no `isRemote`), told apart by its class. A proxied request's two span contexts were checked
 * 5 times by the API's isSpanContextValid (two hex scans each, ~4.8k instructions per request: bench/RESULTS.md,
 * perf77).
 */
class CheckedSpanContext implements SpanContext {
  constructor(
    readonly traceId: string,
    readonly spanId: string,
    readonly traceFlags: number,
    readonly traceState: TraceState | undefined,
  ) {}
}

/**
 * The API's isSpanContextValid, answered without reading the ids for a span context this tracer checked when it
 * made it (nothing writes into span contexts: the API hands out the same object for the span's life).
 */
export function isValidSpanContext(spanContext: SpanContext): boolean {
  return spanContext instanceof CheckedSpanContext || isSpanContextValid(spanContext);
}

/** The start attributes handed over by startSpanOwning, for the one startSpan it wraps. */
let handedOver: Attributes | undefined;
/** The start handed over by startSpanOwning (a performance.now() reading), for the one startSpan it wraps. */
let handedStart: number | undefined;

/**
 * Starts a span whose start attributes object the caller gives up: a fresh plain object of string keys it
 * neither reads nor writes again. The gateway's tracer then keeps that object as the span's own, where it would
 * copy it key by key (a megamorphic keyed store per attribute, ~4k instructions per proxied request:
 * bench/RESULTS.md, perf77), when the SDK would keep every value as it is (strings within the length limit,
 * numbers, booleans, non-empty keys); anything else is copied and cleaned as ever. `startedAt`, a reading of
 * performance.now() taken earlier (when the request arrived), is the span's start on the clock its end will be read
 * from. Any other tracer (the SDK's, the API's no-op) just starts the span, copying as it always does, now.
 */
export function startSpanOwning(tracer: Tracer, name: string, options: SpanOptions, parentContext?: Context, startedAt?: number): Span {
  handedOver = options.attributes;
  handedStart = startedAt;
  try {
    return tracer.startSpan(name, options, parentContext);
  } finally {
    handedOver = undefined;
    handedStart = undefined;
  }
}

/**
 * How many attributes `given` holds when the SDK's cleaning would keep each as it is (an own key, not empty, a
 * string no longer than `lengthLimit`, a number or a boolean); -1 when anything would be dropped or changed. A
 * read-only pass: in a for-in, `hasOwnProperty.call` and the loads compile to field reads (the enum cache).
 */
function keptAsGivenCount(given: Attributes, lengthLimit: number): number {
  let count = 0;
  for (const key in given) {
    if (!hasOwnProperty.call(given, key) || key.length === 0) return -1;
    const value = given[key];
    if (typeof value === 'string') {
      if (!(value.length <= lengthLimit)) return -1;
    } else if (typeof value !== 'number' && typeof value !== 'boolean') {
      return -1;
    }
    count++;
  }
  return count;
}

const hasOwnProperty = Object.prototype.hasOwnProperty;

/**
 * A deep copy of an array, map or byte array (already checked by `isAnyValue`), strings in it cut to `limit`:
 * the SDK's own copy (core's copyAndTruncAnyValue, reached through cleanAttributes as it is not exported), cut by
 * cutAnyValue (the SDK's substring kept each cut string's original alive).
 */
function copiedAnyValue(value: unknown, limit: number): AttributeValue {
  return cutAnyValue(cleanAttributes({ value } as Attributes, { attributeCountLimit: Infinity, attributeValueLengthLimit: Infinity }).attributes!.value!, limit);
}

/**
 * The same copy (`value.map` of each item, strings cut to `limit`) of a plain array whose every item is a string,
 * number or boolean, without isAnyValue's WeakSet and cleanAttributes' objects: `user.roles` on every
 * authenticated request's SERVER span (~3k instructions per request). Undefined for anything else (a hole or
 * undefined, a nested value, an Array subclass, whose `map` makes another), which takes the SDK's path.
 */
function copiedPrimitiveArray(value: unknown, limit: number): AttributeValue | undefined {
  if (!Array.isArray(value) || Object.getPrototypeOf(value) !== Array.prototype) return undefined;
  const count = value.length;
  // Frozen, nobody can change it: the copy would be an equal array, so it is kept as it is when no string in it is
  // cut (tracing.ts shares one per role among the spans of that role).
  if (Object.isFrozen(value) && primitivesWithin(value, count, limit)) return value as AttributeValue;
  // Sized once: a push onto `[]` gave a one-role copy a backing store of 17 slots (~150 bytes), kept with the span
  // until its batch was exported (bench/micro/span-retained-bytes.cjs).
  const copy = new Array<string | number | boolean>(count);
  for (let index = 0; index < count; index++) {
    const item: unknown = value[index];
    if (typeof item === 'string') copy[index] = cutString(item, limit);
    else if (typeof item === 'number' || typeof item === 'boolean') copy[index] = item;
    else return undefined;
  }
  return copy as AttributeValue;
}

/** Whether the first `count` items of `array` are each a number, a boolean or a string no longer than `limit`. */
function primitivesWithin(array: readonly unknown[], count: number, limit: number): boolean {
  for (let index = 0; index < count; index++) {
    const item = array[index];
    if (typeof item === 'string' ? item.length > limit : typeof item !== 'number' && typeof item !== 'boolean') return false;
  }
  return true;
}

/** One recorded span of the gateway: an API Span and an SDK ReadableSpan, as SpanImpl is. */
export class GatewaySpan implements Span, ReadableSpan {
  name: string;
  readonly kind: SpanKind;
  readonly parentSpanContext: SpanContext | undefined;
  status: SpanStatus = UNSET_STATUS;
  readonly attributes: Attributes;
  links: Link[];
  events: TimedEvent[] = NO_EVENTS;
  ended = false;
  droppedAttributesCount: number;
  droppedEventsCount = 0;
  droppedLinksCount = 0;
  /**
   * Never less than the attributes' count: every kept value adds one, new key or not, and the exact count is taken
   * (Object.keys, as SpanImpl counts) only once this reaches the count limit. Below it a new key is always kept, so
   * whether a key is new need not be known: `Object.hasOwn` on every set was ~1.5k instructions per traced request
   * (bench/RESULTS.md).
   */
  private attributeCountBound: number;
  private readonly context: SpanContext;
  private readonly tracer: GatewayTracer;
  /**
   * The clock's origin when the span started (the shared array, no copy): its end and events are read on it, so
   * they are its start plus the monotonic time since, whatever the wall clock did meanwhile (SpanImpl's offset).
   * None with a start time given: an end without one is then read from Date.now(), as SpanImpl does. One field
   * for both, as the start-time flag was: the span kept until its batch is exported is no larger.
   */
  private readonly origin: HrTime | undefined;
  /**
   * The start, end and duration as numbers, read as HrTimes through the getters below (before the end: [0, 0] and
   * [-1, -1], as SpanImpl has them). Three HrTime arrays per span, kept until its batch was exported, and the
   * clock's two per read were most of the arrays the gateway's spans made and the young generation copied.
   */
  private startSeconds: number;
  private startNanos: number;
  private endSeconds = 0;
  private endNanos = 0;
  private durationSeconds = -1;
  private durationNanos = -1;

  constructor(
    tracer: GatewayTracer,
    parentContext: Context,
    spanContext: SpanContext,
    name: string,
    kind: SpanKind,
    parentSpanContext: SpanContext | undefined,
    links: Link[],
    attributes: Attributes,
    attributeCount: number,
    droppedAttributesCount: number,
    startTime: TimeInput | undefined,
  ) {
    this.tracer = tracer;
    this.context = spanContext;
    this.name = name;
    this.kind = kind;
    this.parentSpanContext = parentSpanContext;
    if (startTime != null) {
      this.origin = undefined;
      this.readTime(startTime);
    } else {
      // Started where startSpanOwning was told (a request's arrival), on the clock its end is read from.
      if (handedStart !== undefined) {
        readClock(handedStart);
        handedStart = undefined;
      } else {
        readClock();
      }
      // After the read: it may have moved the origin, for this span and the next.
      this.origin = origin;
    }
    this.startSeconds = readSeconds;
    this.startNanos = readNanos;
    const { linkCountLimit } = tracer.limits;
    if (links.length > linkCountLimit) {
      this.links = links.slice(links.length - linkCountLimit, links.length);
      this.droppedLinksCount = links.length - linkCountLimit;
    } else {
      this.links = links;
    }
    this.attributes = attributes;
    this.attributeCountBound = attributeCount;
    this.droppedAttributesCount = droppedAttributesCount;
    for (const processor of tracer.processors) processor.onStart(this, parentContext);
  }

  /** The tracer's, read through it: two fields fewer in every span kept until its batch is exported (16 bytes). */
  get resource(): Resource {
    return this.tracer.resource;
  }

  get instrumentationScope(): InstrumentationScope {
    return this.tracer.instrumentationScope;
  }

  get startTime(): HrTime {
    return [this.startSeconds, this.startNanos];
  }

  get endTime(): HrTime {
    return [this.endSeconds, this.endNanos];
  }

  get duration(): HrTime {
    return [this.durationSeconds, this.durationNanos];
  }

  spanContext(): SpanContext {
    return this.context;
  }

  isRecording(): boolean {
    return !this.ended;
  }

  setAttribute(key: string, value: SpanAttributes[string]): this {
    if (this.ended) return this.warnEnded();
    // maybeAddAttribute's order: undefined, empty key, the count limit (before validity), validity, then the copy.
    if (value === undefined) return this;
    if (key.length === 0) {
      diag.warn(`Invalid attribute key: ${key}`);
      return this;
    }
    const attributes = this.attributes;
    const countLimit = this.tracer.limits.attributeCountLimit;
    if (this.attributeCountBound >= countLimit) {
      this.attributeCountBound = Object.keys(attributes).length;
      if (this.attributeCountBound >= countLimit && !Object.hasOwn(attributes, key)) {
        this.droppedAttributesCount++;
        if (this.droppedAttributesCount === 1) diag.warn('Dropping extra attributes.');
        return this;
      }
    }
    const limit = this.tracer.valueLengthLimit;
    if (typeof value === 'string') {
      attributes[key] = cutString(value, limit);
    } else if (typeof value === 'number' || typeof value === 'boolean') {
      attributes[key] = value;
    } else {
      const copied = copiedPrimitiveArray(value, limit);
      if (copied !== undefined) {
        attributes[key] = copied;
      } else {
        if (!isAnyValue(value)) {
          diag.warn(`Invalid attribute value set for key: ${key}`);
          return this;
        }
        attributes[key] = copiedAnyValue(value, limit);
      }
    }
    this.attributeCountBound++;
    return this;
  }

  setAttributes(attributes: SpanAttributes): this {
    for (const key in attributes) if (Object.hasOwn(attributes, key)) this.setAttribute(key, attributes[key]);
    return this;
  }

  addEvent(name: string, attributesOrStartTime?: SpanAttributes | TimeInput, timeStamp?: TimeInput): this {
    if (this.ended) return this.warnEnded();
    const { eventCountLimit, attributePerEventCountLimit } = this.tracer.limits;
    if (eventCountLimit === 0) {
      diag.warn('No events allowed.');
      this.droppedEventsCount++;
      return this;
    }
    if (this.events === NO_EVENTS) this.events = [];
    if (this.events.length >= eventCountLimit) {
      if (this.droppedEventsCount === 0) diag.debug('Dropping extra events.');
      this.events.shift();
      this.droppedEventsCount++;
    }
    let attributes: SpanAttributes | undefined;
    if (isTimeInput(attributesOrStartTime)) {
      if (!isTimeInput(timeStamp)) timeStamp = attributesOrStartTime;
    } else {
      attributes = attributesOrStartTime;
    }
    // Events keep to simple values (OTEP 4485), as the SDK's do.
    const cleaned = cleanSimpleAttributes(attributes, { attributeCountLimit: attributePerEventCountLimit, attributeValueLengthLimit: this.tracer.valueLengthLimit });
    this.events.push({ name, time: this.timeOf(timeStamp), ...cleaned });
    return this;
  }

  addLink(link: Link): this {
    if (this.ended) return this.warnEnded();
    const { linkCountLimit } = this.tracer.limits;
    if (linkCountLimit === 0) {
      this.droppedLinksCount++;
      return this;
    }
    if (this.links === NO_LINKS) this.links = [];
    if (this.links.length >= linkCountLimit) {
      if (this.droppedLinksCount === 0) diag.debug('Dropping extra links.');
      this.links.shift();
      this.droppedLinksCount++;
    }
    this.links.push(this.tracer.limitedLink(link));
    return this;
  }

  addLinks(links: Link[]): this {
    for (const link of links) this.addLink(link);
    return this;
  }

  setStatus(status: SpanStatus): this {
    if (this.ended) return this.warnEnded();
    // UNSET changes nothing, and OK is final (the API's rule).
    if (status.code === SpanStatusCode.UNSET) return this;
    if (this.status.code === SpanStatusCode.OK) return this;
    const next: SpanStatus = { code: status.code };
    if (status.code === SpanStatusCode.ERROR) {
      if (typeof status.message === 'string') next.message = status.message;
      else if (status.message != null) diag.warn(`Dropping invalid status.message of type '${typeof status.message}', expected 'string'`);
    }
    this.status = next;
    return this;
  }

  updateName(name: string): this {
    if (this.ended) return this.warnEnded();
    this.name = name;
    return this;
  }

  end(endTime?: TimeInput): void {
    if (this.ended) {
      diag.error(`${this.name} ${this.context.traceId}-${this.context.spanId} - You can only call end() on a span once.`);
      return;
    }
    this.readTime(endTime);
    let endSeconds = readSeconds;
    let endNanos = readNanos;
    // hrTimeDuration(start, end), computed in place.
    let seconds = endSeconds - this.startSeconds;
    let nanos = endNanos - this.startNanos;
    if (nanos < 0) {
      seconds -= 1;
      nanos += 1e9;
    }
    if (seconds < 0) {
      diag.warn('Inconsistent start and end time, startTime > endTime. Setting span duration to 0ms.', this.startTime, [endSeconds, endNanos]);
      endSeconds = this.startSeconds;
      endNanos = this.startNanos;
      seconds = 0;
      nanos = 0;
    }
    this.endSeconds = endSeconds;
    this.endNanos = endNanos;
    this.durationSeconds = seconds;
    this.durationNanos = nanos;
    if (this.droppedEventsCount > 0) diag.warn(`Dropped ${this.droppedEventsCount} events because eventCountLimit reached`);
    if (this.droppedLinksCount > 0) diag.warn(`Dropped ${this.droppedLinksCount} links because linkCountLimit reached`);
    const processors = this.tracer.processors;
    // onEnding sees the span still open (it may set attributes), as the SDK's span processors do.
    for (const processor of processors) processor.onEnding?.(this);
    this.ended = true;
    for (const processor of processors) processor.onEnd(this);
  }

  recordException(exception: Exception, time?: TimeInput): void {
    const attributes: Attributes = {};
    if (typeof exception === 'string') {
      attributes[ATTR_EXCEPTION_MESSAGE] = exception;
    } else if (exception) {
      if (exception.code) attributes[ATTR_EXCEPTION_TYPE] = exception.code.toString();
      else if (exception.name) attributes[ATTR_EXCEPTION_TYPE] = exception.name;
      if (exception.message) attributes[ATTR_EXCEPTION_MESSAGE] = exception.message;
      if (exception.stack) attributes[ATTR_EXCEPTION_STACKTRACE] = exception.stack;
    }
    if (attributes[ATTR_EXCEPTION_TYPE] || attributes[ATTR_EXCEPTION_MESSAGE]) this.addEvent(EXCEPTION_EVENT_NAME, attributes, time);
    else diag.warn(`Failed to record an exception ${String(exception)}`);
  }

  /**
   * A time as SpanImpl reads it: a number up to performance.now() is on the performance clock, a larger one is
   * epoch milliseconds; Dates and HrTimes are taken as they are; none is now.
   */
  private timeOf(input: TimeInput | undefined): HrTime {
    if (typeof input === 'number') return input <= performance.now() ? hrTime(input) : millisToHrTime(input);
    if (input instanceof Date) return millisToHrTime(input.getTime());
    if (isTimeInputHrTime(input)) return input as HrTime;
    if (this.origin === undefined) return millisToHrTime(Date.now());
    readOn(this.origin, performance.now());
    return [readSeconds, readNanos];
  }

  /** timeOf's time into readSeconds and readNanos; read on the span's origin without an HrTime array when none is given. */
  private readTime(input: TimeInput | undefined): void {
    if (input == null && this.origin !== undefined) {
      readOn(this.origin, performance.now());
    } else {
      const time = this.timeOf(input);
      readSeconds = time[0];
      readNanos = time[1];
    }
  }

  private warnEnded(): this {
    const { traceId, spanId } = this.context;
    diag.warn(`Cannot execute the operation on ended Span {traceId: ${traceId}, spanId: ${spanId}}`, new Error(`Operation attempted on ended Span {traceId: ${traceId}, spanId: ${spanId}}`));
    return this;
  }
}
