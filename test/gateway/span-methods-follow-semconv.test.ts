import http from 'node:http';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import { ATTR_HTTP_REQUEST_METHOD, ATTR_HTTP_REQUEST_METHOD_ORIGINAL } from '@opentelemetry/semantic-conventions';
import { HEADER } from '../../otel/wire-names';
import { requestSpans, startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { parseOpenMetrics, PROMETHEUS_ACCEPT, samplesOf } from '../helpers/openmetrics';
import { scriptedUpstream, sendRaw, type TestServer } from '../helpers/servers';
import { startStack, type TestStack } from '../helpers/stack';
import { signToken } from '../helpers/tokens';

/**
 * HTTP semantic conventions, `http.request.method`: a method the instrumentation does not know is `_OTHER`,
 * with `http.request.method_original`, and its span is named `HTTP` (+ route). Node's parser takes some 35
 * methods and the gateway proxies them on routes without `methods`; its spans used to record them as sent
 * (`PROPFIND /api/orders/*`) while its metrics counted them as `_OTHER` (audit 19, finding 3).
 */
describe('gateway spans record methods as the HTTP semantic conventions say', () => {
  let tracing: InMemoryTracing;
  let upstream: TestServer;
  let stack: TestStack;
  let token: string;
  /** `http.request.method` of every SERVER span recorded here, to compare with the metric's label values. */
  const recordedMethods = new Set<string>();

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    upstream = await scriptedUpstream(() => ({ status: 200, body: 'ok' }));
    stack = await startStack({ tracer: tracing.tracer, serviceUrls: { orders: upstream.url } });
    token = await signToken();
  });
  afterAll(async () => {
    await stack.close();
    await upstream.close();
    await tracing.shutdown();
  });

  async function spansOf(requestId: string): Promise<{ server: ReadableSpan; clients: ReadableSpan[] }> {
    const spans = await requestSpans(tracing, requestId);
    recordedMethods.add(spans.server.attributes[ATTR_HTTP_REQUEST_METHOD] as string);
    return spans;
  }
  const methodOf = (span: ReadableSpan) => [span.name, span.attributes[ATTR_HTTP_REQUEST_METHOD], span.attributes[ATTR_HTTP_REQUEST_METHOD_ORIGINAL]];

  it.each([
    { desc: 'PROPFIND on a proxied route', method: 'PROPFIND', path: '/api/orders/a', server: ['HTTP /api/orders/*', '_OTHER', 'PROPFIND'], client: [['HTTP', '_OTHER', 'PROPFIND']] },
    { desc: 'PURGE on no route', method: 'PURGE', path: '/nowhere', server: ['HTTP', '_OTHER', 'PURGE'], client: [] },
    { desc: 'QUERY (known to semconv 1.45)', method: 'QUERY', path: '/api/orders/a', server: ['QUERY /api/orders/*', 'QUERY', undefined], client: [['QUERY', 'QUERY', undefined]] },
    { desc: 'GET', method: 'GET', path: '/api/orders/a', server: ['GET /api/orders/*', 'GET', undefined], client: [['GET', 'GET', undefined]] },
  ])('$desc: the SERVER span is $server.0, the CLIENT span as the conventions name it', async ({ method, path, server, client }) => {
    const reply = await sendRaw(stack.gateway.url, path, { authorization: `Bearer ${token}` }, method);
    const spans = await spansOf(String(reply.headers[HEADER.requestId]));
    expect(methodOf(spans.server)).toEqual(server);
    expect(spans.clients.map(methodOf)).toEqual(client);
  });

  it('records every method Node parses as its metrics count it: a known method, else _OTHER with the original', async () => {
    // Every one of them, on a route and on no route: a finite set, so all of it rather than draws (60 draws of its
    // 68 pairs left some methods unsent).
    // CONNECT never reaches the pipeline (runServer refuses it, test/gateway/parser-refusals-seen.test.ts).
    for (const method of http.METHODS.filter((each) => each !== 'CONNECT')) {
      for (const path of ['/api/orders/a', '/nowhere']) {
        const reply = await sendRaw(stack.gateway.url, path, { authorization: `Bearer ${token}` }, method);
        const { server, clients } = await spansOf(String(reply.headers[HEADER.requestId]));
        const recorded = server.attributes[ATTR_HTTP_REQUEST_METHOD] as string;
        for (const span of [server, ...clients]) {
          expect(span.attributes[ATTR_HTTP_REQUEST_METHOD]).toBe(recorded);
          expect(span.attributes[ATTR_HTTP_REQUEST_METHOD_ORIGINAL]).toBe(recorded === method ? undefined : method);
          expect(span.name.split(' ')[0]).toBe(recorded === '_OTHER' ? 'HTTP' : method);
        }
      }
    }
    const scraped = parseOpenMetrics(await (await fetch(`${stack.metrics.url}/metrics`, { headers: { accept: PROMETHEUS_ACCEPT } })).text());
    const counted = new Set(samplesOf(scraped, 'http_server_request_duration_seconds_count').map((sample) => sample.labels.http_request_method));
    expect([...counted].sort()).toEqual([...recordedMethods].sort());
    expect(counted).toContain('_OTHER');
  });
});
