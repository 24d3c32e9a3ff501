import { ACCESS_LINE_FIELDS, ACCESS_LINE_MESSAGE, HEADER } from '../../otel/wire-names';
import { waitFor } from '../helpers/wait';
import { login, startStack, type TestStack } from '../helpers/stack';
import { signToken } from '../helpers/tokens';
import { shippedConfigFile } from '../helpers/test-config';

describe('the classic flow through the gateway', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack();
  });
  afterAll(() => stack.close());

  it('logs in and returns a token with the user', async () => {
    const response = await fetch(`${stack.gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
    expect(response.status).toBe(200);
    const body = (await response.json()) as { token: string; expiresIn: number; user: unknown };
    expect(body.token.split('.')).toHaveLength(3);
    expect(body.expiresIn).toBe(3600);
    expect(body.user).toEqual({ id: '1', email: 'alice@example.com', role: 'admin' });
    const claims = JSON.parse(Buffer.from(body.token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;
    expect(claims).toMatchObject({ sub: '1', email: 'alice@example.com', role: 'admin', iss: 'koa-gateway', aud: 'koa-gateway-api' });
    expect(Number(claims.exp) - Number(claims.iat)).toBe(3600);
  });

  it('answers wrong credentials with 401 problem+json and a challenge, as every 401 must have (RFC 9110 11.6.1)', async () => {
    const response = await fetch(`${stack.gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'nope' }) });
    expect(response.status).toBe(401);
    expect(response.headers.get('www-authenticate')).toBe('Bearer realm="koa-gateway"');
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    expect(await response.json()).toMatchObject({ status: 401, code: 'invalid_credentials', requestId: response.headers.get(HEADER.requestId) });
  });

  it('forwards GET /api/users/1 to user-service as /users/1 with the injected identity headers', async () => {
    const token = await login(stack.gateway.url);
    stack.users.requests.length = 0;
    const response = await fetch(`${stack.gateway.url}/api/users/1?fields=all`, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ id: '1', email: 'alice@example.com' });
    const seen = stack.users.requests.at(-1)!;
    expect(seen.url).toBe('/users/1?fields=all');
    expect(seen.headers).toMatchObject({ [HEADER.userId]: '1', [HEADER.userRole]: 'admin', [HEADER.userEmail]: 'alice@example.com', [HEADER.requestId]: response.headers.get(HEADER.requestId) });
    expect(seen.headers['x-forwarded-for']).toBe('127.0.0.1');
    expect(seen.headers['x-forwarded-proto']).toBe('http');
    expect(seen.headers['x-forwarded-host']).toBe(new URL(stack.gateway.url).host);
    expect(Date.parse(String(seen.headers[HEADER.gatewayTimestamp]))).not.toBeNaN();
    expect(seen.headers.authorization).toBeUndefined();
  });

  it('accepts the Bearer scheme in any letter case (RFC 9110 section 11.1)', async () => {
    const token = await login(stack.gateway.url);
    for (const scheme of ['bearer', 'BEARER', 'BeArEr']) {
      expect((await fetch(`${stack.gateway.url}/api/users/1`, { headers: { authorization: `${scheme} ${token}` } })).status).toBe(200);
    }
  });

  it('matches its probes exactly: /HEALTH is not /health', async () => {
    expect((await fetch(`${stack.gateway.url}/HEALTH`)).status).toBe(404);
  });

  it('registers a user through the public route, who can then log in', async () => {
    const register = await fetch(`${stack.gateway.url}/api/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Carol', email: 'carol@example.com', password: 'correct horse' }) });
    expect(register.status).toBe(201);
    expect(await register.json()).toMatchObject({ email: 'carol@example.com', role: 'user' });
    await expect(login(stack.gateway.url, 'carol@example.com', 'correct horse')).resolves.toEqual(expect.any(String));
    const again = await fetch(`${stack.gateway.url}/api/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ name: 'Carol', email: 'carol@example.com', password: 'correct horse' }) });
    expect(again.status).toBe(409);
  });

  it('creates an order, which order-service checks with user-service directly and notifies about', async () => {
    const token = await login(stack.gateway.url, 'bob@example.com', 'builder');
    const created = await fetch(`${stack.gateway.url}/api/orders`, { method: 'POST', headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' }, body: JSON.stringify({ items: [{ sku: 'hammer', quantity: 2 }] }) });
    expect(created.status).toBe(201);
    const order = (await created.json()) as { id: string; userId: string };
    expect(order.userId).toBe('2');
    // The service names the new order at its own address; the client is told the public URL (RFC 9110 15.3.2).
    expect(created.headers.get('location')).toBe(`${stack.gateway.url}/api/orders/${order.id}`);
    const requestId = created.headers.get(HEADER.requestId);
    // The direct call carried the same request id and identity.
    expect(stack.users.requests.find((r) => r.url === '/users/2' && r.headers[HEADER.requestId] === requestId)?.headers[HEADER.userId]).toBe('2');

    const listed = await fetch(`${stack.gateway.url}/api/orders/${order.id}`, { headers: { authorization: `Bearer ${token}` } });
    expect(listed.status).toBe(200);
    const notifications = (await (await fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } })).json()) as { orderId: string }[];
    expect(notifications.map((n) => n.orderId)).toContain(order.id);

    // Alice cannot see Bob's order.
    const alice = await login(stack.gateway.url);
    expect((await fetch(`${stack.gateway.url}/api/orders/${order.id}`, { headers: { authorization: `Bearer ${alice}` } })).status).toBe(404);
  });

  it("pages a user's orders, the next page's link naming the public URL", async () => {
    // Bob's token minted, not logged in for: the login's own limit is this file's other tests'.
    const token = await signToken({ subject: '2', claims: { role: 'user', email: 'bob@example.com' } });
    const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
    for (let i = 0; i < 2; i++) expect((await fetch(`${stack.gateway.url}/api/orders`, { method: 'POST', headers, body: JSON.stringify({ items: [{ sku: `nail-${i}`, quantity: 1 }] }) })).status).toBe(201);
    const first = await fetch(`${stack.gateway.url}/api/orders?limit=1`, { headers });
    const [oldest] = (await first.json()) as { id: string }[];
    const next = /^<([^>]+)>; rel="next"$/.exec(first.headers.get('link') ?? '')?.[1];
    expect(next).toBe(`${stack.gateway.url}/api/orders?limit=1&after=${oldest!.id}`);
    const second = (await (await fetch(next!, { headers })).json()) as { id: string }[];
    expect(second).toHaveLength(1);
    expect(second[0]!.id).not.toBe(oldest!.id);
  });

  it('applies role rules per route: only admins list users, with 403 problem+json for others', async () => {
    const bob = await login(stack.gateway.url, 'bob@example.com', 'builder');
    const before = stack.users.requests.length;
    const denied = await fetch(`${stack.gateway.url}/api/users`, { headers: { authorization: `Bearer ${bob}` } });
    expect(denied.status).toBe(403);
    expect(await denied.json()).toMatchObject({ code: 'forbidden', requestId: denied.headers.get(HEADER.requestId) });
    expect(stack.users.requests.length).toBe(before);
    // Bob still reads his own profile through the prefix route.
    expect((await fetch(`${stack.gateway.url}/api/users/2`, { headers: { authorization: `Bearer ${bob}` } })).status).toBe(200);
    const alice = await login(stack.gateway.url);
    const listed = await fetch(`${stack.gateway.url}/api/users`, { headers: { authorization: `Bearer ${alice}` } });
    expect(listed.status).toBe(200);
    expect(((await listed.json()) as unknown[]).length).toBeGreaterThanOrEqual(2);
  });

  it('writes one access log line per request with route, user and request id, and no secrets', async () => {
    const token = await login(stack.gateway.url);
    const response = await fetch(`${stack.gateway.url}/api/users/1?access_token=${token}`, { headers: { authorization: `Bearer ${token}` } });
    await response.arrayBuffer();
    const requestId = response.headers.get(HEADER.requestId);
    const accessLines = () => stack.gatewayLogs.filter((line) => line.request_id === requestId && line.message === ACCESS_LINE_MESSAGE);
    await waitFor(() => accessLines().length > 0, 'the access-log line');
    const lines = accessLines();
    expect(lines).toHaveLength(1);
    // With the client's address, as the span's client.address: a flood's source is in the log whatever was sampled.
    expect(lines[0]).toMatchObject({ method: 'GET', status: 200, route: 'users', user_id: '1', url: '/api/users/1?access_token=REDACTED', 'service.name': 'gateway', client_address: '127.0.0.1' });
    expect(typeof lines[0]!.duration_ms).toBe('number');
    // The one shape of every access line (the parser's refusals log it too: test/gateway/parser-refusals-seen.test.ts).
    expect(Object.keys(lines[0]!)).toEqual(expect.arrayContaining([...ACCESS_LINE_FIELDS]));
    const everything = JSON.stringify(stack.gatewayLogs);
    expect(everything).not.toContain(token);
    expect(everything).not.toContain('wonderland');
  });
});

describe('login and register match their paths as routes do', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ overrides: { auth: { ...(shippedConfigFile().auth as Record<string, unknown>), loginRateLimit: { max: 1000, windowMs: 60_000 } } } });
  });
  afterAll(() => stack.close());

  const post = (path: string, body: unknown) => fetch(`${stack.gateway.url}${path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) });

  it.each([
    { desc: 'a trailing slash', path: '/api/auth/login/' },
    { desc: 'upper case', path: '/API/auth/login' },
    { desc: 'mixed case and a trailing slash', path: '/Api/Auth/LOGIN/' },
    { desc: 'an encoded letter', path: '/api/auth/%6Cogin' },
  ])('logs in at the login path with $desc, as at /api/auth/login', async ({ path }) => {
    const response = await post(path, { email: 'alice@example.com', password: 'wonderland' });
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ token: expect.any(String), user: { email: 'alice@example.com' } });
  });

  it('answers another method on another spelling of the login path with 405 Allow: POST', async () => {
    const response = await fetch(`${stack.gateway.url}/API/auth/login/`);
    expect([response.status, response.headers.get('allow')]).toEqual([405, 'POST']);
  });

  it.each([
    { desc: 'a trailing slash', path: '/api/auth/register/' },
    { desc: 'upper case', path: '/API/Auth/Register' },
  ])('registers at the register path with $desc', async ({ path }) => {
    const email = `${path.length}-${path.charCodeAt(5)}@example.com`;
    const response = await post(path, { name: 'Dana', email, password: 'correct horse' });
    expect(response.status).toBe(201);
  });
});

