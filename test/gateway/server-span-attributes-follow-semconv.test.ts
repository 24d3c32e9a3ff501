import http2 from 'node:http2';
import net from 'node:net';
import { SpanKind } from '@opentelemetry/api';
import type { ReadableSpan } from '@opentelemetry/sdk-trace';
import {
  ATTR_NETWORK_PROTOCOL_VERSION,
  ATTR_SERVER_ADDRESS,
  ATTR_SERVER_PORT,
  ATTR_URL_PATH,
  ATTR_URL_QUERY,
  ATTR_URL_SCHEME,
} from '@opentelemetry/semantic-conventions';
import { ATTR, HEADER } from '../../otel/wire-names';
import { createGatewayApps } from '../../src/gateway';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { listen, memoryLogger, sendRaw } from '../helpers/servers';
import { startStack, type TestStack } from '../helpers/stack';
import { waitFor } from '../helpers/wait';

/**
 * The gateway's SERVER span carries what the HTTP semantic conventions require of an HTTP server span: `url.query`
 * when the request had one (its secrets redacted as in the access log), `server.port` beside `server.address`
 * (from the authority the client addressed: the port it names, else the scheme's default), and
 * `network.protocol.version` in the conventions' spelling (`2`, not Node's `2.0`). It had neither of the first two
 * and said `2.0` (audit 31, finding 3).
 */
describe('the gateway SERVER span attributes follow the HTTP semantic conventions', () => {
  let tracing: InMemoryTracing;
  let stack: TestStack;
  let port: number;

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    stack = await startStack({ tracer: tracing.tracer });
    port = Number(new URL(stack.gateway.url).port);
  });
  afterAll(async () => {
    await stack.close();
    await tracing.shutdown();
  });

  const serverSpanOf = async (requestId: string): Promise<ReadableSpan> => {
    const find = () => tracing.spans().find((span) => span.kind === SpanKind.SERVER && span.attributes[ATTR.requestId] === requestId);
    await waitFor(() => find() !== undefined, `the SERVER span of ${requestId}`);
    return find()!;
  };
  const urlAndServer = (span: ReadableSpan) => ({
    path: span.attributes[ATTR_URL_PATH],
    query: span.attributes[ATTR_URL_QUERY],
    scheme: span.attributes[ATTR_URL_SCHEME],
    address: span.attributes[ATTR_SERVER_ADDRESS],
    port: span.attributes[ATTR_SERVER_PORT],
    version: span.attributes[ATTR_NETWORK_PROTOCOL_VERSION],
  });

  let row = 0;
  it.each([
    { desc: 'a query and a Host with its port', target: '/api/nothing-here?color=blue', host: (p: number) => `127.0.0.1:${p}`, query: 'color=blue', address: '127.0.0.1', port: (p: number) => p },
    { desc: 'query secrets, redacted as in the access log', target: '/api/nothing-here?color=blue&sig=s3cr3t&access_token=t0k3n', host: () => 'gw.example.com:8080', query: 'color=blue&sig=REDACTED&access_token=REDACTED', address: 'gw.example.com', port: () => 8080 },
    { desc: 'no query, a Host without a port (http: 80)', target: '/api/nothing-here', host: () => 'gw.example.com', query: undefined, address: 'gw.example.com', port: () => 80 },
    { desc: 'an empty port (the default, RFC 3986)', target: '/api/nothing-here', host: () => 'gw.example.com:', query: undefined, address: 'gw.example.com', port: () => 80 },
    { desc: 'an IPv6 literal with a port', target: '/api/nothing-here', host: () => '[::1]:8443', query: undefined, address: '[::1]', port: () => 8443 },
    { desc: 'a port that is not one', target: '/api/nothing-here', host: () => 'gw.example.com:80a', query: undefined, address: 'gw.example.com', port: () => undefined },
    { desc: 'a port out of range', target: '/api/nothing-here', host: () => 'gw.example.com:65536', query: undefined, address: 'gw.example.com', port: () => undefined },
  ])('over HTTP/1.1: $desc', async ({ target, host, query, address, port: expectedPort }) => {
    const requestId = `span-attributes-${++row}`;
    await sendRaw(stack.gateway.url, target, { host: host(port), [HEADER.requestId]: requestId });
    expect(urlAndServer(await serverSpanOf(requestId))).toEqual({ path: '/api/nothing-here', query, scheme: 'http', address, port: expectedPort(port), version: '1.1' });
  });

  it('over HTTP/1.0 without a Host: no server.address, so no server.port', async () => {
    const socket = net.connect(port, '127.0.0.1');
    socket.on('error', () => undefined);
    socket.end(`GET /api/nothing-here?page=2 HTTP/1.0\r\n${HEADER.requestId}: span-attributes-no-host\r\n\r\n`);
    expect(urlAndServer(await serverSpanOf('span-attributes-no-host'))).toEqual({ path: '/api/nothing-here', query: 'page=2', scheme: 'http', address: undefined, port: undefined, version: '1.0' });
  });

  // The scheme a trusted proxy names picks the default port; read from an object, `__proto__` found its prototype
  // (exported as an empty map) and `constructor` the Object function (dropped with a warning).
  it.each(['__proto__', 'constructor', 'ftp'])('behind a trusted proxy naming the scheme %s: no server.port for a Host without one', async (scheme) => {
    const { logger } = memoryLogger('gateway');
    const apps = createGatewayApps({ ...stack.config, trustProxy: true }, { logger, tracer: tracing.tracer, metrics: false });
    const proxied = await listen(apps.gateway.callback());
    try {
      const requestId = `span-attributes-scheme-${scheme.replace(/_/g, '')}`;
      await sendRaw(proxied.url, '/api/nothing-here', { host: 'gw.example.com', 'x-forwarded-proto': scheme, [HEADER.requestId]: requestId });
      const span = await serverSpanOf(requestId);
      expect(span.attributes[ATTR_URL_SCHEME]).toBe(scheme);
      expect(Object.hasOwn(span.attributes, ATTR_SERVER_PORT)).toBe(false);
    } finally {
      await proxied.close();
    }
  });

  it('over HTTP/2: the :authority port, and network.protocol.version "2"', async () => {
    const { logger } = memoryLogger('gateway');
    const apps = createGatewayApps(stack.config, { logger, tracer: tracing.tracer, metrics: false });
    const h2c = http2.createServer(apps.gateway.callback());
    await new Promise<void>((resolve) => h2c.listen(0, '127.0.0.1', resolve));
    const h2cPort = (h2c.address() as net.AddressInfo).port;
    const session = http2.connect(`http://127.0.0.1:${h2cPort}`);
    try {
      const stream = session.request({ ':path': '/api/nothing-here?color=blue&password=hunter2', [HEADER.requestId]: 'span-attributes-h2' });
      stream.resume();
      await new Promise((resolve) => stream.on('close', resolve));
      expect(urlAndServer(await serverSpanOf('span-attributes-h2'))).toEqual({
        path: '/api/nothing-here',
        query: 'color=blue&password=REDACTED',
        scheme: 'http',
        address: '127.0.0.1',
        port: h2cPort,
        version: '2',
      });
    } finally {
      session.close();
      await new Promise((resolve) => h2c.close(resolve));
    }
  });
});
