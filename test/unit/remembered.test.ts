import fc from 'fast-check';
import { dashedSpelling, FOREIGN_IDENTITY_HEADER_PREFIXES, FOREIGN_TRACE_CONTEXT_HEADER_PREFIXES, GATEWAY_OWNED_HEADER_PREFIXES, isForeignTraceContextHeader, isLookAlikeName, MESH_CONTROL_HEADER_PREFIXES } from '../../otel/wire-names';
import { remembered } from '../../src/remembered';
import { forbiddenClientHeaderTest, isForbiddenClientHeader, type UnderscoreHeaderPolicy } from '../../src/upstream-headers';

/** Names near every rule's edges: each prefix alone, with a tail, in `_` and `.` spellings, and ordinary names. */
const PREFIXES = [...GATEWAY_OWNED_HEADER_PREFIXES, ...FOREIGN_IDENTITY_HEADER_PREFIXES, ...FOREIGN_TRACE_CONTEXT_HEADER_PREFIXES, ...MESH_CONTROL_HEADER_PREFIXES];
const nameArbitrary = fc.oneof(
  fc.tuple(fc.constantFrom(...PREFIXES), fc.stringMatching(/^[a-z0-9_.-]{0,8}$/), fc.constantFrom('', '_', '.')).map(([prefix, tail, separator]) => (separator ? prefix.replace(/-/g, separator) : prefix) + tail),
  fc.constantFrom('x-request-id', 'x_request_id', 'x-api-key', 'x.api.key', 'x-forwarded-for', 'x_forwarded_host', 'x-envoy-internal', 'traceparent', 'b3', 'x-b3-traceid', 'uber-trace-id', 'x-amzn-trace-id', 'authorization', 'host', 'accept', 'x-http-method-override', 'proxy'),
  fc.stringMatching(/^[a-z0-9_.-]{1,12}$/),
  // Longer than the remembered names: decided every time.
  fc.stringMatching(/^x-user-[a-z]{60,80}$/),
);

describe('remembered', () => {
  it('answers exactly as the rule, for every policy and the trace-context rule, across more names than it holds', () => {
    const traceContextRule = (name: string) => isForeignTraceContextHeader(isLookAlikeName(name) ? dashedSpelling(name) : name);
    fc.assert(
      fc.property(fc.array(nameArbitrary, { minLength: 1, maxLength: 60 }), fc.constantFrom<UnderscoreHeaderPolicy>('drop', 'reject', 'allow'), (names, underscores) => {
        const forbidden = remembered((name) => isForbiddenClientHeader(name, underscores), { capacity: 8, maxKeyLength: 64 });
        const traceContext = remembered(traceContextRule, { capacity: 8, maxKeyLength: 64 });
        // Each name asked twice, the second time (usually) from the table.
        for (const name of [...names, ...names]) {
          expect(forbidden(name)).toBe(isForbiddenClientHeader(name, underscores));
          expect(traceContext(name)).toBe(traceContextRule(name));
          expect(forbiddenClientHeaderTest(underscores)(name)).toBe(isForbiddenClientHeader(name, underscores));
        }
      }),
      { seed: 20261204, numRuns: 400 },
    );
  });

  it('decides a name once while it is held, again after the table starts over, and a long name every time', () => {
    const decided: string[] = [];
    const verdict = remembered(
      (name) => {
        decided.push(name);
        return name.startsWith('x-user-');
      },
      { capacity: 3, maxKeyLength: 10 },
    );
    expect([verdict('x-user-id'), verdict('accept'), verdict('x-user-id'), verdict('accept')]).toEqual([true, false, true, false]);
    expect(decided).toEqual(['x-user-id', 'accept']);
    // A third name fills the table; a fourth empties it first, so the first is decided again.
    verdict('host');
    verdict('cookie');
    verdict('x-user-id');
    expect(decided).toEqual(['x-user-id', 'accept', 'host', 'cookie', 'x-user-id']);
    // Longer than maxKeyLength: never held.
    const long = 'x-user-abcdefgh';
    expect([verdict(long), verdict(long)]).toEqual([true, true]);
    expect(decided.filter((name) => name === long)).toHaveLength(2);
  });
});
