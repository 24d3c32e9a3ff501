import net from 'node:net';
import { HEADER } from '../../otel/wire-names';
import { generateApiKey, hashApiKey } from '../../src/consumers';
import { MAX_PATH_LENGTH } from '../../src/middleware/path-guard';
import { sendRaw } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';

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

  // Route matching answered before the limits: a client scanning paths (404) or methods (405) was never limited,
  // each refusal logged and traced. Refusals spend the route's limit, or the default one, as any request.
  it('limits requests no route takes (404) and methods a route refuses (405) like any other', async () => {
    const statuses: number[] = [];
    let last: Response | undefined;
    for (const [method, path] of [['DELETE', '/api/users'], ['DELETE', '/api/users'], ['GET', '/api/nothing'], ['GET', '/nope'], ['PUT', '/api/users'], ['GET', '/api/nothing'], ['DELETE', '/api/users']]) {
      last = await fetch(`${stack.gateway.url}${path}`, { method });
      statuses.push(last.status);
      if (last.status !== 429) await last.arrayBuffer();
    }
    expect(statuses).toEqual([405, 405, 404, 404, 405, 429, 429]);
    expect(await last!.json()).toMatchObject({ status: 429, code: 'rate_limited' });
    expect(last!.headers.get('ratelimit-policy')).toBe('"default";q=5;w=60');
    // One budget: the routes under the default policy are refused to that client too, and nothing reached a service.
    const token = await login(stack.gateway.url);
    expect((await fetch(`${stack.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(429);
    expect(stack.serviceRequests().filter((request) => !request.url.startsWith('/health') && !request.url.startsWith('/internal/credentials'))).toEqual([]);
  });

  // Refused before their route was looked up, for their path, target or Host, requests spent no limit: a client
  // could send any number of `//` paths or bad Hosts, each logged and traced, never refused.
  it('limits requests refused before routing (400 bad_path, 414, a method override, a bad Host) as any other', async () => {
    const refused = [
      { path: '//api/users', headers: {} },
      { path: '/api/users/%2e%2e/orders', headers: {} },
      { path: `/api/${'a'.repeat(MAX_PATH_LENGTH)}`, headers: {} },
      { path: '/api/users?_method=DELETE', headers: {} },
      { path: '/api/users', headers: { host: 'bad host' } },
      { path: '//api/users', headers: {} },
      { path: '/api/users', headers: { host: 'bad host' } },
    ];
    const answers = [];
    for (const { path, headers } of refused) answers.push(await sendRaw(stack.gateway.url, path, headers));
    expect(answers.map((answer) => answer.status)).toEqual([400, 400, 414, 400, 400, 429, 429]);
    expect(JSON.parse(answers.at(-1)!.text)).toMatchObject({ status: 429, code: 'rate_limited' });
    expect(answers.at(-1)!.headers['ratelimit-policy']).toBe('"default";q=5;w=60');
    // One budget with the routes under the default policy, and nothing reached a service.
    const token = await login(stack.gateway.url);
    expect((await fetch(`${stack.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(429);
    expect(stack.serviceRequests().filter((request) => !request.url.startsWith('/health') && !request.url.startsWith('/internal/credentials'))).toEqual([]);
  });

  // A malformed head's refusal closes its connection, so nothing pipelined behind it runs; answered 429 instead once
  // the budget was spent, it kept the connection open, and the request behind it was served.
  it('closes the connection of a malformed head it answers 429, as its 400 did: the request pipelined behind it is not run', async () => {
    for (let i = 0; i < 5; i++) expect((await sendRaw(stack.gateway.url, '//spent')).status).toBe(400);
    const { hostname, port } = new URL(stack.gateway.url);
    const received = await new Promise<string>((resolve, reject) => {
      const socket = net.connect(Number(port), hostname);
      let text = '';
      socket.on('data', (chunk: Buffer) => (text += chunk.toString()));
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
      socket.write(`GET /api/users HTTP/1.1\r\nHost: ${hostname}\r\nHost: other.example\r\n\r\nGET /health HTTP/1.1\r\nHost: ${hostname}\r\n\r\n`);
    });
    expect(received).toMatch(/^HTTP\/1\.1 429 /);
    expect(received).toMatch(/\r\nconnection: close\r\n/i);
    expect(received.match(/HTTP\/1\.1 \d{3} /g)).toHaveLength(1);
  });

  // The probes' own 405 is a refusal like a route's: limited the same, while a probe (GET, HEAD) never is.
  it('limits other methods to /health and /ready, and never the probes themselves', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 7; i++) statuses.push((await fetch(`${stack.gateway.url}${i % 2 ? '/ready' : '/health'}`, { method: 'POST' })).status);
    expect(statuses).toEqual([405, 405, 405, 405, 405, 429, 429]);
    expect([(await fetch(`${stack.gateway.url}/health`)).status, (await fetch(`${stack.gateway.url}/ready`)).status]).toEqual([200, 200]);
  });

  // Thrown at once, the login path's 405 was never limited: any number of GETs, each logged and traced.
  it('limits other methods to the login path as a route’s 405, in any spelling of it', async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 7; i++) statuses.push((await fetch(`${stack.gateway.url}${i % 2 ? '/API/auth/login/' : '/api/auth/login'}`)).status);
    expect(statuses).toEqual([405, 405, 405, 405, 405, 429, 429]);
    expect(stack.users.requests.filter((request) => request.url.startsWith('/internal/credentials'))).toEqual([]);
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

// On a route limited by caller, the caller's limit counts a request only once it authenticated. Only failed
// authentications spent the client network's budget then; the answers given before the caller is known (two
// credentials' 400, `Max-Forwards: 0`'s OPTIONS) spent nothing, and a client could send any number of them.
describe('on a route limited by caller, what ends before authentication', () => {
  let stack: TestStack;
  const perUser = { name: 'per-user', prefix: '/api/per-user', service: 'users', upstreamPath: '/health', rateLimit: { max: 3, windowMs: 60_000, by: 'user' } };
  beforeEach(async () => {
    stack = await startStack({ overrides: { routes: [...(shippedConfigFile().routes as unknown[]), perUser] } });
  });
  afterEach(() => stack.close());

  it.each([
    { desc: 'an OPTIONS with Max-Forwards: 0', init: { method: 'OPTIONS', headers: { 'max-forwards': '0' } }, status: 204 },
    { desc: 'two credentials at once (400)', init: { headers: { authorization: 'Bearer x', 'x-api-key': 'y' } }, status: 400 },
  ])('spends the client network’s budget: $desc', async ({ init, status }) => {
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) {
      const answer = await fetch(`${stack.gateway.url}/api/per-user`, init);
      await answer.arrayBuffer();
      statuses.push(answer.status);
    }
    expect(statuses).toEqual([status, status, status, 429, 429]);
    // The network's budget: a signed-in user behind it waits for the window too, as after failed authentications.
    const token = await login(stack.gateway.url);
    expect((await fetch(`${stack.gateway.url}/api/per-user`, { headers: { authorization: `Bearer ${token}` } })).status).toBe(429);
  });

  it('never spends it for a caller who authenticated: that is the caller’s own limit', async () => {
    const token = await login(stack.gateway.url);
    const statuses: number[] = [];
    for (let i = 0; i < 4; i++) statuses.push((await fetch(`${stack.gateway.url}/api/per-user`, { headers: { authorization: `Bearer ${token}` } })).status);
    expect(statuses).toEqual([200, 200, 200, 429]);
    // Another user on the same network still has a whole budget.
    const other = await login(stack.gateway.url, 'bob@example.com', 'builder');
    expect((await fetch(`${stack.gateway.url}/api/per-user`, { headers: { authorization: `Bearer ${other}` } })).status).toBe(200);
  });
});

describe('with two limits on one request', () => {
  const KEY = generateApiKey();
  const shippedAuth = shippedConfigFile().auth as Record<string, unknown>;
  const perMinute = (max: number) => ({ max, windowMs: 60_000 });
  const loginLimits = (client: number, account: number) => ({ auth: { ...shippedAuth, loginRateLimit: perMinute(client), loginAccountRateLimit: { max: account, windowMs: 300_000 } } });
  // A route counted per consumer, and the consumer's own limit over every route.
  const tenantLimits = (route: number, consumer: number) => ({
    consumers: [{ id: 'acme', role: 'partner', keys: [{ hash: hashApiKey(KEY) }], rateLimit: perMinute(consumer) }],
    routes: [{ name: 'tenant', prefix: '/api/tenant', service: 'users', upstreamPath: '/health', rateLimit: { ...perMinute(route), by: 'consumer' } }],
  });
  const wrongPassword = (url: string) => fetch(`${url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'bob@example.com', password: 'guess' }) });
  const withKey = (url: string) => fetch(`${url}/api/tenant`, { headers: { 'X-API-Key': KEY } });

  it.each([
    { desc: 'a route per consumer, smaller than the consumer’s own limit', overrides: tenantLimits(2, 100), send: withKey, statuses: [200, 200, 429], tightest: 'tenant', refusedBy: 'tenant' },
    { desc: 'a consumer’s own limit, smaller than its route’s', overrides: tenantLimits(100, 2), send: withKey, statuses: [200, 200, 429], tightest: 'consumer-acme', refusedBy: 'consumer-acme' },
  ])('$desc: every answer describes the most restrictive, and none says more is left than the next request gets', async ({ overrides, send, statuses, tightest, refusedBy }) => {
    const stack = await startStack({ env: { RATE_LIMIT_MAX: '100000' }, overrides });
    try {
      const answers: Response[] = [];
      for (let i = 0; i < statuses.length; i++) {
        const answer = await send(stack.gateway.url);
        await answer.arrayBuffer();
        answers.push(answer);
      }
      expect(answers.map((answer) => answer.status)).toEqual(statuses);
      answers.slice(0, -1).forEach((answer, i) => {
        const left = Number(answer.headers.get('x-ratelimit-remaining'));
        // What a client paces itself by: "some left" held for the next request, "none left" did too (it said 7 or 98).
        expect({ left, next: answers[i + 1]!.status }).toEqual({ left: statuses.length - 2 - i, next: statuses[i + 1] });
        // Both policies listed (draft-ietf-httpapi-ratelimit-headers-08 on: lists), the most restrictive first.
        expect(answer.headers.get('ratelimit')).toMatch(new RegExp(`^"${tightest}";r=${left};t=\\d+, "[a-z-]+";r=\\d+;t=\\d+$`));
        expect(answer.headers.get('ratelimit-policy')).toMatch(new RegExp(`^"${tightest}";q=\\d+;w=\\d+, "[a-z-]+";q=\\d+;w=\\d+$`));
      });
      const refused = answers.at(-1)!;
      const retryAfter = refused.headers.get('retry-after');
      expect(refused.headers.get('ratelimit')).toMatch(new RegExp(`^"${refusedBy}";r=0;t=${retryAfter}(, |$)`));
      expect(refused.headers.get('x-ratelimit-remaining')).toBe('0');
    } finally {
      await stack.close();
    }
  });

  // A route may be named like one of the gateway's policies: its windows are its own (`route:consumer-acme`), and so is
  // its place in the fields. Recorded by name, one check replaced the other: one item listed, and a 429 that said
  // Retry-After 10 (the consumer's window) to a client the route went on refusing for a minute.
  it("lists a route named like a consumer's policy beside that policy, and its refusal says the route's delay", async () => {
    const overrides = {
      consumers: [{ id: 'acme', role: 'partner', keys: [{ hash: hashApiKey(KEY) }], rateLimit: { max: 100, windowMs: 10_000 } }],
      routes: [{ name: 'consumer-acme', prefix: '/api/tenant', service: 'users', upstreamPath: '/health', rateLimit: { ...perMinute(2), by: 'consumer' } }],
    };
    const stack = await startStack({ env: { RATE_LIMIT_MAX: '100000' }, overrides });
    try {
      const answers: Response[] = [];
      for (let i = 0; i < 3; i++) {
        const answer = await withKey(stack.gateway.url);
        await answer.arrayBuffer();
        answers.push(answer);
      }
      expect(answers.map((answer) => answer.status)).toEqual([200, 200, 429]);
      for (const answer of answers.slice(0, -1)) {
        expect(answer.headers.get('ratelimit-policy')).toMatch(/^"consumer-acme";q=2;w=60, "consumer-acme";q=100;w=10$/);
      }
      expect(Number(answers[2]!.headers.get('retry-after'))).toBeGreaterThan(10);
    } finally {
      await stack.close();
    }
  });

  // The per-account window is spent by every client's attempts: only the answer it refuses shows it (login-abuse.test.ts).
  it.each([
    { desc: 'the per-client limit smaller', overrides: loginLimits(3, 10), shown: ['"login";r=2', '"login";r=1', '"login";r=0'], refused: /^"login";r=0;t=(\d+)$/ },
    { desc: 'both as small', overrides: loginLimits(3, 3), shown: ['"login";r=2', '"login";r=1', '"login";r=0'], refused: /^"login";r=0;t=(\d+)$/ },
    { desc: 'the per-account limit smaller', overrides: loginLimits(10, 3), shown: ['"login";r=9', '"login";r=8', '"login";r=7'], refused: /^"login-account";r=0;t=(\d+), "login";r=6;t=\d+$/ },
  ])('login, $desc: answers show the per-client window, the refusal the policy that refused', async ({ overrides, shown, refused }) => {
    const stack = await startStack({ env: { RATE_LIMIT_MAX: '100000' }, overrides });
    try {
      const answers: Response[] = [];
      for (let i = 0; i < 4; i++) {
        const answer = await wrongPassword(stack.gateway.url);
        await answer.arrayBuffer();
        answers.push(answer);
      }
      expect(answers.map((answer) => answer.status)).toEqual([401, 401, 401, 429]);
      expect(answers.slice(0, -1).map((answer) => answer.headers.get('ratelimit')?.replace(/;t=\d+$/, ''))).toEqual(shown);
      const last = answers.at(-1)!;
      expect(last.headers.get('ratelimit')).toMatch(refused);
      expect(refused.exec(last.headers.get('ratelimit') ?? '')?.[1]).toBe(last.headers.get('retry-after'));
    } finally {
      await stack.close();
    }
  });

  it('never says t= more than the window, in the first answer of a window either (it said t=61 under w=60)', async () => {
    const routes = [{ name: 'per-user', prefix: '/api/per-user', service: 'users', upstreamPath: '/health', rateLimit: { ...perMinute(10), by: 'user' } }];
    const stack = await startStack({ env: { RATE_LIMIT_MAX: '100000' }, overrides: { routes } });
    try {
      // Each user opens a window of its own: every answer is the first of a window.
      for (let i = 0; i < 20; i++) {
        const answer = await fetch(`${stack.gateway.url}/api/per-user`, { headers: { authorization: `Bearer ${await signToken({ subject: `first-${i}` })}` } });
        await answer.arrayBuffer();
        expect(answer.headers.get('ratelimit')).toMatch(/^"per-user";r=9;t=/);
        const windows = Object.fromEntries((answer.headers.get('ratelimit-policy') ?? '').split(', ').map((item) => [/^"([^"]+)"/.exec(item)?.[1], Number(/;w=(\d+)/.exec(item)?.[1])]));
        for (const item of (answer.headers.get('ratelimit') ?? '').split(', ')) {
          expect(Number(/;t=(\d+)/.exec(item)?.[1])).toBeLessThanOrEqual(windows[/^"([^"]+)"/.exec(item)?.[1] ?? '']!);
        }
      }
    } finally {
      await stack.close();
    }
  });
});
