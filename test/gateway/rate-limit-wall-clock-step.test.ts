import { generateApiKey, hashApiKey } from '../../src/consumers';
import { createGateway } from '../../src/gateway';
import { listen, memoryLogger, sendRaw, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';

/**
 * The memory store's windows run on koa-ratelimit's monotonic clock; a step of the wall clock (NTP, a resumed VM)
 * moves Date.now() alone. Compared with Date.now(), a step back kept a network that had spent its budget of failed
 * authentications refused for the whole step (an hour's step, an hour locked out, a right key included), and a step
 * forward let the check before authentication pass every guess, with a 429 that said `t=0`.
 */
const KEY = generateApiKey();
const BUDGET = 3;
const route = (name: string, windowMs: number) => ({ name, prefix: `/api/${name}`, service: 'users', upstreamPath: '/health', rateLimit: { max: BUDGET, windowMs, by: 'consumer' } });

describe('a network over its budget of failed authentications when the wall clock is stepped', () => {
  let upstream: TestServer;
  let gateway: TestServer;

  // Stepped (a jest spy) from the start: code that keeps `Date.now` itself must read the stepped one.
  let wallClockStepMs = 0;
  const realNow = Date.now.bind(Date);
  beforeAll(() => void jest.spyOn(Date, 'now').mockImplementation(() => realNow() + wallClockStepMs));
  afterEach(() => void (wallClockStepMs = 0));
  afterAll(() => jest.restoreAllMocks());
  const stepWallClock = (ms: number) => void (wallClockStepMs = ms);

  beforeAll(async () => {
    upstream = await listen((_req, res) => void res.writeHead(200, { 'content-type': 'application/json' }).end('{}'));
    const config = testConfig(
      { users: upstream.url, orders: upstream.url, notifications: upstream.url },
      {
        routes: [route('brief', 1000), route('minute', 60_000)],
        consumers: [{ id: 'acme', role: 'partner', keys: [{ hash: hashApiKey(KEY) }] }],
        trustProxy: true,
        trustedProxies: ['127.0.0.1'],
        rateLimit: { max: 100_000, windowMs: 60_000 },
      },
    );
    gateway = await listen(createGateway(config, { logger: memoryLogger('gateway').logger, metrics: false }).callback());
  });
  afterAll(async () => {
    await gateway.close();
    await upstream.close();
  });

  const call = (path: string, network: string, key: string) => sendRaw(gateway.url, path, { 'X-API-Key': key, 'X-Forwarded-For': network });
  async function spendBudget(path: string, network: string): Promise<void> {
    for (let i = 0; i < BUDGET; i++) expect((await call(path, network, generateApiKey())).status).toBe(401);
    expect((await call(path, network, KEY)).status).toBe(429);
  }

  it('is let in again once its window ends, though the wall clock stepped back an hour', async () => {
    await spendBudget('/api/brief/x', '198.51.100.61');
    stepWallClock(-3_600_000);
    // The 1 s window ends in about a second of real time (was: an hour and a second).
    await waitFor(async () => (await call('/api/brief/x', '198.51.100.61', KEY)).status === 200, 'the right key to pass after the window', 4000);
  });

  it('is still refused, and told when to come back, after the wall clock stepped forward an hour', async () => {
    await spendBudget('/api/minute/x', '198.51.100.62');
    stepWallClock(3_600_000);
    const right = await call('/api/minute/x', '198.51.100.62', KEY);
    // Was 200: the check before authentication took the window for ended, and a right key answered as one.
    expect(right.status).toBe(429);
    expect(Number(right.headers['retry-after'])).toBeGreaterThanOrEqual(55);
    expect(right.headers.ratelimit).toMatch(/^"minute";r=0;t=(5[5-9]|60)$/);
  });
});
