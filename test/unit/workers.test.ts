import os from 'node:os';
import fc from 'fast-check';
import { createWindowCounter } from '../../src/rate-limit-store';
import { restartDelayMs, toPrimaryMessage, workerCount } from '../../src/workers';

describe('workerCount', () => {
  it('is the number given, or one per available core for auto', () => {
    expect(workerCount(3)).toBe(3);
    expect(workerCount('auto')).toBe(os.availableParallelism());
  });
});

describe('restartDelayMs', () => {
  it('doubles with each quick crash in a row, from 100 ms up to 10 s', () => {
    expect([1, 2, 3, 4, 5, 8, 20, 1000].map(restartDelayMs)).toEqual([100, 200, 400, 800, 1600, 10_000, 10_000, 10_000]);
  });
});

describe('the primary window counter', () => {
  it('allows exactly max per client per window, whatever the order and timing of requests', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: 10, max: 1000 }),
        fc.array(fc.record({ client: fc.constantFrom('a', 'b', 'c'), advanceMs: fc.integer({ min: 0, max: 400 }) }), { maxLength: 60 }),
        (max, windowMs, requests) => {
          let now = 1_000_000;
          const counter = createWindowCounter({ maxTrackedClients: 100, now: () => now });
          // The model: a window opens at a client's first request after the last one ended.
          const windows = new Map<string, { endsAt: number; count: number }>();
          for (const { client, advanceMs } of requests) {
            now += advanceMs;
            let window = windows.get(client);
            if (!window || window.endsAt < now) windows.set(client, (window = { endsAt: now + windowMs, count: 0 }));
            window.count += 1;
            const allowed = counter.take('policy', client, max, windowMs).remaining > 0;
            expect(allowed).toBe(window.count <= max);
          }
        },
      ),
      { seed: 13, numRuns: 200 },
    );
  });

  it('counts each policy apart, so a changed limit starts afresh and an unchanged one keeps counting', () => {
    const counter = createWindowCounter({ maxTrackedClients: 100, now: () => 5_000 });
    expect(counter.take('api|2|60000', 'x', 2, 60_000).remaining).toBe(2);
    expect(counter.take('api|2|60000', 'x', 2, 60_000).remaining).toBe(1);
    expect(counter.take('api|2|60000', 'x', 2, 60_000).remaining).toBe(0);
    expect(counter.take('api|1|60000', 'x', 1, 60_000).remaining).toBe(1);
  });

  it('holds at most maxTrackedClients windows per policy', () => {
    let now = 0;
    const counter = createWindowCounter({ maxTrackedClients: 10, now: () => now });
    for (let i = 0; i < 1000; i++) counter.take('p', `client-${i}`, 1, 60_000);
    // The newest client has a window; the store dropped older ones rather than growing.
    now += 1;
    expect(counter.take('p', 'client-999', 1, 60_000).remaining).toBe(0);
    expect(counter.take('p', 'client-0', 1, 60_000).remaining).toBe(1);
  });
});

describe('toPrimaryMessage (what the primary acts on from a worker)', () => {
  it.each([
    { desc: 'null', raw: null },
    { desc: 'a string', raw: 'take' },
    { desc: 'a number', raw: 7 },
    { desc: 'an unknown kind', raw: { gateway: 'exit' } },
    { desc: 'a take without a client', raw: { gateway: 'take', id: 1, policy: 'default|10|60000', max: 10, windowMs: 60_000 } },
    { desc: 'a take whose client is an object', raw: { gateway: 'take', id: 1, policy: 'p', client: { toString: 1 }, max: 10, windowMs: 60_000 } },
    { desc: 'a take with a fractional max', raw: { gateway: 'take', id: 1, policy: 'p', client: 'c', max: 1.5, windowMs: 60_000 } },
    { desc: 'a take with a window of NaN', raw: { gateway: 'take', id: 1, policy: 'p', client: 'c', max: 10, windowMs: Number.NaN } },
    { desc: 'a status without an id', raw: { gateway: 'status' } },
    { desc: 'an applied without a version', raw: { gateway: 'applied', ok: true, loadedAt: 'now' } },
    { desc: 'a listening without a url', raw: { gateway: 'listening' } },
  ])('ignores $desc', ({ raw }) => {
    expect(toPrimaryMessage(raw)).toBeUndefined();
  });

  it('passes each well-formed message on as it is', () => {
    const messages = [
      { gateway: 'hello' },
      { gateway: 'listening', url: 'http://127.0.0.1:3000' },
      { gateway: 'applied', ok: false, version: 'abc', loadedAt: '2026-01-01T00:00:00.000Z' },
      { gateway: 'take', id: 3, policy: 'default|10|60000', client: '203.0.113.0/24', max: 10, windowMs: 60_000 },
      { gateway: 'reload', id: 4 },
      { gateway: 'status', id: 5 },
    ];
    for (const message of messages) expect(toPrimaryMessage(message)).toEqual(message);
  });
});
