import type { Redis } from 'ioredis';
import { createGateway, type GatewayDependencies } from '../../src/gateway';
import { createRedisStore } from '../../src/rate-limit-store';
import { deleteKeys, isolatedKeyPrefix, requireRedis } from '../helpers/redis';
import { listen, memoryLogger, sendRaw, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';
import { waitFor } from '../helpers/wait';

/**
 * The budget of failed authentications on a route limited by caller holds for credentials sent at once: while
 * some are being checked they count as spent, so no more are checked than the budget has left, and the others wait
 * for the outcome. Checked first and counted only once they had failed, every request that arrived while others
 * were checked passed the check: 60 forged provider tokens sent together were all verified against a budget of 3
 * (each a signature check, some a JWKS fetch). A request that authenticates gives its place back as its caller is
 * counted, so a network's authenticated requests are not held back by one another.
 */
jest.setTimeout(30_000);

// The token service's verify, counted, and held while a test holds it: the gateway's own tokens verify without
// waiting on anything, a provider's while its keys are fetched; the hold stands in for that wait.
let verified = 0;
let hold: Promise<void> | undefined;
jest.mock('../../src/tokens', () => {
  const actual = jest.requireActual<typeof import('../../src/tokens')>('../../src/tokens');
  return {
    ...actual,
    createTokenService: (...args: Parameters<typeof actual.createTokenService>) => {
      const service = actual.createTokenService(...args);
      return {
        ...service,
        async verify(token: string) {
          verified++;
          if (hold) await hold;
          return service.verify(token);
        },
      };
    },
  };
});

const MACHINE_REDIS = 'redis://127.0.0.1:6379';
const BUDGET = 3;
const SENT_AT_ONCE = 20;

describe('failed authentications sent at once from one network', () => {
  let upstream: TestServer;
  const upstreamWaiting = new Set<() => void>();
  let mostAtUpstreamAtOnce = 0;
  let redis: Redis | undefined;
  const prefix = isolatedKeyPrefix();

  beforeAll(async () => {
    // Holds each answer until six requests wait here (or for a second): shows how many got through at once.
    upstream = await listen((_req, res) => {
      const answer = () => {
        clearTimeout(timer);
        if (upstreamWaiting.delete(answer)) res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      };
      const timer = setTimeout(answer, 1000);
      upstreamWaiting.add(answer);
      mostAtUpstreamAtOnce = Math.max(mostAtUpstreamAtOnce, upstreamWaiting.size);
      if (upstreamWaiting.size === 6) for (const each of [...upstreamWaiting]) each();
    });
  });
  afterAll(async () => {
    await upstream.close();
    redis?.disconnect();
    await deleteKeys(MACHINE_REDIS, prefix);
  });

  // Networks of their own per store and test: the Redis windows outlive the memory gateway's.
  const stores: { desc: string; network: string; authenticated: string; deps: () => Promise<Partial<GatewayDependencies>> }[] = [
    { desc: 'memory', network: '198.51.100.27', authenticated: '198.51.100.37', deps: async () => ({}) },
    {
      desc: 'Redis',
      network: '198.51.100.28',
      authenticated: '198.51.100.38',
      deps: async () => {
        // A command timeout no loaded CI machine meets: a store timing out lets the request through (its policy), and more were verified.
        redis ??= createRedisStore({ url: MACHINE_REDIS, commandTimeoutMs: 5000, logger: memoryLogger('gateway').logger });
        await requireRedis(redis, MACHINE_REDIS);
        return { redis };
      },
    },
  ];

  async function startGateway(store: Partial<GatewayDependencies>): Promise<TestServer> {
    const config = testConfig(
      { users: upstream.url, orders: upstream.url, notifications: upstream.url },
      {
        routes: [{ name: 'per-user', prefix: '/api/per-user', service: 'users', upstreamPath: '/health', rateLimit: { max: BUDGET, windowMs: 60_000, by: 'user' } }],
        trustProxy: true,
        trustedProxies: ['127.0.0.1'],
        rateLimit: { max: 100_000, windowMs: 60_000, redisKeyPrefix: prefix, ...(store.redis && { redisUrl: MACHINE_REDIS }) },
      },
    );
    return listen(createGateway(config, { logger: memoryLogger('gateway').logger, metrics: false, ...store }).callback());
  }

  it.each(stores)('has no more credentials verified than its budget ($desc store)', async ({ deps, network }) => {
    const gateway = await startGateway(await deps());
    try {
      const forged = await Promise.all(Array.from({ length: SENT_AT_ONCE }, (_, i) => signToken({ secret: `not-the-gateway-secret-but-long-enough-${i}` })));
      let release!: () => void;
      hold = new Promise((resolve) => (release = resolve));
      verified = 0;
      const replies = Promise.all(forged.map((token) => sendRaw(gateway.url, '/api/per-user/x', { authorization: `Bearer ${token}`, 'X-Forwarded-For': network })));
      // The verifications the budget allows are under way (and held); then all of them fail.
      await waitFor(() => verified >= BUDGET, 'the first verifications');
      hold = undefined;
      release();
      const statuses = (await replies).map((reply) => reply.status).sort();
      expect(verified).toBe(BUDGET);
      expect(statuses).toEqual([...Array<number>(BUDGET).fill(401), ...Array<number>(SENT_AT_ONCE - BUDGET).fill(429)]);
    } finally {
      hold = undefined;
      await gateway.close();
    }
  });

  it.each(stores)('does not limit how many authenticated requests of one network reach the service at once ($desc store)', async ({ deps, authenticated }) => {
    const gateway = await startGateway(await deps());
    try {
      mostAtUpstreamAtOnce = 0;
      // Six users behind one address, each within its own limit, twice the network's budget at once.
      const tokens = await Promise.all(Array.from({ length: 6 }, (_, i) => signToken({ subject: `user-${i}` })));
      const replies = await Promise.all(tokens.map((token) => sendRaw(gateway.url, '/api/per-user/x', { authorization: `Bearer ${token}`, 'X-Forwarded-For': authenticated })));
      expect(replies.map((reply) => reply.status)).toEqual(Array(6).fill(200));
      expect(mostAtUpstreamAtOnce).toBe(6);
    } finally {
      await gateway.close();
    }
  });
});
