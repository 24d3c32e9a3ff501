import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { cutAnyValue, cutString } from '../../otel/attribute-values';

describe('cutString and cutAnyValue', () => {
  it('keeps a value within the limit as it is, and cuts a longer one to its first `limit` units', () => {
    const within = 'a'.repeat(10);
    expect(cutString(within, 10)).toBe(within);
    expect(cutString('é'.repeat(20) + 'x', 20)).toBe('é'.repeat(20));
    expect(cutString('abc', Infinity)).toBe('abc');
  });

  // As the SDK's substring cuts (test/unit/gateway-tracer.test.ts holds the tracer to the SDK's values).
  it('keeps half of a surrogate pair the cut splits, and characters past Latin-1 as they are', () => {
    expect(cutString(`ab${'\u{1F600}'}`, 3)).toBe('ab\uD83D');
    expect(cutString('é€😀 non-ASCII past the limit', 4)).toBe('é€😀');
  });

  it('cuts every string and byte array in arrays and maps, in place, and copies a cut byte array', () => {
    const bytes = new Uint8Array([1, 2, 3, 4]);
    const value = { list: ['short', 'a much longer string'], nested: { deep: ['x'.repeat(30)] }, bytes, number: 7, flag: true, none: null };
    const cut = cutAnyValue(value, 5);
    expect(cut).toBe(value);
    expect(cut).toEqual({ list: ['short', 'a muc'], nested: { deep: ['xxxxx'] }, bytes: new Uint8Array([1, 2, 3, 4]), number: 7, flag: true, none: null });
    expect(cutAnyValue({ bytes }, 2).bytes).toEqual(new Uint8Array([1, 2]));
    expect(bytes).toEqual(new Uint8Array([1, 2, 3, 4]));
  });

  // `substring` made V8 sliced strings: each cut value kept its client's whole 16 KiB original, so a stalled export
  // queue held more heap cut at 4,096 than with no limit at all (98 MiB against 66). Heap in a child process, with
  // full collections, for the same 4,096 spans: cut, it must hold well under what the uncut spans hold.
  it('frees the part of a long value the cut drops, in the spans an export queue holds', () => {
    const script = path.join(__dirname, '../../bench/micro/cut-attribute-retained.cjs');
    const retainedMiB = (limit: string) => {
      const line = execFileSync(process.execPath, ['--expose-gc', script, limit], { encoding: 'utf8', env: { PATH: process.env.PATH ?? '' } });
      return Number(/([\d.]+) MiB of heap retained/.exec(line)![1]);
    };
    const uncut = retainedMiB('Infinity');
    const cut = retainedMiB('4096');
    // 24 Mi characters kept of 96 Mi: about a quarter, where the sliced strings kept all of it and more.
    expect(cut).toBeLessThan(uncut / 2);
  });
});
