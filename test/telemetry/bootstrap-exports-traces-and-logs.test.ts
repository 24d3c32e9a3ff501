/**
 * The telemetry bootstrap end to end: a Koa service started with `--require register.js`, a real OTLP/HTTP
 * receiver, and assertions on what the exporters actually sent.
 */
import { startOtlpReceiver, type OtlpReceiver, type ReceivedSpan } from '../helpers/otlp-receiver';
import { ATTR, LOG_FIELD, SERVICE_NAME } from '../../otel/wire-names';
import { newTraceparent, startInstrumentedApp, stopAllInstrumentedApps } from './instrumented-app';

const FAST_EXPORT = { OTEL_BSP_SCHEDULE_DELAY: '100', OTEL_BLRP_SCHEDULE_DELAY: '100' };

let receiver: OtlpReceiver;

beforeAll(async () => {
  receiver = await startOtlpReceiver();
});
afterEach(() => receiver.clear());
afterAll(async () => {
  await stopAllInstrumentedApps();
  await receiver.close();
});

describe.each([
  { protocol: 'http/protobuf', contentType: 'application/x-protobuf' },
  { protocol: 'http/json', contentType: 'application/json' },
])('over OTLP $protocol', ({ protocol, contentType }) => {
  it('continues the caller trace, tags every span with the baggage request id, and ships the log line', async () => {
    const app = await startInstrumentedApp({
      ...FAST_EXPORT,
      OTEL_SERVICE_NAME: SERVICE_NAME.users,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
    });
    const { traceparent, traceId, parentSpanId } = newTraceparent();

    const response = await fetch(`${app.url}/hello`, { headers: { traceparent, baggage: 'request.id=abc' } });
    expect(response.status).toBe(200);

    const received = await receiver.waitFor(
      ({ spans, logs }) =>
        spans.some((s) => s.traceId === traceId && s.kind === 'SERVER') &&
        logs.some((l) => l.body === 'hello handled'),
    );
    const trace = received.spans.filter((s) => s.traceId === traceId);
    const server = trace.find((s) => s.kind === 'SERVER')!;
    expect(server).toMatchObject({
      name: 'GET /hello',
      parentSpanId,
      serviceName: SERVICE_NAME.users,
      attributes: expect.objectContaining({
        [ATTR.requestId]: 'abc',
        'http.request.method': 'GET',
        'http.route': '/hello',
        'http.response.status_code': 200,
      }),
    });
    expect(server.resource).toMatchObject({
      'service.name': SERVICE_NAME.users,
      'service.version': expect.any(String),
      'deployment.environment.name': 'test',
    });
    // Koa keeps one span per named middleware, plus the route; all carry the request id.
    expect(trace.map((s) => s.name)).toEqual(expect.arrayContaining(['middleware - timing', 'router - /hello']));
    for (const span of trace) expect(span.attributes[ATTR.requestId]).toBe('abc');

    const log = received.logs.find((l) => l.body === 'hello handled')!;
    const route = trace.find((s) => s.name === 'router - /hello')!;
    expect(log).toMatchObject({
      traceId,
      spanId: route.spanId,
      serviceName: SERVICE_NAME.users,
      severityText: 'info',
      severityNumber: 9,
      attributes: { [LOG_FIELD.requestId]: 'abc', user: 'u-1' },
    });
    expect(receiver.requests().every((r) => r.contentType === contentType)).toBe(true);

    // The same line on stdout carries the same correlation fields.
    expect(app.logLines().find((line) => line.message === 'hello handled')).toMatchObject({
      [LOG_FIELD.traceId]: traceId,
      [LOG_FIELD.spanId]: route.spanId,
      [LOG_FIELD.requestId]: 'abc',
    });
    app.kill();
  });
});

it('carries the trace and the request id through fetch to the next service, and leaves health probes out', async () => {
  const app = await startInstrumentedApp({
    ...FAST_EXPORT,
    OTEL_SERVICE_NAME: SERVICE_NAME.orders,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
  });
  const { traceparent, traceId } = newTraceparent();
  expect((await fetch(`${app.url}/health`)).status).toBe(404); // no such route here; what matters is no trace

  const response = await fetch(`${app.url}/chain`, { headers: { traceparent, baggage: 'request.id=req-42' } });
  expect(await response.json()).toEqual({ downstream: 200 });

  const isServer = (path: string) => (s: ReceivedSpan) => s.kind === 'SERVER' && s.attributes['url.path'] === path;
  const { spans } = await receiver.waitFor(
    ({ spans }) => spans.filter((s) => s.traceId === traceId && s.kind === 'SERVER').length === 2,
  );
  const trace = spans.filter((s) => s.traceId === traceId);
  const client = trace.find((s) => s.kind === 'CLIENT')!;
  const downstream = trace.find(isServer('/hello'))!;
  expect(client.scope.name).toBe('@opentelemetry/instrumentation-undici');
  expect(downstream.parentSpanId).toBe(client.spanId);
  expect(client.attributes[ATTR.requestId]).toBe('req-42');
  expect(downstream.attributes[ATTR.requestId]).toBe('req-42');
  expect(spans.filter(isServer('/health'))).toEqual([]);
  app.kill();
});

/**
 * instrumentation-undici wrote `http.request.method_original` on every span ("GET"/"GET"), and `url.query` as the
 * URL's search (`""`, `"?sig=..."`, unredacted); the conventions want the first only when it differs from
 * `http.request.method`, the second only when there is a query, without its `?` (audit 31, finding 5).
 */
it.each([
  { desc: 'GET without a query', method: 'GET', query: '', recorded: 'GET', original: undefined, urlQuery: undefined, full: '/hello' },
  { desc: 'POST with a query carrying a secret', method: 'POST', query: '?color=blue&sig=s3cr3t', recorded: 'POST', original: undefined, urlQuery: 'color=blue&sig=REDACTED', full: '/hello?color=blue&sig=REDACTED' },
  { desc: 'a method outside the list', method: 'PROPFIND', query: '?page=2', recorded: '_OTHER', original: 'PROPFIND', urlQuery: 'page=2', full: '/hello?page=2' },
  { desc: 'a known method in lower case (fetch sends patch as written)', method: 'patch', query: '', recorded: 'PATCH', original: 'patch', urlQuery: undefined, full: '/hello' },
])('records a fetch CLIENT span as the conventions say: $desc', async ({ method, query, recorded, original, urlQuery, full }) => {
  const app = await startInstrumentedApp({ ...FAST_EXPORT, OTEL_SERVICE_NAME: SERVICE_NAME.orders, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url });
  const { traceparent, traceId } = newTraceparent();
  await (await fetch(`${app.url}/chain${query}`, { headers: { traceparent, 'x-chain-method': method } })).arrayBuffer();
  const { spans } = await receiver.waitFor(({ spans }) => spans.some((s) => s.traceId === traceId && s.kind === 'CLIENT'));
  const client = spans.find((s) => s.traceId === traceId && s.kind === 'CLIENT')!;
  expect({
    method: client.attributes['http.request.method'],
    original: client.attributes['http.request.method_original'],
    query: client.attributes['url.query'],
    full: client.attributes['url.full'],
  }).toEqual({ method: recorded, original, query: urlQuery, full: `${app.url}${full}` });
  app.kill();
});

it('sends nothing and says so once when OTEL_SDK_DISABLED=true', async () => {
  // A receiver of its own: an export the previous test's process had in flight when it was killed can land on
  // the shared one after it was cleared (seen on a loaded machine), and "nothing" must mean nothing from this one.
  const own = await startOtlpReceiver();
  const app = await startInstrumentedApp({
    ...FAST_EXPORT,
    OTEL_SDK_DISABLED: 'true',
    OTEL_SERVICE_NAME: SERVICE_NAME.users,
    OTEL_EXPORTER_OTLP_ENDPOINT: own.url,
    FIXTURE_HANDLES_SIGTERM: '1',
  });
  const { traceparent } = newTraceparent();

  const response = await fetch(`${app.url}/hello`, { headers: { traceparent, baggage: 'request.id=abc' } });
  expect(response.status).toBe(200);
  // The process shuts down as services do (close, shutdownTelemetry, exit): once it has exited, whatever it
  // would ever have exported (the shutdown flushes) has reached the receiver.
  const closed = new Promise((resolve) => app.process.once('close', resolve));
  app.process.kill('SIGTERM');
  expect(await app.exited).toEqual({ code: 0, signal: null });
  await closed; // and its stdout is read to the end

  expect(own.requests()).toEqual([]);
  expect(app.stderr().trim()).toBe('telemetry: off (OTEL_SDK_DISABLED=true)');
  // Without the SDK there is no context to read, so lines carry no trace fields, and nothing else breaks.
  expect(app.logLines().find((line) => line.message === 'hello handled')).not.toHaveProperty(LOG_FIELD.traceId);
  app.kill();
  await own.close();
});

it('says once on stderr where telemetry goes', async () => {
  const app = await startInstrumentedApp({ OTEL_SERVICE_NAME: SERVICE_NAME.gateway, OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url });
  // stderr is its own pipe: the line can reach us after stdout's `listening`, though it was written first.
  for (let i = 0; i < 50 && !app.stderr().includes('\n'); i++) await new Promise((resolve) => setTimeout(resolve, 20));
  expect(app.stderr().trim().split('\n')).toEqual([
    `telemetry: gateway sends traces to ${receiver.url}/v1/traces, logs to ${receiver.url}/v1/logs and metrics to ${receiver.url}/v1/metrics ` +
      '(OTLP http/protobuf). Nothing listening there? Start the compose stack, or set OTEL_TRACES_EXPORTER=console, ' +
      'or OTEL_SDK_DISABLED=true.',
  ]);
  app.kill();
});

it('leaves sampling to OTEL_TRACES_SAMPLER, which the SDK reads', async () => {
  const app = await startInstrumentedApp({
    ...FAST_EXPORT,
    OTEL_SERVICE_NAME: SERVICE_NAME.notifications,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_TRACES_SAMPLER: 'parentbased_traceidratio',
    OTEL_TRACES_SAMPLER_ARG: '0',
    FIXTURE_HANDLES_SIGTERM: '1',
  });
  const sampled = newTraceparent();
  const unsampled = newTraceparent();

  // A ratio of 0 samples no new trace, but a parent's decision is followed.
  await fetch(`${app.url}/hello`, { headers: { traceparent: sampled.traceparent } });
  await fetch(`${app.url}/hello`, { headers: { traceparent: unsampled.traceparent.replace(/-01$/, '-00') } });
  await fetch(`${app.url}/hello`);

  // Once the process exited (its shutdown flushes), whatever it would ever export has arrived: a span of the unsampled
  // requests coming a batch after the logs can no longer pass unseen.
  app.process.kill('SIGTERM');
  expect(await app.exited).toEqual({ code: 0, signal: null });
  expect(receiver.logs().filter((l) => l.body === 'hello handled')).toHaveLength(3);
  expect(new Set(receiver.spans().map((s) => s.traceId))).toEqual(new Set([sampled.traceId]));
  app.kill();
});

it('lets a process opt out of server and Koa spans with OTEL_NODE_DISABLED_INSTRUMENTATIONS', async () => {
  const app = await startInstrumentedApp({
    ...FAST_EXPORT,
    OTEL_SERVICE_NAME: SERVICE_NAME.orders,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_NODE_DISABLED_INSTRUMENTATIONS: 'http-server,koa',
    FIXTURE_HANDLES_SIGTERM: '1',
  });

  const { traceparent } = newTraceparent();
  expect((await fetch(`${app.url}/chain`, { headers: { traceparent } })).status).toBe(200);

  await receiver.waitFor(({ spans }) => spans.some((s) => s.kind === 'CLIENT'));
  // Any span still to come is flushed by the shutdown before the process exits.
  app.process.kill('SIGTERM');
  expect(await app.exited).toEqual({ code: 0, signal: null });
  expect(receiver.spans().map((s) => [s.kind, s.scope.name])).toEqual([['CLIENT', '@opentelemetry/instrumentation-undici']]);
  app.kill();
});
