import { HEADER } from '../../otel/wire-names';
import { login, startStack, type TestStack } from '../helpers/stack';

const pause = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('rate-limit windows', () => {
  const WINDOW_MS = 1000;
  const MAX = 2;
  let stack: TestStack;
  let token: string;

  beforeAll(async () => {
    stack = await startStack({ env: { RATE_LIMIT_MAX: String(MAX), RATE_LIMIT_WINDOW_MS: String(WINDOW_MS) } });
    // Login has its own policy: it spends nothing of the default one.
    token = await login(stack.gateway.url);
  });
  afterAll(() => stack.close());

  const getOrders = async () => {
    const response = await fetch(`${stack.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
    await response.arrayBuffer();
    return response;
  };

  it('lets a limited client through again once a new window starts, with a fresh allowance', async () => {
    // Spend the allowance of whatever window is current; a window that turns over meanwhile only delays this.
    let limited: Response | undefined;
    for (let i = 0; i < 20 && !limited; i++) {
      const response = await getOrders();
      if (response.status === 429) limited = response;
      else expect(response.status).toBe(200);
    }
    expect(limited?.status).toBe(429);
    expect(Number(limited!.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);

    let allowed: Response | undefined;
    const deadline = Date.now() + WINDOW_MS + 5000;
    while (!allowed && Date.now() < deadline) {
      const response = await getOrders();
      if (response.status === 429) await pause(25);
      else allowed = response;
    }
    expect(allowed?.status).toBe(200);
    // The new window counts from zero: this request is its first.
    expect(allowed!.headers.get('x-ratelimit-remaining')).toBe(String(MAX - 1));
  });
});

describe("the register route's own limit", () => {
  let stack: TestStack;

  beforeAll(async () => {
    // The default policy (5) is stricter than register's own (10 in gateway.config.json): if register were
    // counted by it, the 6th registration would already be refused.
    stack = await startStack({ env: { RATE_LIMIT_MAX: '5', RATE_LIMIT_WINDOW_MS: '60000' } });
  });
  afterAll(() => stack.close());

  const register = (n: number) =>
    fetch(`${stack.gateway.url}/api/auth/register`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ name: `Client ${n}`, email: `client-${n}@example.com`, password: 'long-enough-password' }),
    });

  it('answers the 11th registration from one client in a window with 429, while other routes are not limited yet', async () => {
    const statuses: number[] = [];
    let last: Response | undefined;
    for (let n = 1; n <= 11; n++) {
      last = await register(n);
      statuses.push(last.status);
      if (last.status !== 429) await last.arrayBuffer();
    }
    expect(statuses).toEqual([...Array<number>(10).fill(201), 429]);
    const limited = last!;
    expect(limited.headers.get('content-type')).toBe('application/problem+json');
    expect(limited.headers.get('ratelimit-policy')).toBe('"register";q=10;w=60');
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(await limited.json()).toMatchObject({ status: 429, code: 'rate_limited', requestId: limited.headers.get(HEADER.requestId) });
    // Only the ten allowed registrations reached user-service.
    expect(stack.users.requests.filter((request) => request.method === 'POST' && request.url === '/users')).toHaveLength(10);

    // Login and a default-policy route still have their whole allowance.
    const token = await login(stack.gateway.url);
    const orders = await fetch(`${stack.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
    expect(orders.status).toBe(200);
    expect(orders.headers.get('ratelimit-policy')).toBe('"default";q=5;w=60');
    expect(orders.headers.get('x-ratelimit-remaining')).toBe('4');
  });
});
