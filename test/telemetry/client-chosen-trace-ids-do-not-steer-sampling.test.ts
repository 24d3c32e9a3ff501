import { randomUUID } from 'node:crypto';
import { ROOT_CONTEXT, SpanKind, TraceFlags, trace, type Attributes, type Context } from '@opentelemetry/api';
import { ParentBasedSampler, SamplingDecision, TraceIdRatioBasedSampler, type Sampler } from '@opentelemetry/sdk-trace';
import { sampler } from '../../otel/sdk';
import { setRandomTraceIdFlag } from '../../otel/trace-context-propagator';
import { ClientTraceIdSampler, RandomTraceIdRatioSampler, TRACE_ID_FROM_REQUEST_ID } from '../../otel/trace-ids';
import { ATTR } from '../../otel/wire-names';

/**
 * A trace id a client can send as the UUID `5ca1ab1e-c0de-4a11-9e5f-12340220f311`: its four 32-bit words XOR to
 * 0x2a, so TraceIdRatioBasedSampler samples it at any ratio above 1e-8. Before the fix, a client sending it
 * was always traced (and one XORing to 0xffffffff never).
 */
const ALWAYS_SAMPLED_ID = '5ca1ab1ec0de4a119e5f12340220f311';
const FROM_CLIENT: Attributes = { [ATTR.traceIdSource]: TRACE_ID_FROM_REQUEST_ID };

const decide = (s: Sampler, attributes: Attributes, context: Context = ROOT_CONTEXT, traceId = ALWAYS_SAMPLED_ID) =>
  s.shouldSample(context, traceId, 'GET', SpanKind.SERVER, attributes, []).decision;
const sampledCount = (s: Sampler, attributes: Attributes, context?: Context, times = 400) =>
  Array.from({ length: times }, () => decide(s, attributes, context)).filter((d) => d === SamplingDecision.RECORD_AND_SAMPLED).length;

/** Records the trace id each decision was asked about. */
function spyOn(inner: Sampler): { sampler: Sampler; traceIds: string[] } {
  const traceIds: string[] = [];
  return {
    traceIds,
    sampler: {
      shouldSample: (...args: Parameters<Sampler['shouldSample']>) => {
        traceIds.push(args[1]);
        return inner.shouldSample(...args);
      },
    },
  };
}

describe('ClientTraceIdSampler', () => {
  const ratio = new TraceIdRatioBasedSampler(0.25);
  const wrapped = new ClientTraceIdSampler(ratio);

  it('samples a client-chosen root trace id at the configured ratio, not by the id', () => {
    expect(sampledCount(ratio, FROM_CLIENT)).toBe(400);
    // Binomial(400, 0.25): mean 100, standard deviation 8.7; outside [40, 160] is ~7 deviations out, a
    // chance below 1e-11 per run, so a failure here means the decision still follows the id.
    const count = sampledCount(wrapped, FROM_CLIENT);
    expect(count).toBeGreaterThanOrEqual(40);
    expect(count).toBeLessThanOrEqual(160);
  });

  it('decides unmarked root spans by their own id, unchanged', () => {
    expect(sampledCount(wrapped, {})).toBe(400);
    expect(sampledCount(wrapped, { [ATTR.traceIdSource]: 'something-else' })).toBe(400);
    const spy = spyOn(ratio);
    const randomIds = Array.from({ length: 200 }, () => randomUUID().replaceAll('-', ''));
    for (const id of randomIds) expect(decide(new ClientTraceIdSampler(spy.sampler), {}, ROOT_CONTEXT, id)).toBe(decide(ratio, {}, ROOT_CONTEXT, id));
    expect(spy.traceIds).toEqual(randomIds);
  });

  it('asks the inner sampler about a fresh random id for a marked root span, never the client id', () => {
    const spy = spyOn(ratio);
    const spied = new ClientTraceIdSampler(spy.sampler);
    for (let i = 0; i < 20; i++) decide(spied, FROM_CLIENT);
    expect(spy.traceIds).toHaveLength(20);
    expect(new Set(spy.traceIds).size).toBe(20);
    for (const id of spy.traceIds) expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(spy.traceIds).not.toContain(ALWAYS_SAMPLED_ID);
  });

  const parent = (traceFlags: TraceFlags, isRemote: boolean) =>
    trace.setSpanContext(ROOT_CONTEXT, { traceId: ALWAYS_SAMPLED_ID, spanId: 'b7ad6b7169203331', traceFlags, isRemote });

  it.each([
    { desc: 'a local sampled parent', context: parent(TraceFlags.SAMPLED, false), expected: 400 },
    { desc: 'a local unsampled parent', context: parent(TraceFlags.NONE, false), expected: 0 },
    { desc: 'a remote sampled parent', context: parent(TraceFlags.SAMPLED, true), expected: 400 },
    { desc: 'a remote unsampled parent', context: parent(TraceFlags.NONE, true), expected: 0 },
  ])('leaves a span with $desc to the parent-based decision, marked or not', ({ context, expected }) => {
    const parentBased = new ClientTraceIdSampler(new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(0.25) }));
    expect(sampledCount(parentBased, FROM_CLIENT, context)).toBe(expected);
    expect(sampledCount(parentBased, {}, context)).toBe(expected);
  });

  it('redraws under parentbased_traceidratio too, where a new trace goes to the ratio sampler', () => {
    const parentBased = new ClientTraceIdSampler(sampler({ name: 'parentbased_traceidratio', ratio: 0.25 }));
    const count = sampledCount(parentBased, FROM_CLIENT);
    expect(count).toBeGreaterThanOrEqual(40);
    expect(count).toBeLessThanOrEqual(160);
  });
});

// W3C Trace Context Level 2: sampling "based on these bytes" is what the random flag allows. A plain traceidratio
// decides children too, and decided those of a client-chosen id from that id (always kept, for this one).
describe('RandomTraceIdRatioSampler (OTEL_TRACES_SAMPLER=traceidratio)', () => {
  const ratio = new RandomTraceIdRatioSampler(0.25);
  const child = (traceFlags: TraceFlags, isRemote: boolean, random?: boolean) => {
    const context = trace.setSpanContext(ROOT_CONTEXT, { traceId: ALWAYS_SAMPLED_ID, spanId: 'b7ad6b7169203331', traceFlags, isRemote });
    return random === undefined ? context : setRandomTraceIdFlag(context, ALWAYS_SAMPLED_ID, random);
  };

  it.each([
    { desc: 'a child of a sampled root whose id a client chose', context: child(TraceFlags.SAMPLED, false, false), expected: 400 },
    { desc: 'a child of an unsampled root whose id a client chose', context: child(TraceFlags.NONE, false, false), expected: 0 },
    { desc: 'a span under a remote sampled parent without the random flag', context: child(TraceFlags.SAMPLED, true), expected: 400 },
    { desc: 'a span under a remote unsampled parent without the random flag', context: child(TraceFlags.NONE, true), expected: 0 },
  ])('gives $desc its parent’s decision', ({ context, expected }) => {
    expect(sampledCount(ratio, {}, context)).toBe(expected);
  });

  it.each([
    { desc: 'a root span', context: ROOT_CONTEXT },
    { desc: 'a span under a remote unsampled parent with the random flag', context: child(TraceFlags.NONE | 0x02, true) },
    { desc: 'a span of a trace started here (the SDK’s ids are random)', context: child(TraceFlags.NONE, false) },
  ])('decides $desc from its trace id', ({ context }) => {
    expect(sampledCount(ratio, {}, context)).toBe(400);
  });
});

describe('the sampler OTEL_TRACES_SAMPLER names', () => {
  it.each([
    { name: 'always_on', ratio: 1, expected: 'AlwaysOnSampler' },
    { name: 'always_off', ratio: 1, expected: 'AlwaysOffSampler' },
    { name: 'traceidratio', ratio: 0.25, expected: 'RandomTraceIdRatio{TraceIdRatioBased{0.25}}' },
    { name: 'parentbased_always_on', ratio: 1, expected: 'ParentBased{root=AlwaysOnSampler, ' },
    { name: 'parentbased_always_off', ratio: 1, expected: 'ParentBased{root=AlwaysOffSampler, ' },
    { name: 'parentbased_traceidratio', ratio: 0.1, expected: 'ParentBased{root=TraceIdRatioBased{0.1}, ' },
  ] as const)('is built for $name as NodeSDK builds it (traceidratio: from random ids only)', ({ name, ratio, expected }) => {
    expect(sampler({ name, ratio }).toString().slice(0, expected.length)).toBe(expected);
  });
});
