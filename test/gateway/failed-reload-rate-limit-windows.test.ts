import { activeConfig, createLiveGateway } from '../../src/config-reload';
import { createGatewayApps } from '../../src/gateway';
import { listen, memoryLogger, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';

/**
 * A reload keeps an unchanged limit's memory windows. One whose build failed after its limiters were made left
 * their policies asked for: the next reload that built gave every unchanged limit a fresh, empty window
 * (`policy#2`), and a client that had spent its limit had all of it again.
 */
describe('a config reload that failed to build', () => {
  let gateway: TestServer;
  let reload: (timeoutMs: number) => string | undefined;
  let failNextBuild = false;
  const origin = 'http://127.0.0.1:9';
  const config = (timeoutMs: number) =>
    testConfig({ users: origin, orders: origin, notifications: origin }, { rateLimit: { max: 3, windowMs: 60_000 }, proxy: { timeoutMs } });

  beforeAll(async () => {
    const { logger } = memoryLogger('gateway');
    const live = createLiveGateway(
      activeConfig(config(10_000)),
      (active, kept) => {
        const apps = createGatewayApps(active.config, { logger, metrics: false, kept, configVersion: active.version });
        // A step after the limiters were made fails (as a missing file, a bad certificate would).
        if (failNextBuild) throw new Error('the build failed after its limiters were made');
        return apps;
      },
      logger,
    );
    gateway = await listen(live.listener);
    reload = (timeoutMs) => live.apply(activeConfig(config(timeoutMs)));
  });
  afterAll(() => gateway.close());

  const ordersStatus = async () => {
    const response = await fetch(`${gateway.url}/api/orders`);
    await response.arrayBuffer();
    return { status: response.status, remaining: response.headers.get('x-ratelimit-remaining') };
  };

  it("leaves the next reload an unchanged limit's windows, counts and all", async () => {
    // Three unauthenticated requests (401) spend the default limit of 3; the fourth is refused.
    for (let i = 0; i < 3; i++) await ordersStatus();
    expect(await ordersStatus()).toEqual({ status: 429, remaining: '0' });
    failNextBuild = true;
    expect(reload(10_001)).toMatch(/failed after its limiters/);
    failNextBuild = false;
    expect(await ordersStatus()).toEqual({ status: 429, remaining: '0' });
    // Only the proxy timeout changed: the limit is the same, and so is its window.
    expect(reload(10_002)).toBeUndefined();
    expect(await ordersStatus()).toEqual({ status: 429, remaining: '0' });
  });
});
