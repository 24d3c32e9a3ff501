/**
 * A yes-or-no rule about header names, remembered by name. The gateway asks the same rules of the same few names
 * on every request (isForbiddenClientHeader and the foreign trace-context test, in createClientHeaderPolicy and
 * again in upstreamRequestHeaders); each asks some thirty `startsWith` of a name against prefix lists, about 1k
 * instructions per header and rule, where a remembered answer is one Map lookup (bench/RESULTS.md).
 *
 * The rule must be a pure function of the name. Clients choose names, so the table is bounded twice: names longer
 * than `maxNameLength` are decided every time (no real header is that long, and a long name is what would make
 * the table large), and when `capacity` names are held the table starts over, so a client sending a new name on
 * every request costs one rule evaluation per header, as before, and never more memory.
 */
export interface RememberedVerdictsOptions {
  /** Names held at most before the table is emptied. Default 512. */
  capacity?: number;
  /** Names longer than this are decided each time, never held. Default 64 characters. */
  maxNameLength?: number;
}

export function rememberVerdicts(decide: (name: string) => boolean, options: RememberedVerdictsOptions = {}): (name: string) => boolean {
  const capacity = options.capacity ?? 512;
  const maxNameLength = options.maxNameLength ?? 64;
  const verdicts = new Map<string, boolean>();
  return (name) => {
    const known = verdicts.get(name);
    if (known !== undefined) return known;
    const verdict = decide(name);
    if (name.length <= maxNameLength) {
      if (verdicts.size >= capacity) verdicts.clear();
      verdicts.set(name, verdict);
    }
    return verdict;
  };
}
