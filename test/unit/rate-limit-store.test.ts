import { BoundedWindowStore } from '../../src/middleware/rate-limit';
import { createWindowCounter, KEPT_MEMORY_DRIVERS } from '../../src/rate-limit-store';

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
