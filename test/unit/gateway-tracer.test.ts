/**
 * The gateway's lean tracer (otel/gateway-tracer.ts) against the SDK's Tracer: the same generated operations on
 * both, with the same sampler, ids, limits and processors, must give the processors the same calls and the
 * exporter the same OTLP bytes. Times are the one thing allowed to differ (each side reads its own clock);
 * they are checked for order, then replaced by fixed values before the comparison.
 */
import { execFile } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { promisify } from 'node:util';
import fc from 'fast-check';
import {
  INVALID_SPAN_CONTEXT,
  propagation,
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  TraceFlags,
  type Attributes,
  type Context,
  type Exception,
  type HrTime,
  type Link,
  type Span,
  type SpanContext,
  type SpanStatus,
  type TimeInput,
  type Tracer,
} from '@opentelemetry/api';
import { hrTimeDuration, millisToHrTime, suppressTracing, TraceState } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  createAlwaysRecordSampler,
  InMemorySpanExporter,
  ParentBasedSampler,
  SimpleSpanProcessor,
  TraceIdRatioBasedSampler,
  TracerProvider,
  type IdGenerator,
  type ReadableSpan,
  type Sampler,
  type SamplingResult,
  type SpanLimits,
  type SpanProcessor,
} from '@opentelemetry/sdk-trace';
import { createGatewayTracer, GatewaySpan, GATEWAY_SCHEMA_URL, GATEWAY_TRACER_NAME, isValidSpanContext, startSpanOwning, type GatewayTracerOptions, type ValidIdGenerator } from '../../otel/gateway-tracer';
import { readPackageVersion } from '../../otel/telemetry-config';
import { encodeTraceExportRequest } from '../../otel/otlp-protobuf-encoding';
import { RequestIdSpanProcessor } from '../../otel/request-id-span-processor';
import { ClientTraceIdSampler, RequestedTraceIdGenerator, TRACE_ID_FROM_REQUEST_ID, withTraceId } from '../../otel/trace-ids';
import { ATTR, BAGGAGE_REQUEST_ID } from '../../otel/wire-names';
import { startOtlpReceiver } from '../helpers/otlp-receiver';
import { compileTelemetryBootstrap } from '../telemetry/instrumented-app';
import { steppableWallClock } from '../helpers/wall-clock';

/** A small, seeded generator: both sides draw the same ids, and ClientTraceIdSampler the same coin flips. */
function seededRandom(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
}

/** Ids from a seed; now and then the invalid all-zero trace id, which makes a recorded span no valid parent. */
class SeededIds implements IdGenerator {
  private readonly random: () => number;
  constructor(seed: number) {
    this.random = seededRandom(seed);
  }
  private hex(chars: number): string {
    let out = '';
    while (out.length < chars) out += Math.floor(this.random() * 2 ** 32).toString(16).padStart(8, '0');
    return out.slice(0, chars);
  }
  generateTraceId(): string {
    return this.random() < 0.05 ? INVALID_SPAN_CONTEXT.traceId : this.hex(32);
  }
  generateSpanId(): string {
    return this.hex(16);
  }
}

type Log = unknown[];

const describeContext = (spanContext: SpanContext | undefined) =>
  spanContext && { traceId: spanContext.traceId, spanId: spanContext.spanId, traceFlags: spanContext.traceFlags, traceState: spanContext.traceState?.serialize(), isRemote: spanContext.isRemote };

/** Wraps the sampler under test to log what it was asked and answered. */
function loggingSampler(inner: Sampler, log: Log): Sampler {
  return {
    shouldSample(ctx, traceId, name, kind, attributes, links) {
      const asked = { parent: describeContext(trace.getSpanContext(ctx)), traceId, name, kind, attributes: structuredClone(attributes), links: links.length };
      const result = inner.shouldSample(ctx, traceId, name, kind, attributes, links);
      log.push(['sample', asked, { decision: result.decision, traceState: result.traceState?.serialize() }]);
      return result;
    },
    toString: () => `Logging{${inner.toString()}}`,
  };
}

/**
 * A sampler that answers with attributes (new ones, one overriding a start attribute, an undefined one and an
 * invalid one) and a trace state for some spans, so both tracers' handling of them is compared.
 */
function annotatingSampler(inner: Sampler): Sampler {
  const annotations = Object.freeze({ 'sampler.note': 'from the sampler, long enough to be cut', a: 'sampler wins', b: undefined, 'sampler.bad': (() => 1) as unknown as string });
  return {
    shouldSample(ctx, traceId, name, kind, attributes, links): SamplingResult {
      const result = inner.shouldSample(ctx, traceId, name, kind, attributes, links);
      const pick = (Number.parseInt(traceId.slice(-2), 16) + name.length) % 6;
      return {
        decision: result.decision,
        attributes: pick % 2 === 0 ? (annotations as Attributes) : result.attributes,
        traceState: pick % 3 === 0 ? new TraceState('sampler=1') : result.traceState,
      };
    },
    toString: () => `Annotating{${inner.toString()}}`,
  };
}

interface SamplerChoice {
  base: 'always_on' | 'always_off' | 'parentbased_traceidratio' | 'always_record';
  clientTraceId: boolean;
  annotate: boolean;
}

function buildSampler(choice: SamplerChoice, log: Log): Sampler {
  const base: Record<SamplerChoice['base'], () => Sampler> = {
    always_on: () => new AlwaysOnSampler(),
    always_off: () => new AlwaysOffSampler(),
    parentbased_traceidratio: () => new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(0.5) }),
    // RECORD_ONLY where the ratio says no: recorded, not sampled.
    always_record: () => createAlwaysRecordSampler(new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(0.5) })),
  };
  let sampler = base[choice.base]();
  if (choice.annotate) sampler = annotatingSampler(sampler);
  if (choice.clientTraceId) sampler = new ClientTraceIdSampler(sampler);
  return loggingSampler(sampler, log);
}

/** Explicit times, far in the past and the future (a span that ends before it starts); everything else is the clock. */
const EXPLICIT_HRTIMES: HrTime[] = [
  [1_000, 123_456_789],
  [4_102_444_800, 5],
];
const EXPLICIT_MILLIS = 4_102_444_900_250;
const EXPLICIT_DATE = new Date(1_000_500);
const EXPLICIT_TIMES = [...EXPLICIT_HRTIMES, millisToHrTime(EXPLICIT_MILLIS), millisToHrTime(EXPLICIT_DATE.getTime())];
const isExplicit = (time: HrTime) => EXPLICIT_TIMES.some((t) => t[0] === time[0] && t[1] === time[1]);
/** An explicit time as given, else `clock` (or the not-ended [0, 0]). */
const describeTime = (time: HrTime) => (isExplicit(time) || (time[0] === 0 && time[1] === 0) ? [...time] : 'clock');

type TimeChoice = { kind: 'hr'; index: number } | { kind: 'millis' } | { kind: 'date' } | { kind: 'performance' } | undefined;
function timeOf(choice: TimeChoice): TimeInput | undefined {
  if (choice === undefined) return undefined;
  if (choice.kind === 'hr') return EXPLICIT_HRTIMES[choice.index]!;
  if (choice.kind === 'millis') return EXPLICIT_MILLIS;
  if (choice.kind === 'date') return EXPLICIT_DATE;
  // A performance-clock time: each side maps it onto its own clock.
  return Math.max(0, performance.now() - 5);
}

const REMOTE_SAMPLED: SpanContext = { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', traceFlags: TraceFlags.SAMPLED, isRemote: true, traceState: new TraceState('vendor=v') };
const REMOTE_NOT_SAMPLED: SpanContext = { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: TraceFlags.NONE, isRemote: true };
const MALFORMED: SpanContext = { traceId: 'not-hex', spanId: 'b7ad6b7169203331', traceFlags: TraceFlags.SAMPLED, isRemote: true };

type ParentChoice =
  | { kind: 'none' }
  | { kind: 'active' }
  | { kind: 'local'; index: number }
  | { kind: 'remote'; sampled: boolean }
  | { kind: 'invalid'; malformed: boolean };

interface StartOperation {
  op: 'start';
  name: string;
  kind: SpanKind | undefined;
  parent: ParentChoice;
  suppressed: boolean;
  root: boolean;
  requestId: string | undefined;
  attributes: Attributes | undefined;
  /** Started through startSpanOwning with a fresh (unfrozen) copy of the attributes, the object then given up. */
  owning: boolean;
  links: { sampled: boolean; attributes: Attributes | undefined }[] | undefined;
  startTime: TimeChoice;
}

type ExceptionChoice = 'error' | 'coded' | 'named' | 'string' | 'empty';
/** Made once per generated operation and thrown at both tracers: an Error's stack says where it was made. */
const exceptionOf = (choice: ExceptionChoice): Exception => {
  if (choice === 'error') return new TypeError('upstream refused');
  if (choice === 'coded') return { code: 'ECONNRESET', message: 'socket hang up', stack: 'at somewhere' };
  if (choice === 'named') return { name: 'AbortError' };
  if (choice === 'string') return 'a string thrown';
  return {} as Exception;
};

type Operation =
  | StartOperation
  | { op: 'setAttribute'; span: number; key: string; value: unknown }
  | { op: 'setAttributes'; span: number; attributes: Attributes }
  | { op: 'addEvent'; span: number; name: string; attributes: Attributes | undefined; time: TimeChoice; timeFirst: boolean }
  | { op: 'recordException'; span: number; exception: Exception; time: TimeChoice }
  | { op: 'setStatus'; span: number; status: SpanStatus }
  | { op: 'updateName'; span: number; name: string }
  | { op: 'addLink'; span: number; sampled: boolean; attributes: Attributes | undefined }
  | { op: 'end'; span: number; time: TimeChoice };

interface Scenario {
  seed: number;
  sampler: SamplerChoice;
  limits: SpanLimits;
  operations: Operation[];
}

/** An Array subclass: the SDK's copy (`map`) makes another of it. */
class RolesArray extends Array<string> {}

// Values: valid ones of every kind, strings around small length limits, and invalid ones (dropped by both).
const circular: Record<string, unknown> = { a: 1 };
circular.self = circular;
const key = fc.oneof(fc.constantFrom('', 'a', 'b', 'c', 'http.route', ATTR.traceIdSource, ATTR.requestId, 'sampler.note'), fc.string({ maxLength: 3 }));
const text = fc.oneof(fc.string({ maxLength: 12 }), fc.constantFrom(TRACE_ID_FROM_REQUEST_ID, 'é€😀 non-ASCII past the limit'));
const validValue = fc.oneof(
  { weight: 6, arbitrary: fc.oneof(text, fc.integer(), fc.double(), fc.boolean()) },
  { weight: 1, arbitrary: fc.constant(null) },
  { weight: 1, arbitrary: fc.array(text, { maxLength: 3 }) },
  // Heterogeneous arrays and maps are valid on spans but not on events (simple values only).
  { weight: 1, arbitrary: fc.array(fc.oneof(text, fc.integer(), fc.constant(null)), { maxLength: 3 }) },
  // Arrays of scalars take the tracer's own copy; with a hole or an undefined item, or as an Array subclass, the SDK's.
  { weight: 1, arbitrary: fc.sparseArray(fc.oneof(text, fc.double(), fc.boolean(), fc.constant(undefined)), { maxLength: 3 }) },
  { weight: 1, arbitrary: fc.array(text, { maxLength: 2 }).map((items) => RolesArray.from(items)) },
  // Frozen arrays of scalars (tracing.ts's shared `user.roles`) are kept as they are unless a string in them is cut.
  { weight: 1, arbitrary: fc.array(fc.oneof(text, fc.integer(), fc.boolean()), { maxLength: 3 }).map((items) => Object.freeze(items) as unknown as string[]) },
  { weight: 1, arbitrary: fc.dictionary(fc.constantFrom('x', 'y'), text, { maxKeys: 2 }) },
  { weight: 1, arbitrary: fc.uint8Array({ maxLength: 10 }) },
);
const invalidValue = fc.constantFrom<unknown>(() => 1, Symbol('s'), 10n, new Date(0), new Map(), circular, [() => 1], undefined);
const value = fc.oneof({ weight: 5, arbitrary: validValue }, { weight: 1, arbitrary: invalidValue });
/** Frozen: a tracer that wrote into the caller's object would throw. */
const attributes = fc.dictionary(key, value, { maxKeys: 6 }).map((a) => Object.freeze(a) as Attributes);
const time: fc.Arbitrary<TimeChoice> = fc.oneof(
  { weight: 4, arbitrary: fc.constant(undefined) },
  { weight: 1, arbitrary: fc.oneof(fc.record({ kind: fc.constant('hr' as const), index: fc.integer({ min: 0, max: EXPLICIT_HRTIMES.length - 1 }) }), fc.constantFrom({ kind: 'millis' as const }, { kind: 'date' as const }, { kind: 'performance' as const })) },
);
const spanIndex = fc.nat({ max: 20 });
const status: fc.Arbitrary<SpanStatus> = fc.oneof(
  fc.constantFrom<SpanStatus>({ code: SpanStatusCode.UNSET }, { code: SpanStatusCode.OK }, { code: SpanStatusCode.OK, message: 'ignored' }),
  fc.record({ code: fc.constant(SpanStatusCode.ERROR), message: fc.oneof(fc.constant(undefined), text, fc.constant(42 as unknown as string)) }),
);
const parent: fc.Arbitrary<ParentChoice> = fc.oneof(
  fc.constantFrom<ParentChoice>({ kind: 'none' }, { kind: 'active' }),
  { weight: 3, arbitrary: fc.record({ kind: fc.constant('local' as const), index: spanIndex }) },
  fc.record({ kind: fc.constant('remote' as const), sampled: fc.boolean() }),
  fc.record({ kind: fc.constant('invalid' as const), malformed: fc.boolean() }),
);
const start: fc.Arbitrary<StartOperation> = fc.record({
  op: fc.constant('start' as const),
  name: fc.constantFrom('GET', 'POST', 'login'),
  kind: fc.option(fc.constantFrom(SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL), { nil: undefined }),
  parent,
  suppressed: fc.integer({ min: 0, max: 7 }).map((n) => n === 0),
  root: fc.boolean(),
  requestId: fc.option(fc.constantFrom('req-1', ''), { nil: undefined }),
  attributes: fc.option(attributes, { nil: undefined }),
  owning: fc.boolean(),
  links: fc.option(fc.array(fc.record({ sampled: fc.boolean(), attributes: fc.option(attributes, { nil: undefined }) }), { maxLength: 3 }), { nil: undefined }),
  startTime: time,
});
const operation: fc.Arbitrary<Operation> = fc.oneof(
  { weight: 3, arbitrary: start },
  { weight: 4, arbitrary: fc.record({ op: fc.constant('setAttribute' as const), span: spanIndex, key, value }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setAttributes' as const), span: spanIndex, attributes }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('addEvent' as const), span: spanIndex, name: text, attributes: fc.option(attributes, { nil: undefined }), time, timeFirst: fc.boolean() }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('recordException' as const), span: spanIndex, exception: fc.constantFrom<ExceptionChoice>('error', 'coded', 'named', 'string', 'empty').map(exceptionOf), time }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('setStatus' as const), span: spanIndex, status }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('updateName' as const), span: spanIndex, name: text }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('addLink' as const), span: spanIndex, sampled: fc.boolean(), attributes: fc.option(attributes, { nil: undefined }) }) },
  { weight: 3, arbitrary: fc.record({ op: fc.constant('end' as const), span: spanIndex, time }) },
);
const smallLimit = fc.option(fc.integer({ min: 0, max: 5 }), { nil: undefined });
const scenario: fc.Arbitrary<Scenario> = fc.record({
  seed: fc.nat(),
  sampler: fc.record({ base: fc.constantFrom('always_on', 'always_off', 'parentbased_traceidratio', 'always_record'), clientTraceId: fc.boolean(), annotate: fc.boolean() }),
  limits: fc.record(
    {
      attributeCountLimit: smallLimit,
      // 0 and below mean no limit, as in the SDK.
      attributeValueLengthLimit: fc.option(fc.integer({ min: -1, max: 8 }), { nil: undefined }),
      eventCountLimit: smallLimit,
      linkCountLimit: smallLimit,
      attributePerEventCountLimit: smallLimit,
      attributePerLinkCountLimit: smallLimit,
    },
    { requiredKeys: [] },
  ),
  operations: fc.array(operation, { minLength: 1, maxLength: 40, size: 'medium' }),
});

/** What a processor can see of a span: everything, times as `clock` unless they were given. */
function describeSpan(span: ReadableSpan) {
  return {
    name: span.name,
    kind: span.kind,
    context: describeContext(span.spanContext()),
    parent: describeContext(span.parentSpanContext),
    startTime: describeTime(span.startTime),
    endTime: describeTime(span.endTime),
    status: { ...span.status },
    attributes: structuredClone(span.attributes),
    links: span.links.map((link) => ({ context: describeContext(link.context), attributes: structuredClone(link.attributes), dropped: link.droppedAttributesCount })),
    events: span.events.map((event) => ({ name: event.name, time: describeTime(event.time), attributes: structuredClone(event.attributes), dropped: event.droppedAttributesCount })),
    ended: span.ended,
    dropped: [span.droppedAttributesCount, span.droppedEventsCount, span.droppedLinksCount],
    scope: { ...span.instrumentationScope },
    resource: span.resource === RESOURCE,
  };
}

/** Logs every call; the first one also sets an attribute while the span ends (allowed until it has ended). */
function loggingProcessor(label: string, log: Log, setsOnEnding: boolean): SpanProcessor {
  return {
    onStart: (span, parentContext) =>
      log.push(['onStart', label, describeSpan(span), { recording: span.isRecording(), parent: describeContext(trace.getSpanContext(parentContext)) }]),
    onEnding: setsOnEnding
      ? (span) => {
          log.push(['onEnding', label, describeSpan(span), span.isRecording()]);
          span.setAttribute('set.on.ending', label);
        }
      : undefined,
    onEnd: (span) => log.push(['onEnd', label, describeSpan(span)]),
    forceFlush: () => Promise.resolve(),
    shutdown: () => Promise.resolve(),
  };
}

const RESOURCE = resourceFromAttributes({ 'service.name': 'koa-gateway' });
const FIXED: Record<'start' | 'end' | 'event', HrTime> = { start: [1_700_000_000, 100], end: [1_700_000_000, 900], event: [1_700_000_000, 500] };

/** The span with every clock time replaced by a fixed one (explicit times kept), for byte comparison. */
function withFixedTimes(span: ReadableSpan): ReadableSpan {
  const fixed = (time: HrTime, replacement: HrTime) => (isExplicit(time) ? time : replacement);
  return {
    name: span.name,
    kind: span.kind,
    spanContext: () => span.spanContext(),
    parentSpanContext: span.parentSpanContext,
    startTime: fixed(span.startTime, FIXED.start),
    endTime: fixed(span.endTime, FIXED.end),
    status: span.status,
    attributes: span.attributes,
    links: span.links,
    events: span.events.map((event) => ({ ...event, time: fixed(event.time, FIXED.event) })),
    duration: span.duration,
    ended: span.ended,
    resource: span.resource,
    instrumentationScope: span.instrumentationScope,
    droppedAttributesCount: span.droppedAttributesCount,
    droppedEventsCount: span.droppedEventsCount,
    droppedLinksCount: span.droppedLinksCount,
  };
}

type MakeTracer = (options: Omit<GatewayTracerOptions, 'name'>) => Tracer;
const sdkTracer: MakeTracer = (options) => new TracerProvider({ ...options, spanProcessors: [...options.spanProcessors] }).getTracer(GATEWAY_TRACER_NAME);
const leanTracer: MakeTracer = (options) => createGatewayTracer(options);

/** Runs the scenario on one tracer: the log of every call the processors and sampler saw, and the exported bytes. */
async function run(scenarioToRun: Scenario, makeTracer: MakeTracer): Promise<{ log: Log; otlp: string; timeOrderViolations: string[] }> {
  const log: Log = [];
  const random = seededRandom(scenarioToRun.seed ^ 0x5bd1e995);
  const mathRandom = jest.spyOn(Math, 'random').mockImplementation(random);
  const exporter = new InMemorySpanExporter();
  const simple = new SimpleSpanProcessor({ exporter });
  const tracer = makeTracer({
    sampler: buildSampler(scenarioToRun.sampler, log),
    idGenerator: new SeededIds(scenarioToRun.seed),
    resource: RESOURCE,
    spanLimits: scenarioToRun.limits,
    spanProcessors: [loggingProcessor('first', log, true), new RequestIdSpanProcessor(), loggingProcessor('second', log, false), simple],
  });
  const spans: Span[] = [];
  const spanAt = (index: number) => spans[index % spans.length];
  const linkTo = (sampled: boolean, linkAttributes: Attributes | undefined): Link => ({ context: sampled ? REMOTE_SAMPLED : REMOTE_NOT_SAMPLED, attributes: linkAttributes });
  try {
    for (const operation of scenarioToRun.operations) {
      if (operation.op === 'start') {
        let parentContext: Context | undefined;
        const choice = operation.parent;
        if (choice.kind === 'none') parentContext = ROOT_CONTEXT;
        else if (choice.kind === 'active') parentContext = undefined;
        else if (choice.kind === 'local') parentContext = spans.length > 0 ? trace.setSpan(ROOT_CONTEXT, spanAt(choice.index)!) : ROOT_CONTEXT;
        else if (choice.kind === 'remote') parentContext = trace.setSpanContext(ROOT_CONTEXT, choice.sampled ? REMOTE_SAMPLED : REMOTE_NOT_SAMPLED);
        else parentContext = trace.setSpanContext(ROOT_CONTEXT, choice.malformed ? MALFORMED : INVALID_SPAN_CONTEXT);
        if (parentContext !== undefined && operation.requestId !== undefined) {
          parentContext = propagation.setBaggage(parentContext, propagation.createBaggage({ [BAGGAGE_REQUEST_ID]: { value: operation.requestId } }));
        }
        if (parentContext !== undefined && operation.suppressed) parentContext = suppressTracing(parentContext);
        const spanOptions = {
          kind: operation.kind,
          attributes: operation.owning && operation.attributes ? { ...operation.attributes } : operation.attributes,
          links: operation.links?.map((l) => linkTo(l.sampled, l.attributes)),
          startTime: timeOf(operation.startTime),
          root: operation.root,
        };
        const span = operation.owning ? startSpanOwning(tracer, operation.name, spanOptions, parentContext) : tracer.startSpan(operation.name, spanOptions, parentContext);
        spans.push(span);
        log.push(['started', describeContext(span.spanContext()), span.isRecording()]);
        continue;
      }
      const span = spans.length > 0 ? spanAt(operation.span) : undefined;
      if (span === undefined) continue;
      let returned: unknown;
      if (operation.op === 'setAttribute') returned = span.setAttribute(operation.key, operation.value as string);
      else if (operation.op === 'setAttributes') returned = span.setAttributes(operation.attributes);
      else if (operation.op === 'addEvent') {
        const eventTime = timeOf(operation.time);
        returned = operation.timeFirst && operation.attributes === undefined ? span.addEvent(operation.name, eventTime) : span.addEvent(operation.name, operation.attributes, eventTime);
      } else if (operation.op === 'recordException') returned = span.recordException(operation.exception, timeOf(operation.time));
      else if (operation.op === 'setStatus') returned = span.setStatus(operation.status);
      else if (operation.op === 'updateName') returned = span.updateName(operation.name);
      else if (operation.op === 'addLink') returned = span.addLink(linkTo(operation.sampled, operation.attributes));
      else returned = span.end(timeOf(operation.time));
      log.push([operation.op, returned === span ? 'this' : returned, span.isRecording()]);
    }
    // Every span ended at last (some for the second time), so each recorded one reaches onEnd.
    for (const span of spans) {
      span.end();
      log.push(['end at last', span.isRecording()]);
    }
    await simple.forceFlush();
  } finally {
    mathRandom.mockRestore();
  }
  const exported = exporter.getFinishedSpans();
  const timeOrderViolations = exported.flatMap((span) => {
    const duration = hrTimeDuration(span.startTime, span.endTime);
    const ordered = duration[0] >= 0 && duration[0] === span.duration[0] && duration[1] === span.duration[1];
    return ordered ? [] : [`${span.name}: start ${span.startTime.join('.')} end ${span.endTime.join('.')} duration ${span.duration.join('.')}`];
  });
  return { log, otlp: Buffer.from(encodeTraceExportRequest(exported.map(withFixedTimes))).toString('hex'), timeOrderViolations };
}

describe('the lean gateway tracer', () => {
  it("gives the processors and the exporter what the SDK's Tracer gives them, for generated operations", async () => {
    let recordedSpans = 0;
    await fc.assert(
      fc.asyncProperty(scenario, async (generated) => {
        const sdk = await run(generated, sdkTracer);
        const lean = await run(generated, leanTracer);
        expect(sdk.timeOrderViolations).toEqual([]);
        expect(lean.timeOrderViolations).toEqual([]);
        expect(lean.log).toEqual(sdk.log);
        expect(lean.otlp).toBe(sdk.otlp);
        recordedSpans += sdk.log.filter((entry) => (entry as unknown[])[0] === 'onEnd' && (entry as unknown[])[1] === 'second').length;
      }),
      { seed: 1212, numRuns: 400 },
    );
    // The comparison covered recorded spans (about 700 with this seed), not only non-recording ones.
    expect(recordedSpans).toBeGreaterThan(500);
  });

  it('gives a root span the trace id the gateway requested, and leaves it alone for a child', () => {
    const requested = '0af7651916cd43dd8448eb211c80319c';
    const next = '4bf92f3577b34da6a3ce929d0e0e4736';
    const tracer = createGatewayTracer({ sampler: new AlwaysOnSampler(), idGenerator: new RequestedTraceIdGenerator(), resource: RESOURCE, spanProcessors: [] });
    const server = withTraceId(requested, () => tracer.startSpan('GET', { kind: SpanKind.SERVER }, ROOT_CONTEXT));
    expect(server.spanContext().traceId).toBe(requested);
    // A child started while an id is requested keeps its parent's trace id and leaves the id to the next root.
    const [client, root] = withTraceId(next, () => [
      tracer.startSpan('GET', { kind: SpanKind.CLIENT }, trace.setSpan(ROOT_CONTEXT, server)),
      tracer.startSpan('GET', { kind: SpanKind.SERVER }, ROOT_CONTEXT),
    ]);
    expect(client!.spanContext().traceId).toBe(requested);
    expect(root!.spanContext().traceId).toBe(next);
  });

  it('starts a span handed a start (a request arrival) then, on the clock its end is read from', async () => {
    const tracer = createGatewayTracer({ sampler: new AlwaysOnSampler(), idGenerator: new RequestedTraceIdGenerator(), resource: RESOURCE, spanProcessors: [] });
    const arrived = performance.now();
    await new Promise((resolve) => setTimeout(resolve, 30));
    const before = tracer.startSpan('GET', {}, ROOT_CONTEXT) as GatewaySpan;
    const span = startSpanOwning(tracer, 'GET', { attributes: {} }, ROOT_CONTEXT, arrived) as GatewaySpan;
    // The next span, started without one, starts now again: the handed start was for the one span.
    const after = tracer.startSpan('GET', {}, ROOT_CONTEXT) as GatewaySpan;
    span.end();
    before.end();
    const ms = (time: HrTime) => time[0] * 1e3 + time[1] / 1e6;
    // 30 ms and more before the span started without one, on the same origin (a millisecond of rounding at most).
    expect(ms(before.startTime) - ms(span.startTime)).toBeGreaterThanOrEqual(29);
    expect(ms(after.startTime)).toBeGreaterThanOrEqual(ms(before.startTime));
    // Its end read from the same clock: the duration covers the wait, on the clock's sub-millisecond steps.
    expect(ms(span.duration)).toBeGreaterThanOrEqual(29);
    expect((span.endTime[0] - span.startTime[0]) * 1e9 + span.endTime[1] - span.startTime[1]).toBe(span.duration[0] * 1e9 + span.duration[1]);
    expect(ms(span.endTime)).toBeGreaterThanOrEqual(ms(before.endTime) - 1);
  });

  // The once-a-second check of the wall clock's origin ran against the handed start, read before the pipeline's
  // turn: the origin moved by the wait, and the span started that much later than it arrived, as every span did
  // for the next second.
  it('starts a span handed a start at that time even when the clock checks its origin on that read', async () => {
    const tracer = createGatewayTracer({ sampler: new AlwaysOnSampler(), idGenerator: new RequestedTraceIdGenerator(), resource: RESOURCE, spanProcessors: [] });
    const ms = (time: HrTime) => time[0] * 1e3 + time[1] / 1e6;
    // Past the check's interval since any read: the next read checks the origin.
    await new Promise((resolve) => setTimeout(resolve, 1100));
    const arrivedWall = Date.now();
    const arrived = performance.now();
    await new Promise((resolve) => setTimeout(resolve, 40));
    const span = startSpanOwning(tracer, 'GET', { attributes: {} }, ROOT_CONTEXT, arrived) as GatewaySpan;
    span.end();
    expect(Math.abs(ms(span.startTime) - arrivedWall)).toBeLessThan(5);
    expect(ms(span.duration)).toBeGreaterThanOrEqual(39);
  });

  // The origin, moved to follow a wall-clock step (NTP), was applied to spans already open: a +1 h step exported a
  // 1.3 s span as one of an hour, a -1 h step as one of 0 ms. SpanImpl reads an open span's times on its own offset.
  describe('with the wall clock stepped while a span is open', () => {
    const wallClock = steppableWallClock();
    beforeEach(() => wallClock.install());
    afterEach(() => wallClock.restore());
    const ms = (time: HrTime) => time[0] * 1e3 + time[1] / 1e6;

    it.each([
      { desc: 'forward an hour', stepMs: 3_600_000 },
      { desc: 'back an hour', stepMs: -3_600_000 },
    ])('exports the time that passed as its duration, the step ($desc) in none of it', async ({ stepMs }) => {
      const tracer = createGatewayTracer({ sampler: new AlwaysOnSampler(), idGenerator: new RequestedTraceIdGenerator(), resource: RESOURCE, spanProcessors: [] });
      const started = performance.now();
      const span = tracer.startSpan('GET', {}, ROOT_CONTEXT) as GatewaySpan;
      // Past the origin check's interval: the next clock read compares the origin with the stepped wall clock.
      await new Promise((resolve) => setTimeout(resolve, 1100));
      wallClock.step(stepMs);
      span.addEvent('retry');
      span.end();
      const elapsedMs = performance.now() - started;
      expect(ms(span.duration)).toBeGreaterThanOrEqual(1099);
      expect(ms(span.duration)).toBeLessThanOrEqual(elapsedMs + 1);
      // An event without a time is read on the span's clock too, between its start and end.
      const eventMs = ms(span.events[0]!.time);
      expect(eventMs).toBeGreaterThanOrEqual(ms(span.startTime) + 1099);
      expect(eventMs).toBeLessThanOrEqual(ms(span.endTime));
      // A span started after the step starts on the stepped wall clock, as the log lines written with it do.
      const next = tracer.startSpan('GET', {}, ROOT_CONTEXT) as GatewaySpan;
      expect(Math.abs(ms(next.startTime) - Date.now())).toBeLessThan(5);
      next.end();
    });
  });

  it('keeps a frozen array of scalars as it is, and copies any other (or one with a string to cut)', () => {
    const tracer = createGatewayTracer({ sampler: new AlwaysOnSampler(), idGenerator: new RequestedTraceIdGenerator(), resource: RESOURCE, spanProcessors: [], spanLimits: { attributeValueLengthLimit: 5 } });
    const span = tracer.startSpan('GET', {}, ROOT_CONTEXT) as GatewaySpan;
    const frozen = Object.freeze(['user', 1, true]) as unknown as string[];
    const unfrozen = ['user'];
    const tooLong = Object.freeze(['administrator']) as unknown as string[];
    span.setAttribute('frozen', frozen).setAttribute('unfrozen', unfrozen).setAttribute('too.long', tooLong);
    expect(span.attributes.frozen).toBe(frozen);
    expect(span.attributes.unfrozen).not.toBe(unfrozen);
    expect(span.attributes.unfrozen).toEqual(['user']);
    expect(span.attributes['too.long']).toEqual(['admin']);
  });

  it("takes a ValidIdGenerator's ids as checked, and checks any other generator's", () => {
    // Ids no W3C parser accepts, from a generator that vouches for them and from one that does not: only the
    // vouched ones are taken as valid unread (the tracer does not scan what a ValidIdGenerator made).
    const invalid = { generateTraceId: () => 'not-a-trace-id', generateSpanId: () => '0000000000000000' };
    const vouching: ValidIdGenerator = { ...invalid, makesValidIds: true };
    const vouched = createGatewayTracer({ sampler: new AlwaysOnSampler(), idGenerator: vouching, resource: RESOURCE, spanProcessors: [] });
    const unvouched = createGatewayTracer({ sampler: new AlwaysOnSampler(), idGenerator: invalid, resource: RESOURCE, spanProcessors: [] });
    expect(isValidSpanContext(vouched.startSpan('GET', {}, ROOT_CONTEXT).spanContext())).toBe(true);
    expect(isValidSpanContext(unvouched.startSpan('GET', {}, ROOT_CONTEXT).spanContext())).toBe(false);
    // The gateway's generator vouches, and keeps its word: a requested id that is not a valid trace id is not used.
    const generator = new RequestedTraceIdGenerator();
    expect(generator.makesValidIds).toBe(true);
    for (const requested of ['0'.repeat(32), 'not-a-trace-id', '0AF7651916CD43DD8448EB211C80319Z']) {
      expect(withTraceId(requested, () => generator.generateTraceId())).toMatch(/^(?!0{32})[0-9a-f]{32}$/);
    }
  });
});

describe('the telemetry bootstrap (otel/sdk.ts)', () => {
  it('names the schema of the semantic conventions installed, which the gateway span attributes are taken from', () => {
    const installed = JSON.parse(fs.readFileSync(path.join(path.dirname(require.resolve('@opentelemetry/semantic-conventions')), '..', 'package.json'), 'utf8')) as { version: string };
    expect(GATEWAY_SCHEMA_URL).toBe(`https://opentelemetry.io/schemas/${installed.version}`);
  });


  it("gives the gateway's tracer name the lean tracer and every other name the SDK's, and flushes both at shutdown", async () => {
    const receiver = await startOtlpReceiver();
    try {
      const otelDir = await compileTelemetryBootstrap();
      // A process with the bootstrap preloaded, as every service runs; it says which spans were the lean tracer's.
      const script = `
        const { trace } = require('@opentelemetry/api');
        const { GatewaySpan } = require(${JSON.stringify(path.join(otelDir, 'gateway-tracer.js'))});
        const { shutdownTelemetry } = require(${JSON.stringify(path.join(otelDir, 'telemetry.js'))});
        const spans = {
          gateway: trace.getTracer(${JSON.stringify(GATEWAY_TRACER_NAME)}).startSpan('gateway span'),
          instrumentation: trace.getTracer('some-instrumentation').startSpan('instrumentation span'),
          versioned: trace.getTracer(${JSON.stringify(GATEWAY_TRACER_NAME)}, '9.9.9').startSpan('versioned span'),
        };
        const lean = Object.fromEntries(Object.entries(spans).map(([name, span]) => [name, span instanceof GatewaySpan]));
        for (const span of Object.values(spans)) span.end();
        shutdownTelemetry().then(() => console.log(JSON.stringify(lean)));
      `;
      const { stdout } = await promisify(execFile)(process.execPath, ['--require', path.join(otelDir, 'register.js'), '-e', script], {
        cwd: path.resolve(__dirname, '../..'),
        env: {
          PATH: process.env.PATH,
          OTEL_SERVICE_NAME: 'lean-tracer-test',
          OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
          OTEL_METRICS_EXPORTER: 'none',
          OTEL_LOGS_EXPORTER: 'none',
          OTEL_NODE_ENABLED_INSTRUMENTATIONS: 'none',
          // Long enough that only the flush at shutdown can deliver the spans.
          OTEL_BSP_SCHEDULE_DELAY: '60000',
        },
      });
      expect(JSON.parse(stdout.trim().split('\n').at(-1)!)).toEqual({ gateway: true, instrumentation: false, versioned: false });
      const received = receiver.spans().map((span) => [span.name, span.scope.name, span.scope.version ?? null, span.scope.schemaUrl ?? null]);
      // The lean tracer's scope carries the process's version and the conventions' schema URL, though asked without.
      expect(received.sort()).toEqual([
        ['gateway span', GATEWAY_TRACER_NAME, readPackageVersion(), GATEWAY_SCHEMA_URL],
        ['instrumentation span', 'some-instrumentation', null, null],
        ['versioned span', GATEWAY_TRACER_NAME, '9.9.9', null],
      ]);
    } finally {
      await receiver.close();
    }
  });
});
