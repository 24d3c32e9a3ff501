import { randomBytes, randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { SpanKind, type Tracer } from '@opentelemetry/api';
import { AlwaysOffSampler, InMemorySpanExporter, SamplingDecision, SimpleSpanProcessor, TracerProvider, type Sampler } from '@opentelemetry/sdk-trace';
import { RequestedTraceIdGenerator } from '../../otel/trace-ids';
import { startInMemoryTracing, type InMemoryTracing } from '../helpers/in-memory-tracing';
import { samplesOf, scrapeWhen, valueOf, type Exposition } from '../helpers/openmetrics';
import { listen, refusedOrigin, type TestServer } from '../helpers/servers';
import { login, startStack, type StackOptions, type TestStack } from '../helpers/stack';

/**
 * The gateway's metrics as Prometheus scrapes them from the metrics listener, after known traffic. Names and
 * labels are written out here rather than taken from otel/wire-names.ts: they are a contract the dashboards and
 * the OTLP bridge are built on, and a renamed constant must fail this test.
 */
const DURATION = 'http_server_request_duration_seconds';
const UPSTREAM = 'gateway_upstream_request_duration_seconds';
/** OpenMetrics' canonical `le` values ("Canonical Numbers": `1.0`, not `1`). */
const BUCKETS = ['0.005', '0.01', '0.025', '0.05', '0.075', '0.1', '0.25', '0.5', '0.75', '1.0', '2.5', '5.0', '7.5', '10.0', '+Inf'];

let stack: TestStack | undefined;
afterEach(async () => {
  await stack?.close();
  stack = undefined;
});

async function start(options: StackOptions = {}): Promise<TestStack> {
  stack = await startStack(options);
  return stack;
}

/** Sends one request and reads the whole answer; resolves with the status. */
async function send(url: string, init: RequestInit = {}): Promise<number> {
  const response = await fetch(url, init);
  await response.arrayBuffer();
  return response.status;
}

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });
/** Requests recorded so far: the sum of every duration series' count. */
const requestsCounted = (exposition: Exposition) => samplesOf(exposition, `${DURATION}_count`).reduce((sum, sample) => sum + sample.value, 0);
/** An instance's labels: semconv's server.address (the host alone) and server.port, apart. */
const instanceOf = (url: string) => ({ server_address: new URL(url).hostname, server_port: new URL(url).port });

describe('request duration, by route template, status and error code', () => {
  it('counts 7 requests to one route exactly: 5 answered 200 and 2 refused 401 missing_token, with cumulative buckets', async () => {
    const { gateway, metrics, users } = await start();
    const token = await login(gateway.url);
    const statuses = [];
    for (let i = 0; i < 5; i++) statuses.push(await send(`${gateway.url}/api/users/1`, { headers: bearer(token) }));
    for (let i = 0; i < 2; i++) statuses.push(await send(`${gateway.url}/api/users/1`));
    expect(statuses).toEqual([200, 200, 200, 200, 200, 401, 401]);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 8);
    const ok = { http_request_method: 'GET', url_scheme: 'http', http_route: '/api/users/*', http_response_status_code: '200', gateway_route_name: 'users', error_type: '', gateway_error_code: '' };
    const refused = { ...ok, http_response_status_code: '401', error_type: '', gateway_error_code: 'missing_token' };
    const loggedIn = { http_request_method: 'POST', url_scheme: 'http', http_route: '/api/auth/login', http_response_status_code: '200', gateway_route_name: '', error_type: '', gateway_error_code: '' };
    expect(m.types.get(DURATION)).toBe('histogram');
    expect(valueOf(m, `${DURATION}_count`, ok)).toBe(5);
    expect(valueOf(m, `${DURATION}_count`, refused)).toBe(2);
    expect(valueOf(m, `${DURATION}_count`, loggedIn)).toBe(1);
    expect(samplesOf(m, `${DURATION}_count`)).toHaveLength(3);

    // Cumulative: each bucket holds the ones below it; +Inf is the count; every observation took some time.
    const buckets = samplesOf(m, `${DURATION}_bucket`, ok);
    expect(buckets.map((bucket) => bucket.labels.le)).toEqual(BUCKETS);
    buckets.slice(1).forEach((bucket, index) => expect(bucket.value).toBeGreaterThanOrEqual(buckets[index]!.value));
    expect(buckets.at(-1)!.value).toBe(5);
    expect(valueOf(m, `${DURATION}_sum`, ok)).toBeGreaterThan(0);

    // One upstream attempt per proxied request (login's credential check is not a proxied attempt).
    expect(
      valueOf(m, `${UPSTREAM}_count`, {
        http_request_method: 'GET',
        url_scheme: 'http',
        gateway_upstream_service: 'users',
        ...instanceOf(users.url),
        http_response_status_code: '200',
        error_type: '',
        gateway_upstream_outcome: 'ok',
      }),
    ).toBe(5);
    expect(samplesOf(m, `${UPSTREAM}_count`)).toHaveLength(1);
    expect(m.types.get('http_server_active_requests')).toBe('gauge');
    expect(valueOf(m, 'http_server_active_requests', { http_request_method: 'GET', url_scheme: 'http' })).toBe(0);
    expect(valueOf(m, 'http_server_active_requests', { http_request_method: 'POST', url_scheme: 'http' })).toBe(0);
    // The global no-op tracer samples nothing, so nothing carries an exemplar.
    expect(m.samples.filter((sample) => sample.exemplar)).toEqual([]);
  });

  it('leaves the number of series bounded after 1,000 distinct paths: no raw path, id or request id in any label', async () => {
    const { gateway, metrics } = await start({ env: { RATE_LIMIT_MAX: '100000' } });
    const token = await login(gateway.url);
    const requestIds: string[] = [];
    const paths = [
      ...Array.from({ length: 400 }, (_, n) => ({ path: `/api/users/${1000 + n}`, auth: true })),
      ...Array.from({ length: 100 }, (_, n) => ({ path: `/API/Users/${5000 + n}/`, auth: true })),
      ...Array.from({ length: 400 }, (_, n) => ({ path: `/nope/${n}`, auth: false })),
      ...Array.from({ length: 100 }, (_, n) => ({ path: `/api/orders/${randomUUID()}?page=${n}`, auth: false })),
    ];
    for (let i = 0; i < paths.length; i += 25) {
      const statuses = await Promise.all(
        paths.slice(i, i + 25).map(({ path, auth }) => {
          const requestId = randomUUID();
          requestIds.push(requestId);
          return send(`${gateway.url}${path}`, { headers: { 'x-request-id': requestId, ...(auth ? bearer(token) : {}) } });
        }),
      );
      for (const status of statuses) expect([401, 404]).toContain(status);
    }

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 1001);
    const counts = Object.fromEntries(samplesOf(m, `${DURATION}_count`).map((s) => [`${s.labels.http_route} ${s.labels.http_response_status_code} ${s.labels.gateway_error_code}`, s.value]));
    expect(counts).toEqual({
      '/api/auth/login 200 ': 1,
      '/api/users/* 404 ': 500,
      'unmatched 404 route_not_found': 400,
      '/api/orders/* 401 missing_token': 100,
    });
    const values = new Set(m.samples.flatMap((sample) => Object.entries(sample.labels).filter(([name]) => name !== 'le').map(([, value]) => value)));
    for (const value of values) {
      expect(value).not.toMatch(/nope|API|Users|page|\/\d/);
      expect(requestIds.some((id) => value.includes(id) || value.includes(id.replaceAll('-', '')))).toBe(false);
    }
    expect(samplesOf(m, `${UPSTREAM}_count`)).toHaveLength(1);
  });

  // Semconv 1.45 makes `url.scheme` Required on http.server.request.duration and http.server.active_requests; the
  // SERVER span had it, the two series had no url_scheme at all. Behind a trusted proxy the scheme is what it
  // says, but only as `http` or `https`: any other spelling a client slips through would be a series of its own.
  it('labels both server metrics with url_scheme (http, or https as a trusted proxy says), never another value', async () => {
    const { gateway, metrics } = await start({ overrides: { trustProxy: true, trustedProxies: ['127.0.0.1/32'] } });
    // With one hop the trusted entry is the rightmost (src/middleware/trusted-proxies.ts).
    const forwarded = [undefined, 'https', 'HTTPS', 'gopher', 'http, https', 'x'.repeat(200)];
    for (const proto of forwarded) expect(await send(`${gateway.url}/nope`, { headers: proto === undefined ? {} : { 'x-forwarded-proto': proto } })).toBe(404);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === forwarded.length);
    const unmatched = { http_request_method: 'GET', http_route: 'unmatched', http_response_status_code: '404', gateway_route_name: '', error_type: '', gateway_error_code: 'route_not_found' };
    expect(valueOf(m, `${DURATION}_count`, { ...unmatched, url_scheme: 'https' })).toBe(3);
    expect(valueOf(m, `${DURATION}_count`, { ...unmatched, url_scheme: 'http' })).toBe(3);
    expect(samplesOf(m, `${DURATION}_count`)).toHaveLength(2);
    expect(samplesOf(m, 'http_server_active_requests').map((sample) => sample.labels)).toEqual(
      expect.arrayContaining([
        { http_request_method: 'GET', url_scheme: 'http' },
        { http_request_method: 'GET', url_scheme: 'https' },
      ]),
    );
    for (const sample of [...samplesOf(m, `${DURATION}_bucket`), ...samplesOf(m, 'http_server_active_requests')]) expect(['http', 'https']).toContain(sample.labels.url_scheme);
  });

  it('does not count the probes /health and /ready, and counts methods outside the standard set as _OTHER', async () => {
    const { gateway, metrics } = await start();
    for (let i = 0; i < 3; i++) expect(await send(`${gateway.url}/health`)).toBe(200);
    for (let i = 0; i < 2; i++) expect(await send(`${gateway.url}/ready`)).toBe(200);
    expect(await send(`${gateway.url}/nope`, { method: 'PROPFIND' })).toBe(404);
    expect(await send(`${gateway.url}/nope`, { method: 'PURGE' })).toBe(404);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 2);
    expect(samplesOf(m, `${DURATION}_count`).map((sample) => [sample.labels, sample.value])).toEqual([
      [{ http_request_method: '_OTHER', url_scheme: 'http', http_route: 'unmatched', http_response_status_code: '404', gateway_route_name: '', error_type: '', gateway_error_code: 'route_not_found' }, 2],
    ]);
    expect(samplesOf(m, 'http_server_active_requests').map((sample) => sample.labels.http_request_method)).toEqual(['_OTHER']);
  });

  // Only a probe (GET, or HEAD, which the same endpoint answers) is left out: any other method there is a request
  // like any other, and was never counted.
  it('counts other methods to /health and /ready, on bounded labels', async () => {
    const { gateway, metrics } = await start();
    expect(await send(`${gateway.url}/health`, { method: 'HEAD' })).toBe(200);
    expect(await send(`${gateway.url}/health`, { method: 'POST' })).toBe(405);
    expect(await send(`${gateway.url}/ready`, { method: 'DELETE' })).toBe(405);
    expect(await send(`${gateway.url}/ready`, { method: 'PROPFIND' })).toBe(405);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 3);
    // Under the probe's own path, as a 405 of a route is counted under that route.
    const refused = { http_response_status_code: '405', gateway_route_name: '', error_type: '', gateway_error_code: 'method_not_allowed' };
    expect(samplesOf(m, `${DURATION}_count`).map((sample) => [sample.labels, sample.value])).toEqual([
      [{ http_request_method: 'POST', url_scheme: 'http', http_route: '/health', ...refused }, 1],
      [{ http_request_method: 'DELETE', url_scheme: 'http', http_route: '/ready', ...refused }, 1],
      [{ http_request_method: '_OTHER', url_scheme: 'http', http_route: '/ready', ...refused }, 1],
    ]);
  });

  // The route exists, the method is what it refuses: counted under that route, as its SERVER span names it, not
  // with the paths that matched nothing.
  it('counts a 405 under the route whose method it refused, exact routes included', async () => {
    const { gateway, metrics } = await start();
    expect(await send(`${gateway.url}/api/users`, { method: 'DELETE' })).toBe(405);
    expect(await send(`${gateway.url}/api/auth/register`, { method: 'PUT' })).toBe(405);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 2);
    expect(samplesOf(m, `${DURATION}_count`).map((sample) => [sample.labels, sample.value])).toEqual([
      [{ http_request_method: 'DELETE', url_scheme: 'http', http_route: '/api/users', http_response_status_code: '405', gateway_route_name: 'users-directory', error_type: '', gateway_error_code: 'method_not_allowed' }, 1],
      [{ http_request_method: 'PUT', url_scheme: 'http', http_route: '/api/auth/register', http_response_status_code: '405', gateway_route_name: 'register', error_type: '', gateway_error_code: 'method_not_allowed' }, 1],
    ]);
  });
});

describe('error_type, as the conventions set it: only where the request ended with an error', () => {
  // Semconv 1.45: `error.type` is Conditionally Required when the request ended with an error, and for a server a
  // 5xx is one (the gateway's SERVER span says error.type="500"). A 5xx the service answered carried no gateway error
  // code, so it was counted with error_type empty, beside the 2xx: no query on error_type could find it.
  it.each([500, 503, 504])('is the status, %s, on a 5xx the service answered, as its SERVER span records it; a 4xx the service answered keeps none', async (status) => {
    const failing = await listen((req, res) => {
      res.writeHead(req.url?.endsWith('/missing') ? 404 : status, { 'content-type': 'application/json' }).end('{}');
    });
    try {
      const { gateway, metrics } = await start({ serviceUrls: { orders: failing.url } });
      const token = await login(gateway.url);
      expect(await send(`${gateway.url}/api/orders/1`, { headers: bearer(token) })).toBe(status);
      expect(await send(`${gateway.url}/api/orders/missing`, { headers: bearer(token) })).toBe(404);

      const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 3);
      const route = { http_request_method: 'GET', url_scheme: 'http', http_route: '/api/orders/*', gateway_route_name: 'orders' };
      expect(valueOf(m, `${DURATION}_count`, { ...route, http_response_status_code: String(status), error_type: String(status), gateway_error_code: '' })).toBe(1);
      expect(valueOf(m, `${DURATION}_count`, { ...route, http_response_status_code: '404', error_type: '', gateway_error_code: '' })).toBe(1);
    } finally {
      await failing.close();
    }
  });

  // "If the request has completed successfully, instrumentations SHOULD NOT set error.type", and for a server a 4xx
  // is the client's error (its SERVER span has no error.type). The series put the gateway's error code in error_type
  // on every refusal, so `error_type!=""` counted 401s, 404s and 429s as the gateway's errors.
  it("leaves error_type empty on a 4xx, the code in gateway_error_code, and sets it to the status on the gateway's own 5xx", async () => {
    const { gateway, metrics } = await start({ serviceUrls: { orders: await refusedOrigin() } });
    const token = await login(gateway.url);
    expect(await send(`${gateway.url}/api/orders`)).toBe(401);
    expect(await send(`${gateway.url}/nope`)).toBe(404);
    expect(await send(`${gateway.url}/api/orders`, { headers: bearer(token) })).toBe(502);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 4);
    const labelsOf = (status: string) => samplesOf(m, `${DURATION}_count`, { http_response_status_code: status }).map((sample) => [sample.labels.error_type, sample.labels.gateway_error_code]);
    expect(labelsOf('401')).toEqual([['', 'missing_token']]);
    expect(labelsOf('404')).toEqual([['', 'route_not_found']]);
    expect(labelsOf('502')).toEqual([['502', 'upstream_refused']]);
    expect(labelsOf('200')).toEqual([['', '']]);
  });
});

describe('rate-limit decisions', () => {
  const decisions = (m: Exposition, policy: string) =>
    Object.fromEntries(samplesOf(m, 'gateway_rate_limit_decisions_total', { gateway_rate_limit_policy: policy }).map((s) => [s.labels.gateway_rate_limit_decision, s.value]));

  it('counts allowed and limited requests per policy exactly', async () => {
    const { gateway, metrics } = await start({ env: { RATE_LIMIT_MAX: '3' } });
    const statuses = [];
    for (let i = 0; i < 5; i++) statuses.push(await send(`${gateway.url}/api/orders`));
    // Limits come before authentication, so the allowed ones are then refused for the missing token.
    expect(statuses).toEqual([401, 401, 401, 429, 429]);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 5);
    expect(m.types.get('gateway_rate_limit_decisions')).toBe('counter');
    expect(decisions(m, 'default')).toEqual({ allowed: 3, limited: 2, store_down_allowed: 0, store_down_rejected: 0 });
    // Every policy's series exist from the start, at 0 until it decides.
    expect(decisions(m, 'login')).toEqual({ allowed: 0, limited: 0, store_down_allowed: 0, store_down_rejected: 0 });
    const route = { http_request_method: 'GET', url_scheme: 'http', http_route: '/api/orders/*', gateway_route_name: 'orders' };
    expect(valueOf(m, `${DURATION}_count`, { ...route, http_response_status_code: '429', error_type: '', gateway_error_code: 'rate_limited' })).toBe(2);
    expect(valueOf(m, `${DURATION}_count`, { ...route, http_response_status_code: '401', error_type: '', gateway_error_code: 'missing_token' })).toBe(3);
  });

  it('counts store-down decisions: allowed under the default policy, rejected under login', async () => {
    const down = new URL(await refusedOrigin());
    const { gateway, metrics } = await start({
      env: { REDIS_URL: `redis://${down.host}` },
      overrides: { rateLimit: { max: 100, windowMs: 60_000, redisTimeoutMs: 150 } },
      withRedis: 'down',
    });
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push(await send(`${gateway.url}/api/notifications`));
    statuses.push(await send(`${gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) }));
    expect(statuses).toEqual([401, 401, 401, 503]);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 4);
    expect(decisions(m, 'default')).toEqual({ allowed: 0, limited: 0, store_down_allowed: 3, store_down_rejected: 0 });
    expect(decisions(m, 'login')).toEqual({ allowed: 0, limited: 0, store_down_allowed: 0, store_down_rejected: 1 });
  });
});

describe('auth failures', () => {
  it('counts each refusal of a caller by its error code', async () => {
    const { gateway, metrics } = await start();
    const alice = await login(gateway.url);
    const bob = await login(gateway.url, 'bob@example.com', 'builder');
    const wrongPassword = { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'bob@example.com', password: 'not-his' }) };
    const statuses = [
      await send(`${gateway.url}/api/orders`),
      await send(`${gateway.url}/api/orders`),
      await send(`${gateway.url}/api/orders`, { headers: { authorization: 'Bearer aaa.bbb.ccc' } }),
      await send(`${gateway.url}/api/orders`, { headers: { authorization: 'Basic YWxpY2U6d29uZGVybGFuZA==' } }),
      await send(`${gateway.url}/api/orders`, { headers: bearer(`${alice}x`) }),
      await send(`${gateway.url}/api/users`, { headers: bearer(bob) }),
      await send(`${gateway.url}/api/auth/login`, wrongPassword),
      await send(`${gateway.url}/api/auth/login`, wrongPassword),
      await send(`${gateway.url}/api/users`, { headers: bearer(alice) }),
    ];
    expect(statuses).toEqual([401, 401, 401, 401, 401, 403, 401, 401, 200]);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 11);
    expect(Object.fromEntries(samplesOf(m, 'gateway_auth_failures_total').map((s) => [s.labels.error_type, s.value]))).toEqual({
      missing_token: 3,
      invalid_token: 2,
      forbidden: 1,
      invalid_credentials: 2,
      auth_unavailable: 0,
      invalid_api_key: 0,
    });
    expect(valueOf(m, `${DURATION}_count`, { http_request_method: 'GET', url_scheme: 'http', http_route: '/api/users', http_response_status_code: '403', gateway_route_name: 'users-directory', error_type: '', gateway_error_code: 'forbidden' })).toBe(1);
  });

  // A refused preflight is a 403 `forbidden` without a credential in it: counted, any page's visitors raised the
  // series that flags role violations.
  it('does not count a refused CORS preflight, only the refused caller beside it', async () => {
    const { gateway, metrics } = await start({ overrides: { cors: { origins: ['https://app.example'] } } });
    const bob = await login(gateway.url, 'bob@example.com', 'builder');
    const preflight = { method: 'OPTIONS', headers: { origin: 'https://evil.example', 'access-control-request-method': 'GET' } };
    expect([await send(`${gateway.url}/api/orders`, preflight), await send(`${gateway.url}/api/users`, { headers: bearer(bob) })]).toEqual([403, 403]);
    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 3);
    expect(valueOf(m, 'gateway_auth_failures_total', { error_type: 'forbidden' })).toBe(1);
  });
});

describe('upstream attempts, retries and ejections', () => {
  let healthy: TestServer;
  beforeAll(async () => {
    healthy = await listen((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' }).end('[]');
    });
  });
  afterAll(() => healthy.close());

  // Semconv 1.45: server.address is the host alone and server.port the port, as the CLIENT span has them; the
  // series' server_address was `host:port` (`[::1]:4002` for IPv6), a value no query by address could match.
  it('labels an instance with its host and port apart, an IPv6 one without brackets, as its CLIENT span does', async () => {
    const v6 = http.createServer((_req, res) => res.writeHead(200, { 'content-type': 'application/json' }).end('[]'));
    await new Promise<void>((resolve) => v6.listen(0, '::1', resolve));
    const port = String((v6.address() as AddressInfo).port);
    try {
      const { gateway, metrics } = await start({ serviceUrls: { orders: `http://[::1]:${port}` } });
      expect(await send(`${gateway.url}/api/orders`, { headers: bearer(await login(gateway.url)) })).toBe(200);

      const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 2);
      expect(
        valueOf(m, `${UPSTREAM}_count`, {
          http_request_method: 'GET',
          url_scheme: 'http',
          gateway_upstream_service: 'orders',
          server_address: '::1',
          server_port: port,
          http_response_status_code: '200',
          error_type: '',
          gateway_upstream_outcome: 'ok',
        }),
      ).toBe(1);
      expect(valueOf(m, 'gateway_upstream_ejections_total', { gateway_upstream_service: 'orders', server_address: '::1', server_port: port })).toBe(0);
      for (const sample of [...samplesOf(m, `${UPSTREAM}_count`), ...samplesOf(m, 'gateway_upstream_ejections_total')]) {
        // Every instance of this stack is a loopback address: the host alone, never with its port or brackets.
        expect(['127.0.0.1', '::1']).toContain(sample.labels.server_address);
        expect(sample.labels.server_port).toMatch(/^\d+$/);
      }
    } finally {
      await new Promise((resolve) => v6.close(resolve));
    }
  });

  it('records a refused attempt as outcome refused, its retry on the other instance, and the ejection after 3 failures', async () => {
    const refused = await refusedOrigin();
    const { gateway, metrics } = await start({ serviceUrls: { notifications: `${refused},${healthy.url}`, orders: refused } });
    // Before any request: the retries of each service read 0 (rate() needs a sample from before the first one).
    const before = await scrapeWhen(metrics.url, () => true);
    expect(valueOf(before, 'gateway_upstream_retries_total', { gateway_upstream_service: 'notifications' })).toBe(0);
    const token = await login(gateway.url);
    const statuses = [];
    // Enough for round robin to have offered the refusing instance 3 times, whatever instance it starts with.
    for (let i = 0; i < 8; i++) statuses.push(await send(`${gateway.url}/api/notifications`, { headers: bearer(token) }));
    statuses.push(await send(`${gateway.url}/api/orders`, { headers: bearer(token) }));
    expect(statuses).toEqual([200, 200, 200, 200, 200, 200, 200, 200, 502]);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 10);
    // A refused attempt received no status (none recorded) and ended with an error: error_type is its outcome.
    const attempts = Object.fromEntries(
      samplesOf(m, `${UPSTREAM}_count`).map((s) => [
        `${s.labels.gateway_upstream_service} ${s.labels.server_address} ${s.labels.server_port} ${s.labels.gateway_upstream_outcome} status=${s.labels.http_response_status_code} error=${s.labels.error_type}`,
        s.value,
      ]),
    );
    expect(attempts).toEqual({
      [`notifications 127.0.0.1 ${new URL(refused).port} refused status= error=refused`]: 3,
      [`notifications 127.0.0.1 ${new URL(healthy.url).port} ok status=200 error=`]: 8,
      [`orders 127.0.0.1 ${new URL(refused).port} refused status= error=refused`]: 1,
    });
    expect(valueOf(m, 'gateway_upstream_retries_total', { gateway_upstream_service: 'notifications' })).toBe(3);
    // A single instance has nothing to retry on: its series stays at 0.
    expect(valueOf(m, 'gateway_upstream_retries_total', { gateway_upstream_service: 'orders' })).toBe(0);
    expect(valueOf(m, 'gateway_upstream_ejections_total', { gateway_upstream_service: 'notifications', ...instanceOf(refused) })).toBe(1);
    expect(valueOf(m, 'gateway_upstream_ejections_total', { gateway_upstream_service: 'notifications', ...instanceOf(healthy.url) })).toBe(0);
    expect(
      valueOf(m, `${DURATION}_count`, { http_request_method: 'GET', url_scheme: 'http', http_route: '/api/orders/*', http_response_status_code: '502', gateway_route_name: 'orders', error_type: '502', gateway_error_code: 'upstream_refused' }),
    ).toBe(1);
  });
});

describe('exemplars', () => {
  let tracing: InMemoryTracing;
  beforeAll(() => {
    tracing = startInMemoryTracing();
  });
  afterAll(() => tracing.shutdown());
  beforeEach(() => tracing.reset());

  const exemplarTraceIds = (m: Exposition, name: string) =>
    samplesOf(m, name)
      .filter((sample) => sample.exemplar)
      .map((sample) => sample.exemplar!.labels);
  async function spansOfKind(spans: () => ReturnType<InMemoryTracing['spans']>, kind: SpanKind, count: number) {
    for (let i = 0; i < 200 && spans().filter((span) => span.kind === kind).length < count; i++) await new Promise((resolve) => setTimeout(resolve, 10));
    return spans().filter((span) => span.kind === kind);
  }

  it("carries the trace id of a sampled request, which is the gateway's SERVER span's trace", async () => {
    const { gateway, metrics } = await start({ tracer: tracing.tracer });
    const token = await login(gateway.url);
    for (let i = 0; i < 3; i++) expect(await send(`${gateway.url}/api/users/1`, { headers: bearer(token) })).toBe(200);

    const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 4);
    const servers = await spansOfKind(tracing.spans, SpanKind.SERVER, 4);
    const clients = await spansOfKind(tracing.spans, SpanKind.CLIENT, 4);
    const requestExemplars = exemplarTraceIds(m, `${DURATION}_bucket`);
    expect(requestExemplars.length).toBeGreaterThan(0);
    for (const labels of requestExemplars) {
      expect(Object.keys(labels)).toEqual(['trace_id']);
      expect(labels.trace_id).toMatch(/^[0-9a-f]{32}$/);
      expect(servers.map((span) => span.spanContext().traceId)).toContain(labels.trace_id);
    }
    const upstreamExemplars = exemplarTraceIds(m, `${UPSTREAM}_bucket`);
    expect(upstreamExemplars.length).toBeGreaterThan(0);
    for (const labels of upstreamExemplars) {
      expect(clients.filter((span) => span.attributes['gateway.upstream.service'] === 'users').map((span) => span.spanContext().traceId)).toContain(labels.trace_id);
    }
    // The exemplar sits in the bucket of its own observation.
    for (const sample of samplesOf(m, `${DURATION}_bucket`).filter((s) => s.exemplar)) {
      const le = sample.labels.le === '+Inf' ? Infinity : Number(sample.labels.le);
      expect(sample.exemplar!.value).toBeLessThanOrEqual(le);
    }
  });

  /** Samples exactly the traces whose id starts with `a`, so a test decides sampling through the request id. */
  class SampleTraceIdsStartingWithA implements Sampler {
    shouldSample(_context: unknown, traceId: string) {
      return { decision: traceId.startsWith('a') ? SamplingDecision.RECORD_AND_SAMPLED : SamplingDecision.NOT_RECORD };
    }
    toString() {
      return 'SampleTraceIdsStartingWithA';
    }
  }

  function tracerWith(sampler: Sampler): { tracer: Tracer; provider: TracerProvider } {
    const exporter = new InMemorySpanExporter();
    const provider = new TracerProvider({ sampler, idGenerator: new RequestedTraceIdGenerator(), spanProcessors: [new SimpleSpanProcessor({ exporter })] });
    return { tracer: provider.getTracer('test'), provider };
  }

  it.each([
    {
      desc: 'unsampled requests write none, and leave the exemplar of a sampled one in place',
      sampler: new SampleTraceIdsStartingWithA(),
      requestIds: [`a${randomBytes(16).toString('hex').slice(1)}`, `b${randomBytes(16).toString('hex').slice(1)}`, `c${randomBytes(16).toString('hex').slice(1)}`],
      sampled: 1,
    },
    { desc: 'with every trace unsampled, no exemplar is written at all', sampler: new AlwaysOffSampler(), requestIds: [randomUUID(), randomUUID()], sampled: 0 },
  ])('$desc', async ({ sampler, requestIds, sampled }) => {
    const { tracer, provider } = tracerWith(sampler);
    try {
      const { gateway, metrics } = await start({ tracer });
      const token = await login(gateway.url);
      for (const requestId of requestIds) expect(await send(`${gateway.url}/api/users/1`, { headers: { ...bearer(token), 'x-request-id': requestId } })).toBe(200);

      const m = await scrapeWhen(metrics.url, (e) => requestsCounted(e) === 1 + requestIds.length);
      // Login's own trace is sampled or not by its random id; only the requests this test chose are looked at.
      const route = samplesOf(m, `${DURATION}_bucket`, { http_route: '/api/users/*' }).filter((sample) => sample.exemplar);
      const written = [...route.map((sample) => sample.exemplar!.labels), ...exemplarTraceIds(m, `${UPSTREAM}_bucket`)].map((labels) => labels.trace_id);
      const sampledIds = requestIds.slice(0, sampled);
      expect(new Set(written)).toEqual(new Set(sampledIds));
      if (sampled === 0) expect(m.text).not.toContain(' # {');
    } finally {
      await provider.shutdown();
    }
  });
});
