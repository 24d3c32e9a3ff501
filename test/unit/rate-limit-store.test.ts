import { BoundedWindowStore } from '../../src/middleware/rate-limit';

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

  it('updates an existing client without evicting anyone', () => {
    const store = new BoundedWindowStore(2);
    store.set('a', live());
    store.set('b', live());
    store.set('a', live());
    expect(store.size).toBe(2);
  });
});
