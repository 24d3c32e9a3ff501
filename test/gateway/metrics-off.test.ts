import { parseConfig } from '../../src/config';
import { createGatewayApps } from '../../src/gateway';
import { createGatewayMetrics } from '../../src/metrics';
import { createApp as createUsersApp } from '../../services/users/app';
import { listen, memoryLogger, refusedOrigin, type TestServer } from '../helpers/servers';
import { login } from '../helpers/stack';
import { shippedConfigFile, TEST_JWT_SECRET } from '../helpers/test-config';

// Every place that records goes through the one GatewayMetrics: none may be made.
jest.mock('../../src/metrics', () => {
  const actual = jest.requireActual<typeof import('../../src/metrics')>('../../src/metrics');
  return { ...actual, createGatewayMetrics: jest.fn(actual.createGatewayMetrics) };
});

/**
 * With metrics off (no scrape listener, no metric export: `metrics: false`, as main.ts decides) nothing is
 * recorded, and every path that would record (request close, rate-limit decisions, upstream attempts and
 * retries, ejections) still works.
 */
describe('the gateway with metrics off', () => {
  let users: TestServer;
  let gateway: TestServer;

  beforeAll(async () => {
    users = await listen((await createUsersApp({ logger: memoryLogger('user-service').logger })).callback());
    const dead = await refusedOrigin();
    const config = parseConfig(
      { ...shippedConfigFile(), rateLimit: { max: 5, windowMs: 60_000 } },
      // users has a dead instance beside the live one: retries and ejections happen too.
      { JWT_SECRET: TEST_JWT_SECRET, USER_SERVICE_URL: `${users.url},${dead}`, ORDER_SERVICE_URL: users.url, NOTIF_SERVICE_URL: users.url },
    );
    gateway = await listen(createGatewayApps(config, { logger: memoryLogger('gateway').logger, metrics: false }).gateway.callback());
  });
  afterAll(async () => {
    await Promise.all([gateway.close(), users.close()]);
  });

  it('authenticates, limits, forwards and retries without recording anything', async () => {
    // No route takes /metrics on the public listener; its 404 spends one of the client's five, as any request.
    expect((await fetch(`${gateway.url}/metrics`)).status).toBe(404);
    const token = await login(gateway.url, 'bob@example.com', 'builder');
    const statuses: number[] = [];
    for (let i = 0; i < 5; i++) statuses.push((await fetch(`${gateway.url}/api/users/2`, { headers: { authorization: `Bearer ${token}` } })).status);
    expect(statuses).toEqual([200, 200, 200, 200, 429]);
    expect(jest.mocked(createGatewayMetrics)).not.toHaveBeenCalled();
  });
});
