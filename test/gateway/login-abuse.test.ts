import { createHash } from 'node:crypto';
import { Redis } from 'ioredis';
import { createAccountKey, CREDENTIALS_CHECK_PATH } from '../../src/middleware/login';
import { CREDENTIAL_LIMITS } from '../../otel/wire-names';
import { HEADER } from '../../otel/wire-names';
import { deleteKeys, isolatedKeyPrefix } from '../helpers/redis';
import { listen, refusedOrigin, scriptedUpstream, type TestServer } from '../helpers/servers';
import { startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile, TEST_JWT_SECRET } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';

/**
 * Login abuse (security review): a password guesser rotating through its IPv6 /64, spreading guesses over
 * many addresses against one account, counting on a Redis outage, or sending over-long credentials.
 */

const MACHINE_REDIS = 'redis://127.0.0.1:6379';

interface Reply {
  status: number;
  headers: Headers;
  body: Record<string, unknown>;
}

/** One request as a client behind the (trusted) proxy at 127.0.0.1 would send it. */
async function call(origin: string, path: string, init: { method?: string; forwardedFor?: string; body?: unknown; token?: string } = {}): Promise<Reply> {
  const headers: Record<string, string> = {};
  if (init.forwardedFor !== undefined) headers['x-forwarded-for'] = init.forwardedFor;
  if (init.body !== undefined) headers['content-type'] = 'application/json';
  if (init.token !== undefined) headers.authorization = `Bearer ${init.token}`;
  const response = await fetch(`${origin}${path}`, { method: init.method ?? 'GET', headers, body: init.body === undefined ? undefined : JSON.stringify(init.body) });
  const text = await response.text();
  return { status: response.status, headers: response.headers, body: text ? (JSON.parse(text) as Record<string, unknown>) : {} };
}

const loginAttempt = (origin: string, email: string, password: string, forwardedFor?: string) => call(origin, '/api/auth/login', { method: 'POST', body: { email, password }, forwardedFor });

/** How many credential checks reached user-service so far. */
const credentialChecks = (stack: TestStack) => stack.users.requests.filter((request) => request.url === CREDENTIALS_CHECK_PATH).length;

const shippedAuth = () => shippedConfigFile().auth as Record<string, unknown>;

/** The shipped routes with one route given its own limit. */
function routesWithOwnLimit(name: string, limit: Record<string, unknown>): unknown[] {
  return (shippedConfigFile().routes as Record<string, unknown>[]).map((route) => (route.name === name ? { ...route, rateLimit: limit } : route));
}

function expectLimited(reply: Reply, policy: string): void {
  expect(reply.status).toBe(429);
  expect(reply.body).toMatchObject({ status: 429, code: 'rate_limited', requestId: reply.headers.get(HEADER.requestId) });
  expect(Number(reply.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  expect(reply.headers.get('ratelimit-policy')).toMatch(new RegExp(`^"${policy}";`));
}

describe('IPv6 clients are limited per /64 network, behind a trusted proxy', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({
      env: { RATE_LIMIT_MAX: '3' },
      overrides: {
        trustProxy: true,
        auth: { ...shippedAuth(), loginRateLimit: { max: 3, windowMs: 60_000 } },
        routes: routesWithOwnLimit('orders', { max: 3, windowMs: 60_000 }),
      },
    });
  });
  afterAll(() => stack.close());

  let attempt = 0;
  // Each row has its own /64s, so rows do not share buckets; every request a fresh address.
  it.each([
    { desc: 'login (per-client policy)', policy: 'login', network: '2001:db8:a', send: (forwardedFor: string) => loginAttempt(stack.gateway.url, `rotator-${++attempt}@example.com`, 'guess', forwardedFor), passes: 401 },
    { desc: 'the global limit', policy: 'default', network: '2001:db8:b', send: (forwardedFor: string) => call(stack.gateway.url, '/api/notifications', { forwardedFor }), passes: 401 },
    { desc: 'a route with its own limit', policy: 'orders', network: '2001:db8:c', send: (forwardedFor: string) => call(stack.gateway.url, '/api/orders', { forwardedFor }), passes: 401 },
  ])('limits $desc on the (max+1)th request although every address of the /64 differs, and not the next /64', async ({ policy, network, send, passes }) => {
    // Four different hosts of one /64, each spelt differently.
    const hosts = [`${network}:1::1`, `${network.replace('2001:db8', '2001:0DB8')}:0001:0:0:0:2`, `${network}:1:ffff:ffff:ffff:ffff`, `${network}:1:1234:5678:9abc:def0`];
    const replies = [];
    for (const host of hosts) replies.push(await send(host));
    expect(replies.map((reply) => reply.status)).toEqual([passes, passes, passes, 429]);
    expectLimited(replies[3]!, policy);
    expect((await send(`${network}:2::1`)).status).toBe(passes);
  });

  it('counts an IPv4 client and its IPv4-mapped IPv6 spelling as one', async () => {
    const spellings = ['192.0.2.44', '::ffff:192.0.2.44', '::FFFF:c000:022c', '192.0.2.44'];
    const statuses = [];
    for (const forwardedFor of spellings) statuses.push((await call(stack.gateway.url, '/api/notifications', { forwardedFor })).status);
    expect(statuses).toEqual([401, 401, 401, 429]);
  });
});

describe('with RATE_LIMIT_IPV6_PREFIX=128', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ env: { RATE_LIMIT_MAX: '3', RATE_LIMIT_IPV6_PREFIX: '128' }, overrides: { trustProxy: true, auth: { ...shippedAuth(), loginRateLimit: { max: 3, windowMs: 60_000 } } } });
  });
  afterAll(() => stack.close());

  it('limits each IPv6 address on its own again, however it is spelt', async () => {
    const statuses = [];
    for (let host = 1; host <= 5; host++) statuses.push((await loginAttempt(stack.gateway.url, `host-${host}@example.com`, 'guess', `2001:db8:d:1::${host}`)).status);
    expect(statuses).toEqual([401, 401, 401, 401, 401]);
    const sameHost = ['2001:db8:d:2::7', '2001:0db8:000d:0002:0000:0000:0000:0007', '2001:DB8:D:2::7', '2001:db8:d:2:0::7'];
    const repeated = [];
    for (const [index, forwardedFor] of sameHost.entries()) repeated.push(await loginAttempt(stack.gateway.url, `same-${index}@example.com`, 'guess', forwardedFor));
    expect(repeated.map((reply) => reply.status)).toEqual([401, 401, 401, 429]);
    expectLimited(repeated[3]!, 'login');
  });
});

describe('per-account login limit (shared through Redis)', () => {
  let stack: TestStack;
  let redis: Redis;
  const prefix = isolatedKeyPrefix();
  let network = 0;
  /** A different network for every request: the per-client limit never applies. */
  const anotherNetwork = () => (++network % 2 === 0 ? `198.51.100.${network}` : `2001:db8:${network.toString(16)}::1`);

  beforeAll(async () => {
    stack = await startStack({
      env: { REDIS_URL: MACHINE_REDIS },
      overrides: {
        trustProxy: true,
        rateLimit: { max: 1000, windowMs: 60_000, redisKeyPrefix: prefix },
        auth: { ...shippedAuth(), loginRateLimit: { max: 1000, windowMs: 60_000 }, loginAccountRateLimit: { max: 3, windowMs: 60_000 } },
      },
      withRedis: true,
    });
    redis = new Redis(MACHINE_REDIS);
  });
  afterAll(async () => {
    redis.disconnect();
    await stack.close();
    await deleteKeys(MACHINE_REDIS, prefix);
  });

  it('limits one email after max attempts from different networks, even with the right password, and not another email', async () => {
    const before = credentialChecks(stack);
    const replies = [];
    for (let i = 0; i < 3; i++) replies.push(await loginAttempt(stack.gateway.url, 'bob@example.com', `guess-${i}`, anotherNetwork()));
    const rightPassword = await loginAttempt(stack.gateway.url, 'bob@example.com', 'builder', anotherNetwork());
    expect([...replies, rightPassword].map((reply) => reply.status)).toEqual([401, 401, 401, 429]);
    expectLimited(rightPassword, 'login-account');
    expect(rightPassword.headers.get('ratelimit-policy')).toBe('"login-account";q=3;w=60, "login";q=1000;w=60');
    expect(rightPassword.body).not.toHaveProperty('token');
    // The limited attempt never reached user-service.
    expect(credentialChecks(stack) - before).toBe(3);
    expect((await loginAttempt(stack.gateway.url, 'alice@example.com', 'wonderland', anotherNetwork())).status).toBe(200);
  });

  // Every attempt on an account spends its window, whoever sends it: its r and t told anyone with one wrong guess how
  // often, and since when, someone had tried to log in as that user (draft-ietf-httpapi-ratelimit-headers, "Information disclosure").
  it('never shows a client the attempts others made on an account: the per-account window appears only on the answer it refuses', async () => {
    const watched = `watched-${Date.now()}@example.com`;
    for (let i = 0; i < 2; i++) expect((await loginAttempt(stack.gateway.url, watched, `owner-${i}`, anotherNetwork())).status).toBe(401);
    const probe = await loginAttempt(stack.gateway.url, watched, 'guess', anotherNetwork());
    const untouched = await loginAttempt(stack.gateway.url, `untouched-${Date.now()}@example.com`, 'guess', anotherNetwork());
    expect([probe.status, untouched.status]).toEqual([401, 401]);
    const fields = (reply: Reply) => ['ratelimit', 'ratelimit-policy', 'x-ratelimit-limit', 'x-ratelimit-remaining'].map((name) => reply.headers.get(name));
    expect(fields(probe)).toEqual(['"login";r=999;t=60', '"login";q=1000;w=60', '1000', '999']);
    expect(fields(probe)).toEqual(fields(untouched));
    // The answer it refuses says so, and when to come back.
    const refused = await loginAttempt(stack.gateway.url, watched, 'guess', anotherNetwork());
    expectLimited(refused, 'login-account');
    expect(refused.headers.get('ratelimit')).toMatch(/^"login-account";r=0;t=\d+, "login";r=999;t=60$/);
  });

  // A plain SHA-256 of an address is no secret: anyone reading the store could hash a list of addresses and see
  // which of them tried to log in. The key is an HMAC under a key only the gateway holds.
  it('stores a keyed hash of the folded email, never the email nor its plain hash', async () => {
    const keys = await redis.keys(`${prefix}:login-account:*`);
    expect(keys).toContain(`${prefix}:login-account:${createAccountKey(TEST_JWT_SECRET)('bob@example.com')}`);
    expect(keys).not.toContain(`${prefix}:login-account:${createHash('sha256').update('bob@example.com').digest('hex')}`);
    expect(keys.join('\n')).not.toMatch(/@|example/);
  });

  let account = 0;
  it.each([
    { desc: 'upper case', spell: (email: string) => email.toUpperCase() },
    { desc: 'mixed case', spell: (email: string) => email.replace(/^./, (first) => first.toUpperCase()).replace('example', 'Example') },
    { desc: 'surrounding spaces', spell: (email: string) => `  ${email} ` },
    { desc: 'a tab and a newline', spell: (email: string) => `\t${email}\n` },
  ])('counts a spelling with $desc as the same account', async ({ spell }) => {
    const email = `spelt-${++account}@example.com`;
    const statuses = [];
    for (let i = 0; i < 3; i++) statuses.push((await loginAttempt(stack.gateway.url, i === 1 ? spell(email) : email, 'guess', anotherNetwork())).status);
    const spelt = await loginAttempt(stack.gateway.url, spell(email), 'guess', anotherNetwork());
    expect([...statuses, spelt.status]).toEqual([401, 401, 401, 429]);
    expectLimited(spelt, 'login-account');
  });
});

describe('login with the rate-limit store down', () => {
  let redisUrl: string;
  beforeAll(async () => {
    redisUrl = (await refusedOrigin()).replace('http:', 'redis:');
  });

  const bobToken = () => signToken({ subject: '2', claims: { email: 'bob@example.com', role: 'user' } });

  it.each([
    { desc: 'by default, although the global policy explicitly allows', login: {}, status: 503 },
    { desc: 'when only the per-client login policy allows (the per-account one follows it)', login: { loginRateLimit: { max: 10, windowMs: 60_000, onStoreFailure: 'allow' } }, status: 200 },
    {
      desc: 'when the per-client login policy allows but the per-account one rejects',
      login: { loginRateLimit: { max: 10, windowMs: 60_000, onStoreFailure: 'allow' }, loginAccountRateLimit: { max: 10, windowMs: 300_000, onStoreFailure: 'reject' } },
      status: 503,
    },
  ])('answers login $status $desc, and still serves a proxied route', async ({ login, status }) => {
    const stack = await startStack({
      env: { REDIS_URL: redisUrl },
      overrides: { rateLimit: { max: 100, windowMs: 60_000, redisTimeoutMs: 150, onStoreFailure: 'allow' }, auth: { ...shippedAuth(), ...login } },
      withRedis: 'down',
    });
    try {
      const reply = await loginAttempt(stack.gateway.url, 'alice@example.com', 'wonderland');
      expect(reply.status).toBe(status);
      if (status === 503) {
        expect(reply.body).toMatchObject({ status: 503, code: 'rate_limit_unavailable', requestId: reply.headers.get(HEADER.requestId) });
        expect(Number(reply.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
        expect(reply.body).not.toHaveProperty('token');
        expect(credentialChecks(stack)).toBe(0);
      } else {
        expect(reply.body).toHaveProperty('token');
      }
      const proxied = await call(stack.gateway.url, '/api/users/2', { token: await bobToken() });
      expect(proxied.status).toBe(200);
      expect(proxied.body).toMatchObject({ id: '2', email: 'bob@example.com' });
    } finally {
      await stack.close();
    }
  });
});

describe('over-long credentials', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ overrides: { auth: { ...shippedAuth(), loginRateLimit: { max: 1000, windowMs: 60_000 } } } });
  });
  afterAll(() => stack.close());

  const { emailMaxLength, passwordMaxLength } = CREDENTIAL_LIMITS;
  let row = 0;
  /** An email of exactly `length` characters, different in every row (so no row counts against another's account). */
  const emailOf = (length: number) => {
    const domain = `@row${++row}.example.com`;
    return 'a'.repeat(length - domain.length) + domain;
  };

  it.each([
    { desc: 'a 200-character password', email: () => emailOf(20), password: 'p'.repeat(200) },
    { desc: `a password one over ${passwordMaxLength}`, email: () => emailOf(20), password: 'p'.repeat(passwordMaxLength + 1) },
    { desc: `an email one over ${emailMaxLength}`, email: () => emailOf(emailMaxLength + 1), password: 'wonderland' },
    { desc: 'a 10 000-character email', email: () => emailOf(10_000), password: 'wonderland' },
    { desc: 'a password of 129 astral characters (two code units each)', email: () => emailOf(20), password: '😀'.repeat(65) },
  ])('answers $desc with 400 invalid_body, and nothing reaches the credential check', async ({ email, password }) => {
    const before = credentialChecks(stack);
    const logged = stack.gatewayLogs.length;
    const reply = await loginAttempt(stack.gateway.url, email(), password);
    expect(reply.status).toBe(400);
    expect(reply.body).toMatchObject({ status: 400, code: 'invalid_body', requestId: reply.headers.get(HEADER.requestId) });
    expect(JSON.stringify(reply.body)).not.toContain(password.slice(0, 20));
    expect(credentialChecks(stack)).toBe(before);
    expect(stack.gatewayLogs.slice(logged).filter((line) => line.level === 'error')).toEqual([]);
  });

  // The gateway's limits are user-service's: exactly at them the check is asked, and answers as for any wrong password.
  it.each([
    { desc: `a password of exactly ${passwordMaxLength}`, email: () => emailOf(20), password: 'p'.repeat(passwordMaxLength) },
    { desc: `an email of exactly ${emailMaxLength}`, email: () => emailOf(emailMaxLength), password: 'wonderland' },
  ])('passes $desc to user-service, which answers 401 invalid_credentials', async ({ email, password }) => {
    const before = credentialChecks(stack);
    const reply = await loginAttempt(stack.gateway.url, email(), password);
    expect(reply.status).toBe(401);
    expect(reply.body).toMatchObject({ code: 'invalid_credentials' });
    expect(credentialChecks(stack)).toBe(before + 1);
  });
});

describe('login when user-service refuses the credential check', () => {
  const answer = { status: 400, headers: {} as Record<string, string> };
  let users: TestServer;
  let stack: TestStack;

  beforeAll(async () => {
    // Stands in for user-service: every credential check gets the row's answer.
    users = await scriptedUpstream(() => ({
      status: answer.status,
      headers: { 'content-type': 'application/problem+json', ...answer.headers },
      body: JSON.stringify({ status: answer.status, code: 'from_user_service', detail: 'UPSTREAM-DETAIL' }),
    }));
    stack = await startStack({
      serviceUrls: { users: users.url },
      overrides: { auth: { ...shippedAuth(), loginRateLimit: { max: 1000, windowMs: 60_000 }, loginAccountRateLimit: { max: 1000, windowMs: 60_000 } } },
    });
  });
  afterAll(async () => {
    await stack.close();
    await users.close();
  });

  it.each([
    { desc: '400 (a body it will not take)', upstream: 400, status: 400, code: 'invalid_body', logged: 'at warn' },
    { desc: '422', upstream: 422, status: 400, code: 'invalid_body', logged: 'at warn' },
    { desc: '401 (a wrong password)', upstream: 401, status: 401, code: 'invalid_credentials', logged: 'only by the access log' },
    { desc: '403', upstream: 403, status: 403, code: 'forbidden', logged: 'at warn' },
    { desc: '429 with Retry-After: 7', upstream: 429, headers: { 'retry-after': '7' }, status: 429, code: 'rate_limited', retryAfter: '7', logged: 'at warn' },
    { desc: '429 with an HTTP-date Retry-After', upstream: 429, headers: { 'retry-after': 'Wed, 21 Oct 2015 07:28:00 GMT' }, status: 429, code: 'rate_limited', retryAfter: '1', logged: 'at warn' },
    { desc: '409 (any other 4xx)', upstream: 409, status: 400, code: 'bad_request', logged: 'at warn' },
    { desc: '500', upstream: 500, status: 502, code: 'upstream_bad_response', logged: 'at error' },
    { desc: '503', upstream: 503, status: 502, code: 'upstream_bad_response', logged: 'at error' },
  ])('answers $status $code when the check answers $desc, logged $logged', async ({ upstream, headers, status, code, retryAfter, logged: rated }) => {
    Object.assign(answer, { status: upstream, headers: headers ?? {} });
    const logged = stack.gatewayLogs.length;
    const reply = await loginAttempt(stack.gateway.url, 'alice@example.com', 'wonderland');
    expect(reply.status).toBe(status);
    expect(reply.body).toMatchObject({ status, code, requestId: reply.headers.get(HEADER.requestId) });
    expect(reply.body).not.toHaveProperty('token');
    expect(JSON.stringify(reply.body)).not.toContain('UPSTREAM-DETAIL');
    if (retryAfter) expect(reply.headers.get('retry-after')).toBe(retryAfter);
    // Besides the access log's line (warn for any 4xx, error for any 5xx): how the gateway rated the failure.
    const levels = stack.gatewayLogs
      .slice(logged)
      .filter((line) => line.message !== 'request completed' && (line.level === 'warn' || line.level === 'error'))
      .map((line) => line.level);
    expect(levels).toEqual(rated.startsWith('at ') ? [rated.slice(3)] : []);
  });
});
