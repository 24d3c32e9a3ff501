import { context, propagation, SpanKind } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { CompositePropagator, W3CBaggagePropagator, W3CTraceContextPropagator } from '@opentelemetry/core';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider } from '@opentelemetry/sdk-trace';
import { sampler } from '../../otel/sdk';
import { createTextMapPropagator } from '../../otel/trace-context-propagator';
import { ClientTraceIdSampler, RequestedTraceIdGenerator, TRACE_ID_FROM_REQUEST_ID } from '../../otel/trace-ids';
import { ATTR, HEADER } from '../../otel/wire-names';
import { login, startStack, type TestStack } from '../helpers/stack';

/**
 * The gateway's root spans under OTEL_TRACES_SAMPLER=parentbased_traceidratio, OTEL_TRACES_SAMPLER_ARG=0.5,
 * with the sampler the telemetry bootstrap installs. This UUID's trace id is one the bare ratio sampler
 * samples at any ratio (its 32-bit words XOR to 0x2a), so a client that knew the trick was always traced.
 */
const CLIENT_ID = '5ca1ab1e-c0de-4a11-9e5f-12340220f311';
const CLIENT_TRACE_ID = '5ca1ab1ec0de4a119e5f12340220f311';

describe('client request ids and sampling', () => {
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({
    idGenerator: new RequestedTraceIdGenerator(),
    sampler: new ClientTraceIdSampler(sampler({ name: 'parentbased_traceidratio', ratio: 0.5 })),
    spanProcessors: [new SimpleSpanProcessor({ exporter })],
  });
  const tracer = provider.getTracer('test');
  let mapping: TestStack;
  let notMapping: TestStack;

  beforeAll(async () => {
    // What NodeSDK installs, as in test/helpers/in-memory-tracing.ts.
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(new CompositePropagator({ propagators: [new W3CTraceContextPropagator(), new W3CBaggagePropagator()] }));
    mapping = await startStack({ tracer });
    notMapping = await startStack({ tracer, env: { MAP_REQUEST_ID_TO_TRACE_ID: 'false' } });
  });
  afterAll(async () => {
    await mapping.close();
    await notMapping.close();
    await provider.shutdown();
    context.disable();
    propagation.disable();
  });
  beforeEach(() => exporter.reset());

  const serverSpans = () => exporter.getFinishedSpans().filter((span) => span.kind === SpanKind.SERVER);
  const waitForSpans = async (count: number) => {
    for (let i = 0; i < 50 && serverSpans().length < count; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  };

  it('samples a request whose X-Request-Id became its trace id by the ratio, not by the id the client chose', async () => {
    const traceresponses: string[] = [];
    for (let i = 0; i < 100; i++) {
      const response = await fetch(`${mapping.gateway.url}/api/nothing`, { headers: { [HEADER.requestId]: CLIENT_ID } });
      await response.arrayBuffer();
      expect(response.headers.get(HEADER.requestId)).toBe(CLIENT_ID);
      traceresponses.push(response.headers.get(HEADER.traceresponse)!);
    }
    // The one-id promise holds whether sampled or not: the client's UUID is the trace id.
    for (const header of traceresponses) expect(header).toMatch(new RegExp(`^00-${CLIENT_TRACE_ID}-[0-9a-f]{16}-0[01]$`));
    const sampled = traceresponses.filter((header) => header.endsWith('-01')).length;
    // Binomial(100, 0.5): all or none of 100 has a chance of 2^-99 per run.
    expect(sampled).toBeGreaterThan(0);
    expect(sampled).toBeLessThan(100);
    await waitForSpans(sampled);
    expect(serverSpans()).toHaveLength(sampled);
    for (const span of serverSpans()) {
      expect(span.spanContext().traceId).toBe(CLIENT_TRACE_ID);
      expect(span.attributes[ATTR.traceIdSource]).toBe(TRACE_ID_FROM_REQUEST_ID);
      expect(span.attributes[ATTR.requestId]).toBe(CLIENT_ID);
    }
  });

  it('with mapRequestIdToTraceId false, keeps the client id as request.id only and gives the trace its own id', async () => {
    // Repeated, so at ratio 0.5 some request is sampled (all 20 unsampled: a chance of 2^-20).
    let response: Response | undefined;
    for (let i = 0; i < 20 && serverSpans().length === 0; i++) {
      response = await fetch(`${notMapping.gateway.url}/api/nothing`, { headers: { [HEADER.requestId]: CLIENT_ID } });
      await response.arrayBuffer();
      expect(response.headers.get(HEADER.requestId)).toBe(CLIENT_ID);
      expect(response.headers.get(HEADER.traceresponse)).not.toContain(CLIENT_TRACE_ID);
      await waitForSpans(1);
    }
    const [server] = serverSpans();
    expect(server!.spanContext().traceId).toMatch(/^[0-9a-f]{32}$/);
    expect(server!.spanContext().traceId).not.toBe(CLIENT_TRACE_ID);
    expect(server!.attributes[ATTR.requestId]).toBe(CLIENT_ID);
    expect(server!.attributes[ATTR.traceIdSource]).toBeUndefined();
    expect(response!.headers.get(HEADER.traceresponse)).toBe(`00-${server!.spanContext().traceId}-${server!.spanContext().spanId}-03`);
  });
});

/**
 * Under a plain OTEL_TRACES_SAMPLER=traceidratio every span is decided by the ratio sampler, children too. The
 * gateway's CLIENT span under a root whose id the client chose was decided from that id: with this UUID every call
 * to a service was recorded and sent `sampled`, whatever the root's coin flip said.
 */
describe('client request ids under a plain traceidratio sampler', () => {
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({
    idGenerator: new RequestedTraceIdGenerator(),
    sampler: new ClientTraceIdSampler(sampler({ name: 'traceidratio', ratio: 0.5 })),
    spanProcessors: [new SimpleSpanProcessor({ exporter })],
  });
  let stack: TestStack;
  let token: string;

  beforeAll(async () => {
    context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable());
    propagation.setGlobalPropagator(createTextMapPropagator());
    stack = await startStack({ tracer: provider.getTracer('test') });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await provider.shutdown();
    context.disable();
    propagation.disable();
  });

  it('sends the service the decision of the root span, not one drawn from the id the client chose', async () => {
    const decisions: { root: string; call: string }[] = [];
    for (let i = 0; i < 40; i++) {
      const response = await fetch(`${stack.gateway.url}/api/users/1`, { headers: { authorization: `Bearer ${token}`, [HEADER.requestId]: CLIENT_ID } });
      await response.arrayBuffer();
      expect(response.status).toBe(200);
      const sent = String(stack.users.requests.at(-1)!.headers.traceparent);
      expect(sent).toMatch(new RegExp(`^00-${CLIENT_TRACE_ID}-`));
      // Neither says the id is random: the client chose it.
      decisions.push({ root: response.headers.get(HEADER.traceresponse)!.slice(-2), call: sent.slice(-2) });
    }
    expect(decisions.map(({ call }) => call)).toEqual(decisions.map(({ root }) => root));
    const sampled = decisions.filter(({ root }) => root === '01').length;
    // Binomial(40, 0.5): all or none of 40 has a chance of 2^-39 per run.
    expect(sampled).toBeGreaterThan(0);
    expect(sampled).toBeLessThan(40);
  });
});
