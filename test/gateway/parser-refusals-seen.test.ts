import net from 'node:net';
import { SpanKind, SpanStatusCode, trace } from '@opentelemetry/api';
import { ATTR_ERROR_TYPE, ATTR_HTTP_REQUEST_METHOD, ATTR_HTTP_REQUEST_METHOD_ORIGINAL, ATTR_HTTP_RESPONSE_STATUS_CODE, ATTR_URL_SCHEME } from '@opentelemetry/semantic-conventions';
import { runServer, type RejectedRequest, type RunningServer } from '../../otel/lifecycle';
import { ACCESS_LINE_FIELDS, ACCESS_LINE_MESSAGE, ATTR, LOG_FIELD } from '../../otel/wire-names';
import { createGateway } from '../../src/gateway';
import { handleAfterTurn } from '../../src/request-arrival';
import { createGatewayMetrics } from '../../src/metrics';
import { rejectedRequestMetrics } from '../../src/middleware/request-metrics';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { parseOpenMetrics, samplesOf } from '../helpers/openmetrics';
import { memoryLogger } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';

/** Writes `raw` (all at once, or the rest a byte every 100 ms after `sentAtOnce`) and returns what came back before the close. */
function exchange(url: string, raw: string, trickle = false): Promise<string> {
  const { port } = new URL(url);
  return new Promise((resolve) => {
    const socket = net.connect(Number(port), '127.0.0.1', () => raw !== '' && socket.write(trickle ? raw.slice(0, 4) : raw));
    let offset = 4;
    const timer = trickle ? setInterval(() => socket.writable && offset < raw.length && socket.write(raw.slice(offset, ++offset)), 100) : undefined;
    let answer = '';
    socket.on('data', (chunk) => (answer += chunk.toString('latin1')));
    socket.on('error', () => undefined);
    socket.on('close', () => {
      clearInterval(timer);
      resolve(answer);
    });
  });
}

/**
 * Requests Node's HTTP/1 parser refuses never reach the pipeline that logs, traces and counts every request;
 * runServer answers them (problem+json with a minted id) and records them itself, so the id a client got opens
 * a trace, finds a log line and is counted like any other.
 */
describe('requests the HTTP parser refuses are seen', () => {
  let gateway: RunningServer;
  let tracing: InMemoryTracing;
  let lines: Record<string, unknown>[];
  const metrics = createGatewayMetrics();
  const rejected: RejectedRequest[] = [];

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' });
    const recorded = memoryLogger('gateway');
    lines = recorded.lines;
    const countRejected = rejectedRequestMetrics(metrics);
    gateway = await runServer({
      app: createGateway(config, { logger: recorded.logger, tracer: tracing.tracer, metrics }),
      name: 'gateway',
      port: 0,
      host: '127.0.0.1',
      logger: recorded.logger,
      tracer: tracing.tracer,
      timeouts: { headersMs: 500, requestMs: 10_000, keepAliveMs: 5000 },
      onRejected: (each) => {
        rejected.push(each);
        countRejected(each);
      },
    });
  });
  afterAll(async () => {
    await gateway.close();
    await tracing.shutdown();
  });

  const host = () => new URL(gateway.url).host;
  it.each([
    { desc: 'headers over the limit', raw: () => `GET /health HTTP/1.1\r\nHost: ${host()}\r\nCookie: ${'c'.repeat(20 * 1024)}\r\n\r\n`, status: 431, code: 'headers_too_large' },
    { desc: 'a garbage request line', raw: () => 'GARBAGE\r\n\r\n', status: 400, code: 'bad_request' },
    { desc: 'a lower-case method', raw: () => `get /health HTTP/1.1\r\nHost: ${host()}\r\n\r\n`, status: 501, code: 'method_not_implemented' },
    { desc: 'a CR inside X-Request-Id', raw: () => `GET /health HTTP/1.1\r\nHost: ${host()}\r\nX-Request-Id: evil\rdef\r\n\r\n`, status: 400, code: 'bad_request' },
    { desc: 'a head that trickles in past the headers timeout', raw: () => `GET /health HTTP/1.1\r\nHost: ${host()}\r\nX-Slow: ${'a'.repeat(200)}\r\n\r\n`, status: 408, code: 'request_timeout', trickle: true },
  ])('$desc: the answer ($status) has an access line, a SERVER span its traceresponse names and a count under its request id', async ({ raw, status, code, trickle }) => {
    const counted = async () =>
      samplesOf(parseOpenMetrics(await metrics.registry.metrics()), 'http_server_request_duration_seconds_count', { http_request_method: '_OTHER', url_scheme: 'http', http_route: 'unmatched', http_response_status_code: String(status), error_type: status >= 500 ? String(status) : '', gateway_error_code: code }).reduce((sum, sample) => sum + sample.value, 0);
    const countBefore = await counted();
    const answer = await exchange(gateway.url, raw(), trickle);
    expect(answer).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
    const requestId = /X-Request-Id: ([0-9a-f]{32})/i.exec(answer)?.[1];
    expect(requestId).toBeDefined();

    await waitFor(() => lines.some((line) => line.message === 'request completed' && line.request_id === requestId), 'the access-log line');
    const logged = lines.filter((line) => line.message === 'request completed' && line.request_id === requestId);
    expect(logged).toEqual([expect.objectContaining({ status, error_code: code, level: 'warn', client_address: '127.0.0.1' })]);
    // The same keys as the pipeline's access lines (null where the refused request has none).
    expect(Object.keys(logged[0]!)).toEqual(expect.arrayContaining([...ACCESS_LINE_FIELDS]));
    const spans = tracing.spans().filter((span) => span.attributes[ATTR.requestId] === requestId);
    expect(spans).toHaveLength(1);
    const span = spans[0]!;
    expect(span.kind).toBe(SpanKind.SERVER);
    expect(span.attributes).toMatchObject({ [ATTR_HTTP_RESPONSE_STATUS_CODE]: status, [ATTR.errorCode]: code, [ATTR_URL_SCHEME]: 'http' });
    // As for every SERVER span (semconv): a 5xx is an error, its `error.type` the status code; a 4xx is the client's.
    expect([span.status, span.attributes[ATTR_ERROR_TYPE]]).toEqual(status >= 500 ? [{ code: SpanStatusCode.ERROR, message: code }, String(status)] : [{ code: SpanStatusCode.UNSET }, undefined]);
    // Its method never parsed, or is none the gateway knows: `_OTHER` and `HTTP`, as the metrics count it (semconv).
    expect([span.name, span.attributes[ATTR_HTTP_REQUEST_METHOD]]).toEqual(['HTTP', '_OTHER']);
    // The id the client got opens the trace, and the log line points at the span.
    expect(span.spanContext().traceId).toBe(requestId);
    expect(logged[0]).toMatchObject({ [LOG_FIELD.traceId]: requestId, [LOG_FIELD.spanId]: span.spanContext().spanId });
    // A method the parser does not know came in a whole request line: it is recorded beside `_OTHER` (semconv's
    // http.request.method_original); a head that never parsed has none.
    const method = code === 'method_not_implemented' ? 'get' : undefined;
    expect(span.attributes[ATTR_HTTP_REQUEST_METHOD_ORIGINAL]).toBe(method);
    expect(rejected.filter((each) => each.requestId === requestId)).toEqual([{ status, code, requestId, spanContext: span.spanContext(), urlScheme: 'http', ...(method ? { method } : {}) }]);
    // As every answer of the pipeline does (sampled, and random: the minted id is).
    expect(/\r\ntraceresponse: ([^\r]*)\r\n/i.exec(answer)?.[1]).toBe(`00-${requestId}-${span.spanContext().spanId}-03`);
    expect(await counted()).toBe(countBefore + 1);
  });

  // Browsers and load balancers open connections ahead of need: one that never sends a byte is no request.
  it('records nothing for a connection that sent no byte before the headers timeout', async () => {
    const linesBefore = lines.length;
    const rejectedBefore = rejected.length;
    const answer = await exchange(gateway.url, '', false);
    expect(answer).toMatch(/^HTTP\/1\.1 408 /);
    // Wait for something that follows it on the same logger, rather than sleeping before a negative assertion.
    await exchange(gateway.url, 'GARBAGE\r\n\r\n');
    await waitFor(() => rejected.length > rejectedBefore, 'the next refusal to be recorded');
    expect(rejected.slice(rejectedBefore).map((each) => each.code)).toEqual(['bad_request']);
    expect(lines.slice(linesBefore).filter((line) => line.error_code === 'request_timeout')).toEqual([]);
  });

  // Node hands a CONNECT's socket over ('connect') and, with no listener, closed it without a word.
  it('answers a CONNECT with 405 problem+json and the methods served, and records it', async () => {
    const counted = async () =>
      samplesOf(parseOpenMetrics(await metrics.registry.metrics()), 'http_server_request_duration_seconds_count', { http_request_method: 'CONNECT', url_scheme: 'http', http_route: 'unmatched', http_response_status_code: '405', error_type: '', gateway_error_code: 'method_not_allowed' }).reduce((sum, sample) => sum + sample.value, 0);
    const countBefore = await counted();
    const refusal = await exchange(gateway.url, 'CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n');
    expect(refusal).toMatch(/^HTTP\/1\.1 405 /);
    expect(refusal).toMatch(/\r\nAllow: GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS\r\n/);
    const body = JSON.parse(refusal.slice(refusal.indexOf('\r\n\r\n') + 4)) as Record<string, unknown>;
    expect(body).toMatchObject({ status: 405, code: 'method_not_allowed', requestId: expect.stringMatching(/^[0-9a-f]{32}$/) });
    const requestId = body.requestId as string;
    await waitFor(() => lines.some((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === requestId), 'the access-log line');
    expect(lines.filter((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === requestId)).toEqual([expect.objectContaining({ method: 'CONNECT', status: 405, error_code: 'method_not_allowed' })]);
    const spans = tracing.spans().filter((span) => span.attributes[ATTR.requestId] === requestId);
    expect(spans.map((span) => [span.name, span.kind, span.spanContext().traceId])).toEqual([['CONNECT', SpanKind.SERVER, requestId]]);
    expect(/\r\ntraceresponse: ([^\r]*)\r\n/i.exec(refusal)?.[1]).toBe(`00-${requestId}-${spans[0]!.spanContext().spanId}-03`);
    expect(await counted()).toBe(countBefore + 1);
  });

  // No server timer covers a socket handed over on 'connect': it stayed open for good (a free connection slot each).
  it('closes a connection whose CONNECT came pipelined behind a request, once that answer is out', async () => {
    const answer = await exchange(gateway.url, `GET /health HTTP/1.1\r\nHost: ${host()}\r\n\r\nCONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n\r\n`);
    expect([...answer.matchAll(/^HTTP\/1\.1 (\d{3}) /gm)].map((match) => match[1])).toEqual(['200']);

  });

  // Node reports the end of a connection mid-body as a parse error (HPE_INVALID_EOF_STATE).
  it('records an upload the client abandoned as a client that left (499), not as a request it could not parse', async () => {
    const { port } = new URL(gateway.url);
    const socket = net.connect(Number(port), '127.0.0.1', () =>
      socket.end(`POST /api/auth/login HTTP/1.1\r\nHost: ${host()}\r\nX-Request-Id: abandoned-upload\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"email":`),
    );
    socket.on('error', () => undefined);
    await waitFor(() => lines.some((line) => line.message === 'request completed' && line.request_id === 'abandoned-upload'), 'the access-log line');
    expect(lines.filter((line) => line.message === 'request completed' && line.request_id === 'abandoned-upload')).toEqual([expect.objectContaining({ status: 499, error_code: null })]);
  });
});

describe('a refusal when nothing records spans (no SDK)', () => {
  it('is answered without traceresponse, as the pipeline answers then', async () => {
    const { logger, lines } = memoryLogger('gateway');
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' });
    // The global tracer with no provider registered: the API's no-op.
    const tracer = trace.getTracer('gateway');
    const gateway = await runServer({ app: createGateway(config, { logger, tracer }), name: 'gateway', port: 0, host: '127.0.0.1', logger, tracer });
    try {
      const answer = await exchange(gateway.url, 'GARBAGE\r\n\r\n');
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer).toMatch(/\r\nX-Request-Id: [0-9a-f]{32}\r\n/);
      expect(answer).not.toMatch(/\r\ntraceresponse:/i);
      await waitFor(() => lines.some((line) => line.message === ACCESS_LINE_MESSAGE), 'the access-log line');
    } finally {
      await gateway.close();
    }
  });
});

/**
 * The public listener runs each pipeline a turn after its request arrived (src/request-arrival.ts, as main.ts serves).
 * A bad chunk in the read that brought the head was answered 400 before the pipeline began: with an id no record
 * had, and the pipeline then ran on the ended response and failed setting its first header (`unhandled gateway
 * error`), its SERVER span never ended.
 */
describe('a body that breaks in the read that brought its head, its pipeline a turn away', () => {
  it('is answered and recorded once, under the id the answer carries, and its pipeline does not run', async () => {
    const tracing = startInMemoryTracing();
    const { logger, lines } = memoryLogger('gateway');
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' });
    const app = createGateway(config, { logger, tracer: tracing.tracer });
    const gateway = await runServer({ app: { callback: () => handleAfterTurn(app.callback()) }, name: 'gateway', port: 0, host: '127.0.0.1', logger, tracer: tracing.tracer });
    try {
      const answer = await exchange(gateway.url, `POST /api/orders HTTP/1.1\r\nHost: ${new URL(gateway.url).host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n`);
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      const requestId = /\r\nX-Request-Id: ([0-9a-f]{32})\r\n/.exec(answer)?.[1];
      expect(requestId).toBeDefined();
      await waitFor(() => lines.some((line) => line.message === ACCESS_LINE_MESSAGE), 'the access-log line');
      expect(lines.filter((line) => line.message === ACCESS_LINE_MESSAGE).map((line) => [line.request_id, line.status, line.method])).toEqual([[requestId, 400, 'POST']]);
      await waitFor(() => tracing.spans().some((span) => span.kind === SpanKind.SERVER), 'the SERVER span');
      expect(tracing.spans().filter((span) => span.kind === SpanKind.SERVER).map((span) => span.attributes[ATTR.requestId])).toEqual([requestId]);
      // Given a turn to run, the pipeline would have failed on the answered response by now.
      await new Promise((resolve) => setImmediate(() => setImmediate(resolve)));
      expect(lines.filter((line) => line.level === 'error')).toEqual([]);
    } finally {
      await gateway.close();
      await tracing.shutdown();
    }
  });

  // Its head was parsed: the client's own id kept, as when its body comes in a later read and the pipeline answers
  // (an outside review found the id a client got decided by how its bytes fell into segments). Its path is logged.
  it('logs an absolute-form target as the pipeline does: its origin form, the client-named authority left out', async () => {
    const { logger, lines } = memoryLogger('gateway');
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' });
    const app = createGateway(config, { logger });
    const gateway = await runServer({ app: { callback: () => handleAfterTurn(app.callback()) }, name: 'gateway', port: 0, host: '127.0.0.1', logger, keepsInboundRequestId: true });
    try {
      const answer = await exchange(gateway.url, `POST http://evil.example/api/orders?key=kgw_secret HTTP/1.1\r\nHost: ${new URL(gateway.url).host}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n`);
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      await waitFor(() => lines.some((line) => line.message === ACCESS_LINE_MESSAGE), 'the access-log line');
      expect(lines.find((line) => line.message === ACCESS_LINE_MESSAGE)!.url).toBe('/api/orders?key=REDACTED');
    } finally {
      await gateway.close();
    }
  });

  it.each<[string, boolean, string, (id: string) => boolean]>([
    ["keeps the client's well-formed X-Request-Id where the server keeps inbound ids (the gateway)", true, 'client-chunk-id', (id) => id === 'client-chunk-id'],
    ['mints one for an id that is not well formed', true, 'bad"id', (id) => /^[0-9a-f]{32}$/.test(id)],
    ["mints one where the server believes no inbound id (the services')", false, 'client-chunk-id', (id) => /^[0-9a-f]{32}$/.test(id)],
  ])('%s, and logs its path', async (_desc, keepsInboundRequestId, sent, expected) => {
    const tracing = startInMemoryTracing();
    const { logger, lines } = memoryLogger('gateway');
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' });
    const app = createGateway(config, { logger, tracer: tracing.tracer });
    const gateway = await runServer({ app: { callback: () => handleAfterTurn(app.callback()) }, name: 'gateway', port: 0, host: '127.0.0.1', logger, tracer: tracing.tracer, keepsInboundRequestId });
    try {
      const answer = await exchange(gateway.url, `POST /api/orders?key=kgw_secret HTTP/1.1\r\nHost: ${new URL(gateway.url).host}\r\nX-Request-Id: ${sent}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n`);
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      const requestId = /\r\nX-Request-Id: (\S+)\r\n/.exec(answer)?.[1] ?? '';
      expect(expected(requestId)).toBe(true);
      expect(answer).toContain(`"requestId":"${requestId}"`);
      await waitFor(() => lines.some((line) => line.message === ACCESS_LINE_MESSAGE), 'the access-log line');
      const line = lines.find((each) => each.message === ACCESS_LINE_MESSAGE)!;
      expect([line.request_id, line.status, line.url]).toEqual([requestId, 400, '/api/orders?key=REDACTED']);
      await waitFor(() => tracing.spans().some((span) => span.kind === SpanKind.SERVER), 'the SERVER span');
      const span = tracing.spans().find((each) => each.kind === SpanKind.SERVER)!;
      expect(span.attributes[ATTR.requestId]).toBe(requestId);
      expect([line[LOG_FIELD.traceId], line[LOG_FIELD.spanId]]).toEqual([span.spanContext().traceId, span.spanContext().spanId]);
    } finally {
      await gateway.close();
      await tracing.shutdown();
    }
  });
});

/**
 * Bytes that do not parse after a whole request whose answer is already streaming: the connection closes once that
 * answer is out (it can no longer say `Connection: close`). A request Node had parsed before them, queued behind
 * the streaming answer, was handed the connection as that answer finished and ran (a POST forwarded), its answer
 * written to an ended socket.
 */
describe('a request queued behind an answer under way, then bytes that do not parse', () => {
  it('is never run, and the connection closes after the answer under way', async () => {
    const { logger } = memoryLogger('gateway');
    const handled: string[] = [];
    const gateway = await runServer({
      app: {
        callback: () => (request, response) => {
          handled.push(`${request.method} ${request.url}`);
          if (request.url !== '/stream') return void response.end('done');
          response.writeHead(200, { 'content-type': 'text/plain' });
          response.write('first ');
          setTimeout(() => response.end('last'), 300);
        },
      },
      name: 'gateway',
      port: 0,
      host: '127.0.0.1',
      logger,
    });
    try {
      const { port, host } = new URL(gateway.url);
      const text = await new Promise<string>((resolve) => {
        const socket = net.connect(Number(port), '127.0.0.1', () => socket.write(`GET /stream HTTP/1.1\r\nHost: ${host}\r\n\r\n`));
        let answer = '';
        // Once the streaming answer's head is here: a whole POST, then garbage, in one write.
        socket.once('data', () => socket.write(`POST /create HTTP/1.1\r\nHost: ${host}\r\nContent-Length: 2\r\n\r\n{}GARBAGE\r\n\r\n`));
        socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
        socket.on('error', () => undefined);
        socket.on('close', () => resolve(answer));
      });
      expect(text).toMatch(/^HTTP\/1\.1 200 /);
      expect(text).toContain('last');
      expect((text.match(/HTTP\/1\.1 \d{3} /g) ?? []).length).toBe(1);
      expect(handled).toEqual(['GET /stream']);
    } finally {
      await gateway.close();
    }
  });
});
