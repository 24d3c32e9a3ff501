import { generateKeyPair, SignJWT } from 'jose';
import { HEADER } from '../../otel/wire-names';
import { isolatedKeyPrefix } from '../helpers/redis';
import { listen, refusedOrigin, type TestServer } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';

/** A situation in which the gateway answers 503, and the request that gets it (asked until it does, bounded). */
interface Outage {
  stack: TestStack;
  request(): Promise<Response>;
  /** Anything of the row's own to stop besides the stack. */
  cleanup?: () => Promise<void>;
}

/** A fresh object each time: entries of `services` must not share one (each gets its own URL from the env). */
const placeholder = () => ({ url: 'http://placeholder' });

async function ordersEjected(): Promise<Outage> {
  const stack = await startStack({
    env: { RATE_LIMIT_MAX: '100000' },
    overrides: { services: { users: placeholder(), orders: { ...placeholder(), ejectAfterFailures: 1, ejectMs: 60_000 }, notifications: placeholder() } },
    serviceUrls: { orders: `${await refusedOrigin()},${await refusedOrigin()}` },
  });
  const token = await login(stack.gateway.url);
  // The first request is refused by both instances (502) and ejects them; the next finds none.
  return { stack, request: () => fetch(`${stack.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } }) };
}

async function usersEjected(): Promise<Outage> {
  const stack = await startStack({
    overrides: { services: { users: { ...placeholder(), ejectAfterFailures: 1, ejectMs: 60_000 }, orders: placeholder(), notifications: placeholder() } },
    serviceUrls: { users: await refusedOrigin() },
  });
  const request = () => fetch(`${stack.gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
  return { stack, request };
}

async function ordersBusy(): Promise<Outage> {
  const received: string[] = [];
  // Holds every request open: one is enough to take the only connection.
  const hanging: TestServer = await listen((req) => void received.push(req.url ?? ''));
  const stack = await startStack({
    env: { RATE_LIMIT_MAX: '100000' },
    overrides: {
      proxy: { timeoutMs: 10_000, maxSockets: 1, maxPendingRequests: 0 },
      services: { users: placeholder(), orders: { ...placeholder(), ejectAfterFailures: 1000 }, notifications: placeholder() },
    },
    serviceUrls: { orders: hanging.url },
  });
  const token = await login(stack.gateway.url);
  const occupant = new AbortController();
  fetch(`${stack.gateway.url}/api/orders/occupant`, { headers: { authorization: `Bearer ${token}` }, signal: occupant.signal }).catch(() => undefined);
  for (let i = 0; i < 200 && received.length === 0; i++) await new Promise((resolve) => setTimeout(resolve, 10));
  expect(received).toEqual(['/orders/occupant']);
  return {
    stack,
    request: () => fetch(`${stack.gateway.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } }),
    cleanup: async () => {
      occupant.abort();
      await hanging.close();
    },
  };
}

async function rateLimitStoreDown(): Promise<Outage> {
  const closedPort = new URL(await refusedOrigin()).port;
  const stack = await startStack({
    env: { REDIS_URL: `redis://127.0.0.1:${closedPort}` },
    overrides: { rateLimit: { max: 1000, windowMs: 60_000, onStoreFailure: 'reject', redisTimeoutMs: 100, redisKeyPrefix: isolatedKeyPrefix() } },
    withRedis: 'down',
  });
  // Limits run before authentication: no token needed to meet the store-down policy.
  return { stack, request: () => fetch(`${stack.gateway.url}/api/orders`) };
}

async function jwksDown(): Promise<Outage> {
  const issuer = 'https://id.example.test/';
  const stack = await startStack({
    env: { JWKS_URL: `${await refusedOrigin()}/.well-known/jwks.json`, JWKS_ISSUER: issuer, JWKS_AUDIENCE: 'koa-gateway-api', RATE_LIMIT_MAX: '100000' },
    overrides: { auth: { verifiedTokenCacheSize: 0, jwks: { url: 'http://placeholder', issuer: 'x', audience: 'x', timeoutMs: 500, cooldownMs: 0 } } },
  });
  const { privateKey } = await generateKeyPair('RS256');
  const token = await new SignJWT({ email: 'dana@example.test' })
    .setProtectedHeader({ alg: 'RS256', kid: 'provider-key-1' })
    .setSubject('dana')
    .setIssuer(issuer)
    .setAudience('koa-gateway-api')
    .setIssuedAt()
    .setExpirationTime('10m')
    .sign(privateKey);
  return { stack, request: () => fetch(`${stack.gateway.url}/api/notifications`, { headers: { authorization: `Bearer ${token}` } }) };
}

/** Asks until the gateway answers 503 (the rows that first need a failure to eject an instance), bounded. */
async function until503(outage: Outage): Promise<Response> {
  let response = await outage.request();
  for (let attempt = 1; attempt < 5 && response.status !== 503; attempt++) {
    await response.arrayBuffer();
    response = await outage.request();
  }
  return response;
}

describe('Retry-After on every 503', () => {
  let outage: Outage | undefined;
  afterEach(async () => {
    await outage?.cleanup?.();
    await outage?.stack.close();
    outage = undefined;
  });

  it.each([
    { desc: 'upstream_unavailable from the proxy when every instance is ejected', code: 'upstream_unavailable', start: ordersEjected },
    { desc: 'upstream_unavailable from login when every users instance is ejected', code: 'upstream_unavailable', start: usersEjected },
    { desc: 'upstream_busy when every connection is taken and no request may wait', code: 'upstream_busy', start: ordersBusy },
    { desc: 'rate_limit_unavailable when the store is down and onStoreFailure is reject', code: 'rate_limit_unavailable', start: rateLimitStoreDown },
    { desc: 'auth_unavailable when the JWKS server is down', code: 'auth_unavailable', start: jwksDown },
  ])('answers $desc with an integer Retry-After of at least 1 s and the request id', async ({ code, start }) => {
    outage = await start();
    const response = await until503(outage);
    expect(response.status).toBe(503);
    expect(response.headers.get('content-type')).toBe('application/problem+json');
    expect(await response.json()).toMatchObject({ status: 503, code, requestId: response.headers.get(HEADER.requestId) });
    // RFC 9110 10.2.3: delay-seconds is a non-negative integer; 0 would invite an immediate retry storm.
    const retryAfter = response.headers.get(HEADER.retryAfter);
    expect(retryAfter).toMatch(/^\d+$/);
    expect(Number(retryAfter)).toBeGreaterThanOrEqual(1);
  });

  it('answers a degraded /ready (503, not a problem) with an integer Retry-After of at least 1 s', async () => {
    const stack = await startStack({ serviceUrls: { notifications: await refusedOrigin() } });
    outage = { stack, request: () => fetch(`${stack.gateway.url}/ready`) };
    const response = await until503(outage);
    await response.arrayBuffer();
    expect(response.status).toBe(503);
    expect(response.headers.get(HEADER.retryAfter)).toMatch(/^\d+$/);
    expect(Number(response.headers.get(HEADER.retryAfter))).toBeGreaterThanOrEqual(1);
  });
});
