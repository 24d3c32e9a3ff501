import type { Context } from 'koa';
import { createRateLimiter } from '../../src/middleware/rate-limit';
import { createLeaseLedger, createLeaseTable, type Leased } from '../../src/rate-limit-leases';
import type { PrimaryStoreClient } from '../../src/rate-limit-store';
import { memoryLogger } from '../helpers/servers';

/** A request as refuseIfSpent reads it: its client address, and the state a refusal writes to. */
const requestFrom = (ip: string) => ({ ip, state: {}, res: { setHeader: () => undefined }, set: () => undefined }) as unknown as Context;

/** A worker's store client on a real lease ledger and lease table, the primary answering at once. */
function primaryStore(): PrimaryStoreClient {
  const table = createLeaseTable({ maxTrackedClients: 100 });
  let answer: Leased | undefined;
  const ledger = createLeaseLedger({
    maxTrackedClients: 100,
    workers: 2,
    send: (_worker, message) => {
      if (message.gateway !== 'leased') return;
      answer = message;
      table.keep(message, true);
    },
    broadcast: (message) => table.spent(message),
  });
  let id = 0;
  return {
    take: async (policy, client, max, windowMs) => table.spend(policy, client, max) ?? (ledger.ask(1, { gateway: 'lease', id: ++id, policy, client, max, windowMs }), answer!.window),
    exhausted: (policy, client, max) => table.exhausted(policy, client, max),
    held: (policy, client, max) => table.held(policy, client, max),
  };
}

// The in-flight bound of the failed-authentication budget needs to know what the window has left. The cluster's store
// told a worker nothing until the window was spent, and every credential sent at once was checked.
describe('credentials checked at once against a budget of failures', () => {
  it.each([
    { desc: 'the memory store', store: () => ({ kind: 'memory' as const, maxTrackedClients: 100 }) },
    { desc: "the cluster primary's store", store: () => ({ kind: 'primary' as const, client: primaryStore() }) },
  ])('lets no more through to be checked than the budget has left, with $desc', async ({ store }) => {
    const limiter = createRateLimiter({ name: 'per-user', owner: 'route', max: 3, windowMs: 60_000, store: store(), logger: memoryLogger('gateway').logger });
    const passed: (() => void)[] = [];
    let settled = 0;
    const attempts = Array.from({ length: 20 }, () =>
      limiter
        .refuseIfSpent(requestFrom('192.0.2.9'))
        .then((letGo) => void passed.push(letGo), () => undefined)
        .finally(() => settled++),
    );
    // Each store answers within a turn or two of the event loop: what has passed by then is what may be checked at once.
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(passed.length).toBeGreaterThanOrEqual(1);
    expect(passed.length).toBeLessThanOrEqual(3);
    // Their checks end (none counted): the ones waiting take the places they leave, never more than the budget at once.
    while (settled < attempts.length) {
      for (const letGo of passed.splice(0)) letGo();
      await new Promise((resolve) => setTimeout(resolve, 5));
      expect(passed.length).toBeLessThanOrEqual(3);
    }
  });
});
