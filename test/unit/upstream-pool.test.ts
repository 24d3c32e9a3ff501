/**
 * Passive ejection (src/upstream-pool.ts) under a wall-clock step. An NTP step moves Date.now() and leaves
 * performance.now() alone. Date.now() is replaced before each pool is made: the pool took the function itself as its
 * clock, so replacing it later would not have reached it.
 */
import { createUpstreamPool, EJECTED_TRIAL_INTERVAL_MS } from '../../src/upstream-pool';
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

describe('picking among instances', () => {
  const origins = ['http://127.0.0.1:4001', 'http://127.0.0.1:4002', 'http://127.0.0.1:4003'];
  const clockAt = (start = 1000) => {
    const clock = { time: start, now: () => clock.time };
    return clock;
  };

  it('passes over instances `prefer` refuses, in round robin order, and takes a refused one when no other is healthy', () => {
    const pool = createUpstreamPool({ service: 'orders', origins, ejectAfterFailures: 3, ejectMs: 10_000 });
    const busy = new Set(['http://127.0.0.1:4001']);
    const prefer = (instance: { origin: string }) => !busy.has(instance.origin);
    expect(Array.from({ length: 4 }, () => pool.pick(undefined, prefer)?.origin)).toEqual([origins[1], origins[2], origins[1], origins[2]]);
    busy.add(origins[1]!).add(origins[2]!);
    // None preferred: round robin as without a preference.
    expect(Array.from({ length: 3 }, () => pool.pick(undefined, prefer)?.origin).sort()).toEqual([...origins].sort());
    busy.clear();
    expect(new Set(Array.from({ length: 3 }, () => pool.pick()?.origin)).size).toBe(3);
  });

  it('gives no trial while any instance is healthy, however long the others have been out', () => {
    const clock = clockAt();
    const pool = createUpstreamPool({ service: 'orders', origins: origins.slice(0, 2), ejectAfterFailures: 1, ejectMs: 60_000, now: clock.now });
    const [first] = [pool.pick()!];
    pool.reportFailure(first, 'ECONNREFUSED');
    for (const after of [0, EJECTED_TRIAL_INTERVAL_MS, 30_000, 59_999]) {
      clock.time = 1000 + after;
      expect(Array.from({ length: 4 }, () => pool.pick()?.origin)).toEqual(Array(4).fill(origins[1]));
    }
    clock.time = 1000 + 60_000;
    expect(new Set(Array.from({ length: 2 }, () => pool.pick()?.origin)).size).toBe(2);
  });

  it('while every instance is out, lets one request a second through to each, the first a full second after its ejection', () => {
    const clock = clockAt();
    const pool = createUpstreamPool({ service: 'orders', origins: origins.slice(0, 1), ejectAfterFailures: 2, ejectMs: 60_000, now: clock.now });
    const instance = pool.pick()!;
    pool.reportFailure(instance, 'ECONNREFUSED');
    expect(pool.pick()).toBe(instance);
    pool.reportFailure(instance, 'ECONNREFUSED');
    expect(pool.pick()).toBeUndefined();
    clock.time += EJECTED_TRIAL_INTERVAL_MS - 1;
    expect(pool.pick()).toBeUndefined();
    clock.time += 1;
    expect(pool.pick()).toBe(instance);
    // One trial per interval: the requests after it are answered 503 at once.
    expect(pool.pick()).toBeUndefined();
    // The trial failed: still out, its next trial an interval after the last.
    pool.reportFailure(instance, 'ECONNREFUSED');
    expect(pool.health()[0]?.state).toBe('ejected');
    clock.time += EJECTED_TRIAL_INTERVAL_MS;
    expect(pool.pick()).toBe(instance);
    expect(pool.pick(new Set([instance]))).toBeUndefined();
    // The next one answered: back at once, for every request.
    pool.reportSuccess(instance);
    expect(Array.from({ length: 3 }, () => pool.pick())).toEqual([instance, instance, instance]);
    expect(pool.health()[0]?.state).toBe('healthy');
  });

  // The proxy asks whether a retry has anywhere to go: asked with pick, that took the other instance's trial and the
  // retry found none; and trials began at the same instance every time, so a dead first one starved a recovered second.
  it('answers whether an instance could be picked without taking a trial, and moves on past each trial', () => {
    const clock = clockAt();
    const pool = createUpstreamPool({ service: 'orders', origins: origins.slice(0, 2), ejectAfterFailures: 1, ejectMs: 60_000, now: clock.now });
    const [a, b] = [pool.pick()!, pool.pick()!];
    pool.reportFailure(a, 'ECONNREFUSED');
    pool.reportFailure(b, 'ECONNREFUSED');
    expect(pool.canPick()).toBe(false);
    clock.time += EJECTED_TRIAL_INTERVAL_MS;
    for (let i = 0; i < 3; i++) expect(pool.canPick(new Set([a]))).toBe(true);
    const first = pool.pick()!;
    pool.reportFailure(first, 'ECONNREFUSED');
    // The retry of the same request goes to the other's trial, still due.
    expect(pool.canPick(new Set([first]))).toBe(true);
    const second = pool.pick(new Set([first]))!;
    expect(second).not.toBe(first);
    pool.reportSuccess(second);
    expect(Array.from({ length: 3 }, () => pool.pick())).toEqual([second, second, second]);
    // Trials take turns: with both out again, the next interval's first trial is the other one's.
    pool.reportFailure(second, 'ECONNREFUSED');
    clock.time += EJECTED_TRIAL_INTERVAL_MS;
    const turns = [pool.pick()!];
    clock.time += EJECTED_TRIAL_INTERVAL_MS;
    turns.push(pool.pick()!);
    expect(new Set(turns).size).toBe(2);
  });

  it('tries no sooner than ejectMs when ejectMs is shorter than the trial interval', () => {
    const clock = clockAt();
    const pool = createUpstreamPool({ service: 'orders', origins: origins.slice(0, 1), ejectAfterFailures: 1, ejectMs: 200, now: clock.now });
    pool.reportFailure(pool.pick()!, 'ECONNREFUSED');
    clock.time += 199;
    expect(pool.pick()).toBeUndefined();
    clock.time += 1;
    expect(pool.pick()?.origin).toBe(origins[0]);
  });
});
