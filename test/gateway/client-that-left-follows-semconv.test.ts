import net from 'node:net';
import { SpanStatusCode } from '@opentelemetry/api';
import { ATTR_ERROR_TYPE, ATTR_HTTP_RESPONSE_STATUS_CODE } from '@opentelemetry/semantic-conventions';
import { ACCESS_LINE_MESSAGE, ATTR, HEADER } from '../../otel/wire-names';
import { requestSpans, startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { scrape, scrapeWhen, valueOf } from '../helpers/openmetrics';
import { listen, type TestServer } from '../helpers/servers';
import { startStack, type TestStack } from '../helpers/stack';
import { signToken } from '../helpers/tokens';
import { waitFor } from '../helpers/wait';

/**
 * A client that goes away before its response ended. HTTP semantic conventions: `http.response.status_code` is
 * set "if and only if one was sent", and a request cancelled before its response was sent fully SHOULD get span
 * status Error and `error.type` (their example "connection dropped before response body was sent": the status
 * sent, 201, plus `error.type`). The gateway recorded 499 on the span and in `http_server_request_duration_seconds`
 * instead, a status never sent that replaced the 200 that was, with status Unset and no `error.type` (audit 31,
 * finding 6). 499 stays nginx's convention in the access log.
 */
describe('a client that left before its response ended', () => {
  let tracing: InMemoryTracing;
  let upstream: TestServer;
  let stack: TestStack;
  let token: string;
  /** The paths the stand-in received, as their heads arrived. */
  const arrived: string[] = [];

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    // order-service's stand-in: a download that starts at once and then trickles, or an answer that comes late.
    upstream = await listen((req, res) => {
      arrived.push(req.url!);
      // /orders/flood sends on without a pause, so a chunk of it comes between the client's connection closing and
      // its response's 'close': the gateway took the abort of that chunk's exchange for the service's (upstream_reset).
      const every = req.url!.startsWith('/orders/flood') ? 1 : 100;
      const timer = req.url!.startsWith('/orders/late')
        ? setTimeout(() => res.end('late'), 30_000)
        : (res.writeHead(200, { 'content-type': 'text/plain' }), res.write('first chunk\n'), setInterval(() => res.write('more\n'.repeat(every === 1 ? 50 : 1)), every));
      res.on('close', () => clearInterval(timer));
    });
    stack = await startStack({ tracer: tracing.tracer, serviceUrls: { orders: upstream.url } });
    token = await signToken();
  });
  afterAll(async () => {
    await stack.close();
    await upstream.close();
    await tracing.shutdown();
  });

  /** Sends the request on a raw connection, waits until `leaveWhen` holds for what arrived, then resets it. */
  async function abandon(path: string, requestId: string, leaveWhen: (received: string) => boolean): Promise<void> {
    const socket = net.connect(Number(new URL(stack.gateway.url).port), '127.0.0.1');
    socket.on('error', () => undefined);
    let received = '';
    socket.on('data', (chunk: Buffer) => (received += chunk.toString()));
    socket.write(`GET ${path} HTTP/1.1\r\nHost: gw.example.com\r\nAuthorization: Bearer ${token}\r\n${HEADER.requestId}: ${requestId}\r\n\r\n`);
    await waitFor(() => leaveWhen(received), `the moment to leave ${path}`);
    socket.resetAndDestroy();
  }

  it.each([
    { desc: 'mid-body, after the 200 went out', path: '/api/orders/download', leaveWhen: (received: string) => received.includes('first chunk'), sent: 200 },
    { desc: 'mid-body, while the service sends without a pause', path: '/api/orders/flood', leaveWhen: (received: string) => received.includes('first chunk'), sent: 200 },
    // Once the gateway's exchange with the service is open: the request is well inside the pipeline.
    { desc: 'before any answer', path: '/api/orders/late', leaveWhen: () => arrived.includes('/orders/late'), sent: undefined },
  ])('is recorded $desc with the status sent (if any) and error.type client_closed, and logged 499', async ({ path, leaveWhen, sent }) => {
    const requestId = `left-${path.split('/').at(-1)}`;
    // The metric as the span: the status sent (the label empty, i.e. absent, when none was), error_type client_closed.
    // Both mid-body cases share these labels: each adds one.
    const labels = { http_request_method: 'GET', url_scheme: 'http', http_route: '/api/orders/*', http_response_status_code: sent === undefined ? '' : String(sent), gateway_route_name: 'orders', error_type: 'client_closed', gateway_error_code: '' };
    const before = valueOf(await scrape(stack.metrics.url), 'http_server_request_duration_seconds_count', labels) ?? 0;
    await abandon(path, requestId, leaveWhen);
    const { server } = await requestSpans(tracing, requestId);
    expect({ status: server.attributes[ATTR_HTTP_RESPONSE_STATUS_CODE], errorType: server.attributes[ATTR_ERROR_TYPE], errorCode: server.attributes[ATTR.errorCode], spanStatus: server.status.code }).toEqual({
      status: sent,
      errorType: 'client_closed',
      errorCode: undefined,
      spanStatus: SpanStatusCode.ERROR,
    });
    const line = () => stack.gatewayLogs.find((entry) => entry.message === ACCESS_LINE_MESSAGE && entry.request_id === requestId);
    await waitFor(() => line() !== undefined, 'the access line');
    expect(line()).toMatchObject({ status: 499, error_code: null });
    const exposition = await scrapeWhen(stack.metrics.url, (scraped) => valueOf(scraped, 'http_server_request_duration_seconds_count', labels) === before + 1);
    expect(valueOf(exposition, 'http_server_request_duration_seconds_count', { ...labels, http_response_status_code: '499', error_type: '' })).toBeUndefined();
  });

  // The pipeline runs a turn after its request was parsed (src/request-arrival.ts): a client that sends its head and
  // resets at once has usually closed its response before any of the pipeline's 'close' listeners was added.
  // Without onResponseClosed's check for that, its span never ended, its line was never written and
  // http_server_active_requests kept it forever.
  it('is recorded when it left before the pipeline started, and leaves no request active', async () => {
    const active = { http_request_method: 'GET', url_scheme: 'http' };
    const activeBefore = valueOf(await scrape(stack.metrics.url), 'http_server_active_requests', active) ?? 0;
    const requestIds = Array.from({ length: 10 }, (_, index) => `left-at-once-${index}`);
    for (const requestId of requestIds) {
      const socket = net.connect(Number(new URL(stack.gateway.url).port), '127.0.0.1');
      socket.on('error', () => undefined);
      await new Promise<void>((resolve) => socket.once('connect', resolve));
      socket.write(`GET /api/orders/late HTTP/1.1\r\nHost: gw.example.com\r\nAuthorization: Bearer ${token}\r\n${HEADER.requestId}: ${requestId}\r\n\r\n`);
      socket.resetAndDestroy();
    }
    for (const requestId of requestIds) {
      const { server } = await requestSpans(tracing, requestId);
      expect({ status: server.attributes[ATTR_HTTP_RESPONSE_STATUS_CODE], errorType: server.attributes[ATTR_ERROR_TYPE] }).toEqual({ status: undefined, errorType: 'client_closed' });
      const line = () => stack.gatewayLogs.find((entry) => entry.message === ACCESS_LINE_MESSAGE && entry.request_id === requestId);
      await waitFor(() => line() !== undefined, `the access line of ${requestId}`);
      expect(line()).toMatchObject({ status: 499 });
    }
    await scrapeWhen(stack.metrics.url, (scraped) => valueOf(scraped, 'http_server_active_requests', active) === activeBefore);
  });
});
