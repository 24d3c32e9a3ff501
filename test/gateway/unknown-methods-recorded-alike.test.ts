import http2 from 'node:http2';
import tls from 'node:tls';
import { SpanStatusCode } from '@opentelemetry/api';
import { ATTR_ERROR_TYPE } from '@opentelemetry/semantic-conventions';
import { runServer, type RunningServer } from '../../otel/lifecycle';
import { ACCESS_LINE_MESSAGE, ATTR, HEADER } from '../../otel/wire-names';
import { createGatewayApps } from '../../src/gateway';
import { createTlsServer } from '../../src/tls';
import { makeCertificate, type TestCertificate } from '../helpers/certificates';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { memoryLogger } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';

const TIMEOUTS = { headersMs: 10_000, requestMs: 30_000, keepAliveMs: 5_000 };

/** `FOO` over HTTP/2 on its own session: the answer's status and request id. */
async function overHttp2(origin: string, ca: string, method: string): Promise<{ status: number; requestId: string }> {
  const session = http2.connect(origin, { ca });
  try {
    return await new Promise((resolve, reject) => {
      const stream = session.request({ ':method': method, ':path': '/api/users' });
      stream.on('response', (headers) => resolve({ status: Number(headers[':status']), requestId: String(headers[HEADER.requestId]) }));
      stream.on('error', reject);
      stream.resume();
    });
  } finally {
    session.close();
  }
}

/** `FOO` over HTTP/1.1 (TLS, no ALPN) written by hand: Node's client sends no method its parser would refuse. */
function overHttp1(origin: string, ca: string, method: string): Promise<{ status: number; requestId: string }> {
  const { hostname, port, host } = new URL(origin);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: hostname, port: Number(port), ca, servername: 'localhost' }, () => socket.write(`${method} /api/users HTTP/1.1\r\nHost: ${host}\r\nConnection: close\r\n\r\n`));
    let answer = '';
    socket.on('data', (chunk: Buffer) => (answer += chunk.toString('latin1')));
    socket.on('error', reject);
    socket.on('close', () => resolve({ status: Number(/^HTTP\/1\.1 (\d{3}) /.exec(answer)?.[1]), requestId: /\r\nX-Request-Id: ([^\r]+)\r\n/i.exec(answer)?.[1] ?? '' }));
  });
}

/**
 * A method the gateway does not know is the client's doing, whichever protocol carried it: HTTP/1.1's parser
 * refused it (otel/lifecycle.ts) with a warn line, while over HTTP/2 the pipeline refused it (src/middleware/
 * http2-requests.ts) with error-level lines, so any client could write error-level logs at will. Both now log
 * as other client-caused answers are (warn, no `request failed` line), and their SERVER span follows the HTTP
 * semantic conventions for a 5xx (status Error, `error.type` the status code) on both.
 */
describe('a method the gateway does not know is recorded alike over HTTP/1.1 and HTTP/2', () => {
  let certificate: TestCertificate;
  let tracing: InMemoryTracing;
  let gateway: RunningServer;
  let lines: Record<string, unknown>[];

  beforeAll(async () => {
    certificate = makeCertificate();
    tracing = startInMemoryTracing();
    const config = testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: 'http://127.0.0.1:9' }, { tls: { certFile: certificate.certFile, keyFile: certificate.keyFile } });
    const recorded = memoryLogger('gateway');
    lines = recorded.lines;
    const { logger } = recorded;
    const apps = createGatewayApps(config, { logger, tracer: tracing.tracer, metrics: false });
    gateway = await runServer({ app: apps.gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, tracer: tracing.tracer, timeouts: TIMEOUTS, createServer: createTlsServer({ tls: config.tls!, timeouts: TIMEOUTS, logger }).create });
  });
  afterAll(async () => {
    await gateway?.close();
    await tracing?.shutdown();
  });

  it.each([
    { desc: 'FOO over HTTP/1.1', send: overHttp1, method: 'FOO' },
    { desc: 'FOO over HTTP/2', send: overHttp2, method: 'FOO' },
    { desc: 'a lower-case get over HTTP/1.1', send: overHttp1, method: 'get' },
    { desc: 'a lower-case get over HTTP/2', send: overHttp2, method: 'get' },
  ])('$desc: 501, one warn access line and nothing error-level, a SERVER span with status Error and error.type 501', async ({ send, method }) => {
    const { status, requestId } = await send(gateway.url, certificate.cert, method);
    expect(status).toBe(501);
    await waitFor(() => lines.some((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === requestId), 'the access line');
    await waitFor(() => tracing.spans().some((span) => span.attributes[ATTR.requestId] === requestId), 'the SERVER span');
    const logged = lines.filter((line) => line.request_id === requestId);
    expect(logged.map((line) => [line.message, line.level, line.error_code, line.method])).toEqual([[ACCESS_LINE_MESSAGE, 'warn', 'method_not_implemented', method]]);
    expect(lines.filter((line) => line.level === 'error')).toEqual([]);
    const spans = tracing.spans().filter((span) => span.attributes[ATTR.requestId] === requestId);
    expect(spans.map((span) => ({ status: span.status.code, errorType: span.attributes[ATTR_ERROR_TYPE], events: span.events.map((event) => event.name) }))).toEqual([{ status: SpanStatusCode.ERROR, errorType: '501', events: [] }]);
    // The method as semconv records one it does not know: `_OTHER`, and the client's beside it (HTTP/1.1's parser
    // refused it before the pipeline, which records it so over HTTP/2).
    expect(spans.map((span) => [span.name, span.attributes['http.request.method'], span.attributes['http.request.method_original']])).toEqual([['HTTP', '_OTHER', method]]);
  });

  // HTTP/1.1's parser refusal records no method past 32 characters; over HTTP/2 the pipeline wrote a `:method` of
  // any length (60 kB) into every access line and span, at the client's will.
  it.each([
    { desc: 'HTTP/1.1', send: overHttp1, length: 33 },
    { desc: 'HTTP/2', send: overHttp2, length: 33 },
    { desc: 'HTTP/1.1', send: overHttp1, length: 4000 },
    { desc: 'HTTP/2', send: overHttp2, length: 4000 },
  ])('a method of $length characters over $desc: 501, recorded as _OTHER with no method_original and a null method in the access line', async ({ send, length }) => {
    const { status, requestId } = await send(gateway.url, certificate.cert, 'X'.repeat(length));
    expect(status).toBe(501);
    await waitFor(() => lines.some((line) => line.message === ACCESS_LINE_MESSAGE && line.request_id === requestId), 'the access line');
    await waitFor(() => tracing.spans().some((span) => span.attributes[ATTR.requestId] === requestId), 'the SERVER span');
    expect(lines.filter((line) => line.request_id === requestId).map((line) => [line.message, line.error_code, line.method])).toEqual([[ACCESS_LINE_MESSAGE, 'method_not_implemented', null]]);
    const spans = tracing.spans().filter((span) => span.attributes[ATTR.requestId] === requestId);
    expect(spans.map((span) => [span.name, span.attributes['http.request.method'], 'http.request.method_original' in span.attributes])).toEqual([['HTTP', '_OTHER', false]]);
  });
});
