/**
 * otel/layered-context.ts against the API's own context: the same generated derivations (set, delete, from any
 * earlier context, past the layer limit) must read the same through getValue, every context made, at the end
 * (a derivation changes no context made before it).
 */
import fc from 'fast-check';
import { createContextKey, ROOT_CONTEXT, type Context } from '@opentelemetry/api';
import { layeredContext } from '../../otel/layered-context';

const KEYS = ['span', 'baggage', 'random', 'suppress'].map((name) => createContextKey(`layered context test: ${name}`));
const UNSET_KEY = createContextKey('layered context test: never set');

type Step = { op: 'set'; from: number; key: number; value: number | undefined } | { op: 'delete'; from: number; key: number };
const step: fc.Arbitrary<Step> = fc.oneof(
  { weight: 4, arbitrary: fc.record({ op: fc.constant('set' as const), from: fc.nat(), key: fc.nat({ max: KEYS.length - 1 }), value: fc.option(fc.integer(), { nil: undefined }) }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('delete' as const), from: fc.nat(), key: fc.nat({ max: KEYS.length - 1 }) }) },
);

describe('a layered context', () => {
  it("reads as the API's context through every generated derivation, long chains included", () => {
    let longest = 0;
    fc.assert(
      fc.property(fc.boolean(), fc.array(step, { maxLength: 90, size: 'max' }), (fromRoot, steps) => {
        // A base holding a value already, or the root itself.
        const base = fromRoot ? ROOT_CONTEXT : ROOT_CONTEXT.setValue(KEYS[0]!, 'base');
        const api: Context[] = [base];
        const layered: Context[] = [layeredContext(base)];
        // Mostly from the newest context (a chain past the layer limit), now and then from an earlier one.
        for (const generated of steps) {
          const at = generated.from % 8 === 1 ? generated.from % api.length : api.length - 1;
          const keyOf = KEYS[generated.key]!;
          if (generated.op === 'set') {
            const { value } = generated;
            api.push(api[at]!.setValue(keyOf, value));
            layered.push(layered[at]!.setValue(keyOf, value));
          } else {
            api.push(api[at]!.deleteValue(keyOf));
            layered.push(layered[at]!.deleteValue(keyOf));
          }
        }
        const read = (contexts: Context[]) => contexts.map((made) => [...KEYS, UNSET_KEY].map((k) => made.getValue(k)));
        expect(read(layered)).toEqual(read(api));
        // The runs reach past the layer limit (32), where the layers are written into the API's context.
        longest = Math.max(longest, steps.length);
      }),
      { seed: 77, numRuns: 300 },
    );
    expect(longest).toBeGreaterThan(40);
  });

  it('is itself when asked to layer a layered context', () => {
    const once = layeredContext(ROOT_CONTEXT);
    expect(layeredContext(once)).toBe(once);
  });
});
