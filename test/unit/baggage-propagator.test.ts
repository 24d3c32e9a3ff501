import { baggageEntryMetadataFromString, defaultTextMapGetter, defaultTextMapSetter, propagation, ROOT_CONTEXT, type Baggage, type BaggageEntry } from '@opentelemetry/api';
import fc from 'fast-check';
import { BaggagePropagator, formatBaggage, MAX_BAGGAGE_LENGTH, OneEntryBaggage, parseBaggage } from '../../otel/baggage-propagator';

/**
 * W3C Baggage (https://www.w3.org/TR/baggage/), rule by rule: keys are tokens and travel as they are, values are
 * percent-decoded (escapes that are not UTF-8 as U+FFFD) and encoded only where they must be, properties are kept.
 */
const values = (header: string | string[]) => Object.fromEntries([...parseBaggage(header)].map(([key, entry]) => [key, entry.value]));

describe('parseBaggage', () => {
  it.each<{ desc: string; header: string | string[]; expected: Record<string, string> }>([
    { desc: 'members and spaces around them', header: 'userId = alice , serverNode=DF%2028', expected: { userId: 'alice', serverNode: 'DF 28' } },
    { desc: 'several header fields as one list', header: ['userId=alice', 'isProduction=false'], expected: { userId: 'alice', isProduction: 'false' } },
    { desc: 'UTF-8 escapes', header: 'userId=Am%C3%A9lie', expected: { userId: 'Amélie' } },
    { desc: 'escapes that are not UTF-8, as U+FFFD', header: 'k=%FF', expected: { k: '\uFFFD' } },
    { desc: 'a leading U+FEFF as a character of the value, not a byte-order mark', header: 'k=%EF%BB%BFx,e=%EF%BB%BF', expected: { k: '\uFEFFx', e: '\uFEFF' } },
    { desc: 'a key that looks percent-encoded, as it is', header: 'a%41=1,user#id=2', expected: { 'a%41': '1', 'user#id': '2' } },
    { desc: 'a value with equal signs', header: 'k=a=b=', expected: { k: 'a=b=' } },
    { desc: 'an empty value', header: 'k=', expected: { k: '' } },
    { desc: 'the first of a repeated key', header: 'request.id=gateway,request.id=other', expected: { 'request.id': 'gateway' } },
    { desc: 'a __proto__ key as any other', header: '__proto__=x', expected: { ['__proto__']: 'x' } },
    { desc: 'the valid members beside one that is not', header: 'a=1,b c=2,d="x",e=3', expected: { a: '1', e: '3' } },
  ])('reads $desc', ({ header, expected }) => {
    expect(values(header)).toEqual(expected);
  });

  it('keeps properties as the entry metadata, without the blanks around them and their equal signs', () => {
    expect(parseBaggage('k=v ; p \t= 1 ;q').get('k')!.metadata?.toString()).toBe('p=1;q');
  });

  // As an object's keys, `0` and `42` came before `b` and `a`: the order of the header was lost, and formatBaggage
  // keeps the first members that fit.
  it('keeps the members in the order of the header, keys that look like numbers too', () => {
    expect([...parseBaggage('b=1,42=2,a=3,0=4').keys()]).toEqual(['b', '42', 'a', '0']);
    const extracted = new BaggagePropagator().extract(ROOT_CONTEXT, { baggage: 'b=1,42=2,a=3,0=4' }, defaultTextMapGetter);
    expect(propagation.getBaggage(extracted)!.getAllEntries().map(([key]) => key)).toEqual(['b', '42', 'a', '0']);
  });

  // W3C Baggage "Limits" (and its suite's test_serialize_long_entry): within 64 members and 8192 bytes every member
  // MUST go on, however long one of them is. Members over 4096 characters used to be left out.
  it('reads one member of 8192 bytes whole, and none longer', () => {
    const value = '0123456789'.repeat(819);
    expect(values(`a=${value}`)).toEqual({ a: value });
    expect(values(`a=${value}0`)).toEqual({});
  });

  // The Limits are the resulting baggage-string's: blanks and needless escapes in what came are not counted.
  it.each([
    { desc: 'blanks around their equal signs', written: (member: string) => member.replace('=', ' \t= ') },
    { desc: 'letters needlessly percent-encoded', written: (member: string) => member.replace('AAAA', '%41%41%41%41') },
  ])('counts 8192 bytes as the members will be sent, whatever $desc they came with', ({ written }) => {
    // 64 members of 127 bytes: 8191 with their commas.
    const members = Array.from({ length: 64 }, (_, i) => `k${String(i).padStart(2, '0')}=${'v'.repeat(119)}AAAA`);
    expect(members.join(',')).toHaveLength(MAX_BAGGAGE_LENGTH - 1);
    expect(formatBaggage(parseBaggage(members.map(written).join(',')))).toBe(members.join(','));
  });

  it('reads at most 8192 bytes of whole members', () => {
    const member = (i: number) => `k${String(i).padStart(3, '0')}=${'v'.repeat(95)}`;
    const entries = parseBaggage(Array.from({ length: 100 }, (_, i) => member(i)).join(','));
    expect(entries.size).toBe(Math.floor((MAX_BAGGAGE_LENGTH + 1) / (member(0).length + 1)));
  });
});

describe('formatBaggage', () => {
  const entry = (value: string, metadata?: string): BaggageEntry => (metadata === undefined ? { value } : { value, metadata: baggageEntryMetadataFromString(metadata) });
  it.each<{ desc: string; entries: [string, BaggageEntry][]; expected: string }>([
    { desc: 'baggage-octets unencoded', entries: [['url', entry('https://example.com/a?b=c')]], expected: 'url=https://example.com/a?b=c' },
    { desc: 'spaces, commas, semicolons, quotes, backslashes and % encoded', entries: [['k', entry(' ,;"\\%')]], expected: 'k=%20%2C%3B%22%5C%25' },
    { desc: 'text beyond ASCII as UTF-8 escapes', entries: [['userId', entry('Amélie')]], expected: 'userId=Am%C3%A9lie' },
    { desc: 'properties', entries: [['k', entry('v', 'p=1;q')]], expected: 'k=v;p=1;q' },
    { desc: 'no key that is not a token', entries: [['a b', entry('1')], ['c', entry('2')]], expected: 'c=2' },
    { desc: 'no properties that are not the grammar', entries: [['k', entry('v', 'p,q')]], expected: 'k=v' },
    { desc: 'no properties with blanks (no gRPC metadata could hold a tab)', entries: [['k', entry('v', 'p\t=1')]], expected: 'k=v' },
  ])('sends $desc', ({ entries, expected }) => {
    expect(formatBaggage(entries)).toBe(expected);
  });

  it('sends one member of 8192 bytes whole, and leaves out one longer', () => {
    const value = '0123456789'.repeat(819);
    expect(formatBaggage([['a', entry(value)]])).toBe(`a=${value}`);
    expect(formatBaggage([['a', entry(`${value}0`)], ['b', entry('1')]])).toBe('b=1');
  });

  it('sends what it reads unchanged when it needs no encoding', () => {
    const propagator = new BaggagePropagator();
    const header = 'request.id=abc,user#id=1,a%41=2,k=v;p=1;q,e=,bom=%EF%BB%BF';
    const carrier: Record<string, string> = {};
    propagator.inject(propagator.extract(ROOT_CONTEXT, { baggage: header }, defaultTextMapGetter), carrier, defaultTextMapSetter);
    expect(carrier).toEqual({ baggage: header });
    expect(propagation.getBaggage(propagator.extract(ROOT_CONTEXT, { baggage: ' , ' }, defaultTextMapGetter))).toBeUndefined();
  });
});

describe('OneEntryBaggage', () => {
  type Operation = { op: 'set'; key: string; entry: BaggageEntry } | { op: 'remove'; key: string } | { op: 'removeMany'; keys: string[] } | { op: 'clear' };
  const key = fc.constantFrom('request.id', 'user', 'k', '__proto__', 'a b');
  const baggageEntry = fc.record({ value: fc.string({ maxLength: 12 }) }, { requiredKeys: ['value'] });
  const operation: fc.Arbitrary<Operation> = fc.oneof(
    fc.record({ op: fc.constant('set' as const), key, entry: baggageEntry }),
    fc.record({ op: fc.constant('remove' as const), key }),
    fc.record({ op: fc.constant('removeMany' as const), keys: fc.array(key, { maxLength: 3 }) }),
    fc.record({ op: fc.constant('clear' as const) }),
  );
  const apply = (baggage: Baggage, step: Operation): Baggage =>
    step.op === 'set' ? baggage.setEntry(step.key, step.entry) : step.op === 'remove' ? baggage.removeEntry(step.key) : step.op === 'removeMany' ? baggage.removeEntries(...step.keys) : baggage.clear();
  const sent = (baggage: Baggage) => {
    const carrier: Record<string, string> = {};
    new BaggagePropagator().inject(propagation.setBaggage(ROOT_CONTEXT, baggage), carrier, defaultTextMapSetter);
    return carrier;
  };

  // Breaks if the class answers, changes or sends differently from the API's BaggageImpl it stands in for.
  it('answers, changes and is sent as the API baggage of the same entry does', () => {
    fc.assert(
      fc.property(key, baggageEntry, fc.array(operation, { maxLength: 4 }), (first, entry, steps) => {
        let ours: Baggage = new OneEntryBaggage(first, entry);
        let api: Baggage = propagation.createBaggage().setEntry(first, entry);
        for (const probe of ['request.id', 'user', 'k', '__proto__', 'a b', 'absent']) expect(ours.getEntry(probe)).toEqual(api.getEntry(probe));
        expect(ours.getAllEntries()).toEqual(api.getAllEntries());
        expect(sent(ours)).toEqual(sent(api));
        for (const step of steps) {
          ours = apply(ours, step);
          api = apply(api, step);
          expect(ours.getAllEntries()).toEqual(api.getAllEntries());
          expect(sent(ours)).toEqual(sent(api));
        }
      }),
      { seed: 20261204, numRuns: 300 },
    );
  });

  it('hands out a copy of its entry, keeps its own, and sends the same header every time', () => {
    const baggage = new OneEntryBaggage('request.id', { value: 'a b' });
    baggage.getEntry('request.id')!.value = 'changed';
    expect(baggage.getEntry('request.id')).toEqual({ value: 'a b' });
    expect(sent(baggage)).toEqual({ baggage: 'request.id=a%20b' });
    expect(sent(baggage)).toEqual({ baggage: 'request.id=a%20b' });
  });
});
