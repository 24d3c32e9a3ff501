import fc from 'fast-check';
import { withoutEdgeWhitespace, withoutTrailing, withoutTrailingWhitespace } from '../../otel/field-whitespace';
import { maxForwardsOf, MAX_FORWARDS_SUPPORTED } from '../../src/middleware/max-forwards';

/**
 * Field values cut and read by scans, where regular expressions were quadratic on a long run before a last other
 * character: each function must answer what its expression answered, for every value, and take one pass.
 */
const fieldText = fc.array(fc.constantFrom(' ', '\t', 'a', '0', '7', '/', ',', 'x'), { maxLength: 24 }).map((characters) => characters.join(''));

describe('field values cut in one scan', () => {
  it('cut what /[ \\t]+$/, /^[ \\t]+|[ \\t]+$/g and /\\/+$/ cut, for every value', () => {
    fc.assert(
      fc.property(fieldText, (value) => {
        expect(withoutTrailingWhitespace(value)).toBe(value.replace(/[ \t]+$/, ''));
        expect(withoutEdgeWhitespace(value)).toBe(value.replace(/^[ \t]+|[ \t]+$/g, ''));
        expect(withoutTrailing(value, '/')).toBe(value.replace(/\/+$/, ''));
      }),
      { seed: 9110, numRuns: 3000 },
    );
  });

  // 100,000 characters: about a minute for the expressions (quadratic), milliseconds for a scan.
  it('cuts values with long runs before a last other character', () => {
    const run = (character: string) => `a${character.repeat(100_000)}b`;
    expect(withoutTrailingWhitespace(`${run(' ')} `)).toBe(run(' '));
    expect(withoutEdgeWhitespace(`\t${run('\t')} `)).toBe(run('\t'));
    expect(withoutTrailing(`${run('/')}/`, '/')).toBe(run('/'));
  });
});

describe('Max-Forwards read in one scan', () => {
  const countText = fc.array(fc.constantFrom(' ', '\t', '0', '0', '1', '9', 'x', '-'), { maxLength: 24 }).map((characters) => characters.join(''));
  /** What the gateway read with /^[\t ]*0*(\d+)[\t ]*$/. */
  const byRegularExpression = (value: string) => {
    const count = /^[\t ]*0*(\d+)[\t ]*$/.exec(value);
    return count ? (count[1]!.length > 15 ? MAX_FORWARDS_SUPPORTED + 1 : Number(count[1])) : undefined;
  };

  it('reads what the regular expression read, for every value', () => {
    fc.assert(
      fc.property(countText, (value) => {
        expect(maxForwardsOf(value)).toBe(byRegularExpression(value));
      }),
      { seed: 7622, numRuns: 3000 },
    );
  });

  it.each([
    { desc: '0', value: '0', count: 0 },
    { desc: 'zeros within blanks', value: ' \t 0000000000000000 ', count: 0 },
    { desc: '007', value: '007', count: 7 },
    { desc: 'a count past 15 digits', value: '99999999999999999999', count: MAX_FORWARDS_SUPPORTED + 1 },
    { desc: 'nothing', value: '', count: undefined },
    { desc: 'two counts', value: '1 2', count: undefined },
    { desc: 'a negative count', value: '-1', count: undefined },
    // 100,000 characters: about a minute for the expression (quadratic), milliseconds for a scan.
    { desc: '100,000 zeros, then x', value: `${'0'.repeat(100_000)}x`, count: undefined },
    { desc: '100,000 zeros, then 3', value: `${'0'.repeat(100_000)}3`, count: 3 },
  ])('reads $desc as $count', ({ value, count }) => {
    expect(maxForwardsOf(value)).toBe(count);
  });
});
