import { parseConfig } from '../../src/config';
import { listen } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile } from '../helpers/test-config';

const APP = 'https://app.example.test';

describe('CORS', () => {
  let stack: TestStack;
  beforeAll(async () => {
    const routes = (shippedConfigFile().routes as Record<string, unknown>[]).map((route) =>
      route.name === 'notifications' || route.name === 'register' ? { ...route, cors: false } : route.name === 'users' ? { ...route, cors: { origins: ['https://admin.example.test'], credentials: true } } : route,
    );
    // 5: the probes' two 405s below spend the default limit too (a refusal is limited as any request), and the
    // actual-response test then spends the rest of it from its first request on.
    stack = await startStack({ env: { RATE_LIMIT_MAX: '5' }, overrides: { cors: { origins: [APP] }, routes } });
  });
  afterAll(() => stack.close());

  const preflight = (path: string, origin: string, method = 'POST') =>
    fetch(`${stack.gateway.url}${path}`, { method: 'OPTIONS', headers: { origin, 'access-control-request-method': method, 'access-control-request-headers': 'authorization, content-type' } });

  it('answers a preflight at the gateway, without a token, and never forwards it', async () => {
    const before = stack.serviceRequests().length;
    const response = await preflight('/api/orders', APP);
    expect(response.status).toBe(204);
    expect(response.headers.get('access-control-allow-origin')).toBe(APP);
    expect(response.headers.get('access-control-allow-methods')).toContain('POST');
    expect(response.headers.get('access-control-allow-headers')).toBe('authorization, content-type, x-request-id, idempotency-key');
    expect(response.headers.get('access-control-max-age')).toBe('600');
    expect(response.headers.get('vary')).toContain('Origin');
    expect(response.headers.get('access-control-allow-credentials')).toBeNull();
    expect(stack.serviceRequests().length).toBe(before);
  });

  it.each([
    { desc: 'an origin not on the list', path: '/api/orders', origin: 'https://evil.example.test' },
    { desc: 'a route that refuses cross-origin use', path: '/api/notifications', origin: APP },
    { desc: 'another route policy that lists other origins', path: '/api/users/1', origin: APP },
    // register takes POST only: a GET there is still register's (cors: false), not the global policy.
    { desc: 'a method that a route refusing cross-origin use does not take', path: '/api/auth/register', origin: APP },
  ])('refuses the preflight of $desc with 403 and no CORS headers', async ({ path, origin }) => {
    const response = await preflight(path, origin, 'GET');
    expect(response.status).toBe(403);
    expect(response.headers.get('access-control-allow-origin')).toBeNull();
    expect(((await response.json()) as { code: string }).code).toBe('forbidden');
  });

  // users-directory (GET /api/users, exact) takes GET and HEAD: a preflight there must not offer POST or DELETE.
  it('offers in a preflight only the methods the route behind the path takes', async () => {
    const response = await preflight('/api/users', APP, 'GET');
    expect(response.status).toBe(204);
    expect(response.headers.get('access-control-allow-methods')).toBe('GET, HEAD');
  });

  // The probes answer 405 to all but GET and HEAD (createProbeEndpoints): their preflight offered every method of
  // the policy, so a page was told its POST would go and got 405.
  it.each(['/health', '/ready'])('offers in a preflight to %s only GET and HEAD, the methods it takes', async (path) => {
    const response = await preflight(path, APP, 'POST');
    expect(response.status).toBe(204);
    expect(response.headers.get('access-control-allow-methods')).toBe('GET, HEAD');
    const post = await fetch(`${stack.gateway.url}${path}`, { method: 'POST', headers: { origin: APP } });
    await post.arrayBuffer();
    expect({ status: post.status, allow: post.headers.get('allow') }).toEqual({ status: 405, allow: 'GET, HEAD' });
  });

  it('applies a route policy with credentials', async () => {
    const response = await preflight('/api/users/1', 'https://admin.example.test', 'GET');
    expect(response.status).toBe(204);
    expect(response.headers.get('access-control-allow-origin')).toBe('https://admin.example.test');
    expect(response.headers.get('access-control-allow-credentials')).toBe('true');
  });

  it('puts CORS headers on actual responses, error responses included, for allowed origins only', async () => {
    const token = await login(stack.gateway.url);
    const ok = await fetch(`${stack.gateway.url}/api/orders`, { headers: { origin: APP, authorization: `Bearer ${token}` } });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('access-control-allow-origin')).toBe(APP);
    expect(ok.headers.get('access-control-expose-headers')).toContain('x-request-id');
    const unauthorized = await fetch(`${stack.gateway.url}/api/orders`, { headers: { origin: APP } });
    expect(unauthorized.status).toBe(401);
    expect(unauthorized.headers.get('access-control-allow-origin')).toBe(APP);
    let limited: Response | undefined;
    for (let i = 0; i < 4; i++) limited = await fetch(`${stack.gateway.url}/api/orders`, { headers: { origin: APP } });
    expect(limited!.status).toBe(429);
    expect(limited!.headers.get('access-control-allow-origin')).toBe(APP);
    const foreign = await fetch(`${stack.gateway.url}/health`, { headers: { origin: 'https://evil.example.test' } });
    expect(foreign.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('refuses the actual request of that method too: no CORS headers on its 405', async () => {
    const response = await fetch(`${stack.gateway.url}/api/auth/register`, { headers: { origin: APP } });
    expect(response.status).toBe(405);
    expect(response.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('sends Vary: Origin without an Origin too, so a cache never serves that answer cross-origin', async () => {
    const response = await fetch(`${stack.gateway.url}/health`);
    expect(response.headers.get('vary')).toContain('Origin');
    expect(response.headers.get('access-control-allow-origin')).toBeNull();
  });

  it('quotes no more than 100 characters of a refused preflight’s Origin', async () => {
    const response = await preflight('/api/orders', `https://${'a'.repeat(12_000)}.example.test`);
    expect(response.status).toBe(403);
    const body = (await response.json()) as { detail: string };
    expect(body.detail).toBe(`Cross-origin requests from "https://${'a'.repeat(92)}" are not allowed here.`);
  });

  it('keeps its policy over CORS headers a service sends, and keeps Vary: Origin beside the service Vary', async () => {
    const loose = await listen((req, res) => {
      res.setHeader('access-control-allow-origin', '*');
      // A service that varies on Origin itself, in its own case, or on everything.
      res.setHeader('vary', req.url === '/orders?vary=origin' ? 'origin, Accept-Encoding' : req.url === '/orders?vary=any' ? 'Accept-Encoding, *' : 'Accept-Encoding');
      res.setHeader('content-type', 'application/json');
      res.end('[]');
    });
    const proxied = await startStack({ overrides: { cors: { origins: [APP] } }, serviceUrls: { orders: loose.url } });
    try {
      const token = await login(proxied.gateway.url);
      const foreign = await fetch(`${proxied.gateway.url}/api/orders`, { headers: { origin: 'https://evil.example.test', authorization: `Bearer ${token}` } });
      expect(foreign.status).toBe(200);
      expect(foreign.headers.get('access-control-allow-origin')).toBeNull();
      const allowed = await fetch(`${proxied.gateway.url}/api/orders`, { headers: { origin: APP, authorization: `Bearer ${token}` } });
      expect(allowed.headers.get('access-control-allow-origin')).toBe(APP);
      expect(allowed.headers.get('vary')).toBe('Origin, Accept-Encoding');
      const sameOrigin = await fetch(`${proxied.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
      expect(sameOrigin.headers.get('access-control-allow-origin')).toBeNull();
      expect(sameOrigin.headers.get('vary')).toBe('Origin, Accept-Encoding');
      const twice = await fetch(`${proxied.gateway.url}/api/orders?vary=origin`, { headers: { origin: APP, authorization: `Bearer ${token}` } });
      expect(twice.headers.get('vary')).toBe('Origin, Accept-Encoding');
      const any = await fetch(`${proxied.gateway.url}/api/orders?vary=any`, { headers: { origin: APP, authorization: `Bearer ${token}` } });
      expect(any.headers.get('vary')).toBe('*');
    } finally {
      await proxied.close();
      await loose.close();
    }
  });

  it('names Origin once in the Vary of an answer from the cache too', async () => {
    const varying = await listen((_req, res) => {
      res.setHeader('vary', 'origin, Accept-Encoding');
      res.setHeader('cache-control', 'public, max-age=60');
      res.setHeader('content-type', 'application/json');
      res.end('[]');
    });
    const cachedRoute = { name: 'cached', prefix: '/api/cached', service: 'orders', upstreamPath: '/cached', auth: 'public', cache: { ttlSeconds: 60, scope: 'public' } };
    const proxied = await startStack({ overrides: { cors: { origins: [APP] }, routes: [...(shippedConfigFile().routes as unknown[]), cachedRoute] }, serviceUrls: { orders: varying.url } });
    try {
      const replies = [await fetch(`${proxied.gateway.url}/api/cached`, { headers: { origin: APP } }), await fetch(`${proxied.gateway.url}/api/cached`, { headers: { origin: APP } })];
      expect(replies.map((reply) => [reply.headers.get('x-cache'), reply.headers.get('vary')])).toEqual([
        ['MISS', 'Origin, Accept-Encoding'],
        ['HIT', 'Origin, Accept-Encoding'],
      ]);
    } finally {
      await proxied.close();
      await varying.close();
    }
  });

  // With no other CORS setting, a route's `cors: false` applied nothing: the service's own CORS headers (an origin
  // reflected with credentials) reached the browser, and preflights reached the service.
  it('refuses cross-origin use of a `cors: false` route when that is the only CORS setting', async () => {
    const reflecting = await listen((req, res) => {
      res.setHeader('access-control-allow-origin', req.headers.origin ?? '*');
      res.setHeader('access-control-allow-credentials', 'true');
      res.setHeader('content-type', 'application/json');
      res.end('[]');
    });
    const routes = (shippedConfigFile().routes as Record<string, unknown>[]).map((route) => (route.name === 'orders' ? { ...route, cors: false } : route));
    const locked = await startStack({ overrides: { routes }, serviceUrls: { orders: reflecting.url } });
    try {
      const token = await login(locked.gateway.url);
      const actual = await fetch(`${locked.gateway.url}/api/orders`, { headers: { origin: 'https://evil.example.test', authorization: `Bearer ${token}` } });
      expect(actual.status).toBe(200);
      expect(actual.headers.get('access-control-allow-origin')).toBeNull();
      expect(actual.headers.get('access-control-allow-credentials')).toBeNull();
      expect(actual.headers.get('vary')).toContain('Origin');
      const before = locked.serviceRequests().length;
      const refused = await fetch(`${locked.gateway.url}/api/orders`, { method: 'OPTIONS', headers: { origin: 'https://evil.example.test', 'access-control-request-method': 'GET' } });
      expect(refused.status).toBe(403);
      expect(locked.serviceRequests().length).toBe(before);
    } finally {
      await locked.close();
      await reflecting.close();
    }
  });

  it('refuses a response header rule that writes Vary, which carries Origin for the policy', () => {
    const routes = (shippedConfigFile().routes as Record<string, unknown>[]).map((route) => (route.name === 'orders' ? { ...route, headers: { response: { set: { Vary: 'Accept-Language' } } } } : route));
    expect(() => parseConfig({ ...shippedConfigFile(), cors: { origins: [APP] }, routes })).toThrow(/headers\.response\.set.*Vary.*merged by the gateway/);
  });

  it('marks its own error answers nosniff', async () => {
    // A 404, or the 429 of the default limit the tests above spent: either is the gateway's own answer.
    const response = await fetch(`${stack.gateway.url}/api/no-such-route`, { headers: { origin: APP } });
    expect([404, 429]).toContain(response.status);
    expect(response.headers.get('x-content-type-options')).toBe('nosniff');
  });

  it('refuses a config that allows any origin with credentials', () => {
    expect(() => parseConfig({ ...shippedConfigFile(), cors: { origins: ['*'], credentials: true } })).toThrow(/cors\.origins: "\*" cannot be combined with credentials/);
  });

  // With credentials a browser reads an exposed `*` as a header named `*`: nothing would be exposed.
  it('refuses a config that exposes "*" with credentials', () => {
    expect(() => parseConfig({ ...shippedConfigFile(), cors: { origins: [APP], credentials: true, exposeHeaders: ['*'] } })).toThrow(/cors\.exposeHeaders: "\*" cannot be combined with credentials/);
  });
});

// `Access-Control-Allow-Headers: *` covers no Authorization (Fetch: a "CORS non-wildcard request-header name") and,
// with credentials, names a header called `*`: a policy of headers ["*"] answered every bearer-token preflight with a
// field the browser refused, so no signed-in call from a page went out.
describe('CORS with headers ["*"]', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ overrides: { cors: { origins: [APP], headers: ['*'], credentials: true } } });
  });
  afterAll(() => stack.close());

  it('answers a preflight with the headers it asks for, named, and varies on them', async () => {
    const response = await fetch(`${stack.gateway.url}/api/orders`, { method: 'OPTIONS', headers: { origin: APP, 'access-control-request-method': 'POST', 'access-control-request-headers': 'Authorization, content-type,x-trace-me' } });
    expect(response.status).toBe(204);
    expect(response.headers.get('access-control-allow-headers')).toBe('authorization, content-type, x-trace-me');
    expect(response.headers.get('access-control-allow-credentials')).toBe('true');
    expect(response.headers.get('vary')).toMatch(/Access-Control-Request-Headers/i);
  });
});
