import fc from 'fast-check';
import { stopsAtThisHop } from '../../src/upstream-headers';

/** RFC 9110 7.6.1: the hop-by-hop names, and every name the request's own Connection lists (any case, any blanks). */
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'te', 'trailer', 'upgrade', 'proxy-authorization', 'proxy-authenticate', 'expect'];
function reference(connection: string | string[] | undefined, name: string): boolean {
  const listed = connection === undefined ? [] : [connection].flat().join(',').split(',').map((token) => token.trim().toLowerCase());
  return HOP_BY_HOP.includes(name) || listed.includes(name);
}

describe('stopsAtThisHop', () => {
  const names = fc.constantFrom('close', 'keep-alive', 'x-user-id', 'accept', 'te', 'upgrade', 'x-custom', 'Close');
  // The values answered from a table (keep-alive, close) and ones that are not, so both paths meet the same rule.
  const connections = fc.oneof(
    fc.constantFrom(undefined, 'keep-alive', 'Keep-Alive', 'close', 'Close', 'keep-alive, x-custom', 'close,accept', ' close ', 'KEEP-ALIVE'),
    fc.array(fc.constantFrom('close', 'Keep-Alive', 'x-custom', ' accept', 'TE'), { minLength: 1, maxLength: 3 }).map((tokens) => tokens.join(',')),
    fc.array(fc.constantFrom('close', 'x-custom', 'keep-alive'), { minLength: 1, maxLength: 2 }),
  );

  it('stops exactly the hop-by-hop names and those Connection lists, for the usual values as for any other', () => {
    fc.assert(
      fc.property(connections, names, (connection, name) => stopsAtThisHop(connection)(name) === reference(connection, name)),
      { seed: 4242, numRuns: 500 },
    );
  });

  it.each([
    { desc: 'Connection: close stops a header named close', connection: 'close', name: 'close', stops: true },
    { desc: 'Connection: keep-alive stops Keep-Alive', connection: 'keep-alive', name: 'keep-alive', stops: true },
    { desc: 'Connection: keep-alive lets an end-to-end header through', connection: 'keep-alive', name: 'accept', stops: false },
  ])('$desc', ({ connection, name, stops }) => {
    expect(stopsAtThisHop(connection)(name)).toBe(stops);
  });
});
