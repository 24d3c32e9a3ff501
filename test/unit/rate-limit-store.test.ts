import fc from 'fast-check';
import { BoundedWindowStore } from '../../src/middleware/rate-limit';
import { createWindowCounter, KEPT_MEMORY_DRIVERS, memoryWindowStore } from '../../src/rate-limit-store';

describe('BoundedWindowStore', () => {
  const live = () => ({ reset: Date.now() / 1000 + 60 });
  const expired = () => ({ reset: Date.now() / 1000 - 1 });

  it('never holds more than its bound, however many clients arrive', () => {
    const store = new BoundedWindowStore(100);
    for (let i = 0; i < 10_000; i++) store.set(`client-${i}`, live());
    expect(store.size).toBeLessThanOrEqual(100);
    expect(store.has('client-9999')).toBe(true);
  });

  it('drops expired windows before live ones', () => {
    const store = new BoundedWindowStore(3);
    store.set('old', expired());
    store.set('a', live());
    store.set('b', live());
    store.set('c', live());
    expect([...store.keys()].sort()).toEqual(['a', 'b', 'c']);
  });

  // Windows expiring one by one while new clients arrive: a sweep that freed only what had expired made room for one
  // insert, and every insert after it walked the whole table again (one walk per insert, 100,000 entries each).
  it('walks its table once per tenth of its bound, however its windows expire', () => {
    class CountingWalks extends BoundedWindowStore {
      walks = 0;
      override [Symbol.iterator]() {
        this.walks++;
        return super[Symbol.iterator]();
      }
    }
    const store = new CountingWalks(100);
    for (let i = 0; i < 100; i++) store.set(`client-${i}`, live());
    store.walks = 0;
    for (let i = 100; i < 150; i++) {
      // One window somewhere in the table has just expired.
      const [someone] = [...store.keys()].slice(-2);
      store.get(someone!)!.reset = Date.now() / 1000 - 1;
      store.set(`client-${i}`, live());
      expect(store.size).toBeLessThanOrEqual(100);
    }
    expect(store.walks).toBeLessThanOrEqual(6);
    expect(store.has('client-149')).toBe(true);
  });

  // Dropped oldest first, a spent window was pushed out by a bound's worth of fresh ones (one request from each of
  // as many networks) and its client started afresh.
  it('forgets the least spent live windows first, the oldest among equals', () => {
    const spentOf = (window: { reset: number; spent: number }) => window.spent;
    const store = new BoundedWindowStore(10, () => Date.now() / 1000, spentOf);
    store.set('guesser', { ...live(), spent: 5 });
    for (let i = 0; i < 1000; i++) store.set(`crowd-${i}`, { ...live(), spent: 1 });
    expect(store.size).toBeLessThanOrEqual(10);
    expect(store.has('guesser')).toBe(true);
    expect(store.has('crowd-999')).toBe(true);
    // Among windows spent alike the oldest went: the newest crowd is what is left beside the guesser.
    expect([...store.keys()].filter((key) => key !== 'guesser')).toEqual(Array.from({ length: store.size - 1 }, (_, i) => `crowd-${1000 - store.size + 1 + i}`));
  });

  // The rule for every table: when an insert finds it full, expired windows go, then live ones by (spent, age) until
  // a tenth of the bound is free; nothing else is dropped and the newcomer always stays.
  it('drops exactly the expired windows and then the least spent, oldest first, for any sequence of inserts', () => {
    const nowSeconds = 1_000_000;
    const insert = fc.record({ client: fc.integer({ min: 0, max: 40 }), spent: fc.integer({ min: 0, max: 4 }), expired: fc.boolean() });
    fc.assert(
      fc.property(fc.integer({ min: 1, max: 25 }), fc.array(insert, { maxLength: 200 }), (bound, inserts) => {
        const store = new BoundedWindowStore<{ reset: number; spent: number }>(bound, () => nowSeconds, (window) => window.spent);
        let model: { client: string; reset: number; spent: number }[] = [];
        for (const { client, spent, expired } of inserts) {
          const key = `c${client}`;
          const window = { reset: expired ? nowSeconds - 1 : nowSeconds + 60, spent };
          const known = model.find((entry) => entry.client === key);
          if (!known && model.length >= bound) {
            model = model.filter((entry) => entry.reset >= nowSeconds);
            const excess = model.length - (bound - Math.max(1, Math.floor(bound / 10)));
            if (excess > 0) {
              const leaving = new Set([...model].sort((a, b) => a.spent - b.spent).slice(0, excess));
              model = model.filter((entry) => !leaving.has(entry));
            }
          }
          if (known) Object.assign(known, window);
          else model.push({ client: key, ...window });
          store.set(key, window);
          expect([...store.entries()].map(([client, { reset, spent }]) => ({ client, reset, spent }))).toEqual(model);
          expect(store.size).toBeLessThanOrEqual(bound);
        }
      }),
      { seed: 20261206, numRuns: 300 },
    );
  });

  it('updates an existing client without evicting anyone', () => {
    const store = new BoundedWindowStore(2);
    store.set('a', live());
    store.set('b', live());
    store.set('a', live());
    expect(store.size).toBe(2);
  });
});

describe('createWindowCounter, memory store', () => {
  const counter = (db: Map<string, unknown>, storeName = 'default') =>
    createWindowCounter({ kind: 'memory', db }, { storeName, windowPolicy: `${storeName}|3|60000`, max: 3, windowMs: 60_000 });

  // The drivers of recent clients are reused (a per-request driver cost a runtime hash per lookup): the counts must
  // stay in the store, so that forgetting the drivers, as a crowd of other clients makes it do, forgets no window.
  it("keeps a client's count while more clients than it keeps drivers for come between its requests", async () => {
    const windows = counter(new BoundedWindowStore(10 * KEPT_MEMORY_DRIVERS));
    expect(await windows.take('192.0.2.1')).toMatchObject({ admitted: true, remaining: 2 });
    for (let i = 0; i < KEPT_MEMORY_DRIVERS + 100; i++) await windows.take(`198.51.100.${i % 256}:${i}`);
    expect(await windows.take('192.0.2.1')).toMatchObject({ admitted: true, remaining: 1 });
    expect(await windows.take('192.0.2.1')).toMatchObject({ admitted: true, remaining: 0 });
    expect(await windows.take('192.0.2.1')).toMatchObject({ admitted: false, remaining: 0 });
    expect(await windows.peek('192.0.2.1')).toMatchObject({ left: 0, total: 3 });
  });

  it('still refuses a client that spent its window after ten bounds of clients came with one request each', async () => {
    const windows = counter(memoryWindowStore(1000));
    for (let i = 0; i < 3; i++) expect(await windows.take('2001:db8:0:1::/64')).toMatchObject({ admitted: true });
    expect(await windows.take('2001:db8:0:1::/64')).toMatchObject({ admitted: false });
    for (let i = 0; i < 10_000; i++) await windows.take(`2001:db8:1:${i.toString(16)}::/64`);
    expect(await windows.take('2001:db8:0:1::/64')).toMatchObject({ admitted: false, remaining: 0 });
    expect(await windows.peek('2001:db8:0:1::/64')).toMatchObject({ left: 0 });
  });

  it('counts each client, and each policy on one store, apart', async () => {
    const db = new Map<string, unknown>();
    const first = counter(db, 'default');
    const second = counter(db, 'route:users');
    for (let i = 0; i < 3; i++) await first.take('192.0.2.1');
    expect(await first.take('192.0.2.1')).toMatchObject({ admitted: false });
    expect(await first.take('192.0.2.2')).toMatchObject({ admitted: true, remaining: 2 });
    expect(await second.take('192.0.2.1')).toMatchObject({ admitted: true, remaining: 2 });
  });
});
