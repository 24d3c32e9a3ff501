import os from 'node:os';
import { MAX_ROUTE_NAME_LENGTH, MAX_TIMER_MS } from '../../src/config';
import { applyOutcome, MAX_LEASE_CLIENT_LENGTH, MAX_LEASE_POLICY_LENGTH, restartDelayMs, toPrimaryMessage, workerCount, type ApplyReport } from '../../src/workers';

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

describe('applyOutcome (where a cluster reload stands)', () => {
  const earlier = { version: 'v2', loadedAt: '2026-12-05T10:00:00.000Z' };
  const target = { version: 'v3', loadedAt: '2026-12-05T10:00:12.000Z' };
  const runs = (config: { version: string; loadedAt: string }): ApplyReport => ({ ...config });

  it('waits until every worker runs the target, then says applied', () => {
    expect(applyOutcome([runs(target), runs(earlier)], target)).toBeUndefined();
    expect(applyOutcome([runs(target), runs(target)], target)).toEqual({ applied: true });
  });

  it('waits while no worker runs at all (every one exited, being replaced): no one has built the target', () => {
    expect(applyOutcome([], target)).toBeUndefined();
  });

  it('fails on a worker that could not build the target, naming it', () => {
    const refused: ApplyReport = { ...runs(earlier), applyFailed: { ...target, reason: 'no certificate' } };
    expect(applyOutcome([runs(target), refused], target)).toEqual({ applied: false, failed: 1, reason: 'no certificate' });
  });

  it('does not fail on a late refusal of an earlier reload that had already timed out', () => {
    const lateRefusal: ApplyReport = { ...runs(target), applyFailed: { ...earlier, reason: 'busy, then refused' } };
    expect(applyOutcome([runs(target), lateRefusal], target)).toEqual({ applied: true });
    // The same worker's refusal of an earlier config that shares the target's version (a reload that changed only keys).
    const sameVersion: ApplyReport = { ...runs(target), applyFailed: { version: target.version, loadedAt: earlier.loadedAt, reason: 'late' } };
    expect(applyOutcome([sameVersion], target)).toEqual({ applied: true });
  });
});

describe('toPrimaryMessage (what the primary acts on from a worker)', () => {
  it.each([
    { desc: 'null', raw: null },
    { desc: 'a string', raw: 'take' },
    { desc: 'a number', raw: 7 },
    { desc: 'an unknown kind', raw: { gateway: 'exit' } },
    { desc: 'the per-request take of earlier versions', raw: { gateway: 'take', id: 1, policy: 'p', client: 'c', max: 10, windowMs: 60_000 } },
    { desc: 'a lease ask without a client', raw: { gateway: 'lease', id: 1, policy: 'default|10|60000', max: 10, windowMs: 60_000 } },
    { desc: 'a lease ask whose client is an object', raw: { gateway: 'lease', id: 1, policy: 'p', client: { toString: 1 }, max: 10, windowMs: 60_000 } },
    { desc: 'a lease ask with a fractional max', raw: { gateway: 'lease', id: 1, policy: 'p', client: 'c', max: 1.5, windowMs: 60_000 } },
    { desc: 'a lease ask with a window of NaN', raw: { gateway: 'lease', id: 1, policy: 'p', client: 'c', max: 10, windowMs: Number.NaN } },
    // The ledger kept whatever a worker named, and sent it back and on to every worker.
    { desc: 'a lease ask with a megabyte policy', raw: { gateway: 'lease', id: 1, policy: 'p'.repeat(1 << 20), client: 'c', max: 10, windowMs: 60_000 } },
    { desc: 'a lease ask with a megabyte client', raw: { gateway: 'lease', id: 1, policy: 'p', client: 'c'.repeat(1 << 20), max: 10, windowMs: 60_000 } },
    { desc: 'a lease ask with a policy past the bound', raw: { gateway: 'lease', id: 1, policy: 'p'.repeat(MAX_LEASE_POLICY_LENGTH + 1), client: 'c', max: 10, windowMs: 60_000 } },
    { desc: 'a lease ask with a client past the bound', raw: { gateway: 'lease', id: 1, policy: 'p', client: 'c'.repeat(MAX_LEASE_CLIENT_LENGTH + 1), max: 10, windowMs: 60_000 } },
    { desc: 'a lease ask with a window longer than a config allows', raw: { gateway: 'lease', id: 1, policy: 'p', client: 'c', max: 10, windowMs: MAX_TIMER_MS + 1 } },
    { desc: 'a lease ask with a window of ages', raw: { gateway: 'lease', id: 1, policy: 'p', client: 'c', max: 10, windowMs: Number.MAX_SAFE_INTEGER } },
    { desc: 'a recall answer without an id', raw: { gateway: 'recalled', returned: 3 } },
    { desc: 'a recall answer giving back a negative count', raw: { gateway: 'recalled', id: 1, returned: -5 } },
    { desc: 'a recall answer giving back Infinity', raw: { gateway: 'recalled', id: 1, returned: Number.POSITIVE_INFINITY } },
    { desc: 'a recall answer giving back a string', raw: { gateway: 'recalled', id: 1, returned: '3' } },
    { desc: 'a status without an id', raw: { gateway: 'status' } },
    { desc: 'a pong without an id', raw: { gateway: 'pong' } },
    { desc: 'an applied without a version', raw: { gateway: 'applied', ok: true, loadedAt: 'now' } },
    { desc: 'a listening without a url', raw: { gateway: 'listening' } },
    { desc: 'a cache invalidation without an id', raw: { gateway: 'invalidate', resources: [{ route: 'items', resource: 'a'.repeat(43) }] } },
    { desc: 'a cache invalidation without resources', raw: { gateway: 'invalidate', id: 1 } },
    { desc: 'a cache invalidation naming no resource', raw: { gateway: 'invalidate', id: 1, resources: [] } },
    { desc: 'a cache invalidation of the earlier one-resource shape', raw: { gateway: 'invalidate', route: 'items', resource: 'a'.repeat(43) } },
    { desc: 'a cache invalidation with a resource missing', raw: { gateway: 'invalidate', id: 1, resources: [{ route: 'items' }] } },
    { desc: 'a cache invalidation with null among its resources', raw: { gateway: 'invalidate', id: 1, resources: [null] } },
    { desc: 'a cache invalidation whose route is an object', raw: { gateway: 'invalidate', id: 1, resources: [{ route: { toString: 1 }, resource: 'a'.repeat(43) }] } },
    { desc: 'a cache invalidation with a megabyte route name', raw: { gateway: 'invalidate', id: 1, resources: [{ route: 'a'.repeat(1 << 20), resource: 'a'.repeat(43) }] } },
    { desc: 'a cache invalidation with a route name longer than a config allows', raw: { gateway: 'invalidate', id: 1, resources: [{ route: 'a'.repeat(MAX_ROUTE_NAME_LENGTH + 1), resource: 'a'.repeat(43) }] } },
    { desc: 'a cache invalidation with a route no config allows', raw: { gateway: 'invalidate', id: 1, resources: [{ route: 'Items/../x', resource: 'a'.repeat(43) }] } },
    { desc: 'a cache invalidation whose resource is no cache key', raw: { gateway: 'invalidate', id: 1, resources: [{ route: 'items', resource: 'x'.repeat(10_000) }] } },
    { desc: 'a cache invalidation naming more resources than a worker queues', raw: { gateway: 'invalidate', id: 1, resources: Array.from({ length: 1025 }, () => ({ route: 'items', resource: 'a'.repeat(43) })) } },
    { desc: 'a cache invalidation dropping something other than all', raw: { gateway: 'invalidate', id: 1, resources: 'some' } },
    { desc: 'a cache invalidation confirmation without an id', raw: { gateway: 'invalidated' } },
  ])('ignores $desc', ({ raw }) => {
    expect(toPrimaryMessage(raw)).toBeUndefined();
  });

  it('passes each well-formed message on as it is', () => {
    const messages = [
      { gateway: 'hello' },
      { gateway: 'listening', url: 'http://127.0.0.1:3000' },
      { gateway: 'applied', ok: false, version: 'abc', loadedAt: '2026-01-01T00:00:00.000Z' },
      { gateway: 'applied', ok: false, version: 'abc', loadedAt: '2026-01-01T00:00:00.000Z', reason: 'proto x.proto: ENOENT' },
      { gateway: 'lease', id: 3, policy: 'default|10|60000', client: '203.0.113.0/24', max: 10, windowMs: 60_000 },
      // The longest a config makes: a route's policy with the largest max and window, a provider token's user
      // (`user:`, a 64-character subjectPrefix, a 255-character sub).
      {
        gateway: 'lease',
        id: 11,
        policy: `route:r${'-'.repeat(MAX_ROUTE_NAME_LENGTH - 1)}|${Number.MAX_SAFE_INTEGER}|${MAX_TIMER_MS}`,
        client: `user:${'p'.repeat(64)}${'s'.repeat(255)}`,
        max: Number.MAX_SAFE_INTEGER,
        windowMs: MAX_TIMER_MS,
      },
      { gateway: 'recalled', id: 7, returned: 0 },
      { gateway: 'reload', id: 4 },
      { gateway: 'status', id: 5 },
      { gateway: 'pong', id: 6 },
      { gateway: 'invalidate', id: 8, resources: [{ route: 'items-v2', resource: 'Xk3_-9aZ0pQ1rS2tU3vW4xY5zA6bC7dE8fG9hI0jK1l' }] },
      { gateway: 'invalidate', id: 9, resources: 'all' },
      // The longest route name a config takes is named to the primary as it is (it refused those past 256 characters).
      { gateway: 'invalidate', id: 10, resources: [{ route: `r${'-'.repeat(MAX_ROUTE_NAME_LENGTH - 1)}`, resource: 'a'.repeat(43) }, { route: 'items', resource: 'b'.repeat(43) }] },
      { gateway: 'invalidated', id: 8 },
    ];
    for (const message of messages) expect(toPrimaryMessage(message)).toEqual(message);
  });
});
