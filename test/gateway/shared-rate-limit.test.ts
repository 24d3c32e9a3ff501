import { Redis } from 'ioredis';
import { createGateway } from '../../src/gateway';
import type { GatewayDependencies } from '../../src/gateway';
import { createRedisStore, type PrimaryStoreClient } from '../../src/rate-limit-store';
import { deleteKeys, isolatedKeyPrefix, requireRedis, startOwnRedis, type OwnRedis } from '../helpers/redis';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { login, startStack, type TestStack } from '../helpers/stack';
import { shippedConfigFile, testConfig } from '../helpers/test-config';
import { readCompose, service } from '../stack/stack-files';
import { waitFor } from '../helpers/wait';

const MACHINE_REDIS = 'redis://127.0.0.1:6379';

describe('rate limits shared through Redis', () => {
  let stack: TestStack;
  const prefix = isolatedKeyPrefix();
  const clients: Redis[] = [];
  let replicas: TestServer[] = [];

  beforeAll(async () => {
    stack = await startStack({ env: { RATE_LIMIT_MAX: '6', REDIS_URL: MACHINE_REDIS }, overrides: { rateLimit: { max: 6, windowMs: 60_000, redisKeyPrefix: prefix } }, withRedis: true });
    const { logger } = memoryLogger('gateway');
    // Two more gateway replicas, each with its own Redis connection, as separate processes would have.
    replicas = await Promise.all(
      [0, 1].map(async () => {
        const redis = createRedisStore({ url: MACHINE_REDIS, commandTimeoutMs: 500, logger });
        clients.push(redis);
        await requireRedis(redis, MACHINE_REDIS);
        return listen(createGateway(stack.config, { logger, redis }).callback());
      }),
    );
  });
  afterAll(async () => {
    await Promise.all(replicas.map((replica) => replica.close()));
    clients.forEach((client) => client.disconnect());
    // Undefined when Redis was not reachable: beforeAll's error says so, nothing more to clean up.
    if (!stack) return;
    await stack.close();
    await deleteKeys(MACHINE_REDIS, prefix);
  });

  it('counts one limit across replicas: the 7th request on any replica is 429', async () => {
    const token = await login(stack.gateway.url);
    const statuses: number[] = [];
    for (let i = 0; i < 8; i++) {
      const replica = replicas[i % 2]!;
      const response = await fetch(`${replica.url}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
      await response.arrayBuffer();
      statuses.push(response.status);
    }
    // login itself counted against the login policy, not this one.
    expect(statuses).toEqual([200, 200, 200, 200, 200, 200, 429, 429]);
    const keys = await clients[0]!.keys(`${prefix}:*`);
    expect(keys.length).toBeGreaterThan(0);
  });
});

describe('the reset a Redis window reports', () => {
  const prefix = isolatedKeyPrefix();
  let stack: TestStack | undefined;
  afterAll(async () => {
    if (!stack) return;
    await stack.close();
    await deleteKeys(MACHINE_REDIS, prefix);
  });

  /** Polls the clock (no fixed wait): resolves once the current millisecond of the second is in [from, to). */
  const inFraction = (from: number, to: number) => waitFor(() => Date.now() % 1000 >= from && Date.now() % 1000 < to, `a time ${from}-${to} ms into a second`, 2000);

  it('is never early: Retry-After, t= and X-RateLimit-Reset hold until the window admits, and a client waiting exactly Retry-After is admitted (they were up to 1 s early)', async () => {
    const WINDOW_MS = 3000;
    stack = await startStack({
      env: { REDIS_URL: MACHINE_REDIS },
      overrides: { rateLimit: { max: 1, windowMs: WINDOW_MS, redisKeyPrefix: prefix }, routes: [{ name: 'open', prefix: '/api/open', service: 'users', upstreamPath: '/health', auth: 'public' }] },
      withRedis: true,
    });
    const url = `${stack.gateway.url}/api/open`;
    // Twice: the window's request late in a second, the refused one early in a later second (the floor lost most).
    for (let round = 0; round < 2; round++) {
      await inFraction(850, 950);
      const sentFirst = Date.now();
      expect((await fetch(url)).status).toBe(200);
      await waitFor(() => Date.now() - sentFirst > 250, 'a later second', 2000);
      await inFraction(50, 150);
      const refused = await fetch(url);
      const answeredAt = Date.now();
      expect(refused.status).toBe(429);
      const retryAfter = Number(refused.headers.get('retry-after'));
      // The window admits again no sooner than its request plus the window.
      const admitsAt = sentFirst + WINDOW_MS;
      expect(answeredAt + retryAfter * 1000).toBeGreaterThanOrEqual(admitsAt);
      expect(Number(refused.headers.get('x-ratelimit-reset')) * 1000).toBeGreaterThanOrEqual(admitsAt);
      expect(refused.headers.get('ratelimit')).toBe(`"default";r=0;t=${retryAfter}`);
      expect(retryAfter).toBeLessThanOrEqual(WINDOW_MS / 1000);
      // Exactly Retry-After later, as a client that obeys it would.
      await new Promise((resolve) => setTimeout(resolve, retryAfter * 1000));
      const retriedAt = Date.now();
      expect((await fetch(url)).status).toBe(200);
      await waitFor(() => Date.now() > retriedAt + WINDOW_MS + 50, 'the retried request\'s window to end', WINDOW_MS + 2000);
    }
  });
});

describe('a route named like one of the gateway\'s own limits', () => {
  let upstream: TestServer;
  const prefix = isolatedKeyPrefix();
  let redis: Redis | undefined;
  beforeAll(async () => {
    // The routes answer 200; the credential check refuses every login (401), so only the limits differ.
    upstream = await listen((req, res) => {
      const refused = req.url?.startsWith('/internal/');
      res.writeHead(refused ? 401 : 200, { 'content-type': 'application/json' }).end(refused ? '{"code":"invalid_credentials"}' : '{}');
    });
  });
  afterAll(async () => {
    await upstream?.close();
    redis?.disconnect();
    await deleteKeys(MACHINE_REDIS, prefix);
  });

  /** The cluster primary's windows as a worker asks for them: one count per policy and client, nothing leased. */
  function primaryWindows(): PrimaryStoreClient {
    const used = new Map<string, number>();
    return {
      take: async (policy, client, max, windowMs) => {
        const key = `${policy} ${client}`;
        const before = used.get(key) ?? 0;
        if (before < max) used.set(key, before + 1);
        return { remaining: max - before, reset: Math.ceil((Date.now() + windowMs) / 1000), total: max };
      },
      exhausted: () => undefined,
      held: () => undefined,
    };
  }

  const stores: { desc: string; store: () => Promise<Partial<GatewayDependencies>> }[] = [
    {
      desc: 'Redis',
      store: async () => {
        redis = createRedisStore({ url: MACHINE_REDIS, commandTimeoutMs: 500, logger: memoryLogger('gateway').logger });
        await requireRedis(redis, MACHINE_REDIS);
        return { redis };
      },
    },
    { desc: 'the cluster primary', store: async () => ({ primaryStore: primaryWindows() }) },
    { desc: 'memory', store: async () => ({}) },
  ];

  it.each(stores)('counts apart from it in $desc: ten requests on routes named login and default spent the login attempts and the global limit', async ({ store }) => {
    const deps = await store();
    // Each route's limit is the one of the gateway's policy it is named after (10 per minute): the same policy in
    // every store key but the owner.
    const limit = { max: 10, windowMs: 60_000 };
    const route = (name: string, prefixPath: string, rateLimit?: typeof limit) => ({ name, prefix: prefixPath, service: 'users', upstreamPath: '', auth: 'public', ...(rateLimit && { rateLimit }) });
    const config = testConfig(
      { users: upstream.url, orders: upstream.url, notifications: upstream.url },
      { rateLimit: { ...limit, redisKeyPrefix: prefix, ...(deps.redis && { redisUrl: MACHINE_REDIS }) }, routes: [route('login', '/sso', limit), route('default', '/fallback', limit), route('plain', '/plain')] },
    );
    const gateway = await listen(createGateway(config, { logger: memoryLogger('gateway').logger, metrics: false, ...deps }).callback());
    try {
      const statuses = async (path: string, times: number, init?: RequestInit) => {
        const answers: number[] = [];
        for (let i = 0; i < times; i++) answers.push((await fetch(`${gateway.url}${path}`, init)).status);
        return answers;
      };
      expect(await statuses('/sso/page', 10)).toEqual(Array(10).fill(200));
      expect(await statuses('/fallback/page', 10)).toEqual(Array(10).fill(200));
      const loginBody = { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'nobody@example.com', password: 'wrong-password' }) };
      // The login attempts and the global limit are untouched: these were 429.
      expect(await statuses('/api/auth/login', 1, loginBody)).toEqual([401]);
      expect(await statuses('/plain/page', 1)).toEqual([200]);
      // And the other way round: the routes' own windows are spent, each on its own.
      expect(await statuses('/sso/page', 1)).toEqual([429]);
    } finally {
      await gateway.close();
    }
  });
});

describe('a Redis run as shipped, filled with cached answers', () => {
  let own: OwnRedis;
  let upstream: TestServer;
  let client: Redis;
  let gateway: TestServer;
  const status = async (path: string) => {
    const response = await fetch(`${gateway.url}${path}`);
    await response.arrayBuffer();
    return response.status;
  };
  const cacheResult = async (path: string) => {
    const response = await fetch(`${gateway.url}${path}`);
    await response.arrayBuffer();
    return response.headers.get('x-cache');
  };
  const redisInfo = async (section: string, field: string) => Number(new RegExp(`${field}:(\\d+)`).exec(await client.info(section))![1]);

  beforeAll(async () => {
    // Compose's command (the cluster runs the same: test/stack/kubernetes-wiring.test.ts), with a cap of 8 MB
    // instead of 96 so that 48 answers of 256 KiB overfill it.
    const [, ...shipped] = service(readCompose(), 'redis').command;
    expect(shipped).toEqual(expect.arrayContaining(['--maxmemory-policy', 'volatile-lru']));
    own = await startOwnRedis([...shipped, '--maxmemory', '8mb']);
    const large = 'x'.repeat(256 * 1024);
    const small = 'y'.repeat(2048);
    upstream = await listen((req, res) => res.writeHead(200, { 'content-type': 'text/plain', 'cache-control': 'max-age=300' }).end(req.url!.startsWith('/small/') ? small : large));
    client = createRedisStore({ url: own.url, commandTimeoutMs: 500, logger: memoryLogger('gateway').logger });
    await requireRedis(client, own.url);
    const route = (name: string, extra: Record<string, unknown>) => ({ name, prefix: `/${name}`, service: 'users', upstreamPath: '', auth: 'public', ...extra });
    const limited = { rateLimit: { max: 3, windowMs: 300_000 } };
    const config = testConfig(
      { users: upstream.url, orders: upstream.url, notifications: upstream.url },
      {
        rateLimit: { max: 1_000_000, windowMs: 60_000, redisUrl: own.url },
        routes: [route('limited', limited), route('idle', limited), route('cached', { cache: { ttlSeconds: 300, scope: 'public' } })],
      },
    );
    gateway = await listen(createGateway(config, { logger: memoryLogger('gateway').logger, metrics: false, redis: client }).callback());
  });
  afterAll(async () => {
    await gateway?.close();
    client?.disconnect();
    await upstream?.close();
    await own?.stop();
  });

  it('keeps an idle rate-limit window while the cache fills it to its maxmemory (it was evicted, the client\'s count started over)', async () => {
    expect([await status('/limited/a'), await status('/limited/b')]).toEqual([200, 200]);
    for (let page = 0; page < 48; page++) expect(await status(`/cached/${page}`)).toBe(200);
    expect(await redisInfo('memory', 'used_memory')).toBeLessThanOrEqual(8 * 1024 * 1024);
    // One request left of three, then the limit: the window was not evicted for the cached answers.
    expect([await status('/limited/c'), await status('/limited/d')]).toEqual([200, 429]);
    expect(await redisInfo('stats', 'evicted_keys')).toBe(0);
    // The cache answers from what it stored last; it made room for it by evicting its own first pages.
    expect(await cacheResult('/cached/47')).toBe('HIT');
    expect(await cacheResult('/cached/0')).toBe('MISS');
  });

  it('still stores a new answer after a client flooded its share with junk, evicting the junk that ends soonest (it stored nothing until the junk expired)', async () => {
    expect([await status('/idle/a'), await status('/idle/b')]).toEqual([200, 200]);
    // Distinct URLs any client may ask for: 12 MiB of large answers, then small ones, against a share of 6 MiB.
    for (let page = 0; page < 48; page++) expect(await status(`/cached/junk/${page}`)).toBe(200);
    for (let page = 0; page < 300; page++) expect(await status(`/cached/small/${page}`)).toBe(200);
    expect([await cacheResult('/cached/hot'), await cacheResult('/cached/hot'), await cacheResult('/cached/hot')]).toEqual(['MISS', 'HIT', 'HIT']);
    expect(await redisInfo('memory', 'used_memory')).toBeLessThanOrEqual(8 * 1024 * 1024);
    // Redis itself evicted nothing: the window of a client idle through the flood still counts.
    expect(await redisInfo('stats', 'evicted_keys')).toBe(0);
    expect([await status('/idle/c'), await status('/idle/d')]).toEqual([200, 429]);
  });
});

describe('when the rate-limit store goes down', () => {
  let redis: OwnRedis;
  let stack: TestStack;

  beforeAll(async () => {
    redis = await startOwnRedis();
    stack = await startStack({
      env: { REDIS_URL: redis.url },
      overrides: {
        rateLimit: { max: 1000, windowMs: 60_000, redisTimeoutMs: 150, redisKeyPrefix: isolatedKeyPrefix() },
        // orders fails closed, everything else fails open.
        routes: routesWithOrdersFailingClosed(),
      },
      withRedis: true,
    });
  });
  afterAll(async () => {
    await stack?.close();
    await redis?.stop();
  });

  it('keeps serving (allow) or answers 503 (reject) per route without hanging, logs it once, and recovers', async () => {
    const token = await login(stack.gateway.url);
    const call = async (path: string) => {
      const started = Date.now();
      const response = await fetch(`${stack.gateway.url}${path}`, { headers: { authorization: `Bearer ${token}` } });
      const body = await response.text();
      return { status: response.status, body, ms: Date.now() - started };
    };
    expect((await call('/api/notifications')).status).toBe(200);

    await redis.stop();
    const allowed = [];
    for (let i = 0; i < 5; i++) allowed.push(await call('/api/notifications'));
    expect(allowed.map((r) => r.status)).toEqual([200, 200, 200, 200, 200]);
    // Generous: proves nothing waits for ioredis' reconnect loop (seconds), not a speed target.
    expect(Math.max(...allowed.map((r) => r.ms))).toBeLessThan(2000);
    const rejected = await call('/api/orders');
    expect(rejected.status).toBe(503);
    expect(JSON.parse(rejected.body)).toMatchObject({ code: 'rate_limit_unavailable' });
    // Logged once per policy per interval, not once per request.
    const failures = stack.gatewayLogs.filter((line) => line.message === 'rate limit store failed');
    expect(failures.map((line) => `${line.policy}:${line.decision}`).sort()).toEqual(['default:store_down_allowed', 'orders:store_down_rejected']);

    await redis.start();
    let recovered = 0;
    for (let attempt = 0; attempt < 50 && recovered === 0; attempt++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      const response = await call('/api/orders');
      if (response.status === 200) recovered = attempt + 1;
    }
    expect(recovered).toBeGreaterThan(0);
  });
});

describe('when the rate-limit store hangs (up, but answering nothing)', () => {
  it('drops the hung connection after missed heartbeats, so commands fail at once instead of each waiting its timeout, and recovers', async () => {
    const own = await startOwnRedis();
    const { logger, lines } = memoryLogger('gateway');
    const client = createRedisStore({ url: own.url, commandTimeoutMs: 150, logger, heartbeatMs: 200 });
    try {
      await requireRedis(client, own.url);
      own.pause();
      // Before the heartbeat finds it, a command waits its whole timeout: what every request paid while it lasted.
      await expect(client.get('probe')).rejects.toThrow('Command timed out');
      await waitFor(() => lines.some((line) => line.message === 'rate-limit store not answering; reconnecting (requests use the store-down policy meanwhile)'), 'the hung connection to be dropped');
      // Not queued, not waiting: refused on the spot, so the limiter's store-down policy answers at once.
      await expect(client.get('probe')).rejects.toThrow(/Stream isn't writeable|Connection is closed/);
      own.resume();
      // Recovered: commands are answered again (the reconnection's ready check went through).
      await waitFor(async () => (await client.set('probe', '1').catch(() => undefined)) === 'OK', 'a command answered once Redis answers again', 10_000);
    } finally {
      own.resume();
      client.disconnect();
      await own.stop();
    }
  });
});

/** The shipped routes, with orders set to fail closed. */
function routesWithOrdersFailingClosed(): unknown[] {
  return (shippedConfigFile().routes as Record<string, unknown>[]).map((route) =>
    route.name === 'orders' ? { ...route, rateLimit: { max: 1000, windowMs: 60_000, onStoreFailure: 'reject' } } : route,
  );
}
