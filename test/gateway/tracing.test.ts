import http from 'node:http';
import { SpanKind, SpanStatusCode } from '@opentelemetry/api';
import { ATTR_ERROR_TYPE, ATTR_HTTP_RESPONSE_STATUS_CODE } from '@opentelemetry/semantic-conventions';
import Koa from 'koa';
import { ACCESS_LINE_MESSAGE, ATTR, HEADER } from '../../otel/wire-names';
import { GatewayError } from '../../src/errors';
import { createAccessLog } from '../../src/middleware/access-log';
import { createErrorHandler } from '../../src/middleware/errors';
import { createRequestId } from '../../src/middleware/request-id';
import { createTracing } from '../../src/middleware/tracing';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { listen, memoryLogger } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';

/** The gateway's own spans, in-process; export across the four processes is covered in test/telemetry. */
describe('gateway spans', () => {
  let tracing: InMemoryTracing;
  let stack: TestStack;
  let trusting: TestStack;
  let token: string;

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    stack = await startStack({ tracer: tracing.tracer });
    trusting = await startStack({ tracer: tracing.tracer, env: { TRUST_TRACEPARENT: 'true' } });
    token = await login(stack.gateway.url);
  });
  afterAll(async () => {
    await stack.close();
    await trusting.close();
    await tracing.shutdown();
  });
  beforeEach(() => tracing.reset());

  const serverSpans = () => tracing.spans().filter((span) => span.kind === SpanKind.SERVER);
  const waitForSpans = async (count: number) => {
    for (let i = 0; i < 50 && serverSpans().length < count; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  };
  /** The server span of one request (its trace id is the request id), once it has ended. */
  const serverSpanOf = async (requestId: string) => {
    const find = () => serverSpans().find((span) => span.spanContext().traceId === requestId);
    for (let i = 0; i < 200 && !find(); i++) await new Promise((resolve) => setTimeout(resolve, 10));
    const span = find();
    if (!span) throw new Error(`no server span for request ${requestId} within 2 s`);
    return span;
  };

  it('uses the trace id as the request id when the client sends none, and answers traceresponse', async () => {
    const response = await fetch(`${stack.gateway.url}/api/users/1`, { headers: { authorization: `Bearer ${token}` } });
    await response.arrayBuffer();
    await waitForSpans(1);
    const [server] = serverSpans();
    const requestId = response.headers.get(HEADER.requestId)!;
    expect(requestId).toMatch(/^[0-9a-f]{32}$/);
    expect(server!.spanContext().traceId).toBe(requestId);
    expect(response.headers.get(HEADER.traceresponse)).toBe(`00-${requestId}-${server!.spanContext().spanId}-03`);
  });

  it('names the server span after its route and records user, route, upstream and outcome', async () => {
    const response = await fetch(`${stack.gateway.url}/api/users/1`, { headers: { authorization: `Bearer ${token}` } });
    await response.arrayBuffer();
    await waitForSpans(1);
    const server = serverSpans()[0]!;
    expect(server.name).toBe('GET /api/users/*');
    expect(server.attributes).toMatchObject({
      'http.route': '/api/users/*',
      'http.request.method': 'GET',
      'http.response.status_code': 200,
      [ATTR.requestId]: response.headers.get(HEADER.requestId),
      [ATTR.userId]: '1',
      [ATTR.routeName]: 'users',
      [ATTR.upstreamService]: 'users',
      [ATTR.upstreamOutcome]: 'ok',
    });
    // The user as the conventions' registry names one (semconv 1.45 deprecates `enduser.role` for `user.roles`
    // and moved `enduser.*` to the client-side conventions).
    expect([server.attributes['user.id'], server.attributes['user.roles']]).toEqual(['1', ['admin']]);
    expect(Object.keys(server.attributes).filter((key) => key.startsWith('enduser.'))).toEqual([]);
    const client = tracing.spans().find((span) => span.kind === SpanKind.CLIENT)!;
    expect(client.parentSpanContext?.spanId).toBe(server.spanContext().spanId);
    expect(client.attributes).toMatchObject({ 'url.full': `${stack.users.url}/users/1`, [ATTR.upstreamOutcome]: 'ok', 'http.response.status_code': 200 });
    // The service received the client span as its parent, and the request id as baggage.
    const seen = stack.users.requests.at(-1)!;
    expect(seen.headers.traceparent).toBe(`00-${client.spanContext().traceId}-${client.spanContext().spanId}-03`);
    expect(seen.headers.baggage).toBe(`request.id=${response.headers.get(HEADER.requestId)}`);
  });

  // semconv `url.full`: `scheme://host[:port][path][?query]`, sensitive query values replaced by `REDACTED`, the
  // name kept. The CLIENT span left the forwarded query out (audit 31, finding 4).
  it('records the query it forwards in the CLIENT span url.full, secrets REDACTED, as the service received it', async () => {
    const response = await fetch(`${stack.gateway.url}/api/users/1?color=blue&sig=s3cr3t&access_token=t0k3n`, { headers: { authorization: `Bearer ${token}` } });
    await response.arrayBuffer();
    const requestId = response.headers.get(HEADER.requestId)!;
    await serverSpanOf(requestId);
    const client = tracing.spans().find((span) => span.kind === SpanKind.CLIENT && span.spanContext().traceId === requestId)!;
    expect(client.attributes['url.full']).toBe(`${stack.users.url}/users/1?color=blue&sig=REDACTED&access_token=REDACTED`);
    expect(stack.users.requests.at(-1)!.url).toBe('/users/1?color=blue&sig=s3cr3t&access_token=t0k3n');
  });

  it.each([
    { desc: 'a UUID', id: '6f1c2b3a-9d8e-4f70-a1b2-c3d4e5f60718', traceId: '6f1c2b3a9d8e4f70a1b2c3d4e5f60718' },
    { desc: 'a 32-hex id in upper case', id: 'ABCDEF0123456789ABCDEF0123456789', traceId: 'abcdef0123456789abcdef0123456789' },
  ])('maps a client request id that is $desc onto the trace id, and echoes it unchanged', async ({ id, traceId }) => {
    const response = await fetch(`${stack.gateway.url}/api/users/1`, { headers: { [HEADER.requestId]: id, authorization: `Bearer ${token}` } });
    await response.arrayBuffer();
    await waitForSpans(1);
    expect(response.headers.get(HEADER.requestId)).toBe(id);
    expect(serverSpans()[0]!.spanContext().traceId).toBe(traceId);
    expect(serverSpans()[0]!.attributes[ATTR.requestId]).toBe(id);
  });

  it('names the login span after the path the gateway’s router matched (POST /api/auth/login)', async () => {
    const response = await fetch(`${stack.gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'bob@example.com', password: 'builder' }) });
    await response.arrayBuffer();
    const server = await serverSpanOf(response.headers.get(HEADER.requestId)!);
    expect(server.name).toBe('POST /api/auth/login');
    expect(server.attributes['http.route']).toBe('/api/auth/login');
  });

  it.each([
    { desc: 'a plain name', id: 'order-42' },
    // 36 characters of hex digits and dashes, but not a UUID's 8-4-4-4-12: it was taken for one.
    { desc: '32 hex digits and four dashes at the end', id: '0af7651916cd43dd8448eb211c80319c----' },
    { desc: '32 hex digits between dashes', id: '--0af7651916cd43dd8448eb211c80319c--' },
  ])('keeps any other client request id ($desc) as an attribute of a new trace', async ({ id }) => {
    const response = await fetch(`${stack.gateway.url}/api/users/1`, { headers: { [HEADER.requestId]: id, authorization: `Bearer ${token}` } });
    await response.arrayBuffer();
    await waitForSpans(1);
    expect(response.headers.get(HEADER.requestId)).toBe(id);
    expect(serverSpans()[0]!.attributes[ATTR.requestId]).toBe(id);
    expect(serverSpans()[0]!.spanContext().traceId).not.toBe('0af7651916cd43dd8448eb211c80319c');
  });

  const clientTrace = '0af7651916cd43dd8448eb211c80319c';
  const traceparent = `00-${clientTrace}-b7ad6b7169203331-01`;

  it('ignores a client traceparent by default and never forwards it', async () => {
    const response = await fetch(`${stack.gateway.url}/api/users/1`, { headers: { authorization: `Bearer ${token}`, traceparent, baggage: 'request.id=forged,tenant=evil' } });
    await response.arrayBuffer();
    await waitForSpans(1);
    expect(serverSpans()[0]!.spanContext().traceId).not.toBe(clientTrace);
    expect(serverSpans()[0]!.parentSpanContext).toBeUndefined();
    const seen = stack.users.requests.at(-1)!;
    expect(seen.headers.traceparent).not.toContain(clientTrace);
    expect(seen.headers.baggage).toBe(`request.id=${response.headers.get(HEADER.requestId)}`);
  });

  /** Trace context in the formats other tracers and meshes read (B3, Jaeger, OpenTracing, Datadog, X-Ray, Sentry, Instana, ...). */
  const foreignTraceContext = {
    b3: `${clientTrace}-b7ad6b7169203331-1`,
    'x-b3-traceid': clientTrace,
    'x-b3-spanid': 'b7ad6b7169203331',
    'x-b3-sampled': '1',
    'uber-trace-id': `${clientTrace}:b7ad6b7169203331:0:1`,
    'uberctx-tenant': 'evil',
    'ot-tracer-traceid': clientTrace,
    'x-datadog-trace-id': '1234567890',
    'x-datadog-sampling-priority': '2',
    'x-amzn-trace-id': `Root=1-${clientTrace.slice(0, 8)}-${clientTrace.slice(8, 32)};Sampled=1`,
    'x-cloud-trace-context': `${clientTrace}/1;o=1`,
    'elastic-apm-traceparent': traceparent,
    sw8: '1-forged',
    'x-client-trace-id': clientTrace,
    'sentry-trace': `${clientTrace}-b7ad6b7169203331-1`,
    'jaeger-debug-id': 'forced-by-a-client',
    'jaeger-baggage': 'tenant=evil',
    'x-instana-t': clientTrace.slice(16),
    'x-instana-s': 'b7ad6b7169203331',
    'x-instana-l': '1',
    // .NET reads these when no traceparent or baggage came (telemetry off, the gateway sends neither).
    'request-id': traceparent,
    'correlation-context': 'role=admin',
    'request-context': 'appId=cid-v1:forged',
  };

  it('never forwards a client’s trace context in another format (B3, Jaeger, X-Ray, ...) by default, nor its _ spelling', async () => {
    const requestId = 'foreign-trace-context-1';
    const response = await fetch(`${stack.gateway.url}/api/users/1`, { headers: { authorization: `Bearer ${token}`, ...foreignTraceContext, X_B3_Sampled: '1', [HEADER.requestId]: requestId } });
    expect(response.status).toBe(200);
    const seen = stack.users.requests.find((request) => request.headers[HEADER.requestId] === requestId)!;
    expect(Object.keys(seen.headers).filter((name) => name in foreignTraceContext || name.startsWith('x-b3') || name.startsWith('x_b3'))).toEqual([]);
    expect(JSON.stringify(seen.headers)).not.toContain(clientTrace);
  });

  it('passes it on unchanged when clients are trusted with trace context', async () => {
    const requestId = 'foreign-trace-context-2';
    const response = await fetch(`${trusting.gateway.url}/api/users/1`, { headers: { authorization: `Bearer ${token}`, ...foreignTraceContext, [HEADER.requestId]: requestId } });
    expect(response.status).toBe(200);
    const seen = trusting.users.requests.find((request) => request.headers[HEADER.requestId] === requestId)!;
    expect(seen.headers).toMatchObject(foreignTraceContext);
  });

  it('continues a client traceparent when configured to trust it, each request under an id of its own', async () => {
    const first = await fetch(`${trusting.gateway.url}/api/nothing`, { headers: { traceparent } });
    await first.arrayBuffer();
    await waitForSpans(1);
    const server = serverSpans()[0]!;
    expect(server.spanContext().traceId).toBe(clientTrace);
    expect(server.parentSpanContext?.spanId).toBe('b7ad6b7169203331');
    // A page's calls share its trace: under the trace id as their request id, all of them had one id.
    const second = await fetch(`${trusting.gateway.url}/api/nothing`, { headers: { traceparent: `00-${clientTrace}-c7ad6b7169203332-01` } });
    await second.arrayBuffer();
    const ids = [first.headers.get(HEADER.requestId), second.headers.get(HEADER.requestId)];
    for (const id of ids) expect(id).toMatch(/^[0-9a-f]{32}$/);
    expect(ids).not.toContain(clientTrace);
    expect(ids[0]).not.toBe(ids[1]);
    expect(server.attributes[ATTR.requestId]).toBe(ids[0]);
  });

  // The propagator sends the first 180 entries and 8192 bytes: a full client baggage must not crowd request.id out.
  it.each([
    { desc: '180 entries', requestId: 'full-baggage-1', baggage: () => Array.from({ length: 180 }, (_, i) => `k${i}=v`).join(',') },
    { desc: 'nearly 8192 bytes', requestId: 'full-baggage-2', baggage: () => Array.from({ length: 40 }, (_, i) => `k${i}=${'v'.repeat(200)}`).join(',') },
    // Keys that look like array indexes came first out of an object, before request.id, and crowded it out.
    { desc: '180 entries with numeric keys', requestId: 'full-baggage-3', baggage: () => Array.from({ length: 180 }, (_, i) => `${i}=v`).join(',') },
    { desc: 'one entry with a numeric key of nearly 8192 bytes', requestId: 'full-baggage-4', baggage: () => `0=${'v'.repeat(8150)}` },
  ])('keeps request.id in the baggage a service receives when a trusted client sends $desc of its own', async ({ requestId, baggage }) => {
    const response = await fetch(`${trusting.gateway.url}/api/users/1`, { headers: { authorization: `Bearer ${token}`, traceparent, baggage: baggage(), [HEADER.requestId]: requestId } });
    expect(response.status).toBe(200);
    const seen = trusting.users.requests.find((request) => request.headers[HEADER.requestId] === requestId)!;
    const entries = String(seen.headers.baggage).split(',');
    expect(entries[0]).toBe(`request.id=${requestId}`);
    expect(entries.filter((entry) => entry.startsWith('request.id='))).toHaveLength(1);
    // The client's entries follow, as many as the limits leave room for.
    expect(entries[1]).toBe(baggage().split(',')[0]);
  });

  it.each([
    { desc: 'garbage', value: 'not-a-traceparent' },
    { desc: 'an all-zero trace id', value: '00-00000000000000000000000000000000-b7ad6b7169203331-01' },
    { desc: 'a 10 KB value', value: `00-${'a'.repeat(10_000)}` },
  ])('survives a malformed traceparent ($desc) even when trusting', async ({ value }) => {
    const response = await fetch(`${trusting.gateway.url}/api/nothing`, { headers: { traceparent: value } });
    expect(response.status).toBe(404);
    await response.arrayBuffer();
    await waitForSpans(1);
    expect(serverSpans()[0]!.spanContext().traceId).toBe(response.headers.get(HEADER.requestId));
  });

  it('leaves health probes untraced', async () => {
    await (await fetch(`${stack.gateway.url}/health`)).arrayBuffer();
    await (await fetch(`${stack.gateway.url}/ready`)).arrayBuffer();
    // A traced request after the probes: once its span is in, a probe span would have ended before it.
    const marker = await fetch(`${stack.gateway.url}/api/nothing`);
    await marker.arrayBuffer();
    const markerSpan = await serverSpanOf(marker.headers.get(HEADER.requestId)!);
    expect(serverSpans().filter((span) => span !== markerSpan)).toEqual([]);
  });

  // Only GET and HEAD there are probes: a POST /health is a request like any other (a 405), traced as the metrics
  // count it, so its exemplar names a span.
  it('traces other methods to the probes, named by the probe path', async () => {
    const response = await fetch(`${stack.gateway.url}/health`, { method: 'POST' });
    await response.arrayBuffer();
    expect(response.status).toBe(405);
    const span = await serverSpanOf(response.headers.get(HEADER.requestId)!);
    expect([span.name, span.attributes['http.route'], span.attributes['http.response.status_code']]).toEqual(['POST /health', '/health', 405]);
  });

  it('marks 5xx server spans as errors with the error code, and keeps tokens out of attributes', async () => {
    const response = await fetch(`${stack.gateway.url}/api/users/1?token=${token}`, { headers: { authorization: `Bearer ${token}` } });
    await response.arrayBuffer();
    // The token-in-URL request's spans stay for the check at the end (no reset in between).
    await serverSpanOf(response.headers.get(HEADER.requestId)!);
    expect(tracing.spans().filter((span) => span.kind === SpanKind.CLIENT)).toHaveLength(1);
    const failing = await startStack({ tracer: tracing.tracer, serviceUrls: { orders: 'http://127.0.0.1:9' } });
    try {
      const failed = await fetch(`${failing.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
      expect(failed.status).toBe(502);
      await failed.arrayBuffer();
      const server = await serverSpanOf(failed.headers.get(HEADER.requestId)!);
      expect(server.status.code).toBe(SpanStatusCode.ERROR);
      expect(server.attributes[ATTR.errorCode]).toBe('upstream_refused');
      expect(server.events.some((event) => event.name === 'exception')).toBe(true);
    } finally {
      await failing.close();
    }
    const everything = JSON.stringify(tracing.spans().map((span) => [span.attributes, span.events]));
    expect(everything).not.toContain(token);
  });
});

describe('an error thrown after the client left', () => {
  // The pipeline's own steps in front of one that fails only once the response closed (a client gone while a
  // step still ran): what the span says is what the access line says, read at the same moment.
  // The access line's 499 is nginx's; the span records no status (none was sent) and `client_closed` (audit 31, #6).
  it('is recorded alike in the span and the access line: a client that left (499 / client_closed), not the late error code', async () => {
    const tracing = startInMemoryTracing();
    const { logger, lines } = memoryLogger('gateway');
    const app = new Koa();
    app.use(createTracing({ tracer: tracing.tracer }));
    app.use(createRequestId());
    app.use(createAccessLog({ logger }));
    app.use(createErrorHandler({ logger }));
    let arrived = false;
    app.use(async function failsAfterTheClientLeft(ctx) {
      arrived = true;
      await new Promise((resolve) => ctx.res.once('close', resolve));
      throw new GatewayError('upstream_timeout', 'The orders service sent nothing in time.');
    });
    const server = await listen(app.callback());
    try {
      const request = http.get(`${server.url}/api/orders/1`, { headers: { [HEADER.requestId]: 'left-before-the-error' } });
      request.on('error', () => undefined);
      await waitFor(() => arrived, 'the request to reach the failing step');
      request.destroy();
      const span = () => tracing.spans().find((each) => each.attributes[ATTR.requestId] === 'left-before-the-error');
      await waitFor(() => span() !== undefined, 'the SERVER span');
      const line = lines.find((each) => each.message === ACCESS_LINE_MESSAGE && each.request_id === 'left-before-the-error');
      expect([line?.status, line?.error_code]).toEqual([499, null]);
      expect([span()!.attributes[ATTR_HTTP_RESPONSE_STATUS_CODE], span()!.attributes[ATTR_ERROR_TYPE], span()!.attributes[ATTR.errorCode], span()!.status.code]).toEqual([undefined, 'client_closed', undefined, SpanStatusCode.ERROR]);
    } finally {
      await server.close();
      await tracing.shutdown();
    }
  });
});
