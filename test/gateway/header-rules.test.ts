import type http from 'node:http';
import http2 from 'node:http2';
import fc from 'fast-check';
import { runServer, type RunningServer } from '../../otel/lifecycle';
import { HEADER } from '../../otel/wire-names';
import { clientTimeouts, ConfigError, parseConfig } from '../../src/config';
import { createGatewayApps } from '../../src/gateway';
import { headerSafe } from '../../src/header-rules';
import { createTlsServer } from '../../src/tls';
import { makeCertificate } from '../helpers/certificates';
import { listen, memoryLogger, sendRaw, type TestServer } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile } from '../helpers/test-config';

/** A service that records each request's headers and answers with the headers the test chose. */
async function recordingService(responseHeaders: () => Record<string, string | string[]>): Promise<TestServer & { seen: http.IncomingHttpHeaders[] }> {
  const seen: http.IncomingHttpHeaders[] = [];
  const server = await listen((req, res) => {
    seen.push({ ...req.headers });
    req.resume();
    req.on('end', () => {
      res.writeHead(200, { 'content-type': 'application/json', ...responseHeaders() });
      res.end('{"ok":true}');
    });
  });
  return Object.assign(server, { seen });
}

/** The shipped routes, with `headers` added to the notifications route. */
function routesWith(headers: unknown): unknown[] {
  const routes = shippedConfigFile().routes as Record<string, unknown>[];
  return routes.map((route) => (route.name === 'notifications' ? { ...route, headers } : route));
}

describe('header rules per route', () => {
  let service: Awaited<ReturnType<typeof recordingService>>;
  let stack: TestStack;
  let token: string;
  const last = () => service.seen[service.seen.length - 1]!;

  beforeAll(async () => {
    service = await recordingService(() => ({ server: 'Apache/2.4.1 (Unix)', 'x-powered-by': 'PHP/5.6.40', 'x-aspnet-version': '4.0.30319', 'x-aspnetmvc-version': '5.2', 'x-backend-server': 'web-07.internal', 'x-internal-build': 'b-1234', 'cache-control': 'no-store' }));
    stack = await startStack({
      serviceUrls: { notifications: service.url, orders: service.url },
      overrides: {
        routes: routesWith({
          request: {
            set: { 'x-caller': 'user={userId};request={requestId};route={route};consumer={consumerId}', 'accept-language': 'en' },
            add: { 'x-via-gateway': 'koa-gateway' },
            remove: ['x-debug', 'cookie'],
          },
          response: {
            set: { 'x-frame-options': 'DENY', 'x-served-for': '{requestId}' },
            add: { 'cache-control': 'no-transform' },
            remove: ['x-internal-build'],
          },
        }),
      },
    });
    token = await login(stack.gateway.url, 'bob@example.com', 'builder');
  });
  afterAll(async () => {
    await stack.close();
    await service.close();
  });

  it('sets, adds and removes request headers with values from the request', async () => {
    const response = await fetch(`${stack.gateway.url}/api/notifications`, {
      headers: { authorization: `Bearer ${token}`, 'x-request-id': 'rules-1', 'x-debug': 'on', cookie: 'session=abc', 'x-via-gateway': 'client-said', 'accept-language': 'fr' },
    });
    expect(response.status).toBe(200);
    const headers = last();
    expect(headers['x-caller']).toBe('user=2;request=rules-1;route=notifications;consumer=');
    expect(headers['accept-language']).toBe('en');
    // `add` keeps the client's value and appends the rule's (Node joins the two lines).
    expect(headers['x-via-gateway']).toBe('client-said, koa-gateway');
    expect(headers['x-debug']).toBeUndefined();
    expect(headers.cookie).toBeUndefined();
    // The gateway's own headers are still its own.
    expect(headers[HEADER.userId]).toBe('2');
    expect(headers[HEADER.requestId]).toBe('rules-1');
  });

  it('sets, adds and removes response headers, and hides the service software', async () => {
    const response = await fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}`, 'x-request-id': 'rules-2' } });
    expect(response.status).toBe(200);
    expect(response.headers.get('x-frame-options')).toBe('DENY');
    expect(response.headers.get('x-served-for')).toBe('rules-2');
    expect(response.headers.get('cache-control')).toBe('no-store, no-transform');
    expect(response.headers.get('x-internal-build')).toBeNull();
    expect(response.headers.get('server')).toBeNull();
    expect(response.headers.get('x-powered-by')).toBeNull();
    expect(response.headers.get(HEADER.requestId)).toBe('rules-2');
  });

  it('hides Server, X-Powered-By, the ASP.NET versions and X-Backend-Server on routes without rules too', async () => {
    const response = await fetch(`${stack.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(200);
    for (const name of ['server', 'x-powered-by', 'x-aspnet-version', 'x-aspnetmvc-version', 'x-backend-server']) expect(response.headers.get(name)).toBeNull();
    // No rule of the notifications route leaks onto another route.
    expect(response.headers.get('x-frame-options')).toBeNull();
    expect(last()['x-caller']).toBeUndefined();
  });

  it.each([
    { desc: 'with spaces', requestId: 'two words' },
    { desc: 'with a quote', requestId: 'a"b' },
    { desc: 'with angle brackets', requestId: '<script>' },
    { desc: 'over-long', requestId: 'x'.repeat(500) },
  ])('puts the gateway\'s own request id into a rule, not a malformed client id ($desc)', async ({ requestId }) => {
    const response = await fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}`, 'x-request-id': requestId } });
    expect(response.status).toBe(200);
    const echoed = response.headers.get(HEADER.requestId)!;
    expect(echoed).not.toBe(requestId);
    expect(response.headers.get('x-served-for')).toBe(echoed);
    expect(last()['x-caller']).toBe(`user=2;request=${echoed};route=notifications;consumer=`);
  });
});

describe('header rules under headersWithUnderscores: allow', () => {
  // CGI, PHP, Rack and WSGI read `x_caller`, `X_Caller` and `x-caller` alike, as HTTP_X_CALLER; PHP `x.caller` too.
  const rules = { request: { set: { 'x-caller': '{userId}@{route}' }, add: { 'x-via-gateway': 'koa-gateway' }, remove: ['x-debug', 'x_legacy_auth'] } };
  const ruleNames = ['x-caller', 'x-via-gateway', 'x-debug', 'x-legacy-auth'];
  const asCgiReadsIt = (name: string) => name.toLowerCase().replace(/[_.]/g, '-');
  /** What the client sends: each rule's own name, and other spellings of it, next to an unrelated `_` name. */
  const forged = {
    'x-caller': 'forged-0',
    x_caller: 'forged-1',
    'x-debug': 'true',
    x_debug: 'true',
    'x-via-gateway': 'client-said',
    'x_via-gateway': 'forged-2',
    'x-via_gateway': 'forged-3',
    'x-legacy-auth': 'forged-4',
    x_legacy_auth: 'forged-5',
    'x.caller': 'forged-7',
    'x.via_gateway': 'forged-8',
    'x.legacy.auth': 'forged-9',
    x_trace_note: 'kept',
    'x.trace.mark': 'kept too',
  };
  let service: Awaited<ReturnType<typeof recordingService>>;
  let stack: TestStack;
  let tlsGateway: RunningServer;
  let ca: string;
  let token: string;
  const seenWithRequestId = (requestId: string) => service.seen.filter((headers) => headers[HEADER.requestId] === requestId);

  beforeAll(async () => {
    const certificate = makeCertificate();
    ca = certificate.cert;
    service = await recordingService(() => ({}));
    stack = await startStack({
      serviceUrls: { notifications: service.url },
      overrides: { headersWithUnderscores: 'allow', routes: routesWith(rules), tls: { certFile: certificate.certFile, keyFile: certificate.keyFile } },
    });
    // The same config over TLS, HTTP/2 offered (as main.ts serves it with `tls`).
    const { logger } = memoryLogger('gateway');
    const timeouts = clientTimeouts(stack.config.server);
    const app = createGatewayApps(stack.config, { logger, metrics: false }).gateway;
    tlsGateway = await runServer({ app, name: 'gateway', port: 0, host: '127.0.0.1', logger, timeouts, createServer: createTlsServer({ tls: stack.config.tls!, timeouts, logger }).create });
    token = await login(stack.gateway.url, 'bob@example.com', 'builder');
  });
  afterAll(async () => {
    await tlsGateway?.close();
    await stack?.close();
    await service?.close();
  });

  /** One HTTP/2 request on a fresh session; resolves with the status. */
  async function overHttp2(headers: Record<string, string>): Promise<number> {
    const session = http2.connect(tlsGateway.url, { ca });
    try {
      return await new Promise<number>((resolve, reject) => {
        const stream = session.request({ ':method': 'GET', ':path': '/api/notifications', ...headers });
        let status = 0;
        stream.on('response', (received) => (status = Number(received[':status'])));
        stream.on('end', () => resolve(status));
        stream.on('error', reject);
        stream.resume();
      });
    } finally {
      session.close();
    }
  }

  it.each([
    // Sent byte for byte: names in the case given, `X_Caller` beside `x_caller` as separate lines.
    { desc: 'HTTP/1.1', send: (headers: Record<string, string>) => sendRaw(stack.gateway.url, '/api/notifications', { ...headers, X_Caller: 'forged-6', X_DEBUG: 'true' }).then((reply) => reply.status) },
    { desc: 'HTTP/2', send: overHttp2 },
  ])('drops every other spelling of a header a request rule sets, adds or removes ($desc)', async ({ desc, send }) => {
    const requestId = `underscore-twins-${desc}`;
    expect(await send({ authorization: `Bearer ${token}`, [HEADER.requestId]: requestId, ...forged })).toBe(200);
    const [seen] = seenWithRequestId(requestId);
    // Of the rules' headers, the service gets only the spellings the rules wrote, with the rules' values.
    expect(Object.keys(seen!).filter((name) => ruleNames.includes(asCgiReadsIt(name))).sort()).toEqual(['x-caller', 'x-via-gateway']);
    expect(seen!['x-caller']).toBe('2@notifications');
    // `add` keeps the client's value of the rule's own name, and only that one.
    expect(seen!['x-via-gateway']).toBe('client-said, koa-gateway');
    // Under `allow`, a `_` or `.` name no rule names still passes.
    expect([seen!.x_trace_note, seen!['x.trace.mark']]).toEqual(['kept', 'kept too']);
  });
});

describe('header rules in the config', () => {
  const parse = (headers: unknown, extra: Record<string, unknown> = {}) => parseConfig({ ...shippedConfigFile(), routes: routesWith(headers), ...extra });
  const at = (side: string, list: string) => `routes.4.headers.${side}.${list}`;

  it.each([
    { desc: 'an identity header', side: 'request', list: 'set', name: 'x-user-id' },
    { desc: 'an identity header spelt with underscores', side: 'request', list: 'set', name: 'X_User_Role' },
    { desc: 'the consumer header', side: 'request', list: 'add', name: 'x-consumer-id' },
    { desc: 'a gateway-owned prefix', side: 'request', list: 'set', name: 'x-gateway-anything' },
    { desc: 'the request id', side: 'request', list: 'remove', name: 'x-request-id' },
    { desc: 'a forwarding header', side: 'request', list: 'set', name: 'X-Forwarded-For' },
    { desc: 'another forwarding header', side: 'request', list: 'remove', name: 'x-real-ip' },
    { desc: 'a request-rewriting header', side: 'request', list: 'set', name: 'x-original-url' },
    { desc: 'traceparent', side: 'request', list: 'remove', name: 'traceparent' },
    { desc: 'tracestate', side: 'request', list: 'set', name: 'tracestate' },
    { desc: 'Host', side: 'request', list: 'set', name: 'host' },
    { desc: 'Content-Length', side: 'request', list: 'set', name: 'content-length' },
    { desc: 'Transfer-Encoding', side: 'request', list: 'add', name: 'transfer-encoding' },
    { desc: 'a hop-by-hop header', side: 'request', list: 'set', name: 'connection' },
    { desc: 'the response request id', side: 'response', list: 'remove', name: 'X-Request-Id' },
    { desc: 'traceresponse', side: 'response', list: 'set', name: 'traceresponse' },
    { desc: 'a response framing header', side: 'response', list: 'set', name: 'content-length' },
    { desc: 'a CORS header', side: 'response', list: 'set', name: 'access-control-allow-origin' },
  ])('refuses a rule on $desc ($name)', ({ side, list, name }) => {
    const rule = list === 'remove' ? { remove: [name] } : { [list]: { [name]: 'x' } };
    expect(() => parse({ [side]: rule })).toThrow(ConfigError);
    expect(() => parse({ [side]: rule })).toThrow(new RegExp(`${at(side, list).replaceAll('.', '\\.')}.*(rule cannot set or remove it|header rule)`));
  });

  it('lets a rule keep an X-Forwarded-* the gateway does not write (a trusted Envoy\'s -Client-Cert) from a service', () => {
    // Every X-Forwarded-* is stripped from untrusted clients; only the listed ones are the gateway's to write.
    expect(() => parse({ request: { remove: ['X-Forwarded-Client-Cert'] } })).not.toThrow();
  });

  it('refuses a response rule on the cache status header', () => {
    expect(() => parse({ response: { remove: ['X-Cache'] } })).toThrow(/cache status header/);
  });

  it.each([
    { desc: 'a CR/LF in a value', value: 'a\r\nSet-Cookie: x=1' },
    { desc: 'a LF alone', value: 'a\nb' },
    { desc: 'a NUL', value: 'a\u0000b' },
    { desc: 'a non-ASCII character', value: 'caf\u00e9' },
    { desc: 'an unknown placeholder', value: '{password}' },
    { desc: 'a lone brace', value: 'user={userId' },
    { desc: 'a closing brace alone', value: 'user}' },
    // No part of a field value (RFC 9110 5.5); an HTTP/2 field with one is malformed (RFC 9113 8.2.1).
    { desc: 'a leading space', value: ' a' },
    { desc: 'a trailing tab', value: 'a\t' },
  ])('refuses $desc', ({ value }) => {
    expect(() => parse({ request: { set: { 'x-note': value } } })).toThrow(/routes\.4\.headers\.request\.set\.x-note/);
  });

  it.each([
    { desc: 'a name with a space', rule: { request: { set: { 'x note': 'a' } } } },
    { desc: 'a name with a colon', rule: { response: { remove: ['x-a:b'] } } },
    { desc: 'the same header in two lists', rule: { request: { set: { 'x-a': '1' }, remove: ['X-A'] } } },
    // One header to CGI, PHP, Rack and WSGI: which rule the service sees would depend on the order they ran.
    { desc: 'the same header in two spellings', rule: { request: { set: { 'x-a-b': '1' }, remove: ['X_A-b'] } } },
    { desc: 'the same response header in two spellings', rule: { response: { add: { x_a: '1', 'X-A': '2' } } } },
    { desc: 'an unknown list', rule: { request: { rename: { 'x-a': 'x-b' } } } },
  ])('refuses $desc', ({ rule }) => {
    expect(() => parse(rule)).toThrow(ConfigError);
  });

  it('accepts every placeholder and keeps Server when hideUpstreamHeaders is empty', () => {
    const config = parse({ request: { set: { 'x-note': '{requestId} {userId} {route} {consumerId}' } } }, { proxy: { hideUpstreamHeaders: [] } });
    expect(config.proxy.hideUpstreamHeaders).toEqual([]);
    expect(parseConfig(shippedConfigFile()).proxy.hideUpstreamHeaders).toEqual(['server', 'x-powered-by', 'x-aspnet-version', 'x-aspnetmvc-version', 'x-backend-server']);
  });

  it('renders every template value as visible ASCII, whatever it holds', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'binary', maxLength: 64 }), (value) => {
        const safe = headerSafe(value);
        expect(safe).toMatch(/^[\x20-\x7e]*$/);
        if (/^[\x20-\x7e]*$/.test(value)) expect(safe).toBe(value);
      }),
      { seed: 14, numRuns: 500 },
    );
  });
});
