/**
 * Whether parsed JSON `value` nests objects and arrays no more than `depth` levels (the value itself counts as one),
 * never recursing past that. JSON.parse takes nesting some 200,000 levels deep; what walks it afterwards recursively
 * (structuredClone, a duplicate-key scan, deepFreeze) overflows the stack on it.
 */
export function nestedAtMost(value: unknown, depth: number): boolean {
  if (typeof value !== 'object' || value === null) return true;
  if (depth === 0) return false;
  return Object.values(value).every((member) => nestedAtMost(member, depth - 1));
}
