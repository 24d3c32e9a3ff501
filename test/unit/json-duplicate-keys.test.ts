import fc from 'fast-check';
import { duplicateJsonKey } from '../../src/json-duplicate-keys';

/** Fixed seed and bounded runs: the same cases on every run, failures reproducible. */
const PROPERTY_RUNS = { seed: 66, numRuns: 300 } as const;

/** A JSON object with at least one key, as a config file's objects are. */
const object = fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 3 }), { minKeys: 1, maxKeys: 6 });

describe('duplicateJsonKey', () => {
  it('finds none in any text JSON.stringify writes, compact or indented', () => {
    fc.assert(
      fc.property(fc.jsonValue({ maxDepth: 4 }), fc.constantFrom(undefined, 1, '\t'), (value, indent) => {
        expect(duplicateJsonKey(JSON.stringify(value, null, indent))).toBeUndefined();
      }),
      PROPERTY_RUNS,
    );
  });

  it('names the path of a key given again, at any depth and however its string is escaped', () => {
    fc.assert(
      fc.property(object, fc.array(fc.oneof(fc.nat({ max: 3 }), fc.string({ minLength: 1, maxLength: 5 }).filter((step) => step !== 'x')), { maxLength: 3 }), fc.boolean(), (inner, path, escape) => {
        const [key] = Object.keys(inner) as [string];
        // The same key again at the end of the object, spelt with \u escapes when `escape`.
        const again = escape ? `"${[...key].map((char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`).join('')}"` : JSON.stringify(key);
        const objectText = `${JSON.stringify(inner).slice(0, -1)}, ${again}: null}`;
        // Wrapped in arrays (at the generated index, after that many nulls) and objects along `path`.
        const text = path.reduceRight<string>((nested, step) => (typeof step === 'number' ? `[${'null, '.repeat(step)}${nested}]` : `{"x": 1, ${JSON.stringify(step)}: ${nested}}`), objectText);
        expect(() => JSON.parse(text)).not.toThrow();
        expect(duplicateJsonKey(text)).toBe([...path, key].join('.'));
      }),
      PROPERTY_RUNS,
    );
  });

  it.each([
    { desc: 'a string value holding an escaped quote and braces', text: '{"a": "x\\"}{\\"a\\": 1", "b": 2}', found: undefined },
    { desc: 'the same key in sibling objects', text: '[{"a": 1}, {"a": 2}]', found: undefined },
    { desc: 'a key twice at the root', text: '{"port": 1, "port": 2}', found: 'port' },
    { desc: 'auth twice in the fourth route', text: '{"routes": [{}, {}, {}, {"name": "x", "auth": "required", "auth": "public"}]}', found: 'routes.3.auth' },
  ])('$desc', ({ text, found }) => {
    expect(duplicateJsonKey(text)).toBe(found);
  });
});
