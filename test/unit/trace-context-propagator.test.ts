import { defaultTextMapGetter, defaultTextMapSetter, propagation, ROOT_CONTEXT, trace, type Context, type TextMapPropagator } from '@opentelemetry/api';
import { suppressTracing } from '@opentelemetry/core';
import { TracerProvider } from '@opentelemetry/sdk-trace';
import { createTextMapPropagator, setRandomTraceIdFlag, TraceContextPropagator } from '../../otel/trace-context-propagator';

const TRACE = '0af7651916cd43dd8448eb211c80319c';
const PARENT = 'b7ad6b7169203331';
const tracer = new TracerProvider().getTracer('test');
const w3c = new TraceContextPropagator();

const extract = (headers: Record<string, string | string[]>, propagator: TextMapPropagator = w3c) => propagator.extract(ROOT_CONTEXT, headers, defaultTextMapGetter);
const inject = (context: Context, propagator: TextMapPropagator = w3c) => {
  const headers: Record<string, string> = {};
  propagator.inject(context, headers, defaultTextMapSetter);
  return headers;
};
/** What a service sends on after starting its own span under the extracted parent (the SDK gives it flags 01). */
const throughChildSpan = (parent: Context, propagator: TextMapPropagator = w3c) => {
  const span = tracer.startSpan('child', {}, parent);
  expect(span.spanContext().traceFlags).toBe(1);
  return inject(trace.setSpan(parent, span), propagator);
};

describe('TraceContextPropagator', () => {
  it.each([
    { desc: 'sampled and random', flags: '03' },
    { desc: 'random, not sampled', flags: '02' },
    { desc: 'sampled, not random', flags: '01' },
  ])('keeps the random flag of a parent that is $desc across a child span the SDK starts', ({ flags }) => {
    const parent = extract({ traceparent: `00-${TRACE}-${PARENT}-${flags}` });
    const span = tracer.startSpan('child', {}, parent);
    const sent = inject(trace.setSpan(parent, span));
    const sampled = span.spanContext().traceFlags & 1;
    expect(sent.traceparent).toBe(`00-${TRACE}-${span.spanContext().spanId}-0${sampled | (Number.parseInt(flags, 16) & 2)}`);
  });

  it('passes on the tracestate it accepted, without the whitespace it came with', () => {
    const parent = extract({ traceparent: `00-${TRACE}-${PARENT}-01`, tracestate: 'rojo=00f067aa0ba902b7 ,\tcongo=t61rcWkgMzE, foo@=1' });
    expect(trace.getSpanContext(parent)?.traceState?.get('congo')).toBe('t61rcWkgMzE');
    expect(throughChildSpan(parent).tracestate).toBe('rojo=00f067aa0ba902b7,congo=t61rcWkgMzE,foo@=1');
  });

  it('drops a tracestate it refuses but continues the trace', () => {
    const parent = extract({ traceparent: `00-${TRACE}-${PARENT}-01`, tracestate: 'foo=,bar=3' });
    const sent = throughChildSpan(parent);
    expect(sent.traceparent).toMatch(new RegExp(`^00-${TRACE}-`));
    expect(sent.tracestate).toBeUndefined();
  });

  it('reads no tracestate when the traceparent is invalid, and leaves the context alone', () => {
    expect(extract({ traceparent: `00-${TRACE}-${PARENT}-01-extra`, tracestate: 'foo=1' })).toBe(ROOT_CONTEXT);
  });

  it('sends a remote parent unchanged when no span was started, flags included', () => {
    const parent = extract({ traceparent: `cc-${TRACE}-${PARENT}-ff-future`, tracestate: 'foo=1' });
    expect(inject(parent)).toEqual({ traceparent: `00-${TRACE}-${PARENT}-03`, tracestate: 'foo=1' });
  });

  // W3C Trace Context: "If the value of the traceparent field wasn't changed before propagation, tracestate MUST NOT
  // be modified as well". Only a participant that writes its own parent id may cut the list or drop a repeat.
  it('sends a remote parent’s tracestate as it came, uncut, and cuts it only under a span of its own', () => {
    const long = `congo=t61rcWkgMzE, rojo=1,congo=again,a=${'v'.repeat(198)},b=${'v'.repeat(198)},c=${'v'.repeat(198)}`;
    const parent = extract({ traceparent: `00-${TRACE}-${PARENT}-01`, tracestate: [` ${long}`, 'd=4'] });
    expect(inject(parent)).toEqual({ traceparent: `00-${TRACE}-${PARENT}-01`, tracestate: `${long},d=4` });
    const cut = throughChildSpan(parent).tracestate!;
    expect(cut.length).toBeLessThanOrEqual(512);
    expect(cut).toBe(`congo=t61rcWkgMzE,rojo=1,a=${'v'.repeat(198)},b=${'v'.repeat(198)},d=4`);
    // A list the process changed is its own: sent in its canonical form.
    const changed = trace.setSpanContext(parent, { ...trace.getSpanContext(parent)!, traceState: trace.getSpanContext(parent)!.traceState!.set('mine', '1') });
    expect(inject(changed).tracestate).toBe(`mine=1,${cut}`);
  });

  it('does not lend the random flag recorded for one trace to another', () => {
    const other = tracer.startSpan('other', { root: true });
    const context = trace.setSpan(setRandomTraceIdFlag(ROOT_CONTEXT, TRACE, true), other);
    expect(inject(context).traceparent).toBe(`00-${other.spanContext().traceId}-${other.spanContext().spanId}-01`);
  });

  it.each([
    { desc: 'with localTraceIdsAreRandom', propagator: new TraceContextPropagator({ localTraceIdsAreRandom: true }), flags: '03' },
    { desc: 'by default', propagator: w3c, flags: '01' },
  ])('marks a trace this process started $desc', ({ propagator, flags }) => {
    const root = tracer.startSpan('root');
    expect(inject(trace.setSpan(ROOT_CONTEXT, root), propagator).traceparent).toBe(`00-${root.spanContext().traceId}-${root.spanContext().spanId}-${flags}`);
  });

  it('injects nothing when tracing is suppressed or there is no valid span', () => {
    const parent = extract({ traceparent: `00-${TRACE}-${PARENT}-01` });
    expect(inject(suppressTracing(parent))).toEqual({});
    expect(inject(ROOT_CONTEXT)).toEqual({});
  });
});

describe('createTextMapPropagator', () => {
  it('carries baggage beside the trace context, as the request id travels', () => {
    const propagator = createTextMapPropagator();
    const parent = extract({ traceparent: `00-${TRACE}-${PARENT}-03`, baggage: 'request.id=abc' }, propagator);
    expect(propagation.getBaggage(parent)?.getEntry('request.id')?.value).toBe('abc');
    const sent = throughChildSpan(parent, propagator);
    expect(sent.traceparent).toMatch(new RegExp(`^00-${TRACE}-[0-9a-f]{16}-03$`));
    expect(sent.baggage).toBe('request.id=abc');
    expect(propagator.fields()).toEqual(['traceparent', 'tracestate', 'baggage']);
  });
});
