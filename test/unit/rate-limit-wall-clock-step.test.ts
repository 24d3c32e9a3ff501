import { execFileSync } from 'node:child_process';
import { BoundedWindowStore } from '../../src/middleware/rate-limit';
import { createLeaseLedger, createLeaseTable, leaseClockMs, type Leased, type Recall } from '../../src/rate-limit-leases';
import { createRedisStore, createWindowCounter } from '../../src/rate-limit-store';
import { requireRedis } from '../helpers/redis';
import { memoryLogger } from '../helpers/servers';

/**
 * Rate-limit windows are timed on monotonic clocks: a step of the wall clock (NTP, a resumed VM) moves Date.now()
 * alone, and must neither lengthen a window (a spent client refused for the step's length) nor end it early (a
 * limited client let through, live windows swept away). Date.now() is stepped here; performance.now() and
 * process.hrtime() are left alone, as a real step leaves them.
 */
const steps = [
  { desc: 'stepped back an hour', stepMs: -3_600_000 },
  { desc: 'stepped forward an hour', stepMs: 3_600_000 },
];

// In place before anything is made: code that keeps `Date.now` itself (a default clock) must read the stepped one.
let wallClockStepMs = 0;
beforeEach(() => {
  const realNow = Date.now.bind(Date);
  wallClockStepMs = 0;
  jest.spyOn(Date, 'now').mockImplementation(() => realNow() + wallClockStepMs);
});
const stepWallClock = (ms: number) => void (wallClockStepMs = ms);

/** Lets `ms` of real time pass: what ends a window. */
const letRealTimePass = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

afterEach(() => jest.restoreAllMocks());

describe('the memory store, when the wall clock is stepped', () => {
  // A full table makes room by dropping expired windows first: judged by Date.now(), a step forward took every live
  // window for expired, and the next new client's insert dropped them all (a limited client started afresh).
  it("keeps a limited client's live window when a new client fills the table after a step forward", async () => {
    const db = new BoundedWindowStore(10);
    const windows = createWindowCounter({ kind: 'memory', db }, { storeName: 'p', windowPolicy: 'p|2|60000', max: 2, windowMs: 60_000 });
    for (let i = 0; i < 8; i++) await windows.take(`filler-${i}`);
    expect([(await windows.take('limited')).admitted, (await windows.take('limited')).admitted, (await windows.take('limited')).admitted]).toEqual([true, true, false]);
    await windows.take('filler-8');
    stepWallClock(3_600_000);
    await windows.take('newcomer');
    expect(db.size).toBeGreaterThan(2);
    expect((await windows.take('limited')).admitted).toBe(false);
  });

  it.each(steps)('reports when a window admits again in epoch seconds of the wall clock ($desc)', async ({ stepMs }) => {
    const windows = createWindowCounter({ kind: 'memory', db: new BoundedWindowStore(10) }, { storeName: 'p', windowPolicy: 'p|2|60000', max: 2, windowMs: 60_000 });
    await windows.take('client');
    stepWallClock(stepMs);
    const { reset } = await windows.take('client');
    // X-RateLimit-Reset and Retry-After are read against the client's (and the gateway's) wall clock.
    expect(reset - Date.now() / 1000).toBeGreaterThan(59);
    expect(reset - Date.now() / 1000).toBeLessThan(60.01);
  });
});

/** The machine's Redis (every session and CI have it on the standard port). */
const MACHINE_REDIS = 'redis://127.0.0.1:6379';

describe('the Redis store, when the wall clock is stepped after start', () => {
  // async-ratelimiter's clock, read against Date.now(): stepped forward, Retry-After said 1 and X-RateLimit-Reset an
  // hour ago while the window kept refusing; stepped back, they said an hour more.
  it.each(steps)('reports when a window admits again in epoch seconds of the wall clock ($desc)', async ({ stepMs }) => {
    const redis = createRedisStore({ url: MACHINE_REDIS, commandTimeoutMs: 500, logger: memoryLogger('gateway').logger });
    await requireRedis(redis, MACHINE_REDIS);
    const keyPrefix = `wall-clock-step-${process.pid}-${stepMs}`;
    try {
      const windows = createWindowCounter({ kind: 'redis', client: redis, keyPrefix }, { storeName: 'p', windowPolicy: 'p|2|60000', max: 2, windowMs: 60_000 });
      await windows.take('client');
      stepWallClock(stepMs);
      const { reset } = await windows.take('client');
      // Rounded up to the second (never early): up to a second past the window's end.
      expect(reset - Date.now() / 1000).toBeGreaterThan(59);
      expect(reset - Date.now() / 1000).toBeLessThan(61.01);
    } finally {
      const keys = await redis.keys(`${keyPrefix}:*`);
      if (keys.length > 0) await redis.del(...keys);
      redis.disconnect();
    }
  });
});

describe('the cluster leases, when the wall clock is stepped', () => {
  const WINDOW_MS = 400;

  /** A ledger and one worker's lease table on their default clocks, the table keeping every answer as a worker does. */
  function cluster(max: number) {
    const answers: Leased[] = [];
    const ledger = createLeaseLedger({ maxTrackedClients: 10, workers: 1, send: (_worker, message: Leased | Recall) => void (message.gateway === 'leased' && answers.push(message)) });
    const table = createLeaseTable({ maxTrackedClients: 10 });
    let id = 0;
    const ask = () => {
      ledger.ask(1, { gateway: 'lease', id: ++id, policy: `p|${max}|${WINDOW_MS}`, client: 'c', max, windowMs: WINDOW_MS });
      const answer = answers.at(-1)!;
      table.keep(answer, true);
      return answer.granted;
    };
    return { ask, spend: () => table.spend(`p|${max}|${WINDOW_MS}`, 'c', max) };
  }

  it.each(steps)("the primary opens a client's next window when its time is up, not before ($desc)", async ({ stepMs }) => {
    const { ask } = cluster(2);
    expect([ask(), ask(), ask()]).toEqual([1, 1, 0]);
    stepWallClock(stepMs);
    // Same window: still spent (was: a step forward opened the next one at once).
    expect(ask()).toBe(0);
    await letRealTimePass(WINDOW_MS + 100);
    // Was: a step back kept it spent for an hour more.
    expect(ask()).toBe(1);
  });

  it.each(steps)("a worker spends its lease until the window's time is up, not after ($desc)", async ({ stepMs }) => {
    // A lease of 10 / 2 = 5 tokens, the asking request's one spent: 4 kept by the worker.
    const { ask, spend } = cluster(10);
    expect(ask()).toBe(5);
    stepWallClock(stepMs);
    // Was: after a step forward the worker took its lease for ended and asked the primary for every request.
    expect(spend()).toMatchObject({ remaining: 4 });
    await letRealTimePass(WINDOW_MS + 100);
    // Was: after a step back it spent the old window's tokens for an hour more, beside the primary's next window.
    expect(spend()).toBeUndefined();
  });

  // Window ends cross between the primary and the workers as instants: every process must read the same clock.
  // performance.now() counts from each process's start; the host's monotonic clock does not.
  it('times windows on a clock that another process reads alike', () => {
    const before = leaseClockMs();
    const inChild = Number(execFileSync(process.execPath, ['-e', `console.log((${leaseClockMs.toString()})())`]).toString());
    const after = leaseClockMs();
    expect(inChild).toBeGreaterThanOrEqual(before);
    expect(inChild).toBeLessThanOrEqual(after);
  });
});
