import { createInvalidationQueue, createInvalidationRelay, type CacheInvalidated, type CacheInvalidation } from '../../src/cache-invalidations';

/** A worker's queue whose batches to the primary are kept, not sent. */
function queueSending(options: { timeoutMs?: number; maxQueued?: number } = {}) {
  const sent: CacheInvalidation[] = [];
  const queue = createInvalidationQueue({ send: (batch) => sent.push(batch), ...options });
  return { queue, sent };
}

/** Resolves to how each promise settled so far (`pending` for none yet), after pending callbacks ran. */
async function states<T>(promises: Promise<T>[]): Promise<(T | 'pending')[]> {
  const seen: (T | 'pending')[] = promises.map(() => 'pending');
  promises.forEach((promise, index) => void promise.then((value) => (seen[index] = value)));
  await new Promise((resolve) => setImmediate(resolve));
  return seen;
}

describe('createInvalidationQueue (a worker\'s invalidations for the other workers)', () => {
  it('sends the first at once and resolves it true once the primary confirms it', async () => {
    const { queue, sent } = queueSending();
    const write = queue.publish('items', 'r1');
    expect(sent).toEqual([{ gateway: 'invalidate', id: 1, resources: [{ route: 'items', resource: 'r1' }] }]);
    expect(await states([write])).toEqual(['pending']);
    queue.confirmed(1);
    expect(await write).toBe(true);
  });

  it('sends a hammered resource once per round trip: the writes behind the batch in flight share the next one, naming it once', async () => {
    const { queue, sent } = queueSending();
    const first = queue.publish('items', 'r1');
    const behind = Array.from({ length: 500 }, (_, i) => queue.publish('items', i % 2 === 0 ? 'r1' : 'r2'));
    expect(sent).toHaveLength(1);
    queue.confirmed(1);
    expect(await first).toBe(true);
    // The batch in flight may have reached a worker before these writes' stale copies were stored there: they
    // wait for the next batch, which goes once the first is confirmed.
    expect(await states(behind)).toEqual(Array(500).fill('pending'));
    expect(sent).toHaveLength(2);
    expect(sent[1]).toEqual({ gateway: 'invalidate', id: 2, resources: [{ route: 'items', resource: 'r1' }, { route: 'items', resource: 'r2' }] });
    queue.confirmed(2);
    expect(await Promise.all(behind)).toEqual(Array(500).fill(true));
    expect(sent).toHaveLength(2);
  });

  it('bounds the waiting batch: past maxQueued distinct resources it drops every copy instead', async () => {
    const { queue, sent } = queueSending({ maxQueued: 3 });
    void queue.publish('items', 'first');
    for (const resource of ['a', 'b', 'c', 'a']) void queue.publish('items', resource);
    queue.confirmed(1);
    expect(sent[1]).toMatchObject({ id: 2, resources: [{ resource: 'a' }, { resource: 'b' }, { resource: 'c' }] });

    for (const resource of ['a', 'b', 'c']) void queue.publish('items', resource);
    const over = queue.publish('orders', 'd');
    void queue.publish('orders', 'e');
    queue.confirmed(2);
    expect(sent[2]).toEqual({ gateway: 'invalidate', id: 3, resources: 'all' });
    queue.confirmed(3);
    expect(await over).toBe(true);
  });

  describe('when the primary does not confirm', () => {
    beforeEach(() => jest.useFakeTimers({ doNotFake: ['setImmediate'] }));
    afterEach(() => jest.useRealTimers());

    it('resolves false after timeoutMs, and sends the next batch anyway', async () => {
      const { queue, sent } = queueSending({ timeoutMs: 1000 });
      const unconfirmed = queue.publish('items', 'r1');
      jest.advanceTimersByTime(500);
      const next = queue.publish('items', 'r2');
      jest.advanceTimersByTime(500);
      expect(await unconfirmed).toBe(false);
      expect(sent.map((batch) => batch.id)).toEqual([1, 2]);
      // A late confirmation of the first is not taken for the second.
      queue.confirmed(1);
      expect(await states([next])).toEqual(['pending']);
      queue.confirmed(2);
      expect(await next).toBe(true);
    });

    it('lets no write wait longer than timeoutMs, though its batch waits behind the one in flight', async () => {
      const { queue } = queueSending({ timeoutMs: 1000 });
      void queue.publish('items', 'r1');
      jest.advanceTimersByTime(600);
      const late = queue.publish('items', 'r2');
      // Its batch leaves at 1000 ms, when the first one's wait ends; it would have waited until 2000 ms.
      jest.advanceTimersByTime(999);
      expect(await states([late])).toEqual(['pending']);
      jest.advanceTimersByTime(1);
      expect(await late).toBe(false);
    });
  });
});

describe('createInvalidationRelay (the primary passing batches on)', () => {
  const batch = (id: number): CacheInvalidation => ({ gateway: 'invalidate', id, resources: [{ route: 'items', resource: 'r1' }] });
  function relaying() {
    const sent: [number, CacheInvalidation | CacheInvalidated][] = [];
    const relay = createInvalidationRelay({ send: (worker, message) => sent.push([worker, message]) });
    return { relay, sent, confirmationsTo: (worker: number) => sent.filter(([to, message]) => to === worker && message.gateway === 'invalidated').map(([, message]) => message.id) };
  }

  it('confirms a batch to its sender once every other worker confirmed it, under the sender\'s own id', () => {
    const { relay, sent, confirmationsTo } = relaying();
    relay.relay(1, batch(7), [2, 3]);
    expect(sent).toEqual([
      [2, { gateway: 'invalidate', id: 1, resources: batch(7).resources }],
      [3, { gateway: 'invalidate', id: 1, resources: batch(7).resources }],
    ]);
    relay.confirmed(2, 1);
    relay.confirmed(2, 1);
    expect(confirmationsTo(1)).toEqual([]);
    relay.confirmed(3, 1);
    expect(confirmationsTo(1)).toEqual([7]);
  });

  it('confirms at once with no other worker, and counts a worker that exited as done', () => {
    const { relay, confirmationsTo } = relaying();
    relay.relay(1, batch(1), []);
    expect(confirmationsTo(1)).toEqual([1]);
    relay.relay(1, batch(2), [2, 3]);
    relay.confirmed(2, 1);
    relay.workerGone(3);
    expect(confirmationsTo(1)).toEqual([1, 2]);
  });

  it('holds one batch per sender: a new one replaces the last, whose late confirmations are ignored', () => {
    const { relay, confirmationsTo } = relaying();
    relay.relay(1, batch(1), [2]);
    relay.relay(1, batch(2), [2]);
    relay.confirmed(2, 1);
    expect(confirmationsTo(1)).toEqual([]);
    relay.confirmed(2, 2);
    expect(confirmationsTo(1)).toEqual([2]);
    // A sender that exited is answered nothing.
    relay.relay(1, batch(3), [2]);
    relay.workerGone(1);
    relay.confirmed(2, 3);
    expect(confirmationsTo(1)).toEqual([2]);
  });
});
