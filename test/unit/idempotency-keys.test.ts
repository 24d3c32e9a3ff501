import { createIdempotencyKeys } from '../../services/orders/idempotency-keys';

describe("order-service's Idempotency-Keys", () => {
  const body = [{ sku: 'anvil', quantity: 1 }];

  it('replays a settled key until it expires, then takes it as new', () => {
    const clock = { time: 0 };
    const keys = createIdempotencyKeys({ ttlMs: 1000, now: () => clock.time });
    const first = keys.start('user:2', 'k', body);
    expect(first.kind).toBe('first');
    if (first.kind === 'first') first.settle('order-1');
    clock.time = 999;
    expect(keys.start('user:2', 'k', body)).toEqual({ kind: 'replay', orderId: 'order-1' });
    clock.time = 1000;
    expect(keys.start('user:2', 'k', [{ sku: 'other', quantity: 2 }]).kind).toBe('first');
  });

  it('keeps at most maxKeys, dropping the oldest, and frees a key whose first request was abandoned', () => {
    const keys = createIdempotencyKeys({ maxKeys: 2 });
    for (const key of ['a', 'b', 'c']) {
      const started = keys.start('user:2', key, body);
      if (started.kind === 'first') started.settle(`order-${key}`);
    }
    // `a` was the oldest of three: forgotten, so it is new again; `c` is remembered.
    expect(keys.start('user:2', 'c', body)).toEqual({ kind: 'replay', orderId: 'order-c' });
    expect(keys.start('user:2', 'a', body).kind).toBe('first');
    const pending = keys.start('user:2', 'p', body);
    expect(keys.start('user:2', 'p', body)).toEqual({ kind: 'in_flight' });
    if (pending.kind === 'first') pending.abandon();
    expect(keys.start('user:2', 'p', body).kind).toBe('first');
  });

  // One global bound alone: a busy owner's keys pushed every other owner's out, and their retries placed second orders.
  it("keeps another owner's keys while one owner sends more than its share", () => {
    const keys = createIdempotencyKeys({ maxKeys: 100, maxKeysPerOwner: 10 });
    const bob = keys.start('consumer:bob', 'bob-key-1', body);
    if (bob.kind === 'first') bob.settle('order-bob');
    for (let i = 0; i < 1000; i++) {
      const noisy = keys.start('consumer:noisy', `n-${i}`, body);
      if (noisy.kind === 'first') noisy.settle(`order-n-${i}`);
    }
    expect(keys.start('consumer:bob', 'bob-key-1', body)).toEqual({ kind: 'replay', orderId: 'order-bob' });
    // The noisy owner keeps its newest ten.
    expect(keys.start('consumer:noisy', 'n-999', body)).toEqual({ kind: 'replay', orderId: 'order-n-999' });
    expect(keys.start('consumer:noisy', 'n-989', body).kind).toBe('first');
  });

  it('tells the same items from others, and one owner from another', () => {
    const keys = createIdempotencyKeys();
    const started = keys.start('user:2', 'k', body);
    if (started.kind === 'first') started.settle('order-1');
    expect(keys.start('user:2', 'k', [{ sku: 'anvil', quantity: 2 }])).toEqual({ kind: 'other_body' });
    expect(keys.start('consumer:2', 'k', body).kind).toBe('first');
    // An owner and a key cannot run into another pair: the line feed between them is in neither.
    expect(keys.start('user:2\nk', '', body).kind).toBe('first');
  });
});
