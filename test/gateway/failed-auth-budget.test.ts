import { generateKeyPair, SignJWT } from 'jose';
import type { Redis } from 'ioredis';
import { generateApiKey, hashApiKey } from '../../src/consumers';
import { createGateway, type GatewayDependencies } from '../../src/gateway';
import { createRedisStore } from '../../src/rate-limit-store';
import { requestOnNewConnection, startGatewayProcess, type GatewayProcess } from '../helpers/gateway-process';
import { deleteKeys, isolatedKeyPrefix, requireRedis } from '../helpers/redis';
import { listen, memoryLogger, sendRaw, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { signToken } from '../helpers/tokens';
import { MAPPING_PROTO, MAPPING_SERVICE, startMappingServer, type MappingServer } from '../grpc/mapping-server';

/**
 * On a route limited `by: user` or `by: consumer`, failed authentications are counted per client network. Once a
 * network has used up that budget, its next requests are refused before any credential is checked: a right key or
 * token is 429 too (a 200 told the guesser it had found one), and a forged provider token costs no signature check
 * and no JWKS fetch. Other networks, and the same network on another route, keep their own budgets.
 */
jest.setTimeout(60_000);

const MACHINE_REDIS = 'redis://127.0.0.1:6379';
const ISSUER = 'https://id.example.test/';
const AUDIENCE = 'koa-gateway-api';
const KEY = generateApiKey();
const consumers = [{ id: 'acme', role: 'partner', keys: [{ hash: hashApiKey(KEY) }] }];
const BUDGET = 3;
const route = (name: string, by: 'user' | 'consumer') => ({ name, prefix: `/api/${name}`, service: 'users', upstreamPath: '/health', rateLimit: { max: BUDGET, windowMs: 60_000, by } });
const routes = [route('per-consumer', 'consumer'), route('per-user', 'user')];

/** An RS256 token whose `kid` the provider does not publish: verifying it means fetching the JWKS again. */
async function forgedProviderToken(kid: string): Promise<string> {
  const { privateKey } = await generateKeyPair('RS256');
  return new SignJWT({}).setProtectedHeader({ alg: 'RS256', kid }).setSubject('mallory').setIssuer(ISSUER).setAudience(AUDIENCE).setExpirationTime('10m').sign(privateKey);
}

describe('a client network over its budget of failed authentications', () => {
  let upstream: TestServer;
  let jwks: TestServer;
  let jwksFetches = 0;
  let redis: Redis | undefined;
  const prefix = isolatedKeyPrefix();

  beforeAll(async () => {
    upstream = await listen((_req, res) => void res.writeHead(200, { 'content-type': 'application/json' }).end('{}'));
    jwks = await listen((_req, res) => {
      jwksFetches++;
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"keys":[]}');
    });
  });
  afterAll(async () => {
    await upstream.close();
    await jwks.close();
    redis?.disconnect();
    await deleteKeys(MACHINE_REDIS, prefix);
  });

  const stores: { desc: string; deps: () => Promise<Partial<GatewayDependencies>> }[] = [
    { desc: 'memory', deps: async () => ({}) },
    {
      desc: 'Redis',
      deps: async () => {
        redis = createRedisStore({ url: MACHINE_REDIS, commandTimeoutMs: 500, logger: memoryLogger('gateway').logger });
        await requireRedis(redis, MACHINE_REDIS);
        return { redis };
      },
    },
  ];

  it.each(stores)('is refused before any credential is checked, on every caller-limited route ($desc store)', async ({ deps }) => {
    const store = await deps();
    const config = testConfig(
      { users: upstream.url, orders: upstream.url, notifications: upstream.url },
      {
        routes,
        consumers,
        trustProxy: true,
        trustedProxies: ['127.0.0.1'],
        rateLimit: { max: 100_000, windowMs: 60_000, redisKeyPrefix: prefix, ...(store.redis && { redisUrl: MACHINE_REDIS }) },
        auth: { jwks: { url: `${jwks.url}/jwks.json`, issuer: ISSUER, audience: AUDIENCE, cooldownMs: 0 } },
      },
    );
    const gateway = await listen(createGateway(config, { logger: memoryLogger('gateway').logger, metrics: false, ...store }).callback());
    try {
      // Each network of its own per store: the Redis windows outlive the memory gateway's.
      const guesser = store.redis ? '198.51.100.17' : '198.51.100.7';
      const neighbour = store.redis ? '198.51.100.18' : '198.51.100.8';
      const call = async (path: string, address: string, headers: Record<string, string>) => (await sendRaw(gateway.url, path, { ...headers, 'X-Forwarded-For': address })).status;
      const validToken = await signToken();

      for (let i = 0; i < BUDGET; i++) expect(await call('/api/per-consumer/x', guesser, { 'X-API-Key': generateApiKey() })).toBe(401);
      // Over budget: the right key is not even looked at (it was 200, telling the guesser it had found one).
      const right = await sendRaw(gateway.url, '/api/per-consumer/x', { 'X-API-Key': KEY, 'X-Forwarded-For': guesser });
      expect(right.status).toBe(429);
      expect(Number(right.headers['retry-after'])).toBeGreaterThan(0);
      expect(right.headers.ratelimit).toMatch(/^"per-consumer";r=0;t=\d+$/);
      // Nor is a forged provider token: no signature check, no JWKS fetch (each one fetched the key set).
      const fetchesBefore = jwksFetches;
      for (let i = 0; i < 3; i++) expect(await call('/api/per-consumer/x', guesser, { authorization: `Bearer ${await forgedProviderToken(`unknown-${i}`)}` })).toBe(429);
      expect(jwksFetches).toBe(fetchesBefore);

      // A by-user route has its own budget: spent with bad tokens, then a valid token is refused as well.
      for (let i = 0; i < BUDGET; i++) expect(await call('/api/per-user/x', guesser, { authorization: `Bearer ${await signToken({ secret: 'not-the-gateway-secret-but-long-enough-xyz' })}` })).toBe(401);
      expect(await call('/api/per-user/x', guesser, { authorization: `Bearer ${validToken}` })).toBe(429);

      // A network under its budget is not affected, on either route.
      expect(await call('/api/per-consumer/x', neighbour, { 'X-API-Key': KEY })).toBe(200);
      expect(await call('/api/per-user/x', neighbour, { authorization: `Bearer ${validToken}` })).toBe(200);
    } finally {
      await gateway.close();
    }
  });

  // The memory store holds `maxTrackedClients` windows per policy. Forgotten oldest first, the guesser's spent budget
  // was pushed out by one failure from each of that many other networks (an IPv6 /48 holds 65,536 /64s), and its
  // next guesses were checked again.
  it('stays spent while more networks than the store tracks fail once each (memory store)', async () => {
    const config = testConfig(
      { users: upstream.url, orders: upstream.url, notifications: upstream.url },
      { routes, consumers, trustProxy: true, trustedProxies: ['127.0.0.1'], rateLimit: { max: 100_000, windowMs: 60_000, maxTrackedClients: 50 } },
    );
    const gateway = await listen(createGateway(config, { logger: memoryLogger('gateway').logger, metrics: false }).callback());
    try {
      const call = async (address: string, key: string) => (await sendRaw(gateway.url, '/api/per-consumer/x', { 'X-API-Key': key, 'X-Forwarded-For': address })).status;
      const guesser = '2001:db8:7:1::1';
      for (let i = 0; i < BUDGET; i++) expect(await call(guesser, generateApiKey())).toBe(401);
      expect(await call(guesser, KEY)).toBe(429);
      for (let i = 0; i < 500; i++) expect(await call(`2001:db8:8:${i.toString(16)}::1`, generateApiKey())).toBe(401);
      expect(await call(guesser, KEY)).toBe(429);
      expect(await call('2001:db8:9::1', KEY)).toBe(200);
    } finally {
      await gateway.close();
    }
  });

  describe('with two workers (windows counted in the cluster primary)', () => {
    let gateway: GatewayProcess | undefined;
    afterAll(() => {
      if (gateway?.child.exitCode === null) gateway.child.kill('SIGKILL');
    });

    it('is refused by every worker once the budget is spent, whichever worker saw the failures', async () => {
      gateway = await startGatewayProcess({
        config: { rateLimit: { max: 100_000, windowMs: 60_000 }, services: { users: { url: upstream.url } }, consumers, routes: [routes[0]] },
        env: { GATEWAY_WORKERS: '2' },
      });
      const url = `${gateway.url}/api/per-consumer/x`;
      // New connections: the primary hands them to the workers in turn.
      for (let i = 0; i < BUDGET; i++) expect((await requestOnNewConnection(url, { headers: { 'X-API-Key': generateApiKey() } })).status).toBe(401);
      const answers: number[] = [];
      for (let i = 0; i < 4; i++) answers.push((await requestOnNewConnection(url, { headers: { 'X-API-Key': KEY } })).status);
      expect(answers).toEqual([429, 429, 429, 429]);
    });
  });
});

/**
 * A service's own refusal of an authenticated caller (HTTP 401, gRPC UNAUTHENTICATED) is the service's answer,
 * not a failed authentication at the gateway: it spends no network's budget, over HTTP and gRPC alike.
 */
describe('a service that refuses an authenticated caller', () => {
  let refusing: TestServer;
  let grpcService: MappingServer;
  let gateway: TestServer;

  beforeAll(async () => {
    refusing = await listen((_req, res) => void res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer' }).end('{}'));
    grpcService = await startMappingServer();
    const config = testConfig(
      { users: refusing.url, orders: refusing.url, notifications: refusing.url },
      {
        services: { users: { url: refusing.url }, orders: { url: refusing.url }, notifications: { url: refusing.url }, mapping: { url: grpcService.url } },
        routes: [
          route('per-user', 'user'),
          { name: 'grpc-per-user', prefix: '/api/grpc-per-user', service: 'mapping', upstreamPath: '/v1', rateLimit: { max: BUDGET, windowMs: 60_000, by: 'user' }, grpc: { proto: MAPPING_PROTO, service: MAPPING_SERVICE } },
        ],
        trustProxy: true,
        trustedProxies: ['127.0.0.1'],
        rateLimit: { max: 100_000, windowMs: 60_000 },
      },
    );
    gateway = await listen(createGateway(config, { logger: memoryLogger('gateway').logger, metrics: false }).callback());
  });
  afterAll(async () => {
    await gateway.close();
    await grpcService.close();
    await refusing.close();
  });

  it.each([
    { desc: 'an HTTP service’s 401', path: '/api/per-user/x', body: undefined, network: '198.51.100.27' },
    { desc: 'a gRPC service’s UNAUTHENTICATED', path: '/api/grpc-per-user/fail', body: JSON.stringify({ code: 16, message: 'not you' }), network: '198.51.100.28' },
  ])('passes on $desc past the budget, and the network keeps its budget for failed authentications', async ({ path, body, network }) => {
    const statuses: number[] = [];
    for (let i = 0; i < BUDGET + 2; i++) {
      // A user of its own each time: the route's limit per user is not what is looked at.
      const token = await signToken({ subject: `${network}-${i}` });
      const response = await fetch(`${gateway.url}${path}`, {
        method: body === undefined ? 'GET' : 'POST',
        headers: { authorization: `Bearer ${token}`, 'x-forwarded-for': network, ...(body !== undefined && { 'content-type': 'application/json' }) },
        body,
      });
      await response.arrayBuffer();
      statuses.push(response.status);
    }
    // Over its budget a network is 429 before any credential is checked; these stay the service's 401s.
    expect(statuses).toEqual(Array(BUDGET + 2).fill(401));
  });
});

