import fc from 'fast-check';
import { isoTimestamp } from '../../otel/iso-timestamp';

/** isoTimestamp with Date.now() answering `ms`. */
function formattedAt(ms: number): string {
  const spy = jest.spyOn(Date, 'now').mockReturnValue(ms);
  try {
    return isoTimestamp();
  } finally {
    spy.mockRestore();
  }
}

describe('isoTimestamp', () => {
  it('is toISOString of now, whatever came before it (same millisecond, same second, another second)', () => {
    const table = [0, 999, 1000, 1001, 1_764_720_000_000, 1_764_720_000_005, 1_764_720_000_050, 1_764_720_000_999, 1_764_720_001_000, -1, -1000, -999, 253_402_300_799_999, 253_402_300_800_000];
    for (const ms of table) expect(formattedAt(ms)).toBe(new Date(ms).toISOString());
    // A run of instants near each other, as requests read it: the kept second and millisecond are reused, never stale.
    const base = 1_764_720_000_000;
    fc.assert(
      fc.property(fc.array(fc.integer({ min: -2_500, max: 2_500 }), { minLength: 1, maxLength: 20 }), (offsets) => {
        for (const offset of offsets) expect(formattedAt(base + offset)).toBe(new Date(base + offset).toISOString());
      }),
      { seed: 20261202, numRuns: 300 },
    );
    fc.assert(
      fc.property(fc.integer({ min: -8_640_000_000_000_000, max: 8_640_000_000_000_000 }), (ms) => formattedAt(ms) === new Date(ms).toISOString()),
      { seed: 20261203, numRuns: 500 },
    );
  });
});
