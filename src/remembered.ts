/**
 * A function of a string key, its answers remembered by key in a bounded table: for work the gateway repeats per
 * request for the same few keys. Header-name rules (isForbiddenClientHeader, the foreign trace-context test: some
 * thirty `startsWith` per header and rule, asked twice per request, where a remembered answer is one Map lookup),
 * koa-ratelimit's memory driver per client (src/rate-limit-store.ts) and the SERVER span's name per route and
 * `user.roles` per role (src/middleware/tracing.ts) use it; bench/RESULTS.md has the figures.
 *
 * `compute` must give the same answer for the same key every time it could be asked again (a pure rule, or an
 * object that holds no state of its own), and never `undefined`, which the table reads as "not held". Keys often
 * come from clients, so the table is bounded twice: keys longer than `maxKeyLength` are computed every time, and
 * when `capacity` keys are held the table starts over, so a client sending a new key on every request costs one
 * computation, as without the table, and never more memory.
 */
export interface RememberedOptions {
  /** Keys held at most before the table is emptied. Default 512. */
  capacity?: number;
  /** Keys longer than this are computed each time, never held. Default: no limit. */
  maxKeyLength?: number;
}

export function remembered<V>(compute: (key: string) => V, options: RememberedOptions = {}): (key: string) => V {
  const capacity = options.capacity ?? 512;
  const maxKeyLength = options.maxKeyLength ?? Infinity;
  const answers = new Map<string, V>();
  return (key) => {
    const known = answers.get(key);
    if (known !== undefined) return known;
    const answer = compute(key);
    if (key.length <= maxKeyLength) {
      if (answers.size >= capacity) answers.clear();
      answers.set(key, answer);
    }
    return answer;
  };
}
