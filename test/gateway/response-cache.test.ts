import http from 'node:http';
import http2 from 'node:http2';
import net from 'node:net';
import { Redis } from 'ioredis';
import { ATTR, HEADER } from '../../otel/wire-names';
import { runServer, type RunningServer } from '../../otel/lifecycle';
import { createGateway, createGatewayApps } from '../../src/gateway';
import { createTlsServer } from '../../src/tls';
import { makeCertificate, type TestCertificate } from '../helpers/certificates';
import { createRedisStore } from '../../src/rate-limit-store';
import { REVALIDATION_WINDOW_SECONDS } from '../../src/response-cache';
import { createRedisResponseStore } from '../../src/response-store';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { deleteKeys, isolatedKeyPrefix, requireRedis } from '../helpers/redis';
import { listen, memoryLogger, refusedOrigin, sendRaw, type TestServer } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile, testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';
import { waitFor } from '../helpers/wait';

const MACHINE_REDIS = 'redis://127.0.0.1:6379';

interface Hit {
  method: string;
  url: string;
  headers: http.IncomingHttpHeaders;
  /** When the request arrived, and when its exchange ended (answered, or cut by the gateway), performance.now(). */
  arrivedAt: number;
  closedAt?: number;
}

interface CatalogService extends TestServer {
  hits: Hit[];
  /** Answers to requests with `?gate` wait for this. */
  release(): void;
}

/**
 * A service whose answer the query decides: `cc` (Cache-Control), `vary`, `status`, `etag`, `lm`
 * (Last-Modified), `cookie` (Set-Cookie), `xcache` (its own X-Cache), `age`, `loc` (Location), `cloc` (Content-Location), `size` (body padding), `untyped` (no Content-Type), `nodate` (no Date), `gate`
 * (hold the answer until the test releases it; so does an `X-Gate` request header), `bodygate` (the head and a first byte at once, the rest once released); the `X-Answer-Status` request header overrides the status. The body reflects the request headers a poisoner would aim at.
 */
async function catalogService(): Promise<CatalogService> {
  let open!: () => void;
  let gate = new Promise<void>((resolve) => (open = resolve));
  const hits: Hit[] = [];
  const server = await listen((req, res) => {
    const hit: Hit = { method: req.method ?? '', url: req.url ?? '', headers: { ...req.headers }, arrivedAt: performance.now() };
    hits.push(hit);
    res.on('close', () => (hit.closedAt = performance.now()));
    const query = new URL(req.url ?? '/', 'http://service').searchParams;
    req.resume();
    req.on('end', async () => {
      if (query.has('gate') || req.headers['x-gate'] !== undefined) await gate;
      // As the real services do, it echoes the request id.
      const headers: Record<string, string> = { 'content-type': 'application/json', [HEADER.requestId]: String(req.headers[HEADER.requestId]) };
      const set = (param: string, name: string) => query.has(param) && (headers[name] = query.get(param)!);
      set('cc', 'cache-control');
      set('vary', 'vary');
      set('etag', 'etag');
      set('lm', 'last-modified');
      set('cookie', 'set-cookie');
      set('xcache', 'x-cache');
      set('age', 'age');
      set('expires', 'expires');
      set('loc', 'location');
      set('cloc', 'content-location');
      if (query.has('untyped')) delete headers['content-type'];
      if (query.has('nodate')) res.sendDate = false;
      const body = JSON.stringify({
        n: hits.filter((hit) => hit.url === req.url).length,
        method: req.method,
        user: req.headers[HEADER.userId] ?? null,
        role: req.headers[HEADER.userRole] ?? null,
        forwardedHost: req.headers['x-forwarded-host'] ?? null,
        forwardedProto: req.headers['x-forwarded-proto'] ?? null,
        forwardedPrefix: req.headers['x-forwarded-prefix'] ?? null,
        // A forwarding header of the kind proxies keep coining (Traefik's), outside every list.
        forwardedPath: req.headers['x-forwarded-path'] ?? null,
        originalUrl: req.headers['x-original-url'] ?? null,
        methodOverride: req.headers['x-http-method-override'] ?? null,
        // As CGI, PHP, Rack and WSGI read it: `accept_language` is HTTP_ACCEPT_LANGUAGE too, and to PHP `accept.language`.
        lang: req.headers['accept-language'] ?? req.headers.accept_language ?? req.headers['accept.language'] ?? null,
        hostOverride: req.headers['x-host'] ?? req.headers['x-original-host'] ?? null,
        cookie: req.headers.cookie ?? null,
        // A service behind forwardAuthorization reads the token itself (its scopes, its client).
        scope: req.headers.authorization ? JSON.parse(Buffer.from(req.headers.authorization.split('.')[1] ?? '', 'base64url').toString() || '{}').scope ?? null : null,
        padding: 'x'.repeat(Number(query.get('size') ?? 0)),
      });
      res.writeHead(Number(req.headers['x-answer-status'] ?? query.get('status') ?? 200), headers);
      // The head and the body's first byte at once, the rest once the test releases it.
      if (query.has('bodygate') && req.method !== 'HEAD') {
        res.write(body.slice(0, 1));
        await gate;
        return void res.end(body.slice(1));
      }
      res.end(req.method === 'HEAD' ? undefined : body);
    });
  });
  return Object.assign(server, {
    hits,
    release() {
      open();
      gate = new Promise<void>((resolve) => (open = resolve));
    },
  });
}

const CACHED_ROUTES = [
  { name: 'catalog', prefix: '/api/catalog', service: 'notifications', upstreamPath: '/catalog', cache: { ttlSeconds: 60 } },
  // No cache of its own: an exact POST-only route refining the cached prefix route (the create endpoint).
  { name: 'catalog-create', prefix: '/api/catalog', exact: true, methods: ['POST'], service: 'notifications', upstreamPath: '/catalog' },
  // Other ways to the same resources: a versioned alias without a cache, and one with its own.
  { name: 'catalog-v2', prefix: '/api/v2/catalog', service: 'notifications', upstreamPath: '/catalog' },
  { name: 'catalog-cached-alias', prefix: '/api/alias/catalog', service: 'notifications', upstreamPath: '/catalog', cache: { ttlSeconds: 60 } },
  { name: 'shared-catalog', prefix: '/api/shared', service: 'notifications', upstreamPath: '/shared', cache: { ttlSeconds: 60, scope: 'public' } },
  {
    name: 'open-catalog',
    prefix: '/api/open',
    service: 'notifications',
    upstreamPath: '/open',
    auth: 'public',
    cache: { ttlSeconds: 60, scope: 'public', varyHeaders: ['accept-language'] },
    headers: { request: { set: { 'x-tenant': 'acme' } }, response: { set: { 'x-served-for': '{requestId}' } } },
  },
  { name: 'forwarding-signed-in', prefix: '/api/fwd-user', service: 'notifications', upstreamPath: '/fwd-user', forwardAuthorization: true, cache: { ttlSeconds: 60 } },
  { name: 'forwarding', prefix: '/api/fwd', service: 'notifications', upstreamPath: '/fwd', auth: 'public', forwardAuthorization: true, cache: { ttlSeconds: 60, scope: 'public' } },
  { name: 'flaky', prefix: '/api/flaky', service: 'orders', upstreamPath: '/flaky', auth: 'public', cache: { ttlSeconds: 60 } },
  {
    name: 'cookie-adding',
    prefix: '/api/cookie-add',
    service: 'notifications',
    upstreamPath: '/cookie-add',
    auth: 'public',
    cache: { ttlSeconds: 60, scope: 'public' },
    headers: { request: { add: { cookie: 'via=gateway' } } },
  },
  { name: 'small-budget', prefix: '/api/budget', service: 'notifications', upstreamPath: '/budget', auth: 'public', cache: { ttlSeconds: 60, maxBytes: 48 * 1024 } },
];

function overrides(extra: Record<string, unknown> = {}): Record<string, unknown> {
  return { routes: [...(shippedConfigFile().routes as unknown[]), ...CACHED_ROUTES], rateLimit: { max: 10_000, windowMs: 60_000 }, cache: { maxEntryBytes: 4096 }, ...extra };
}

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  json: Record<string, unknown>;
}

/** One request with headers exactly as given (Host included, which fetch would not send as given). */
async function send(origin: string, path: string, headers: http.OutgoingHttpHeaders = {}, method = 'GET'): Promise<Reply> {
  const reply = await sendRaw(origin, path, headers, method);
  let json: Record<string, unknown> = {};
  try {
    json = reply.text ? (JSON.parse(reply.text) as Record<string, unknown>) : {};
  } catch {
    // Not JSON (HEAD, 304): the text is what counts.
  }
  return { ...reply, json };
}

let unique = 0;
/** A path no other test used, so each test starts with an empty cache. */
const fresh = (prefix: string, query = '') => `${prefix}/item-${++unique}${query ? `?${query}` : ''}`;

describe('response cache', () => {
  let service: CatalogService;
  let flaky: CatalogService;
  let stack: TestStack;
  let tracing: InMemoryTracing;
  let alice: string;
  let bob: string;
  const hitsFor = (path: string) => {
    const item = new RegExp(`/${/item-\d+/.exec(path)![0]}(\\?|$)`);
    return [...service.hits, ...flaky.hits].filter((hit) => item.test(hit.url)).length;
  };
  const as = (token: string, more: http.OutgoingHttpHeaders = {}) => ({ authorization: `Bearer ${token}`, ...more });

  beforeAll(async () => {
    tracing = startInMemoryTracing();
    service = await catalogService();
    flaky = await catalogService();
    stack = await startStack({ serviceUrls: { notifications: service.url, orders: flaky.url }, overrides: overrides(), tracer: tracing.tracer });
    alice = await login(stack.gateway.url);
    bob = await login(stack.gateway.url, 'bob@example.com', 'builder');
  });
  afterAll(async () => {
    await stack.close();
    await Promise.all([service.close(), flaky.close()]);
    await tracing.shutdown();
  });

  it('answers a repeated GET from the cache with Age, keeping ETag and Last-Modified, and asks the service once', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60&etag=%22v1%22&lm=Tue,%2001%20Dec%202026%2010:00:00%20GMT');
    const first = await send(stack.gateway.url, path);
    const second = await send(stack.gateway.url, path);
    expect([first.status, first.headers['x-cache'], second.status, second.headers['x-cache']]).toEqual([200, 'MISS', 200, 'HIT']);
    expect(second.text).toBe(first.text);
    expect(second.headers.etag).toBe('"v1"');
    expect(second.headers['last-modified']).toBe('Tue, 01 Dec 2026 10:00:00 GMT');
    expect(second.headers['content-type']).toBe('application/json');
    expect(Number(second.headers.age)).toBeGreaterThanOrEqual(0);
    expect(first.headers.age).toBeUndefined();
    expect(hitsFor(path)).toBe(1);
  });

  it('applies the route\'s response rules to each cached answer with that request\'s values', async () => {
    const path = fresh('/api/open');
    await send(stack.gateway.url, path, { 'x-request-id': 'first-request' });
    const second = await send(stack.gateway.url, path, { 'x-request-id': 'second-request' });
    expect(second.headers['x-cache']).toBe('HIT');
    expect(second.headers['x-served-for']).toBe('second-request');
    expect(second.headers[HEADER.requestId]).toBe('second-request');
  });

  it('answers HEAD from the GET entry, without a body; a HEAD miss does not fill it', async () => {
    const path = fresh('/api/open');
    const get = await send(stack.gateway.url, path);
    const head = await send(stack.gateway.url, path, {}, 'HEAD');
    expect(head.headers['x-cache']).toBe('HIT');
    expect(head.text).toBe('');
    expect(head.headers['content-length']).toBe(String(Buffer.byteLength(get.text)));

    const other = fresh('/api/open');
    expect((await send(stack.gateway.url, other, {}, 'HEAD')).headers['x-cache']).toBe('MISS');
    const after = await send(stack.gateway.url, other);
    expect(after.headers['x-cache']).toBe('MISS');
    expect(after.json.method).toBe('GET');
  });

  it.each([
    { desc: 'a matching If-None-Match', headers: { 'if-none-match': '"v2"' }, status: 304 },
    { desc: 'a weak If-None-Match (weak comparison)', headers: { 'if-none-match': 'W/"v2"' }, status: 304 },
    { desc: 'If-None-Match: *', headers: { 'if-none-match': '*' }, status: 304 },
    { desc: 'an If-None-Match in a list', headers: { 'if-none-match': '"a", "v2"' }, status: 304 },
    { desc: 'another entity tag', headers: { 'if-none-match': '"v1"' }, status: 200 },
    { desc: 'If-Modified-Since after Last-Modified', headers: { 'if-modified-since': 'Tue, 01 Dec 2026 11:00:00 GMT' }, status: 304 },
    { desc: 'If-Modified-Since before Last-Modified', headers: { 'if-modified-since': 'Tue, 01 Dec 2026 09:00:00 GMT' }, status: 200 },
    { desc: 'If-None-Match deciding over If-Modified-Since', headers: { 'if-none-match': '"nope"', 'if-modified-since': 'Tue, 01 Dec 2026 11:00:00 GMT' }, status: 200 },
    { desc: 'a malformed If-Modified-Since', headers: { 'if-modified-since': 'yesterday' }, status: 200 },
    // RFC 9110 13.1.3: not an HTTP-date, so ignored (a lenient parse read both as dates after Last-Modified).
    { desc: 'an If-Modified-Since that is a year, not an HTTP-date', headers: { 'if-modified-since': '2099' }, status: 200 },
    { desc: 'an If-Modified-Since in ISO form, not an HTTP-date', headers: { 'if-modified-since': '2027-01-01' }, status: 200 },
    { desc: 'an If-Modified-Since in the asctime form', headers: { 'if-modified-since': 'Tue Dec  1 11:00:00 2026' }, status: 304 },
  ])('answers $desc from the cache with $status', async ({ headers, status }) => {
    const path = fresh('/api/open', 'etag=%22v2%22&lm=Tue,%2001%20Dec%202026%2010:00:00%20GMT');
    await send(stack.gateway.url, path);
    const reply = await send(stack.gateway.url, path, headers);
    expect(reply.status).toBe(status);
    expect(reply.headers['x-cache']).toBe('HIT');
    expect(reply.headers.etag).toBe('"v2"');
    if (status === 304) expect(reply.text).toBe('');
    expect(hitsFor(path)).toBe(1);
  });

  it.each([
    { desc: 'no-store', query: 'cc=no-store' },
    { desc: 'private', query: 'cc=private,max-age%3D60' },
    { desc: 'no-cache', query: 'cc=no-cache' },
    { desc: 'max-age=0', query: 'cc=max-age%3D0' },
    { desc: 'an Age past max-age', query: 'cc=max-age%3D10&age=11' },
    // RFC 9111 5.1: the first member of a list counts (not none, which read as age 0: fresh).
    { desc: 'an Age list past max-age', query: 'cc=max-age%3D10&age=11,%2011' },
    // RFC 9111 5.3: an Expires that is not an HTTP-date means already expired (not 73 years).
    { desc: 'an Expires that is not an HTTP-date', query: 'expires=2099-01-01' },
    { desc: 'Set-Cookie', query: 'cookie=session%3Dabc' },
    { desc: 'Vary: *', query: 'vary=*' },
    { desc: 'a Vary member that names no header', query: 'vary=Accept%2C%20x%20y' },
    { desc: 'Vary on a header the gateway writes (X-Forwarded-Host)', query: 'vary=X-Forwarded-Host' },
    // The gateway adds its own hop by the client's HTTP version: keyed on the client's Via alone, an HTTP/1.0
    // client's answer was served to HTTP/1.1 and HTTP/2 ones.
    { desc: 'Vary on Via, which the gateway writes', query: 'vary=Via' },
    { desc: 'Vary on a header a request rule sets (X-Tenant)', query: 'vary=X-Tenant' },
    { desc: 'a 500', query: 'status=500' },
    { desc: 'a 503', query: 'status=503' },
    { desc: 'a 201', query: 'status=201' },
    { desc: 'a body over cache.maxEntryBytes', query: 'size=5000' },
  ])('does not keep an answer with $desc', async ({ query }) => {
    const path = fresh('/api/open', query);
    const first = await send(stack.gateway.url, path);
    const second = await send(stack.gateway.url, path);
    expect([first.headers['x-cache'], second.headers['x-cache']]).toEqual(['MISS', 'MISS']);
    expect(second.json.n).toBe(2);
    expect(hitsFor(path)).toBe(2);
  });

  it('answers If-Modified-Since for a stored answer without Last-Modified by its Date (RFC 9111 4.3.2)', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    const stored = await send(stack.gateway.url, path);
    expect(stored.headers['last-modified']).toBeUndefined();
    const date = Date.parse(stored.headers.date!);
    const since = (ms: number) => ({ 'if-modified-since': new Date(ms).toUTCString() });
    const replies = [await send(stack.gateway.url, path, since(date)), await send(stack.gateway.url, path, since(date + 60_000)), await send(stack.gateway.url, path, since(date - 60_000))];
    expect(replies.map((reply) => [reply.status, reply.headers['x-cache']])).toEqual([
      [304, 'HIT'],
      [304, 'HIT'],
      [200, 'HIT'],
    ]);
  });

  it('answers If-None-Match with an entity tag holding a comma (RFC 9110 8.8.3) with 304', async () => {
    const path = fresh('/api/open', 'etag=%22a,b%22');
    await send(stack.gateway.url, path);
    const reply = await send(stack.gateway.url, path, { 'if-none-match': 'W/"x", "a,b"' });
    expect([reply.status, reply.headers['x-cache']]).toEqual([304, 'HIT']);
  });

  it('answers only-if-cached with 504 when nothing is stored, never asking the service, and from the cache when it is', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    const missed = await send(stack.gateway.url, path, { 'cache-control': 'only-if-cached' });
    expect([missed.status, missed.json.code, missed.headers['x-cache']]).toEqual([504, 'not_cached', 'MISS']);
    expect(hitsFor(path)).toBe(0);
    await send(stack.gateway.url, path);
    const stored = await send(stack.gateway.url, path, { 'cache-control': 'max-stale, only-if-cached' });
    expect([stored.status, stored.headers['x-cache']]).toEqual([200, 'HIT']);
    expect(hitsFor(path)).toBe(1);
  });

  it.each([
    { desc: 'a Range request', prefix: '/api/open', method: 'GET', headers: { range: 'bytes=0-1' } },
    { desc: 'a GET with a body', prefix: '/api/open', method: 'GET', headers: { 'transfer-encoding': 'chunked' } },
    { desc: 'a credential the route forwards unverified', prefix: '/api/fwd', method: 'GET', headers: { authorization: 'Bearer whatever-the-service-checks' } },
    { desc: 'a PUT', prefix: '/api/open', method: 'PUT', headers: {} },
  ])('answers only-if-cached on $desc, which the cache passes by, with 504 and never a trip to the service', async ({ prefix, method, headers }) => {
    const path = fresh(prefix, 'cc=public,max-age%3D60');
    const reply = await send(stack.gateway.url, path, { 'cache-control': 'only-if-cached', ...headers }, method);
    expect([reply.status, reply.json.code, reply.headers['x-cache']]).toEqual([504, 'not_cached', 'BYPASS']);
    expect(hitsFor(path)).toBe(0);
  });

  it('ignores a client\'s no-cache (a client cannot send every request through) but keeps its no-store answer out', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    const noStore = await send(stack.gateway.url, path, { 'cache-control': 'no-store' });
    const first = await send(stack.gateway.url, path);
    const noCache = await send(stack.gateway.url, path, { 'cache-control': 'no-cache', pragma: 'no-cache' });
    expect([noStore.headers['x-cache'], first.headers['x-cache'], noCache.headers['x-cache']]).toEqual(['MISS', 'MISS', 'HIT']);
  });

  it.each([
    { desc: 's-maxage over max-age=0 (the service\'s lifetime decides over the route ttl)', query: 'cc=max-age%3D0,s-maxage%3D60' },
    { desc: 'an Expires that is an HTTP-date in the future', query: 'expires=Thu,%2001%20Jan%202099%2000:00:00%20GMT' },
  ])('keeps an answer with $desc', async ({ query }) => {
    const path = fresh('/api/open', query);
    await send(stack.gateway.url, path);
    expect((await send(stack.gateway.url, path)).headers['x-cache']).toBe('HIT');
  });

  it('answers from a copy the service sent without Date with the time the gateway received it, not each answer\'s (RFC 9110 6.6.1)', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60&nodate=1');
    const stored = await send(stack.gateway.url, path);
    let hit = await send(stack.gateway.url, path);
    await waitFor(async () => Number((hit = await send(stack.gateway.url, path)).headers.age) >= 2);
    expect(hit.headers['x-cache']).toBe('HIT');
    // The copy was received when the first answer went out, under its Date (Node dated it as it forwarded it).
    expect(Date.parse(hit.headers.date!) - Date.parse(stored.headers.date!)).toBeLessThanOrEqual(1000);
  });

  it('answers from the cache without a Content-Type where the service sent none', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60&untyped=1');
    const first = await send(stack.gateway.url, path);
    const second = await send(stack.gateway.url, path);
    expect([first.headers['x-cache'], second.headers['x-cache']]).toEqual(['MISS', 'HIT']);
    expect([first.headers['content-type'], second.headers['content-type']]).toEqual([undefined, undefined]);
  });

  it('shows the gateway\'s X-Cache, never one the service sent', async () => {
    const path = fresh('/api/open', 'xcache=HIT');
    expect((await send(stack.gateway.url, path)).headers['x-cache']).toBe('MISS');
  });

  it('never shows one user\'s answer to another (scope user)', async () => {
    const path = fresh('/api/catalog', 'cc=public,max-age%3D60');
    const replies = [];
    for (const token of [alice, bob, alice, bob]) replies.push(await send(stack.gateway.url, path, as(token)));
    expect(replies.map((reply) => [reply.headers['x-cache'], reply.json.user])).toEqual([
      ['MISS', '1'],
      ['MISS', '2'],
      ['HIT', '1'],
      ['HIT', '2'],
    ]);
  });

  it('keys a signed-in caller by the whole identity the service is told (a demoted user does not keep the admin answer)', async () => {
    const path = fresh('/api/catalog', 'cc=max-age%3D60');
    const carol = (role: string) => signToken({ subject: '7', claims: { role, email: 'carol@example.com' } });
    expect((await send(stack.gateway.url, path, as(await carol('admin')))).json.role).toBe('admin');
    const demoted = await send(stack.gateway.url, path, as(await carol('user')));
    expect([demoted.headers['x-cache'], demoted.json.role]).toEqual(['MISS', 'user']);
    expect((await send(stack.gateway.url, path, as(await carol('user')))).headers['x-cache']).toBe('HIT');
  });

  it('shares an answer across users on a public-scope route only when the service says public', async () => {
    const notPublic = fresh('/api/shared', 'cc=max-age%3D60');
    const plain = [await send(stack.gateway.url, notPublic, as(alice)), await send(stack.gateway.url, notPublic, as(bob))];
    expect(plain.map((reply) => [reply.headers['x-cache'], reply.json.user])).toEqual([
      ['MISS', '1'],
      ['MISS', '2'],
    ]);
    const shared = fresh('/api/shared', 'cc=public,max-age%3D60');
    const both = [await send(stack.gateway.url, shared, as(alice)), await send(stack.gateway.url, shared, as(bob))];
    expect(both.map((reply) => reply.headers['x-cache'])).toEqual(['MISS', 'HIT']);
  });

  it('never lets a public-scope answer that varies by identity be shared (Vary: X-User-Id)', async () => {
    const path = fresh('/api/shared', 'cc=public,max-age%3D60&vary=X-User-Id');
    const replies = [await send(stack.gateway.url, path, as(alice)), await send(stack.gateway.url, path, as(bob))];
    expect(replies.map((reply) => [reply.headers['x-cache'], reply.json.user])).toEqual([
      ['MISS', '1'],
      ['MISS', '2'],
    ]);
  });

  it.each([
    { desc: 'public scope', prefix: '/api/open' },
    { desc: 'user scope, no signed-in caller', prefix: '/api/flaky' },
  ])('shares an answer to a request with a cookie only when the service says public ($desc)', async ({ prefix }) => {
    const personal = fresh(prefix, 'cc=max-age%3D60');
    await send(stack.gateway.url, personal, { cookie: 'session=alice' });
    expect((await send(stack.gateway.url, personal, { cookie: 'session=bob' })).headers['x-cache']).toBe('MISS');
    const shared = fresh(prefix, 'cc=public,max-age%3D60');
    await send(stack.gateway.url, shared, { cookie: 'session=alice' });
    expect((await send(stack.gateway.url, shared, { cookie: 'session=bob' })).headers['x-cache']).toBe('HIT');
  });

  it('treats the client\'s cookie as a credential on a route whose request rule only adds a cookie of its own', async () => {
    const path = fresh('/api/cookie-add', 'cc=max-age%3D60');
    const alice = await send(stack.gateway.url, path, { cookie: 'session=alice' });
    expect(alice.json.cookie).toBe('session=alice; via=gateway');
    const bob = await send(stack.gateway.url, path, { cookie: 'session=bob' });
    expect(bob.headers['x-cache']).toBe('MISS');
    expect(bob.text).not.toContain('alice');
  });

  // TRACE never gets this far (405 on every route that does not list it, and none can); OPTIONS is the safe
  // method a route without `methods` forwards.
  it('never lets an OPTIONS read or fill the GET entry (the key has no method)', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    const options = await send(stack.gateway.url, path, {}, 'OPTIONS');
    expect(options.headers['x-cache']).toBe('BYPASS');
    const get = await send(stack.gateway.url, path);
    expect([get.headers['x-cache'], get.json.method]).toEqual(['MISS', 'GET']);
    const optionsAgain = await send(stack.gateway.url, path, {}, 'OPTIONS');
    expect([optionsAgain.headers['x-cache'], optionsAgain.json.method]).toEqual(['BYPASS', 'OPTIONS']);
    expect(hitsFor(path)).toBe(3);
  });

  // An entry keeps a digest of each Vary-named value (the value as sent was a caller's token or cookie in the store,
  // and a 6 KiB User-Agent held 6 KiB of the route's budget per entry: 48 KiB kept six or seven of these, not twelve).
  it('keeps a digest of each request header value an entry varies on, not the value: a long one costs the byte budget nothing of its length', async () => {
    const userAgent = { 'user-agent': 'u'.repeat(6 * 1024) };
    const paths = Array.from({ length: 12 }, () => fresh('/api/budget', 'cc=max-age%3D60&vary=User-Agent'));
    for (const path of paths) expect((await send(stack.gateway.url, path, userAgent)).headers['x-cache']).toBe('MISS');
    expect((await send(stack.gateway.url, paths[11]!, userAgent)).headers['x-cache']).toBe('HIT');
    expect((await send(stack.gateway.url, paths[0]!, userAgent)).headers['x-cache']).toBe('HIT');
    // Told apart still: another User-Agent is another variant.
    expect((await send(stack.gateway.url, paths[0]!, { 'user-agent': 'v'.repeat(6 * 1024) })).headers['x-cache']).toBe('MISS');
  });

  it('checks the route\'s authorization before answering from the cache', async () => {
    const path = fresh('/api/catalog');
    await send(stack.gateway.url, path, as(alice));
    const anonymous = await send(stack.gateway.url, path);
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers['x-cache']).toBeUndefined();
  });

  it.each([
    { desc: 'X-Forwarded-Host from an untrusted client', headers: { 'x-forwarded-host': 'evil.example' }, field: 'forwardedHost', poison: 'evil.example' },
    { desc: 'another Host', headers: { host: 'evil.example' }, field: 'forwardedHost', poison: 'evil.example' },
    { desc: 'X-Forwarded-Proto', headers: { 'x-forwarded-proto': 'javascript' }, field: 'forwardedProto', poison: 'javascript' },
    { desc: 'X-Original-URL', headers: { 'x-original-url': '/admin' }, field: 'originalUrl', poison: '/admin' },
    { desc: 'X-HTTP-Method-Override', headers: { 'x-http-method-override': 'DELETE' }, field: 'methodOverride', poison: 'DELETE' },
    { desc: 'Accept-Language (keyed by varyHeaders)', headers: { 'accept-language': 'xx-poison' }, field: 'lang', poison: 'xx-poison' },
    { desc: 'X-Host (a host override some frameworks believe)', headers: { 'x-host': 'evil.example' }, field: 'hostOverride', poison: 'evil.example' },
    { desc: 'X-Original-Host', headers: { 'x-original-host': 'evil.example' }, field: 'hostOverride', poison: 'evil.example' },
    { desc: 'X-Forwarded-Path (any X-Forwarded-* name, listed or not)', headers: { 'x-forwarded-path': '/../../evil' }, field: 'forwardedPath', poison: '/../../evil' },
  ])('cannot be poisoned with $desc', async ({ headers, field, poison }) => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    // The victim's request is the attacker's without the hostile header: everything else the same.
    const victimHeaders = { 'accept-language': 'en' };
    await send(stack.gateway.url, path, { ...victimHeaders, ...headers });
    const victim = await send(stack.gateway.url, path, victimHeaders);
    expect(victim.status).toBe(200);
    expect(victim.json[field]).not.toBe(poison);
    expect(victim.text).not.toContain(poison);
  });

  it.each([
    // varyHeaders make one key per value; a service's Vary one copy per value under the key (the French one beside the first).
    { desc: 'a varyHeaders header', pathOf: () => fresh('/api/open', 'cc=max-age%3D60'), attacker: {}, victim: {} },
    { desc: 'a header the service names in Vary', pathOf: () => fresh('/api/shared', 'cc=public,max-age%3D60&vary=Accept-Language'), attacker: { authorization: 'bob' }, victim: { authorization: 'alice' } },
  ])('cannot be poisoned by naming $desc in Connection: the key is what the service heard', async ({ pathOf, attacker, victim }) => {
    const path = pathOf();
    const signedIn = (who: { authorization?: string }) => (who.authorization ? as(who.authorization === 'bob' ? bob : alice) : {});
    // Connection makes Accept-Language hop-by-hop: the service hears no language, whatever the client sent.
    const poisoner = await send(stack.gateway.url, path, { ...signedIn(attacker), 'accept-language': 'fr', connection: 'accept-language' });
    expect([poisoner.headers['x-cache'], poisoner.json.lang]).toEqual(['MISS', null]);
    const french = await send(stack.gateway.url, path, { ...signedIn(victim), 'accept-language': 'fr' });
    expect([french.headers['x-cache'], french.json.lang]).toEqual(['MISS', 'fr']);
    // A request the service would hear the same way as the first gets the first's answer (no language).
    const alike = await send(stack.gateway.url, path, { ...signedIn(victim), 'accept-language': 'de', connection: 'accept-language' });
    expect([alike.headers['x-cache'], alike.json.lang]).toEqual(['HIT', null]);
  });

  // Kept apart here by the route's varyHeaders, the copies were not told apart for a cache in front: a CDN or browser
  // honouring `public, max-age` gave the French answer to English clients (an outside review).
  it.each([
    { desc: 'the route\'s varyHeaders alone', query: 'cc=public,max-age%3D60', vary: 'accept-language' },
    { desc: 'the route\'s varyHeaders beside the service\'s Vary', query: 'cc=public,max-age%3D60&vary=X-Device', vary: 'accept-language, X-Device' },
  ])('names $desc in Vary on every answer, stored or not', async ({ query, vary }) => {
    const path = fresh('/api/open', query);
    const replies = [await send(stack.gateway.url, path, { 'accept-language': 'fr' }), await send(stack.gateway.url, path, { 'accept-language': 'fr' }), await send(stack.gateway.url, path, { 'accept-language': 'fr', range: 'bytes=0-1' })];
    expect(replies.map((reply) => reply.headers['x-cache'])).toEqual(['MISS', 'HIT', 'BYPASS']);
    for (const reply of replies) expect(reply.headers.vary).toBe(vary);
  });

  it('keeps one copy for the spellings of one origin (Host case, the scheme\'s default port), and another for another port', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    const stored = await send(stack.gateway.url, path, { host: 'Shop.Example:80' });
    const alike = await send(stack.gateway.url, path, { host: 'shop.example' });
    const otherPort = await send(stack.gateway.url, path, { host: 'shop.example:8080' });
    expect([stored.headers['x-cache'], alike.headers['x-cache'], otherPort.headers['x-cache']]).toEqual(['MISS', 'HIT', 'MISS']);
    expect(otherPort.json.forwardedHost).toBe('shop.example:8080');
  });

  it('keys a request without Host (HTTP/1.0) by the address the service is told it came to, not one for all', async () => {
    const { logger } = memoryLogger('gateway');
    // One gateway reachable at two addresses, as on `::` (dual stack).
    const dualStack = http.createServer(createGateway(stack.config, { logger }).callback());
    await new Promise<void>((resolve) => dualStack.listen(0, '::', resolve));
    const { port } = dualStack.address() as net.AddressInfo;
    const path = fresh('/api/open', 'cc=max-age%3D60');
    const withoutHost = (host: string) =>
      new Promise<string>((resolve, reject) => {
        const socket = net.connect({ host, port }, () => socket.write(`GET ${path} HTTP/1.0\r\n\r\n`));
        const chunks: Buffer[] = [];
        socket.on('data', (chunk) => chunks.push(chunk));
        socket.on('end', () => resolve(Buffer.concat(chunks).toString()));
        socket.on('error', reject);
      });
    try {
      const [viaV4, viaV6] = [await withoutHost('127.0.0.1'), await withoutHost('::1')];
      expect(viaV4).toMatch(/^HTTP\/1\.1 200/);
      expect(/x-cache: (\w+)/i.exec(viaV6)?.[1]).toBe('MISS');
      expect(viaV6).toContain(`"forwardedHost":"[::1]:${port}"`);
    } finally {
      dualStack.closeAllConnections();
      await new Promise((resolve) => dualStack.close(resolve));
    }
  });

  it('keeps one variant per value of a Vary header the service names', async () => {
    const path = fresh('/api/catalog', 'vary=Accept-Encoding');
    const results = [];
    // The br variant, stored last, does not push the gzip one out.
    for (const encoding of ['gzip', 'br', 'gzip']) results.push((await send(stack.gateway.url, path, as(alice, { 'accept-encoding': encoding }))).headers['x-cache']);
    expect(results).toEqual(['MISS', 'MISS', 'HIT']);
    expect((await send(stack.gateway.url, path, as(alice, { 'accept-encoding': 'gzip' }))).headers['x-cache']).toBe('HIT');
  });

  it.each([
    { desc: 'a POST', method: 'POST', headers: { 'content-type': 'application/json', 'content-length': '2' } },
    { desc: 'a Range request', method: 'GET', headers: { range: 'bytes=0-10' } },
  ])('passes $desc by (BYPASS)', async ({ method, headers }) => {
    const reply = await new Promise<Reply>((resolve, reject) => {
      const { hostname, port } = new URL(stack.gateway.url);
      const request = http.request({ host: hostname, port: Number(port), path: fresh('/api/open'), method, headers, agent: false }, (response) => {
        response.resume();
        response.on('end', () => resolve({ status: response.statusCode ?? 0, headers: response.headers, text: '', json: {} }));
      });
      request.on('error', reject);
      request.end(method === 'POST' ? '{}' : undefined);
    });
    expect(reply.headers['x-cache']).toBe('BYPASS');
  });

  it.each([
    { method: 'POST', status: 201, kept: false },
    { method: 'PUT', status: 200, kept: false },
    { method: 'DELETE', status: 204, kept: false },
    { method: 'PATCH', status: 409, kept: true },
    { method: 'POST', status: 500, kept: true },
  ])('after a $method answered $status, the stored answer is kept: $kept (RFC 9111 4.4)', async ({ method, status, kept }) => {
    const path = fresh('/api/catalog', 'cc=max-age%3D60');
    await send(stack.gateway.url, path, as(alice));
    // Another caller's unsafe request changes the resource for everybody.
    const unsafe = await send(stack.gateway.url, path, as(bob, { 'x-answer-status': String(status) }), method);
    expect([unsafe.status, unsafe.headers['x-cache']]).toEqual([status, 'BYPASS']);
    expect((await send(stack.gateway.url, path, as(alice))).headers['x-cache']).toBe(kept ? 'HIT' : 'MISS');
  });

  // Keyed byte for byte, a write through another spelling the service reads as the same resource left the copy
  // served for its whole lifetime. Two spellings still never share an answer.
  it.each([
    { desc: 'an escaped unreserved character', spell: (path: string) => path.replace('/item-', '/%69tem-') },
    { desc: 'a trailing slash', spell: (path: string) => path.replace('?', '/?') },
    { desc: 'an upper-case path', spell: (path: string) => path.replace('/item-', '/ITEM-') },
  ])('drops the stored answer after a PUT through $desc (RFC 9111 4.4), and never answers one spelling with the other', async ({ spell }) => {
    const path = fresh('/api/catalog', 'cc=max-age%3D60');
    const stored = await send(stack.gateway.url, path, as(alice));
    expect(stored.headers['x-cache']).toBe('MISS');
    expect((await send(stack.gateway.url, path, as(alice))).headers['x-cache']).toBe('HIT');
    const other = await send(stack.gateway.url, spell(path), as(alice));
    expect(other.headers['x-cache']).toBe('MISS');
    const write = await send(stack.gateway.url, spell(path), as(bob), 'PUT');
    expect([write.status, write.headers['x-cache']]).toEqual([200, 'BYPASS']);
    expect((await send(stack.gateway.url, path, as(alice))).headers['x-cache']).toBe('MISS');
  });

  it.each([
    { desc: 'a 201 naming it in Location by the instance\'s own address (made public by the gateway)', method: 'POST', status: 201, header: 'loc', location: (child: string) => `${service.url}${child.replace('/api/catalog', '/catalog')}`, dropped: true },
    { desc: 'a 303 naming it in a relative Location', method: 'POST', status: 303, header: 'loc', location: (child: string) => child.split('/').slice(-2).join('/'), dropped: true },
    { desc: 'a 200 to a PUT naming it in Content-Location by its public URL', method: 'PUT', status: 200, header: 'cloc', location: (child: string) => `${stack.gateway.url}${child}`, dropped: true },
    // RFC 9111 4.4: never another origin's URI.
    { desc: 'a 201 naming it in a Location on another origin', method: 'POST', status: 201, header: 'loc', location: (child: string) => `http://elsewhere.example${child}`, dropped: false },
  ])('after a write answered with $desc, a resource it names is read afresh: $dropped (RFC 9111 4.4)', async ({ method, status, header, location, dropped }) => {
    const item = fresh('/api/catalog');
    const child = `${item}/child`;
    // Not there yet: a 404, stored for the route's ttl like any other.
    const before = [await send(stack.gateway.url, child, as(alice, { 'x-answer-status': '404' })), await send(stack.gateway.url, child, as(alice, { 'x-answer-status': '404' }))];
    expect(before.map((reply) => [reply.status, reply.headers['x-cache']])).toEqual([
      [404, 'MISS'],
      [404, 'HIT'],
    ]);
    const write = await send(stack.gateway.url, `${item}?${header}=${encodeURIComponent(location(child))}`, as(bob, { 'x-answer-status': String(status) }), method);
    expect(write.status).toBe(status);
    const after = await send(stack.gateway.url, child, as(alice));
    expect([after.status, after.headers['x-cache']]).toEqual(dropped ? [200, 'MISS'] : [404, 'HIT']);
  });

  // A write through a route without a cache of its own invalidated nothing: the POST answered 201 naming a resource
  // whose 404 the cached prefix route had stored left that 404 answering for the route's whole ttl.
  it('drops what a write through a route without a cache names in its answer, on a cached route of its service', async () => {
    const child = `${fresh('/api/catalog')}/child`;
    const before = [await send(stack.gateway.url, child, as(alice, { 'x-answer-status': '404' })), await send(stack.gateway.url, child, as(alice, { 'x-answer-status': '404' }))];
    expect(before.map((reply) => [reply.status, reply.headers['x-cache']])).toEqual([
      [404, 'MISS'],
      [404, 'HIT'],
    ]);
    const write = await send(stack.gateway.url, `/api/catalog?loc=${encodeURIComponent(child)}`, as(bob, { 'x-answer-status': '201' }), 'POST');
    expect([write.status, write.headers['x-cache']]).toEqual([201, undefined]);
    const after = await send(stack.gateway.url, child, as(alice));
    expect([after.status, after.headers['x-cache']]).toEqual([200, 'MISS']);
  });

  // The resource is the service's, whichever route reaches it: a write through an alias left the copy stored through
  // the other route answering its client with what it had just replaced.
  it('drops the copies every cached route of the service stores of a resource a write through another route changed', async () => {
    const item = fresh('/api/catalog');
    const alias = item.replace('/api/catalog', '/api/alias/catalog');
    for (const path of [item, alias]) {
      const replies = [await send(stack.gateway.url, path, as(alice)), await send(stack.gateway.url, path, as(alice))];
      expect(replies.map((reply) => reply.headers['x-cache'])).toEqual(['MISS', 'HIT']);
    }
    const write = await send(stack.gateway.url, item.replace('/api/catalog', '/api/v2/catalog'), as(bob), 'PUT');
    expect(write.status).toBe(200);
    for (const path of [item, alias]) expect((await send(stack.gateway.url, path, as(alice))).headers['x-cache']).toBe('MISS');
  });

  it('keeps a signed-in caller\'s answers per token where the service reads the token itself (forwardAuthorization)', async () => {
    // One user, two tokens: the service answers each by its own scope, which the gateway does not tell it.
    const token = (scope: string) => signToken({ subject: '9', claims: { role: 'user', email: 'dora@example.com', scope } });
    const [admin, reader] = [await token('orders:admin'), await token('orders:read')];
    const path = fresh('/api/fwd-user', 'cc=max-age%3D60');
    const replies = [await send(stack.gateway.url, path, as(admin)), await send(stack.gateway.url, path, as(reader)), await send(stack.gateway.url, path, as(admin))];
    expect(replies.map((reply) => [reply.headers['x-cache'], reply.json.scope])).toEqual([
      ['MISS', 'orders:admin'],
      ['MISS', 'orders:read'],
      ['HIT', 'orders:admin'],
    ]);
  });

  it('passes by a credential the gateway did not verify but forwards to the service (forwardAuthorization)', async () => {
    const path = fresh('/api/fwd', 'cc=public,max-age%3D60');
    await send(stack.gateway.url, path);
    const credentialed = await send(stack.gateway.url, path, { authorization: 'Bearer whatever-the-service-checks' });
    expect(credentialed.headers['x-cache']).toBe('BYPASS');
    expect(credentialed.json.n).toBe(2);
    expect((await send(stack.gateway.url, path)).headers['x-cache']).toBe('HIT');
  });

  it('makes one request to the service for concurrent misses of one key', async () => {
    const path = fresh('/api/open', 'gate=1&cc=max-age%3D60');
    const before = stack.gatewayLogs.filter((line) => line.message === 'response cache: waiting for a fetch in flight').length;
    const replies = Promise.all(Array.from({ length: 5 }, () => send(stack.gateway.url, path)));
    // All five are in: one at the service, four waiting for its answer.
    await waitFor(() => hitsFor(path) === 1 && stack.gatewayLogs.filter((line) => line.message === 'response cache: waiting for a fetch in flight').length - before === 4);
    service.release();
    const done = await replies;
    expect(hitsFor(path)).toBe(1);
    expect(done.map((reply) => reply.headers['x-cache']).sort()).toEqual(['HIT', 'HIT', 'HIT', 'HIT', 'MISS']);
    expect(new Set(done.map((reply) => reply.text)).size).toBe(1);
  });

  // The fetch waited for was given up when its client left (a reset stream, a closed connection): each waiter went to
  // the service on its own, so one client's reset undid the lock for every request of the key (an outside review: 59
  // fetches at once). One waiter fetches in its place, the others wait for it.
  it.each([
    { desc: 'before its answer', query: 'gate=1&cc=max-age%3D60', left: () => Promise.resolve() },
    // A service sending its head at once and its body slowly: the client leaving one byte later let every waiter through.
    { desc: 'in the middle of its answer', query: 'bodygate=1&cc=max-age%3D60', left: (socket: net.Socket) => new Promise<void>((resolve) => socket.once('data', () => resolve())) },
  ])('hands the fetch on to one waiter when the client whose request fetched leaves $desc', async ({ query, left }) => {
    const path = fresh('/api/open', query);
    const waiting = () => stack.gatewayLogs.filter((line) => line.message === 'response cache: waiting for a fetch in flight').length;
    const { port } = new URL(stack.gateway.url);
    // The same Host as the others' (part of the key).
    const leaving = net.connect(Number(port), '127.0.0.1', () => leaving.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n\r\n`));
    leaving.on('error', () => undefined);
    await waitFor(() => hitsFor(path) === 1, 'the first request at the service');
    const before = waiting();
    const replies = Promise.all(Array.from({ length: 4 }, () => send(stack.gateway.url, path)));
    // Seen before it is awaited: a rejection (the stack closed under a failed wait) must fail this test, not the run.
    replies.catch(() => undefined);
    await waitFor(() => waiting() - before === 4, 'four requests waiting for it');
    await left(leaving);
    leaving.destroy();
    // One waiter takes its place at the service; the three others wait again, for it.
    await waitFor(() => hitsFor(path) === 2 && waiting() - before === 7, 'one new fetch, three waiting for it');
    service.release();
    const done = await replies;
    expect(hitsFor(path)).toBe(2);
    expect(done.map((reply) => reply.headers['x-cache']).sort()).toEqual(['HIT', 'HIT', 'HIT', 'MISS']);
  });

  it.each([
    { desc: 'no-store', query: 'cc=no-store', atOnce: 5 },
    { desc: 'private', query: 'cc=private', atOnce: 5 },
    { desc: 'Set-Cookie', query: 'cc=max-age%3D60&cookie=a%3D1', atOnce: 5 },
    // A status that may pass: held as before, for the service's sake while it struggles.
    { desc: 'a 503', query: 'status=503', atOnce: 1 },
  ])('does not hold concurrent misses behind one another once the service answered $desc, which is never stored: $atOnce at once', async ({ query, atOnce }) => {
    const path = fresh('/api/open', `gate=1&${query}`);
    const waiting = () => stack.gatewayLogs.filter((line) => line.message === 'response cache: waiting for a fetch in flight').length;
    const first = send(stack.gateway.url, path);
    await waitFor(() => hitsFor(path) === 1);
    service.release();
    expect((await first).headers['x-cache']).toBe('MISS');
    const before = waiting();
    const burst = Promise.all(Array.from({ length: 5 }, () => send(stack.gateway.url, path)));
    // Awaited below; should a wait fail first, its end (the gateway closing at teardown) is not an unhandled rejection.
    burst.catch(() => undefined);
    // Those held wait in the gateway (logged), the others are at the service.
    await waitFor(() => hitsFor(path) === 1 + atOnce && waiting() - before === 5 - atOnce);
    service.release();
    if (atOnce < 5) {
      await waitFor(() => hitsFor(path) === 6);
      service.release();
    }
    expect((await burst).map((reply) => reply.headers['x-cache'])).toEqual(Array(5).fill('MISS'));
  });

  it('still holds concurrent misses behind one another after a 304 to a conditional request, which said nothing of the next answer', async () => {
    const path = fresh('/api/open', 'gate=1&cc=max-age%3D60');
    const waiting = () => stack.gatewayLogs.filter((line) => line.message === 'response cache: waiting for a fetch in flight').length;
    // The service answers one client's own If-None-Match: nothing to store, and nothing learnt.
    const conditional = send(stack.gateway.url, path, { 'if-none-match': '"v1"', 'x-answer-status': '304' });
    await waitFor(() => hitsFor(path) === 1);
    service.release();
    expect((await conditional).status).toBe(304);
    const before = waiting();
    const burst = Promise.all(Array.from({ length: 5 }, () => send(stack.gateway.url, path)));
    // Awaited below; should a wait fail first, its end (the gateway closing at teardown) is not an unhandled rejection.
    burst.catch(() => undefined);
    await waitFor(() => hitsFor(path) === 2 && waiting() - before === 4);
    service.release();
    expect((await burst).map((reply) => reply.headers['x-cache']).sort()).toEqual(['HIT', 'HIT', 'HIT', 'HIT', 'MISS']);
  });

  it('stands in with a stale copy, to HEAD as to GET, while the service is unreachable and stale-if-error allows (STALE)', async () => {
    const path = fresh('/api/flaky', 'cc=max-age%3D1,stale-if-error%3D600');
    const count = async (result: string) => {
      const scrape = await (await fetch(`${stack.metrics.url}/metrics`)).text();
      return Number(new RegExp(`gateway_cache_lookups_total\\{gateway_route_name="flaky",gateway_cache_result="${result}"\\} (\\d+)`).exec(scrape)?.[1]);
    };
    const [missesBefore, staleBefore] = [await count('miss'), await count('stale')];
    const stored = await send(stack.gateway.url, path);
    expect(stored.headers['x-cache']).toBe('MISS');
    await flaky.close();
    // Fresh for one second: HIT; then the service is asked, cannot be reached, and the copy stands in. Every request
    // sent is the loop's (the copy may be stale by the first, Date counting whole seconds), so exactly one is STALE.
    let reply = stored;
    await waitFor(async () => (reply = await send(stack.gateway.url, path)).headers['x-cache'] !== 'HIT');
    expect(reply.status).toBe(200);
    expect(reply.headers['x-cache']).toBe('STALE');
    expect(reply.text).toBe(stored.text);
    // One result per request: the miss that ended stale counts as stale only.
    expect(await count('miss')).toBe(missesBefore + 1);
    expect(await count('stale')).toBe(staleBefore + 1);
    // HEAD is GET without the content: it got 502 where GET got the copy (its miss was forwarded before the stand-in).
    const head = await send(stack.gateway.url, path, {}, 'HEAD');
    expect([head.status, head.headers['x-cache'], head.text]).toEqual([200, 'STALE', '']);
    expect(head.headers['content-length']).toBe(String(Buffer.byteLength(stored.text)));
  });

  it('never stores an answer whose Vary names a header spelt with `_` (headersWithUnderscores drop): the service reads Accept-Language as it', async () => {
    const path = fresh('/api/fwd', 'cc=max-age%3D60&vary=Accept_Language');
    const poisoned = await send(stack.gateway.url, path, { 'accept-language': 'evil' });
    const victim = await send(stack.gateway.url, path);
    expect([poisoned.headers['x-cache'], poisoned.json.lang, victim.headers['x-cache'], victim.json.lang, hitsFor(path)]).toEqual(['MISS', 'evil', 'MISS', null, 2]);
  });

  it('never lets a request poison a copy with Accept.Language (headersWithUnderscores drop): PHP reads it as Accept-Language, the key would not', async () => {
    const path = fresh('/api/fwd', 'cc=max-age%3D60&vary=Accept-Language');
    const poisoned = await send(stack.gateway.url, path, { 'Accept.Language': 'evil' });
    const victim = await send(stack.gateway.url, path);
    expect([poisoned.headers['x-cache'], poisoned.json.lang, victim.headers['x-cache'], victim.json.lang]).toEqual(['MISS', null, 'HIT', null]);
  });

  it('records the result on the span, in the access log and in the metrics', async () => {
    const path = fresh('/api/open');
    await send(stack.gateway.url, path, { 'x-request-id': 'cache-miss-1' });
    await send(stack.gateway.url, path, { 'x-request-id': 'cache-hit-1' });
    await waitFor(() => stack.gatewayLogs.some((line) => line.request_id === 'cache-hit-1'));
    const logged = (id: string) => stack.gatewayLogs.find((line) => line.request_id === id && line.message === 'request completed');
    expect(logged('cache-miss-1')?.cache).toBe('miss');
    expect(logged('cache-hit-1')?.cache).toBe('hit');
    await waitFor(() => tracing.spans().some((span) => span.attributes[ATTR.requestId] === 'cache-hit-1'));
    const span = tracing.spans().find((each) => each.attributes[ATTR.requestId] === 'cache-hit-1')!;
    expect(span.attributes[ATTR.cache]).toBe('hit');
    const scrape = await (await fetch(`${stack.metrics.url}/metrics`)).text();
    const count = (result: string) => Number(new RegExp(`gateway_cache_lookups_total\\{gateway_route_name="open-catalog",gateway_cache_result="${result}"\\} (\\d+)`).exec(scrape)?.[1]);
    expect(count('hit')).toBeGreaterThanOrEqual(1);
    expect(count('miss')).toBeGreaterThanOrEqual(1);
    expect(count('stale')).toBe(0);
  });
});

/** The `slow-reads` route's whole deadline (and silence timeout), ms: long beside the scheduling of three requests sent at once. */
const SLOW_READS_DEADLINE_MS = 600;

describe('response cache with writes whose answer never comes', () => {
  let service: CatalogService;
  let stack: TestStack;

  beforeAll(async () => {
    service = await catalogService();
    const slowWrites = { name: 'slow-writes', prefix: '/api/slow', service: 'notifications', upstreamPath: '/slow', auth: 'public', timeoutMs: 300, cache: { ttlSeconds: 60 } };
    // A whole exchange bounded as tightly as a silence: a fetch that times out leaves its waiters little or no time of their own.
    const slowReads = { name: 'slow-reads', prefix: '/api/slow-reads', service: 'notifications', upstreamPath: '/slow-reads', auth: 'public', timeoutMs: SLOW_READS_DEADLINE_MS, deadlineMs: SLOW_READS_DEADLINE_MS, cache: { ttlSeconds: 60 } };
    // A deadline long enough for the service's slow but timely answers below.
    const slowVariants = { name: 'slow-variants', prefix: '/api/slow-variants', service: 'notifications', upstreamPath: '/slow-variants', auth: 'public', timeoutMs: 3000, deadlineMs: 2000, cache: { ttlSeconds: 60, scope: 'public' } };
    stack = await startStack({ serviceUrls: { notifications: service.url }, overrides: overrides({ routes: [...(shippedConfigFile().routes as unknown[]), slowWrites, slowReads, slowVariants] }) });
  });
  afterAll(async () => {
    service.release();
    await stack.close();
    await service.close();
  });

  it('counts the deadline of requests that waited for a fetch of the same answer from when they began to wait', async () => {
    const path = fresh('/api/slow-reads', '');
    const trips = () => service.hits.filter((hit) => hit.url === path.replace('/api/slow-reads', '/slow-reads'));
    // Three at once: one fetches (and times out at the held service), two wait for it. A waiter's deadline runs from
    // when it began to wait, a moment before or after the fetch's: by the time the fetch failed it is spent, or all but
    // the few ms between (how many is the scheduler's doing), so they answer 504 too, without a trip of their own or
    // after one of those few ms. Before, each waiter's deadline started again then: it waited a whole one more at the
    // service, which saw all three.
    const replies = await Promise.all([0, 1, 2].map(() => send(stack.gateway.url, path, { 'x-gate': '1' })));
    expect(replies.map((reply) => [reply.status, reply.json.code])).toEqual([0, 1, 2].map(() => [504, 'upstream_timeout']));
    // The first to reach the service is the fetch (the waiters' own trips start once it failed); the others' cut is
    // seen by the service a moment after the gateway answered.
    await waitFor(() => trips().every((trip) => trip.closedAt !== undefined));
    const [fetch, ...waiters] = trips();
    expect(fetch!.closedAt! - fetch!.arrivedAt).toBeGreaterThan(SLOW_READS_DEADLINE_MS / 2);
    for (const trip of waiters) expect(trip.closedAt! - trip.arrivedAt).toBeLessThan(SLOW_READS_DEADLINE_MS / 2);
    service.release();
  });

  it('leaves a waiter a whole deadline of its own when the fetch it waited for was answered in time', async () => {
    // The service answers each request in about 1.2 s, within the 2 s deadline, and varies on Accept-Language.
    const path = fresh('/api/slow-variants', `vary=accept-language&cc=${encodeURIComponent('public, max-age=60')}`);
    const upstreamHits = () => service.hits.filter((hit) => hit.url === path.replace('/api/slow-variants', '/slow-variants')).length;
    const french = send(stack.gateway.url, path, { 'accept-language': 'fr', 'x-gate': '1' });
    await waitFor(() => upstreamHits() === 1);
    // German waits for the French fetch (one key until the answer says Vary), then needs a fetch of its own.
    const german = send(stack.gateway.url, path, { 'accept-language': 'de', 'x-gate': '1' });
    await new Promise((resolve) => setTimeout(resolve, 1200));
    service.release();
    expect((await french).status).toBe(200);
    await waitFor(() => upstreamHits() === 2);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    service.release();
    // Before, its deadline counted from its wait: 0.8 s were left for its own 1 s exchange, and it was 504.
    const answer = await german;
    expect([answer.status, answer.json.lang]).toEqual([200, 'de']);
  });

  it('drops the stored copy after a write that timed out at the service, which may have done it', async () => {
    const path = fresh('/api/slow', '');
    await send(stack.gateway.url, path);
    expect((await send(stack.gateway.url, path)).headers['x-cache']).toBe('HIT');
    const write = await send(stack.gateway.url, path, { 'x-gate': '1' }, 'PUT');
    expect([write.status, write.json.code]).toEqual([504, 'upstream_timeout']);
    // The service did the write after all (it answers late, to nobody).
    service.release();
    expect((await send(stack.gateway.url, path)).headers['x-cache']).toBe('MISS');
  });

  it('drops the stored copy after a write whose client left while the service had it', async () => {
    const path = fresh('/api/slow', '');
    await send(stack.gateway.url, path);
    expect((await send(stack.gateway.url, path)).headers['x-cache']).toBe('HIT');
    const { hostname, port } = new URL(stack.gateway.url);
    const hits = () => service.hits.filter((hit) => hit.method === 'DELETE' && hit.url.startsWith(path.replace('/api/slow', '/slow'))).length;
    const leaving = http.request({ host: hostname, port: Number(port), path, method: 'DELETE', headers: { 'x-gate': '1' }, agent: false });
    leaving.on('error', () => undefined);
    leaving.end();
    await waitFor(() => hits() === 1);
    leaving.destroy();
    // The gateway saw it go (499) before the service answers, late, to nobody.
    await waitFor(() => stack.gatewayLogs.some((line) => line.method === 'DELETE' && line.url === path && line.status === 499));
    service.release();
    // Whatever the client saw, the service had the write: the copy from before it goes.
    await waitFor(async () => (await send(stack.gateway.url, path)).headers['x-cache'] === 'MISS');
  });
});

describe('response cache while its service is down', () => {
  let service: CatalogService;
  let stack: TestStack;

  beforeAll(async () => {
    service = await catalogService();
    stack = await startStack({ serviceUrls: { orders: service.url }, overrides: overrides() });
  });
  afterAll(async () => {
    await stack.close();
    await service.close();
  });

  // RFC 9111 4.2.4: a directive that forbids a stale answer wins over stale-if-error's leave.
  const rows = [
    { desc: 'stale-if-error alone', cc: 'max-age=1, stale-if-error=600', result: 'STALE' },
    { desc: 'must-revalidate', cc: 'max-age=1, must-revalidate, stale-if-error=600', result: undefined },
    { desc: 'proxy-revalidate', cc: 'max-age=1, proxy-revalidate, stale-if-error=600', result: undefined },
    // RFC 9111 5.2.2.10: s-maxage means proxy-revalidate for a shared cache.
    { desc: 's-maxage', cc: 's-maxage=1, stale-if-error=600', result: undefined },
  ];

  it(`stands in with a stale copy only where the service allowed it: ${rows.map((row) => `${row.desc} ${row.result ?? 'error'}`).join(', ')}`, async () => {
    const paths = rows.map((row) => fresh('/api/flaky', `cc=${encodeURIComponent(row.cc)}`));
    for (const path of paths) expect((await send(stack.gateway.url, path)).headers['x-cache']).toBe('MISS');
    await service.close();
    const replies: Reply[] = [];
    for (const path of paths) {
      let reply = await send(stack.gateway.url, path);
      await waitFor(async () => (reply = await send(stack.gateway.url, path)).headers['x-cache'] !== 'HIT');
      replies.push(reply);
    }
    expect(replies.map((reply) => [reply.headers['x-cache'], reply.status === 200 ? 'copy' : 'error'])).toEqual(rows.map((row) => (row.result ? [row.result, 'copy'] : ['MISS', 'error'])));
  });
});

describe('response cache behind a trusted proxy', () => {
  let service: CatalogService;
  let stack: TestStack;

  beforeAll(async () => {
    service = await catalogService();
    stack = await startStack({ serviceUrls: { notifications: service.url }, overrides: overrides({ trustProxy: true, trustedProxies: ['127.0.0.1', '::1'] }) });
  });
  afterAll(async () => {
    await stack.close();
    await service.close();
  });

  it.each([
    { desc: 'X-Forwarded-Prefix', headers: { 'x-forwarded-prefix': '//evil.example' } },
    // The gateway rebuilds these from the proxy's value whatever Connection names: the service hears them.
    { desc: 'X-Forwarded-Prefix its Connection names', headers: { 'x-forwarded-prefix': '/evil', connection: 'x-forwarded-prefix' } },
    { desc: 'X-Forwarded-Port its Connection names', headers: { 'x-forwarded-port': '8443', connection: 'x-forwarded-port' } },
    { desc: 'X-Forwarded-Scheme', headers: { 'x-forwarded-scheme': 'javascript' } },
    { desc: 'Forwarded', headers: { forwarded: 'host=evil.example;proto=http' } },
    { desc: 'X-Host', headers: { 'x-host': 'evil.example' } },
    { desc: 'X-Forwarded-Path (a name outside every list)', headers: { 'x-forwarded-path': '/../../evil' } },
  ])('cannot be poisoned with a $desc the proxy relayed (passed to the service, so keyed)', async ({ headers }) => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    const poisoned = await send(stack.gateway.url, path, headers);
    const victim = await send(stack.gateway.url, path);
    expect([poisoned.headers['x-cache'], victim.headers['x-cache']]).toEqual(['MISS', 'MISS']);
    expect(victim.json.n).toBe(2);
  });

  it('still shares one entry between requests the proxy forwarded alike', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    // Client addresses, in any of their spellings, are not keyed: each client would get an entry of its own.
    const relayed = { 'x-forwarded-prefix': '/shop', 'x-forwarded-for': '198.51.100.7', 'cf-connecting-ip': '198.51.100.7', forwarded: 'for=198.51.100.7;proto=https;host=shop.example' };
    await send(stack.gateway.url, path, relayed);
    const again = await send(stack.gateway.url, path, { ...relayed, 'x-forwarded-for': '203.0.113.9', 'cf-connecting-ip': '203.0.113.9', forwarded: 'for="[2001:db8::9]:4711";proto=https;host=shop.example' });
    // The proxy's prefix, then the one this route takes off (/api/open -> /open).
    expect([again.headers['x-cache'], again.json.forwardedPrefix]).toEqual(['HIT', '/shop/api']);
  });

  it.each([
    { desc: 'a host hidden in a quoted for= (Spring reads `host=` anywhere in the element)', poisoned: 'for="x;host=evil.example";proto=https' },
    { desc: 'a host spelled with spaces around `=`', poisoned: 'for=198.51.100.7;proto=https;host = evil.example' },
  ])('keys the Forwarded without its client address only where nothing can hide in it: $desc', async ({ poisoned }) => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    await send(stack.gateway.url, path, { forwarded: poisoned });
    const victim = await send(stack.gateway.url, path, { forwarded: 'for=203.0.113.9;proto=https;host=evil.example' });
    const plain = await send(stack.gateway.url, path, { forwarded: 'for=203.0.113.9;proto=https' });
    expect([victim.headers['x-cache'], plain.headers['x-cache']]).toEqual(['MISS', 'MISS']);
  });
});

/**
 * Under `headersWithUnderscores: allow`, `accept_language` reaches the service, which (CGI, PHP, Rack, WSGI) reads it
 * as Accept-Language. Keyed on the `-` spelling only, one request stored its answer as the one for no
 * Accept-Language, and every client that sent none got it.
 */
describe('response cache with headers spelled with `_` allowed', () => {
  let service: CatalogService;
  let stack: TestStack;

  beforeAll(async () => {
    service = await catalogService();
    stack = await startStack({ serviceUrls: { notifications: service.url }, overrides: overrides({ headersWithUnderscores: 'allow' }) });
  });
  afterAll(async () => {
    await stack.close();
    await service.close();
  });
  const hits = (path: string) => service.hits.filter((hit) => hit.url.includes(/item-\d+/.exec(path)![0])).length;

  it.each([
    { desc: 'the route\'s varyHeaders name (accept_language)', path: () => fresh('/api/open', 'cc=max-age%3D60'), twin: { accept_language: 'evil' }, result: 'BYPASS' },
    { desc: 'a name the service\'s Vary lists (Accept_Language)', path: () => fresh('/api/fwd', 'cc=max-age%3D60&vary=Accept-Language'), twin: { Accept_Language: 'evil' }, result: 'MISS' },
    { desc: 'a name the service\'s Vary lists, - and _ mixed (x_api-version)', path: () => fresh('/api/fwd', 'cc=max-age%3D60&vary=X-Api-Version'), twin: { 'x_api-version': '0-evil' }, result: 'MISS' },
    { desc: 'the route\'s varyHeaders name, spelt with dots as PHP reads it (accept.language)', path: () => fresh('/api/open', 'cc=max-age%3D60'), twin: { 'accept.language': 'evil' }, result: 'BYPASS' },
    { desc: 'a name the service\'s Vary lists, spelt with dots (Accept.Language)', path: () => fresh('/api/fwd', 'cc=max-age%3D60&vary=Accept-Language'), twin: { 'Accept.Language': 'evil' }, result: 'MISS' },
  ])('never stores the answer to a request with a look-alike (`_` or `.`) twin of $desc, nor answers it from a copy', async ({ path: next, twin, result }) => {
    const path = next();
    const poisoned = await send(stack.gateway.url, path, twin);
    const victim = await send(stack.gateway.url, path);
    expect([poisoned.headers['x-cache'], victim.headers['x-cache']]).toEqual([result, 'MISS']);
    expect(victim.json.lang).toBeNull();
    // Now a copy is stored for no Accept-Language: the twin's request is not given it, nor replaces it.
    expect((await send(stack.gateway.url, path, twin)).headers['x-cache']).toBe(result);
    const again = await send(stack.gateway.url, path);
    expect([again.headers['x-cache'], again.json.lang, hits(path)]).toEqual(['HIT', null, 3]);
  });

  it('never stores an answer whose Vary names a header spelt with `_`: the service reads the client’s `-` spelling as it', async () => {
    const path = fresh('/api/fwd', 'cc=max-age%3D60&vary=Accept_Language');
    const poisoned = await send(stack.gateway.url, path, { 'accept-language': 'evil' });
    expect([poisoned.headers['x-cache'], poisoned.json.lang]).toEqual(['MISS', 'evil']);
    for (const headers of [{}, { accept_language: 'fr' }, {}]) {
      const victim = await send(stack.gateway.url, path, headers);
      expect([victim.headers['x-cache'], victim.json.lang]).toEqual(['MISS', (headers as { accept_language?: string }).accept_language ?? null]);
    }
    expect(hits(path)).toBe(4);
  });

  it('still answers from the cache a request whose `_` header the answer does not vary on', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60&vary=Accept-Language');
    await send(stack.gateway.url, path, { x_client_tag: 'one' });
    expect((await send(stack.gateway.url, path, { x_client_tag: 'two' })).headers['x-cache']).toBe('HIT');
  });
});

describe('response cache with a client that stops reading', () => {
  let service: CatalogService;
  let stack: TestStack;
  let stalled: http.ClientRequest | undefined;

  beforeAll(async () => {
    service = await catalogService();
    // Bodies larger than the socket buffers on both sides of the gateway, and still small enough to keep.
    stack = await startStack({ serviceUrls: { notifications: service.url }, overrides: overrides({ cache: { maxEntryBytes: 48 * 1024 * 1024 } }) });
  });
  afterAll(async () => {
    stalled?.destroy();
    await stack.close();
    await service.close();
  });

  it('lets requests waiting for the same answer fetch their own once the first client backs up', async () => {
    const path = fresh('/api/open', `cc=max-age%3D60&size=${24 * 1024 * 1024}`);
    const { hostname, port } = new URL(stack.gateway.url);
    const headersIn = new Promise<void>((resolve, reject) => {
      stalled = http.get({ host: hostname, port: Number(port), path, agent: false }, (response) => {
        // Never read: the gateway's writes back up, and the service is paused for this client.
        response.pause();
        resolve();
      });
      stalled.on('error', reject);
    });
    await headersIn;
    const second = await send(stack.gateway.url, path);
    expect(second.status).toBe(200);
    expect(second.json.n).toBe(2);
  });
});

// One fetch per key at a time, but a waiter's wait is bounded (cache.lockTimeoutMs): a fetch that answers at once and
// streams for minutes is over only at its end, and every miss of the key waited for it, up to a whole deadline.
describe('response cache with a fetch that does not end', () => {
  let service: CatalogService;
  let stack: TestStack;
  const hitsFor = (path: string) => service.hits.filter((hit) => hit.url.includes(/item-\d+/.exec(path)![0])).length;

  beforeAll(async () => {
    service = await catalogService();
    stack = await startStack({ serviceUrls: { notifications: service.url }, overrides: overrides({ cache: { lockTimeoutMs: 200 } }) });
  });
  afterAll(async () => {
    await stack.close();
    await service.close();
  });

  it('lets a miss waiting for the same key fetch its own once cache.lockTimeoutMs passed', async () => {
    const path = fresh('/api/open', 'gate=1&cc=max-age%3D60');
    const first = send(stack.gateway.url, path);
    await waitFor(() => hitsFor(path) === 1);
    const second = send(stack.gateway.url, path);
    // Awaited below; should a wait fail first, their end (the gateway closing at teardown) is not an unhandled rejection.
    first.catch(() => undefined);
    second.catch(() => undefined);
    // The first fetch is still held at the service: without the bound the second waited for it, asking nothing.
    await waitFor(() => hitsFor(path) === 2, 'the waiting miss to fetch its own', 5000);
    service.release();
    expect((await Promise.all([first, second])).map((reply) => [reply.status, reply.headers['x-cache']])).toEqual([
      [200, 'MISS'],
      [200, 'MISS'],
    ]);
  });
});

describe('response cache shared through Redis', () => {
  let service: CatalogService;
  let stack: TestStack;
  let replica: TestServer;
  let replicaRedis: Redis | undefined;
  const prefix = isolatedKeyPrefix();

  beforeAll(async () => {
    service = await catalogService();
    stack = await startStack({ serviceUrls: { notifications: service.url }, env: { REDIS_URL: MACHINE_REDIS }, overrides: overrides({ cache: { redisKeyPrefix: prefix } }), withRedis: true });
    const { logger } = memoryLogger('gateway');
    replicaRedis = createRedisStore({ url: MACHINE_REDIS, commandTimeoutMs: 500, logger });
    await requireRedis(replicaRedis, MACHINE_REDIS);
    replica = await listen(createGateway(stack.config, { logger, redis: replicaRedis }).callback());
  });
  afterAll(async () => {
    await replica?.close();
    replicaRedis?.disconnect();
    if (stack) await stack.close();
    await service.close();
    await deleteKeys(MACHINE_REDIS, prefix);
  });

  it('answers on one replica from what another stored', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60&etag=%22r1%22');
    // Replicas behind one load balancer see one Host (it is part of the key).
    const host = { host: 'api.example.test' };
    const first = await send(stack.gateway.url, path, host);
    const second = await send(replica.url, path, host);
    expect([first.headers['x-cache'], second.headers['x-cache']]).toEqual(['MISS', 'HIT']);
    expect(second.text).toBe(first.text);
    expect(second.headers.etag).toBe('"r1"');
    expect(service.hits).toHaveLength(1);
    // An update through one replica invalidates the copy for all of them.
    expect((await send(replica.url, path, host, 'DELETE')).headers['x-cache']).toBe('BYPASS');
    expect((await send(stack.gateway.url, path, host)).headers['x-cache']).toBe('MISS');
  });

  // Kept as sent, a `Vary: Authorization` or `Vary: Cookie` entry held the caller's token or session in Redis.
  it('keeps no Vary-named header value in the store as sent, and still tells the variants apart', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60&vary=X-Tenant-Key');
    const secret = { 'x-tenant-key': 'tenant-secret-7f3a9c' };
    const first = await send(stack.gateway.url, path, secret);
    const again = await send(stack.gateway.url, path, secret);
    const other = await send(stack.gateway.url, path, { 'x-tenant-key': 'another-tenant' });
    expect([first.headers['x-cache'], again.headers['x-cache'], other.headers['x-cache']]).toEqual(['MISS', 'HIT', 'MISS']);
    const redis = new Redis(MACHINE_REDIS);
    try {
      const keys = await redis.keys(`${prefix}:*`);
      expect(keys.length).toBeGreaterThan(0);
      const read = async (key: string): Promise<string> => {
        const type = await redis.type(key);
        if (type === 'hash') return Object.values(await redis.hgetallBuffer(key)).map((value) => value.toString('latin1')).join(' ');
        if (type === 'string') return (await redis.getBuffer(key))?.toString('latin1') ?? '';
        if (type === 'zset') return (await redis.zrange(key, 0, -1)).join(' ');
        if (type === 'set') return (await redis.smembers(key)).join(' ');
        if (type === 'list') return (await redis.lrange(key, 0, -1)).join(' ');
        return '';
      };
      const stored = await Promise.all(keys.map(read));
      expect(stored.join('\n')).not.toContain('tenant-secret-7f3a9c');
    } finally {
      redis.disconnect();
    }
  });

  // A rolling deploy's older replicas still write copies with what a service echoed of the gateway's own request
  // headers; this version leaves them out when it stores, and must when it answers from another's copy too.
  it("answers from a copy another gateway stored with the identity and signature headers left out", async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    expect((await send(stack.gateway.url, path)).headers['x-cache']).toBe('MISS');
    const redis = new Redis(MACHINE_REDIS);
    try {
      // The copy as an older gateway would have stored it: those names among its headers.
      let rewritten = 0;
      for (const key of await redis.keys(`${prefix}:*`)) {
        if ((await redis.type(key)) !== 'hash') continue;
        for (const [field, value] of Object.entries(await redis.hgetallBuffer(key))) {
          if (value.length < 4) continue;
          const metaLength = value.readUInt32BE(0);
          let meta: { headers?: Record<string, string> };
          try {
            meta = JSON.parse(value.subarray(4, 4 + metaLength).toString('utf8')) as { headers?: Record<string, string> };
          } catch {
            continue;
          }
          if (!meta.headers) continue;
          Object.assign(meta.headers, { 'x-user-id': '1', 'x-user-role': 'admin', 'x-gateway-signature': 't=1,v2=abc', 'x-consumer-id': 'c-7' });
          const metaBytes = Buffer.from(JSON.stringify(meta), 'utf8');
          const length = Buffer.alloc(4);
          length.writeUInt32BE(metaBytes.length, 0);
          await redis.hset(key, field, Buffer.concat([length, metaBytes, value.subarray(4 + metaLength)]));
          rewritten++;
        }
      }
      expect(rewritten).toBeGreaterThan(0);
    } finally {
      redis.disconnect();
    }
    const hit = await send(stack.gateway.url, path);
    expect(hit.headers['x-cache']).toBe('HIT');
    expect(Object.keys(hit.headers).filter((name) => /^x-(user|gateway|consumer)-/.test(name))).toEqual([]);
  });

  it('never answers from copies made for another service: a reload or a replica that points the route elsewhere starts afresh', async () => {
    const other = await catalogService();
    const { logger } = memoryLogger('gateway');
    // The route, by the same name, now asks another service (users, at `other`).
    const movedFile = overrides({ cache: { redisKeyPrefix: prefix } });
    movedFile.routes = (movedFile.routes as Record<string, unknown>[]).map((route) => (route.name === 'open-catalog' ? { ...route, service: 'users' } : route));
    const movedConfig = testConfig({ users: other.url, orders: 'http://127.0.0.1:9', notifications: service.url }, movedFile);
    const moved = await listen(createGateway(movedConfig, { logger, redis: replicaRedis }).callback());
    try {
      const path = fresh('/api/open', 'cc=max-age%3D60');
      const host = { host: 'api.example.test' };
      expect((await send(stack.gateway.url, path, host)).headers['x-cache']).toBe('MISS');
      // The control: a replica of the same config shares the copy.
      expect((await send(replica.url, path, host)).headers['x-cache']).toBe('HIT');
      const movedAnswer = await send(moved.url, path, host);
      expect(movedAnswer.headers['x-cache']).toBe('MISS');
      // What only guards or times the route (its rate limit, its timeout) does not split the copies.
      const guarded = overrides({ cache: { redisKeyPrefix: prefix } });
      guarded.routes = (guarded.routes as Record<string, unknown>[]).map((route) => (route.name === 'open-catalog' ? { ...route, rateLimit: { max: 5000, windowMs: 1000 }, timeoutMs: 1234 } : route));
      const sibling = await listen(createGateway(testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: service.url }, guarded), { logger, redis: replicaRedis }).callback());
      try {
        expect((await send(sibling.url, path, host)).headers['x-cache']).toBe('HIT');
      } finally {
        await sibling.close();
      }
      // The route now under another public prefix asks the service for the same path, but the copy names the old
      // public URLs (its Location, the links the service built from X-Forwarded-Prefix): not shared.
      const renamed = overrides({ cache: { redisKeyPrefix: prefix } });
      renamed.routes = (renamed.routes as Record<string, unknown>[]).map((route) => (route.name === 'open-catalog' ? { ...route, prefix: '/api/v2/open' } : route));
      const rerouted = await listen(createGateway(testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: service.url }, renamed), { logger, redis: replicaRedis }).callback());
      try {
        expect((await send(rerouted.url, path.replace('/api/open/', '/api/v2/open/'), host)).headers['x-cache']).toBe('MISS');
      } finally {
        await rerouted.close();
      }
      const item = `/${path.split('?')[0]!.split('/').pop()}?`;
      expect([service.hits.filter((hit) => hit.url.includes(item)).length, other.hits.filter((hit) => hit.url.includes(item)).length]).toEqual([2, 1]);
    } finally {
      await moved.close();
      await other.close();
    }
  });

  it('keeps no answer whose Vary names no header, and never reports the store failing for it', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60&vary=Accept%2C%20x%20y');
    const replies = [await send(stack.gateway.url, path), await send(stack.gateway.url, path)];
    expect(replies.map((reply) => [reply.status, reply.headers['x-cache']])).toEqual([
      [200, 'MISS'],
      [200, 'MISS'],
    ]);
    expect(stack.gatewayLogs.filter((line) => line.message === 'response cache store failed; answering from the service')).toEqual([]);
  });

  it('drops the copies a replica on another config of the route made when a write succeeds through this one (a rollout changing its cache settings)', async () => {
    const { logger } = memoryLogger('gateway');
    const changedFile = overrides({ cache: { redisKeyPrefix: prefix } });
    changedFile.routes = (changedFile.routes as Record<string, unknown>[]).map((route) => (route.name === 'open-catalog' ? { ...route, cache: { ...(route.cache as object), ttlSeconds: 120 } } : route));
    const changed = await listen(createGateway(testConfig({ users: 'http://127.0.0.1:9', orders: 'http://127.0.0.1:9', notifications: service.url }, changedFile), { logger, redis: replicaRedis }).callback());
    try {
      const path = fresh('/api/open', 'cc=max-age%3D60');
      const host = { host: 'api.example.test' };
      // Each config keeps copies of its own: another ttl may mean another answer.
      expect((await send(stack.gateway.url, path, host)).headers['x-cache']).toBe('MISS');
      expect((await send(changed.url, path, host)).headers['x-cache']).toBe('MISS');
      expect((await send(changed.url, path, host)).headers['x-cache']).toBe('HIT');
      // A write through the old config changed the resource for both.
      expect((await send(stack.gateway.url, path, host, 'PUT')).status).toBe(200);
      expect((await send(changed.url, path, host)).headers['x-cache']).toBe('MISS');
    } finally {
      await changed.close();
    }
  });

  // Each miss kept its resource's invalidation generation for 10 minutes, in the Redis the rate-limit windows share
  // and outside the share of it the cache keeps within: distinct URLs (query strings, 404s, no-store answers) grew
  // Redis by ~150 bytes a miss, ~90 MB at a thousand misses a second, past the shipped Redis's whole maxmemory.
  it('leaves no key in Redis once a miss is over, whether its answer was stored or not', async () => {
    const notStored = Array.from({ length: 12 }, () => fresh('/api/open', 'cc=no-store'));
    const stored = Array.from({ length: 3 }, () => fresh('/api/open', 'cc=max-age%3D60'));
    // Replicas behind one load balancer see one Host (it is part of the key).
    const host = { host: 'api.example.test' };
    for (const path of [...notStored, ...stored]) expect((await send(stack.gateway.url, path, host)).headers['x-cache']).toBe('MISS');
    const generations = async () => (await replicaRedis!.keys(`${prefix}:*:generation`)).length;
    await waitFor(async () => (await generations()) === 0, 'no invalidation generation left in Redis');
    // Storing still works: the answers that could be kept are answered from Redis.
    for (const path of stored) expect((await send(replica.url, path, host)).headers['x-cache']).toBe('HIT');
  });

  it('keeps a generation until the last fetch that read it is over: a fetch that ends first does not keep the others from storing', async () => {
    const store = createRedisResponseStore({ client: replicaRedis!, keyPrefix: `${prefix}:fetches`, logger: memoryLogger('gateway').logger });
    const entry = { status: 200, headers: {}, body: Buffer.from('{}'), storedAt: Date.now(), initialAgeSeconds: 0, lifetimeSeconds: 60, staleIfErrorSeconds: 0, staleWhileRevalidateSeconds: 0, vary: [], varyValues: [] };
    const first = await store.fetchStarting('route', 'resource');
    const second = await store.fetchStarting('route', 'resource');
    await store.fetchEnded('route', 'resource', first);
    await store.set('route', { resource: 'resource', variant: 'second' }, entry, second);
    await store.fetchEnded('route', 'resource', second);
    expect(await store.get('route', { resource: 'resource', variant: 'second' })).toMatchObject({ status: 200 });
    expect(await replicaRedis!.exists(`${prefix}:fetches:route:resource:generation`)).toBe(0);
    // A write while a fetch is under way still keeps its answer out.
    const during = await store.fetchStarting('route', 'resource');
    await store.invalidate('route', 'resource');
    await store.set('route', { resource: 'resource', variant: 'during' }, entry, during);
    await store.fetchEnded('route', 'resource', during);
    expect(await store.get('route', { resource: 'resource', variant: 'during' })).toBeUndefined();
  });

  it('drops variants past their retention as it stores new ones, so a resource kept alive by new variants does not grow without bound', async () => {
    let clock = Date.now();
    const store = createRedisResponseStore({ client: replicaRedis!, keyPrefix: `${prefix}:store`, logger: memoryLogger('gateway').logger, now: () => clock });
    // One caller (or header value) after another, each variant over before the next is stored.
    for (let caller = 0; caller < 10; caller++) {
      await store.set('route', { resource: 'resource', variant: `caller-${caller}` }, { status: 200, headers: {}, body: Buffer.from('{}'), storedAt: clock, initialAgeSeconds: 0, lifetimeSeconds: 60, staleIfErrorSeconds: 0, staleWhileRevalidateSeconds: 0, vary: [], varyValues: [] }, await store.fetchStarting('route', 'resource'));
      // Past its freshness and the revalidation window it is kept for after (a 304, a HEAD's 200).
      clock += (60 + REVALIDATION_WINDOW_SECONDS + 1) * 1000;
    }
    expect(await replicaRedis!.hkeys(`${prefix}:store:route:resource`)).toEqual(['caller-9']);
    await store.invalidate('route', 'resource');
    expect(await replicaRedis!.exists(`${prefix}:store:route:resource`, `${prefix}:store:route:resource:ends`)).toBe(0);
  });
});

/** The machine's Redis for one describe block (failing with a clear message when it is not there), its keys under `prefix` deleted after. */
function useMachineRedis(prefix: string): () => Redis {
  let redis: Redis | undefined;
  beforeAll(async () => {
    redis = createRedisStore({ url: MACHINE_REDIS, commandTimeoutMs: 500, logger: memoryLogger('gateway').logger });
    await requireRedis(redis, MACHINE_REDIS);
  });
  afterAll(async () => {
    redis?.disconnect();
    await deleteKeys(MACHINE_REDIS, prefix);
  });
  return () => redis!;
}

describe("a write's invalidation in the shared Redis store", () => {
  const prefix = isolatedKeyPrefix();
  const machineRedis = useMachineRedis(prefix);
  const entry = { status: 200, headers: { 'content-type': 'application/json' }, storedAt: Date.now(), initialAgeSeconds: 0, lifetimeSeconds: 60, staleIfErrorSeconds: 0, staleWhileRevalidateSeconds: 0, vary: [] as string[], varyValues: [] as (string | null)[], body: Buffer.from('{"before":"the write"}') };


  /** Every key of `resource` the store keeps beside its entries (what Redis may evict, under volatile-lru, or let expire). */
  const bookkeeping = async (storePrefix: string) => (await machineRedis().keys(`${storePrefix}:route:resource:*`)).filter((key) => !key.endsWith(':ends'));

  // The record of the write was the only thing keeping the fetch from storing: with it evicted, the fetch read no
  // invalidation as it started and found none as it stored, and the answer from before the write was served until it expired.
  it.each([
    { desc: 'never invalidated before', writesBefore: 0, writesAfter: 0 },
    { desc: 'invalidated twice before', writesBefore: 2, writesAfter: 0 },
    // The count started again from nothing and reached the value the fetch read.
    { desc: 'invalidated once before, and once more after the eviction', writesBefore: 1, writesAfter: 1 },
  ])('stores nothing from a fetch under way across a write, when Redis evicts the record of the write before the fetch ends (a resource $desc)', async ({ desc, writesBefore, writesAfter }) => {
    const storePrefix = `${prefix}:${desc.replaceAll(' ', '-')}`;
    const store = createRedisResponseStore({ client: machineRedis(), keyPrefix: storePrefix, logger: memoryLogger('gateway').logger });
    const key = { resource: 'resource', variant: 'shared' };
    for (let write = 0; write < writesBefore; write++) expect(await store.invalidate('route', key.resource)).toBeUndefined();
    const fetch = await store.fetchStarting('route', key.resource);
    expect(await store.invalidate('route', key.resource)).toBeUndefined();
    // What volatile-lru eviction (or the key's TTL running out) does to the store's bookkeeping keys of the resource.
    const evicted = await bookkeeping(storePrefix);
    if (evicted.length > 0) await machineRedis().del(...evicted);
    for (let write = 0; write < writesAfter; write++) expect(await store.invalidate('route', key.resource)).toBeUndefined();
    await store.set('route', key, entry, fetch);
    expect(await store.get('route', key)).toBeUndefined();
    // A fetch that starts after the write stores as usual.
    await store.set('route', key, entry, await store.fetchStarting('route', key.resource));
    expect(await store.get('route', key)).toMatchObject({ status: 200 });
  });
});

describe('entries of another shape in the shared Redis store', () => {
  const prefix = isolatedKeyPrefix();
  const machineRedis = useMachineRedis(prefix);
  const valid = { status: 200, headers: { 'content-type': 'application/json' }, storedAt: Date.now(), initialAgeSeconds: 0, lifetimeSeconds: 60, staleIfErrorSeconds: 0, staleWhileRevalidateSeconds: 0, vary: [] as string[], varyValues: [] as (string | null)[] };


  /** The store's layout (src/response-store.ts): the meta's length, the meta as JSON, the body. */
  const encoded = (meta: unknown) => {
    const json = Buffer.from(JSON.stringify(meta));
    const length = Buffer.alloc(4);
    length.writeUInt32BE(json.length);
    return Buffer.concat([length, json, Buffer.from('{}')]);
  };

  // Another gateway version under the same prefix, or anyone who can write to Redis: each used to be a 500 for the
  // resource until the entry expired (TypeError, ERR_INVALID_CHAR, invalid status code).
  it.each([
    { desc: 'no vary', meta: { ...valid, vary: undefined, varyValues: undefined } },
    { desc: 'vary that is not a list', meta: { ...valid, vary: 5 } },
    { desc: 'vary and its values of different lengths', meta: { ...valid, vary: ['accept'], varyValues: [] } },
    { desc: 'headers null', meta: { ...valid, headers: null } },
    { desc: 'a header value with CR LF', meta: { ...valid, headers: { 'x-a': 'one\r\nset-cookie: b=1' } } },
    { desc: 'a header name that is no token', meta: { ...valid, headers: { 'x a': '1' } } },
    { desc: 'a status that is no HTTP status', meta: { ...valid, status: 1000 } },
    { desc: 'a status that is text', meta: { ...valid, status: 'ok' } },
    { desc: 'a lifetime that is text', meta: { ...valid, lifetimeSeconds: '60' } },
  ])('reads an entry with $desc as a miss, and says so once in the log', async ({ desc, meta }) => {
    const { logger, lines } = memoryLogger('gateway');
    const store = createRedisResponseStore({ client: machineRedis(), keyPrefix: `${prefix}:${desc.replaceAll(' ', '-')}`, logger });
    const key = { resource: 'resource', variant: 'shared' };
    await store.set('route', key, { ...valid, body: Buffer.from('{}') }, await store.fetchStarting('route', key.resource));
    expect(await store.get('route', key)).toMatchObject({ status: 200 });
    await machineRedis().hset(`${prefix}:${desc.replaceAll(' ', '-')}:route:resource`, 'shared', encoded(meta));
    expect(await store.get('route', key)).toBeUndefined();
    expect(lines.filter((line) => line.message === 'response cache store failed; answering from the service')).toHaveLength(1);
  });
});

describe('response cache with its Redis store down', () => {
  let service: CatalogService;
  let stack: TestStack;

  beforeAll(async () => {
    service = await catalogService();
    const down = new URL(await refusedOrigin());
    stack = await startStack({
      serviceUrls: { notifications: service.url },
      env: { REDIS_URL: `redis://${down.host}` },
      overrides: overrides({ rateLimit: { max: 10_000, windowMs: 60_000, redisTimeoutMs: 150 } }),
      withRedis: 'down',
    });
  });
  afterAll(async () => {
    await stack.close();
    await service.close();
  });

  it('answers every request from the service (a miss), never with an error', async () => {
    const path = fresh('/api/open', 'cc=max-age%3D60');
    const replies = [await send(stack.gateway.url, path), await send(stack.gateway.url, path)];
    expect(replies.map((reply) => [reply.status, reply.headers['x-cache']])).toEqual([
      [200, 'MISS'],
      [200, 'MISS'],
    ]);
    expect(service.hits).toHaveLength(2);
  });
});

/** Polls until `condition` holds (5 s at most). */

// Over HTTP/2 a client resets its stream: Node's compatibility response then reports itself finished (not ended), and a
// check of "finished" alone took the reset for a whole answer, every waiter going to the service (a review).
describe('the one fetch per key over HTTP/2', () => {
  let service: CatalogService;
  let stack: TestStack;
  let gateway: RunningServer;
  let certificate: TestCertificate;
  let lines: Record<string, unknown>[];
  const waiting = () => lines.filter((line) => line.message === 'response cache: waiting for a fetch in flight').length;

  beforeAll(async () => {
    certificate = makeCertificate();
    service = await catalogService();
    stack = await startStack({ serviceUrls: { notifications: service.url }, overrides: overrides({ tls: { certFile: certificate.certFile, keyFile: certificate.keyFile } }) });
    const recorded = memoryLogger('gateway');
    const logger = recorded.logger;
    lines = recorded.lines;
    const apps = createGatewayApps(stack.config, { logger, metrics: false });
    gateway = await runServer({ app: apps.gateway, name: 'gateway', port: 0, host: '127.0.0.1', logger, createServer: createTlsServer({ tls: stack.config.tls!, timeouts: { headersMs: 5000, requestMs: 30_000, keepAliveMs: 5000 }, logger }).create });
  });
  afterAll(async () => {
    await gateway?.close();
    await stack?.close();
    await service?.close();
  });

  it.each([
    { desc: 'before its answer', query: 'gate=1&cc=max-age%3D60', resetOn: 'response' as const },
    { desc: 'in the middle of its answer', query: 'bodygate=1&cc=max-age%3D60', resetOn: 'data' as const },
  ])('hands the fetch on to one waiter when the client whose stream fetched resets it $desc', async ({ query, resetOn }) => {
    const path = fresh('/api/open', query);
    const hits = () => service.hits.filter((hit) => hit.url.includes(/item-\d+/.exec(path)![0])).length;
    const session = http2.connect(gateway.url, { ca: certificate.cert });
    try {
      const leader = session.request({ ':path': path });
      leader.on('error', () => undefined);
      await waitFor(() => hits() === 1, 'the first request at the service');
      const waitingBefore = waiting();
      const replies = Promise.all(
        Array.from({ length: 4 }, () => new Promise<string>((resolve, reject) => {
          const stream = session.request({ ':path': path });
          stream.on('response', (headers) => {
            stream.resume();
            stream.on('end', () => resolve(String(headers['x-cache'])));
          });
          stream.on('error', reject);
        })),
      );
      replies.catch(() => undefined);
      await waitFor(() => waiting() - waitingBefore === 4, 'four streams waiting for it');
      if (resetOn === 'data') await new Promise<void>((resolve) => leader.once('data', () => resolve()));
      leader.close(http2.constants.NGHTTP2_CANCEL);
      await waitFor(() => hits() === 2, 'one new fetch');
      service.release();
      expect((await replies).sort()).toEqual(['HIT', 'HIT', 'HIT', 'MISS']);
      expect(hits()).toBe(2);
    } finally {
      session.close();
    }
  });
});
