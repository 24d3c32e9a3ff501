/**
 * Passive ejection (src/upstream-pool.ts) under a wall-clock step. An NTP step moves Date.now() and leaves
 * performance.now() alone. Date.now() is replaced before each pool is made: the pool took the function itself as its
 * clock, so replacing it later would not have reached it.
 */
import { createUpstreamPool } from '../../src/upstream-pool';
import { steppableWallClock } from '../helpers/wall-clock';

const ORIGIN = 'http://127.0.0.1:4001';
const EJECT_MS = 50;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('passive ejection when the wall clock is stepped', () => {
  const wallClock = steppableWallClock();
  beforeEach(() => wallClock.install());
  afterEach(() => wallClock.restore());

  const ejectedPool = () => {
    const pool = createUpstreamPool({ service: 'users', origins: [ORIGIN], ejectAfterFailures: 1, ejectMs: EJECT_MS });
    pool.reportFailure(pool.pick()!, 'ECONNREFUSED');
    expect(pool.pick()).toBeUndefined();
    return pool;
  };

  // A one-instance service that had recovered answered 503 for the whole hour of the step.
  it('gives an ejected instance traffic again once ejectMs has passed, though the wall clock stepped back an hour', async () => {
    const pool = ejectedPool();
    wallClock.step(-3_600_000);
    await sleep(EJECT_MS + 30);
    expect(pool.pick()?.origin).toBe(ORIGIN);
    expect(pool.health()).toEqual([{ origin: ORIGIN, state: 'healthy', consecutiveFailures: 1, lastFailure: 'ECONNREFUSED' }]);
  });

  it('keeps an ejected instance out for ejectMs, though the wall clock stepped forward an hour', () => {
    const pool = ejectedPool();
    wallClock.step(3_600_000);
    expect(pool.pick()).toBeUndefined();
    expect(pool.health()[0]?.state).toBe('ejected');
  });

  it('reports when an ejection ends on the wall clock as it reads now, after a step', () => {
    const pool = ejectedPool();
    wallClock.step(-3_600_000);
    const [instance] = pool.health();
    expect(instance?.state).toBe('ejected');
    const endsInMs = Date.parse(instance!.ejectedUntil!) - Date.now();
    expect(endsInMs).toBeGreaterThan(0);
    expect(endsInMs).toBeLessThanOrEqual(EJECT_MS);
  });
});
