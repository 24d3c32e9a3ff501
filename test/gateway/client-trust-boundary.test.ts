import http2 from 'node:http2';
import https from 'node:https';
import tls from 'node:tls';
import fc from 'fast-check';
import { HEADER } from '../../otel/wire-names';
import { makeCertificate, type TestCertificate } from '../helpers/certificates';
import { startGatewayProcess, type GatewayProcess } from '../helpers/gateway-process';
import { listen, type TestServer } from '../helpers/servers';
import { TEST_JWT_SECRET } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';

/**
 * What a client can make a service believe or reach, seen from the service: the built gateway (HTTPS, HTTP/1.1
 * and HTTP/2) in front of a recording service, with an admin-only route nested in a signed-in one (the README's
 * "most specific route owns its path") and `headersWithUnderscores: allow`, the policy that lets the most through.
 */

interface Seen {
  url: string;
  headers: Record<string, string | string[] | undefined>;
  /** What the service read of the body, and the trailer fields Node gave it after the body (set at its end). */
  body?: string;
  trailers?: Record<string, string | undefined>;
}

interface Reply {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: string;
}

let certificate: TestCertificate;
let service: TestServer;
let gateway: GatewayProcess;
const seen: Seen[] = [];
let user: string;
let admin: string;
let rows = 0;
const nextRequestId = () => `boundary-${++rows}`;
const seenWith = (requestId: string) => seen.filter((request) => request.headers[HEADER.requestId] === requestId);

/** One HTTP/1.1 request over TLS, path and header names sent as given. */
function send(path: string, headers: Record<string, string> = {}, method = 'GET'): Promise<Reply> {
  const { port } = new URL(gateway.url);
  return new Promise((resolve, reject) => {
    const request = https.request({ host: '127.0.0.1', port: Number(port), servername: 'localhost', ca: [certificate.cert], path, method, headers, agent: false }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (text += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, text }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end();
  });
}

/** One HTTP/2 request (ALPN h2) on a session of its own. */
async function sendH2(path: string, headers: Record<string, string> = {}): Promise<Reply> {
  const session = http2.connect(gateway.url, { ca: [certificate.cert], servername: 'localhost' });
  try {
    return await new Promise<Reply>((resolve, reject) => {
      session.on('error', reject);
      const stream = session.request({ ':path': path, ':method': 'GET', ...headers });
      let status = 0;
      let responseHeaders: Reply['headers'] = {};
      let text = '';
      stream.setEncoding('utf8');
      stream.on('response', (head) => {
        status = Number(head[':status']);
        responseHeaders = head;
      });
      stream.on('data', (chunk: string) => (text += chunk));
      stream.on('end', () => resolve({ status, headers: responseHeaders, text }));
      stream.on('error', reject);
    });
  } finally {
    session.close();
  }
}

function expectProblem(reply: Reply, status: number, code: string): void {
  expect({ status: reply.status, contentType: reply.headers['content-type'] }).toEqual({ status, contentType: 'application/problem+json' });
  const problem = JSON.parse(reply.text) as { code: string; requestId: string };
  expect(problem).toMatchObject({ status, code, type: `urn:koa-gateway:problem:${code}` });
  expect(problem.requestId).toBe(reply.headers[HEADER.requestId]);
}

beforeAll(async () => {
  certificate = makeCertificate();
  service = await listen((req, res) => {
    const request: Seen = { url: req.url ?? '', headers: { ...req.headers } };
    seen.push(request);
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      Object.assign(request, { body, trailers: { ...req.trailers } });
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"ok":true}');
    });
  });
  gateway = await startGatewayProcess({
    config: {
      port: 0,
      rateLimit: { max: 1_000_000, windowMs: 60_000 },
      headersWithUnderscores: 'allow',
      tls: { certFile: certificate.certFile, keyFile: certificate.keyFile },
      services: { rec: { url: service.url }, users: { url: service.url }, orders: { url: service.url }, notifications: { url: service.url } },
      routes: [
        { name: 'pub', prefix: '/pub', service: 'rec', upstreamPath: '/p', auth: 'public' },
        // Takes `/shop` off, as Traefik's StripPrefix does: the service is told so in X-Forwarded-Prefix.
        { name: 'shop', prefix: '/shop/orders', service: 'rec', upstreamPath: '/orders', auth: 'public' },
        { name: 'admin', prefix: '/api/admin', service: 'rec', upstreamPath: '/svc/admin', auth: 'required', roles: ['admin'] },
        { name: 'api', prefix: '/api', service: 'rec', upstreamPath: '/svc', auth: 'required' },
        // A public route listed before a protected one whose prefix is its own with a dot: a suffix on the longer one is its.
        { name: 'report', prefix: '/report', service: 'rec', upstreamPath: '/report', auth: 'public' },
        { name: 'report-internal', prefix: '/report.internal', service: 'rec', upstreamPath: '/report.internal', auth: 'required', roles: ['admin'] },
      ],
    },
    env: { JWT_SECRET: TEST_JWT_SECRET },
  });
  user = await signToken({ subject: '7', claims: { role: 'user', email: 'bob@example.com' } });
  admin = await signToken({ subject: '1', claims: { role: 'admin', email: 'alice@example.com' } });
}, 60_000);

afterAll(async () => {
  gateway?.child.kill('SIGKILL');
  await gateway?.exited();
  await service?.close();
});

describe('httpoxy: a client’s Proxy header never reaches a service', () => {
  const PROXY = 'http://attacker.example:3128';
  it.each<{ desc: string; path: string; headers: Record<string, string>; signedIn?: boolean }>([
    { desc: 'Proxy on a public route', path: '/pub/x', headers: { Proxy: PROXY } },
    { desc: 'PROXY in upper case on a signed-in route', path: '/api/orders', headers: { PROXY: PROXY }, signedIn: true },
    { desc: 'proxy beside Proxy-Connection', path: '/pub/x', headers: { proxy: PROXY, 'Proxy-Connection': 'keep-alive' } },
  ])('drops $desc (HTTP/1.1)', async ({ path, headers, signedIn }) => {
    const requestId = nextRequestId();
    const reply = await send(path, { ...headers, ...(signedIn ? { authorization: `Bearer ${user}` } : {}), [HEADER.requestId]: requestId });
    expect(reply.status).toBe(200);
    const [request] = seenWith(requestId);
    expect(request?.headers.proxy).toBeUndefined();
    expect(JSON.stringify(request?.headers)).not.toContain('attacker.example');
  });

  it('drops proxy sent over HTTP/2', async () => {
    const requestId = nextRequestId();
    const reply = await sendH2('/pub/x', { proxy: PROXY, [HEADER.requestId]: requestId });
    expect(reply.status).toBe(200);
    const [request] = seenWith(requestId);
    expect(request).toBeDefined();
    expect(JSON.stringify(request!.headers)).not.toContain('attacker.example');
  });
});

describe('scheme, prefix and address spellings pass only from a trusted proxy', () => {
  const forged = [
    { desc: 'X-Scheme (Tornado takes it before X-Forwarded-Proto)', name: 'X-Scheme', value: 'https' },
    { desc: 'X-Url-Scheme', name: 'X-Url-Scheme', value: 'https' },
    { desc: 'X-Real-Scheme', name: 'X-Real-Scheme', value: 'https' },
    { desc: 'Front-End-Https', name: 'Front-End-Https', value: 'on' },
    { desc: 'X-ARR-SSL (IIS ARR)', name: 'X-ARR-SSL', value: 'on' },
    { desc: 'CF-Visitor (Cloudflare)', name: 'CF-Visitor', value: '{"scheme":"https"}' },
    { desc: 'Fastly-SSL', name: 'Fastly-SSL', value: '1' },
    { desc: 'CloudFront-Forwarded-Proto', name: 'CloudFront-Forwarded-Proto', value: 'https' },
    { desc: 'X-Script-Name (WSGI ReverseProxied prefix)', name: 'X-Script-Name', value: '/evil-prefix' },
    { desc: 'X-Forwarded-Ssl', name: 'X-Forwarded-Ssl', value: 'on' },
    { desc: 'X-Forwarded-Path', name: 'X-Forwarded-Path', value: '/evil-prefix' },
    { desc: 'X-Host', name: 'X-Host', value: 'evil.example' },
    { desc: 'X-Original-Host', name: 'X-Original-Host', value: 'evil.example' },
    { desc: 'X-Real-IP', name: 'X-Real-IP', value: '6.6.6.6' },
    { desc: 'True-Client-IP', name: 'True-Client-IP', value: '6.6.6.6' },
    { desc: 'CF-Connecting-IP', name: 'CF-Connecting-IP', value: '6.6.6.6' },
    { desc: 'Fastly-Client-IP', name: 'Fastly-Client-IP', value: '6.6.6.6' },
    { desc: 'X-Client-IP', name: 'X-Client-IP', value: '6.6.6.6' },
    { desc: 'X-Cluster-Client-IP', name: 'X-Cluster-Client-IP', value: '6.6.6.6' },
    { desc: 'WL-Proxy-Client-IP (Java getIpAddr)', name: 'WL-Proxy-Client-IP', value: '6.6.6.6' },
    { desc: 'Proxy-Client-IP', name: 'Proxy-Client-IP', value: '6.6.6.6' },
    { desc: 'CloudFront-Viewer-Address', name: 'CloudFront-Viewer-Address', value: '6.6.6.6:443' },
  ];
  const FORGED_VALUE = /^(?:https|on|1|\/evil-prefix|evil\.example|6\.6\.6\.6(?::443)?|\{"scheme":"https"\})$/;

  it.each(forged)('drops $desc from a client, and its _ twin under headersWithUnderscores allow', async ({ name, value }) => {
    const requestId = nextRequestId();
    const reply = await send('/pub/x', { [name]: value, [name.replaceAll('-', '_')]: value, [HEADER.requestId]: requestId });
    expect(reply.status).toBe(200);
    const [request] = seenWith(requestId);
    expect(request).toBeDefined();
    for (const spelling of [name.toLowerCase(), name.toLowerCase().replaceAll('-', '_')]) expect(request!.headers[spelling]).toBeUndefined();
    expect(request!.headers['x-forwarded-proto']).toBe('https');
    expect(Object.entries(request!.headers).filter(([header, heard]) => !header.startsWith('x-forwarded-') && FORGED_VALUE.test(String(heard)))).toEqual([]);
  });

  it('drops them over HTTP/2 too', async () => {
    const requestId = nextRequestId();
    const headers = Object.fromEntries(forged.map(({ name, value }) => [name.toLowerCase(), value]));
    expect((await sendH2('/pub/x', { ...headers, [HEADER.requestId]: requestId })).status).toBe(200);
    const [request] = seenWith(requestId);
    expect(request).toBeDefined();
    expect(Object.keys(request!.headers).filter((name) => name in headers)).toEqual([]);
  });
});

describe('X-Forwarded-Prefix is the gateway’s: the prefix the route took off, never a client’s', () => {
  it.each<{ desc: string; headers: Record<string, string> }>([
    { desc: 'none', headers: {} },
    { desc: 'one of its own', headers: { 'X-Forwarded-Prefix': '/evil-prefix' } },
    { desc: 'its _ twin', headers: { X_Forwarded_Prefix: '/evil-prefix' } },
    { desc: 'a Connection that lists it', headers: { Connection: 'x-forwarded-prefix', 'X-Forwarded-Prefix': '/evil-prefix' } },
  ])('tells the service /shop for /shop/orders -> /orders when the client sends $desc', async ({ headers }) => {
    const requestId = nextRequestId();
    expect((await send('/shop/orders/7?x=1', { ...headers, [HEADER.requestId]: requestId })).status).toBe(200);
    const [request] = seenWith(requestId);
    expect({ url: request?.url, prefix: request?.headers['x-forwarded-prefix'], twin: request?.headers.x_forwarded_prefix }).toEqual({ url: '/orders/7?x=1', prefix: '/shop', twin: undefined });
  });

  it('tells it over HTTP/2 too', async () => {
    const requestId = nextRequestId();
    expect((await sendH2('/shop/orders/7', { 'x-forwarded-prefix': '/evil-prefix', [HEADER.requestId]: requestId })).status).toBe(200);
    expect(seenWith(requestId).map((request) => request.headers['x-forwarded-prefix'])).toEqual(['/shop']);
  });

  it('sends none where the route does not take a prefix off (/pub -> /p), whatever the client sends', async () => {
    const requestId = nextRequestId();
    expect((await send('/pub/x', { 'X-Forwarded-Prefix': '/evil-prefix', [HEADER.requestId]: requestId })).status).toBe(200);
    expect(seenWith(requestId).map((request) => request.headers['x-forwarded-prefix'])).toEqual([undefined]);
  });
});

describe('Via (RFC 9110 7.6.3): the gateway adds itself to every request it forwards', () => {
  it.each<{ desc: string; headers: Record<string, string>; via: string }>([
    { desc: 'none of its own', headers: {}, via: '1.1 koa-gateway' },
    { desc: 'the proxies it passed', headers: { Via: '1.0 fred, 1.1 p.example' }, via: '1.0 fred, 1.1 p.example, 1.1 koa-gateway' },
    { desc: 'a Connection that lists Via (its Via is for one hop)', headers: { Via: '1.1 p.example', Connection: 'via' }, via: '1.1 koa-gateway' },
  ])('adds 1.1 koa-gateway after $desc', async ({ headers, via }) => {
    const requestId = nextRequestId();
    expect((await send('/pub/x', { ...headers, [HEADER.requestId]: requestId })).status).toBe(200);
    expect(seenWith(requestId).map((request) => request.headers.via)).toEqual([via]);
  });

  it('adds 2 koa-gateway for an HTTP/2 request', async () => {
    const requestId = nextRequestId();
    expect((await sendH2('/pub/x', { via: '2 edge', [HEADER.requestId]: requestId })).status).toBe(200);
    expect(seenWith(requestId).map((request) => request.headers.via)).toEqual(['2 edge, 2 koa-gateway']);
  });
});

describe('a % left after one decoding is refused: a nested route’s rules cannot be decided on another spelling', () => {
  it.each([
    { desc: 'a double-encoded letter', path: '/api/%2561dmin/users' },
    { desc: 'a double-encoded upper-case letter', path: '/api/%2541DMIN/users' },
    { desc: 'an encoded % before encoded hex digits', path: '/api/%25%36%31dmin/users' },
    { desc: 'a double-encoded dot', path: '/api/%252e%252e/admin/users' },
    { desc: 'a double-encoded slash', path: '/api%252fadmin/users' },
    { desc: 'a bare encoded %', path: '/api/orders/100%25' },
    { desc: 'a triple-encoded letter', path: '/api/%252561dmin' },
  ])('answers $desc ($path) with 400 bad_path, reaching no service', async ({ path }) => {
    const before = seen.length;
    expectProblem(await send(path, { authorization: `Bearer ${user}` }), 400, 'bad_path');
    expectProblem(await sendH2(path, { authorization: `Bearer ${user}` }), 400, 'bad_path');
    expect(seen.length).toBe(before);
  });

  it('still routes a once-encoded letter like its plain spelling (403 for a user on the admin route)', async () => {
    expectProblem(await send('/api/%61dmin/users', { authorization: `Bearer ${user}` }), 403, 'forbidden');
  });

  it('refuses every generated path with an encoded % in it, and forwards none of them', async () => {
    const before = seen.length;
    const hex = fc.constantFrom(...'0123456789abcdefABCDEF');
    // Any character, encoded twice (`%25` + its two hex digits), spliced into paths of the nested routes.
    const doubleEncoded = fc.tuple(fc.integer({ min: 0x21, max: 0x7e }), fc.boolean()).map(([code, upper]) => {
      const digits = code.toString(16).padStart(2, '0');
      return `%25${upper ? digits.toUpperCase() : digits}`;
    });
    const piece = fc.oneof(fc.constantFrom('admin', 'users', 'a', 'd', 'min', 'orders'), doubleEncoded, fc.tuple(hex, hex).map(([a, b]) => `%25${a}${b}`));
    await fc.assert(
      fc.asyncProperty(fc.array(piece, { minLength: 1, maxLength: 4 }), fc.constantFrom('/api/', '/api/admin/', '/pub/'), async (pieces, prefix) => {
        const path = `${prefix}${pieces.join('')}`;
        fc.pre(path.includes('%25'));
        const reply = await send(path, { authorization: `Bearer ${user}` });
        expect({ path, status: reply.status, code: (JSON.parse(reply.text) as { code?: string }).code }).toEqual({ path, status: 400, code: 'bad_path' });
      }),
      { seed: 32, numRuns: 80 },
    );
    expect(seen.length).toBe(before);
  });
});

describe('method overrides in the query', () => {
  it.each([
    { desc: '_method=DELETE on a POST', path: '/api/orders/1?_method=DELETE', method: 'POST' },
    { desc: '_method after other parameters', path: '/api/orders/1?page=2&_method=DELETE', method: 'POST' },
    { desc: 'an encoded _method', path: '/api/orders/1?%5Fmethod=DELETE', method: 'POST' },
    { desc: '_METHOD in upper case', path: '/api/orders/1?_METHOD=DELETE', method: 'POST' },
    { desc: '.method (PHP reads it as _method)', path: '/api/orders/1?.method=DELETE', method: 'POST' },
    { desc: '_method[] (an array)', path: '/api/orders/1?_method[]=DELETE', method: 'POST' },
    { desc: 'X-HTTP-Method-Override as a parameter', path: '/api/orders/1?X-HTTP-Method-Override=DELETE', method: 'POST' },
    { desc: 'x_http_method as a parameter on a GET', path: '/pub/x?x_http_method=DELETE', method: 'GET' },
    { desc: '_method after a ; separator', path: '/pub/x?a=1;_method=PUT', method: 'POST' },
    { desc: '_method cut short by a NUL (PHP reads _method%00 as _method)', path: '/api/orders/1?_method%00=DELETE', method: 'POST' },
    { desc: '_method with anything after a NUL', path: '/api/orders/1?_method%00x=DELETE', method: 'POST' },
    { desc: '_method with a NUL and escapes that are not UTF-8', path: '/api/orders/1?%5Fmethod%00%FF=DELETE', method: 'POST' },
    { desc: 'x-http-method-override cut short by a NUL', path: '/pub/x?x-http-method-override%00%C0=PUT', method: 'POST' },
  ])('answers $desc with 400 bad_request, reaching no service', async ({ path, method }) => {
    const before = seen.length;
    expectProblem(await send(path, { authorization: `Bearer ${user}` }, method), 400, 'bad_request');
    expect(seen.length).toBe(before);
  });

  it('forwards parameters that only look alike (method, _methods, a value of _method)', async () => {
    const requestId = nextRequestId();
    expect((await send('/pub/x?method=DELETE&_methods=1&q=_method&%00_method=1&bad%FF=1', { [HEADER.requestId]: requestId })).status).toBe(200);
    expect(seenWith(requestId)[0]?.url).toBe('/p/x?method=DELETE&_methods=1&q=_method&%00_method=1&bad%FF=1');
  });
});

describe('trailing dots, white space and format suffixes on a nested protected route', () => {
  it.each([
    { desc: 'a trailing dot', path: '/api/admin.' },
    { desc: 'a trailing dot before more segments', path: '/api/admin./users' },
    { desc: 'a trailing encoded space', path: '/api/admin%20' },
    { desc: 'a trailing encoded space before more segments', path: '/api/admin%20/users' },
    { desc: 'a trailing encoded dot', path: '/api/admin%2e' },
    { desc: 'a trailing encoded no-break space', path: '/api/admin%C2%A0' },
  ])('refuses $desc ($path) with 400 bad_path, reaching no service', async ({ path }) => {
    const before = seen.length;
    expectProblem(await send(path, { authorization: `Bearer ${user}` }), 400, 'bad_path');
    expect(seen.length).toBe(before);
  });

  it.each([
    { desc: 'a .json suffix', path: '/api/admin.json', upstream: '/svc/admin.json' },
    { desc: 'an upper-case suffix and prefix', path: '/API/ADMIN.JSON', upstream: '/svc/admin.JSON' },
    { desc: 'an encoded dot before the suffix', path: '/api/admin%2Exml', upstream: '/svc/admin%2Exml' },
    { desc: 'two suffixes', path: '/api/admin.tar.gz', upstream: '/svc/admin.tar.gz' },
    { desc: 'a suffix and a trailing slash', path: '/api/admin.json/', upstream: '/svc/admin.json/' },
  ])('gives $desc ($path) to the admin route: 403 for a user, forwarded as $upstream for an admin', async ({ path, upstream }) => {
    const before = seen.length;
    expectProblem(await send(path, { authorization: `Bearer ${user}` }), 403, 'forbidden');
    expect(seen.length).toBe(before);
    const requestId = nextRequestId();
    expect((await send(path, { authorization: `Bearer ${admin}`, [HEADER.requestId]: requestId })).status).toBe(200);
    expect(seenWith(requestId)[0]?.url).toBe(upstream);
  });

  it.each([
    { desc: 'a suffix', path: '/report.internal.json', upstream: '/report.internal.json' },
    { desc: 'an encoded dot and an upper-case suffix', path: '/REPORT%2Einternal.JSON', upstream: '/report.internal.JSON' },
  ])('gives $desc ($path) to the route named without it, not to a shorter one listed first: 401, 403, forwarded for an admin', async ({ path, upstream }) => {
    const before = seen.length;
    expectProblem(await send(path), 401, 'missing_token');
    expectProblem(await send(path, { authorization: `Bearer ${user}` }), 403, 'forbidden');
    expect(seen.length).toBe(before);
    const requestId = nextRequestId();
    expect((await send(path, { authorization: `Bearer ${admin}`, [HEADER.requestId]: requestId })).status).toBe(200);
    expect(seenWith(requestId)[0]?.url).toBe(upstream);
  });

  it('leaves the shorter route its own suffixes (/report.json)', async () => {
    const requestId = nextRequestId();
    expect((await send('/report.json', { [HEADER.requestId]: requestId })).status).toBe(200);
    expect(seenWith(requestId)[0]?.url).toBe('/report.json');
  });

  it.each([
    { desc: 'a suffix on a longer segment', path: '/api/adminx.json', upstream: '/svc/adminx.json' },
    { desc: 'a suffix with segments after it', path: '/api/admin.json/x', upstream: '/svc/admin.json/x' },
  ])('leaves $desc ($path) to the route that covers it plainly', async ({ path, upstream }) => {
    const requestId = nextRequestId();
    expect((await send(path, { authorization: `Bearer ${user}`, [HEADER.requestId]: requestId })).status).toBe(200);
    expect(seenWith(requestId)[0]?.url).toBe(upstream);
  });
});

describe('a request target with a fragment (RFC 9112 3.2, RFC 9113 8.3.1: none has one)', () => {
  it.each([
    { desc: 'after a public path', path: '/pub/x#frag' },
    { desc: 'naming the admin route after a signed-in one', path: '/api/orders#/../admin/users' },
  ])('answers one $desc with 400 bad_request over HTTP/1.1 and HTTP/2, reaching no service', async ({ path }) => {
    const before = seen.length;
    expectProblem(await send(path, { authorization: `Bearer ${user}` }), 400, 'bad_request');
    expectProblem(await sendH2(path, { authorization: `Bearer ${user}` }), 400, 'bad_request');
    expect(seen.length).toBe(before);
  });
});

describe('look-alike and mesh header names under headersWithUnderscores allow', () => {
  /** Sent by the client beside a harmless look-alike; none may reach the service in any spelling. */
  const forged = { 'x.user.id': '1', 'x.user_role': 'admin', 'x.consumer.id': 'forged-consumer', 'x.forwarded.host': 'evil.example', 'x.http.method.override': 'DELETE', 'l5d-dst-override': 'admin.internal:80', 'x-envoy-retry-on': '5xx', 'x-envoy-original-dst-host': '10.0.0.1:4001' };

  it.each([
    { desc: 'HTTP/1.1', request: (headers: Record<string, string>) => send('/api/orders', headers) },
    { desc: 'HTTP/2', request: (headers: Record<string, string>) => sendH2('/api/orders', headers) },
  ])('keeps them all from the service over $desc, and passes a look-alike that is no twin (x.trace.note)', async ({ request }) => {
    const requestId = nextRequestId();
    expect((await request({ ...forged, 'x.trace.note': 'kept', authorization: `Bearer ${user}`, [HEADER.requestId]: requestId })).status).toBe(200);
    const [seen] = seenWith(requestId);
    expect(Object.keys(seen!.headers).filter((name) => name in forged)).toEqual([]);
    expect({ id: seen!.headers[HEADER.userId], role: seen!.headers[HEADER.userRole], consumer: seen!.headers[HEADER.consumerId], note: seen!.headers['x.trace.note'] }).toEqual({ id: '7', role: 'user', consumer: undefined, note: 'kept' });
    expect(JSON.stringify(seen!.headers)).not.toMatch(/evil\.example|DELETE|admin\.internal|5xx/);
  });
});

describe('trailer fields of a client’s request body never reach a service', () => {
  /** Identity, signature and override fields a client might hope a service merges into its headers after the body. */
  const FORGED_TRAILERS = { 'x-user-id': '1', 'x-user-role': 'admin', 'x-consumer-id': 'DELETE-consumer', 'x-gateway-signature': 'DELETE-signature', 'x-http-method-override': 'DELETE', 'x-forwarded-for': '6.6.6.6' };

  /** One chunked HTTP/1.1 POST over TLS with `trailers` after its last chunk, written byte for byte; resolves with the status. */
  function postChunkedWithTrailers(path: string, headers: Record<string, string>, trailers: Record<string, string>): Promise<number> {
    const { port } = new URL(gateway.url);
    const head = Object.entries({ ...headers, host: `localhost:${port}`, 'content-type': 'application/json', 'transfer-encoding': 'chunked', trailer: Object.keys(trailers).join(', '), connection: 'close' }).map(([name, value]) => `${name}: ${value}\r\n`).join('');
    const tail = Object.entries(trailers).map(([name, value]) => `${name}: ${value}\r\n`).join('');
    return new Promise((resolve, reject) => {
      const socket = tls.connect({ host: '127.0.0.1', port: Number(port), servername: 'localhost', ca: [certificate.cert], ALPNProtocols: ['http/1.1'] }, () => socket.write(`POST ${path} HTTP/1.1\r\n${head}\r\n2\r\n{}\r\n0\r\n${tail}\r\n`));
      let text = '';
      socket.setEncoding('latin1');
      socket.on('data', (chunk: string) => (text += chunk));
      socket.on('end', () => resolve(Number(text.split(' ')[1])));
      socket.on('error', reject);
    });
  }

  it.each([
    { desc: 'a public route', path: '/pub/x', signedIn: false, identity: undefined },
    { desc: 'a signed-in route', path: '/api/orders', signedIn: true, identity: '7' },
  ])('forwards the body of a chunked HTTP/1.1 request on $desc without its trailers', async ({ path, signedIn, identity }) => {
    const requestId = nextRequestId();
    const status = await postChunkedWithTrailers(path, { ...(signedIn ? { authorization: `Bearer ${user}` } : {}), [HEADER.requestId]: requestId }, FORGED_TRAILERS);
    expect(status).toBe(200);
    const [request] = seenWith(requestId);
    expect({ body: request?.body, trailers: request?.trailers, userId: request?.headers[HEADER.userId], role: request?.headers[HEADER.userRole], consumer: request?.headers[HEADER.consumerId] }).toEqual({
      body: '{}',
      trailers: {},
      userId: identity,
      role: signedIn ? 'user' : undefined,
      consumer: undefined,
    });
    expect(JSON.stringify(request?.headers)).not.toMatch(/DELETE|6\.6\.6\.6/);
  });

  it('forwards the body of an HTTP/2 request without its trailers', async () => {
    const requestId = nextRequestId();
    const session = http2.connect(gateway.url, { ca: [certificate.cert], servername: 'localhost' });
    try {
      const status = await new Promise<number>((resolve, reject) => {
        session.on('error', reject);
        const stream = session.request({ ':path': '/api/orders', ':method': 'POST', authorization: `Bearer ${user}`, 'content-type': 'application/json', [HEADER.requestId]: requestId }, { waitForTrailers: true });
        stream.on('wantTrailers', () => stream.sendTrailers(FORGED_TRAILERS));
        let answered = 0;
        stream.on('response', (head) => (answered = Number(head[':status'])));
        stream.on('error', reject);
        stream.on('close', () => resolve(answered));
        stream.resume();
        stream.end('{}');
      });
      expect(status).toBe(200);
    } finally {
      session.close();
    }
    const [request] = seenWith(requestId);
    expect({ body: request?.body, trailers: request?.trailers, userId: request?.headers[HEADER.userId] }).toEqual({ body: '{}', trailers: {}, userId: '7' });
    expect(JSON.stringify(request?.headers)).not.toMatch(/DELETE|6\.6\.6\.6/);
  });
});
