/**
 * The in-memory records of an example service (notifications per user, orders per owner), bounded: a service
 * that kept everything it was sent could be made to hold any amount of memory by one caller. Past a bound the
 * oldest record goes (the owner's own, then the oldest of all), so a store that is full keeps taking new ones:
 * the example keeps the latest, where a real deployment keeps them in a database.
 */
export interface BoundedStoreLimits {
  /** Most records kept per owner. */
  maxPerOwner: number;
  /** Most records kept in all. */
  maxTotal: number;
  /**
   * Most bytes kept in all, as `sizeOf` counts them (none without a `sizeOf`). Counted records alone did not bound
   * memory where a record's size is the caller's to choose: 10,000 orders of 100 long items held 209 MB of heap, past
   * the 256 MiB a deployed order-service may use.
   */
  maxTotalBytes?: number;
}

export interface BoundedStore<T extends { id: string }> {
  /** Keeps `record` for `owner`, dropping the oldest records past the limits. */
  add(owner: string, record: T): void;
  /** The owner's records, oldest first. */
  forOwner(owner: string): readonly T[];
  /** A record by id, if `owner` owns it. */
  get(owner: string, id: string): T | undefined;
  /** Records kept in all. */
  readonly size: number;
}

/**
 * `sizeOf` estimates a record's bytes for `maxTotalBytes` (an upper bound of what it holds in memory, taken when it is
 * added); without it, only the counts bound the store.
 */
export function createBoundedStore<T extends { id: string }>(limits: BoundedStoreLimits, sizeOf?: (record: T) => number): BoundedStore<T> {
  for (const [name, value] of Object.entries(limits)) {
    if (!Number.isInteger(value) || value < 1) throw new Error(`bounded store: ${name} must be a whole number of at least 1 (got ${value})`);
  }
  const byOwner = new Map<string, T[]>();
  // Every record by id, in arrival order: the first entry is the oldest of all.
  const ownerById = new Map<string, string>();
  const bytesById = new Map<string, number>();
  let totalBytes = 0;

  const dropOldestOf = (owner: string) => {
    const records = byOwner.get(owner)!;
    const { id } = records.shift()!;
    ownerById.delete(id);
    totalBytes -= bytesById.get(id) ?? 0;
    bytesById.delete(id);
    if (records.length === 0) byOwner.delete(owner);
  };
  const overBudget = () => ownerById.size > limits.maxTotal || (limits.maxTotalBytes !== undefined && totalBytes > limits.maxTotalBytes && ownerById.size > 1);

  return {
    add(owner, record) {
      const records = byOwner.get(owner) ?? [];
      records.push(record);
      byOwner.set(owner, records);
      ownerById.set(record.id, owner);
      if (sizeOf && limits.maxTotalBytes !== undefined) {
        const bytes = sizeOf(record);
        bytesById.set(record.id, bytes);
        totalBytes += bytes;
      }
      if (records.length > limits.maxPerOwner) dropOldestOf(owner);
      // The oldest record of all is the oldest of its owner's; as many go as the budget needs (the newest stays).
      while (overBudget()) dropOldestOf(ownerById.values().next().value!);
    },
    forOwner: (owner) => [...(byOwner.get(owner) ?? [])],
    get: (owner, id) => (ownerById.get(id) === owner ? byOwner.get(owner)!.find((record) => record.id === id) : undefined),
    get size() {
      return ownerById.size;
    },
  };
}
