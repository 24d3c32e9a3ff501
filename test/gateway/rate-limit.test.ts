import { HEADER } from '../../otel/wire-names';
import { login, startStack, type TestStack } from '../helpers/stack';

describe('rate limiting', () => {
  // A fresh gateway (and so fresh counters) per test: no test depends on what another one spent.
  let stack: TestStack;
  beforeEach(async () => {
    stack = await startStack({ env: { RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW_MS: '60000' }, overrides: { auth: { loginRateLimit: { max: 3, windowMs: 60_000 } } } });
  });
  afterEach(() => stack.close());

  it('answers 429 problem+json with Retry-After once a client passes the route limit, and nothing more reaches the service', async () => {
    const token = await login(stack.gateway.url);
    const statuses: number[] = [];
    let last: Response | undefined;
    for (let i = 0; i < 7; i++) {
      last = await fetch(`${stack.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
      statuses.push(last.status);
      if (last.status !== 429) await last.arrayBuffer();
    }
    expect(statuses).toEqual([200, 200, 200, 200, 200, 429, 429]);
    const response = last!;
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    expect(Number(response.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(Number(response.headers.get('retry-after'))).toBeLessThanOrEqual(60);
    expect(response.headers.get('x-ratelimit-limit')).toBe('5');
    expect(response.headers.get('x-ratelimit-remaining')).toBe('0');
    expect(response.headers.get('ratelimit-policy')).toBe('"default";q=5;w=60');
    expect(response.headers.get('ratelimit')).toMatch(/^"default";r=0;t=\d+$/);
    expect(await response.json()).toMatchObject({ status: 429, code: 'rate_limited', requestId: response.headers.get(HEADER.requestId) });
    expect(stack.orders.requests.length).toBe(5);
  });

  it('gives login its own stricter limit, before credentials are checked', async () => {
    const attempt = () => fetch(`${stack.gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'bob@example.com', password: 'guess' }) });
    const statuses = [];
    for (let i = 0; i < 5; i++) statuses.push((await attempt()).status);
    expect(statuses).toEqual([401, 401, 401, 429, 429]);
    // The refused attempts never reached the credential check.
    expect(stack.users.requests.filter((request) => request.url.startsWith('/internal/credentials/verify'))).toHaveLength(3);
  });
});
