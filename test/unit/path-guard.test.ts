import fc from 'fast-check';
import { pathProblem } from '../../src/middleware/path-guard';

describe('pathProblem', () => {
  it.each([
    { desc: 'a plain resource path', path: '/api/users/1' },
    { desc: 'the prefix itself', path: '/api/users' },
    { desc: 'a trailing slash', path: '/api/users/' },
    { desc: 'an encoded space', path: '/api/users/john%20doe' },
    { desc: 'UTF-8 in a segment', path: '/api/users/%C3%A9' },
    { desc: 'a dot inside a segment', path: '/api/users/file.tar.gz' },
    { desc: 'a format suffix', path: '/api/users.json' },
    { desc: 'accented letters', path: '/api/users/%C3%A9l%C3%A8ve/stra%C3%9Fe' },
    { desc: 'CJK text', path: '/api/notes/%E6%97%A5%E6%9C%AC%E8%AA%9E' },
  ])('accepts $desc', ({ path }) => {
    expect(pathProblem(path)).toBeUndefined();
  });

  it.each([
    { desc: 'a dot-dot segment', path: '/api/users/../orders', reason: /dot segments/ },
    { desc: 'a trailing dot-dot', path: '/api/users/..', reason: /dot segments/ },
    { desc: 'a single-dot segment', path: '/api/users/./1', reason: /dot segments/ },
    { desc: 'encoded dots', path: '/api/users/%2e%2e/orders', reason: /dot segments/ },
    { desc: 'upper-case encoded dots', path: '/api/users/%2E%2E/orders', reason: /dot segments/ },
    { desc: 'half-encoded dots', path: '/api/users/.%2e/orders', reason: /dot segments/ },
    { desc: 'an encoded slash', path: '/api/users/..%2forders', reason: /encoded slashes/ },
    { desc: 'an encoded backslash', path: '/api/users/..%5corders', reason: /encoded slashes/ },
    { desc: 'a raw backslash', path: '/api/users\\..\\orders', reason: /backslashes/ },
    // A server that decodes the path makes them a query or a fragment: /api/users/? is /api/users.
    { desc: 'an encoded ?', path: '/api/users/%3F', reason: /encoded \? or #/ },
    { desc: 'an encoded # (lower case)', path: '/pub/secret%23', reason: /encoded \? or #/ },
    // What a router matching without case, or normalising (NFKC), reads as ASCII.
    { desc: 'a long s (ſ, upper-cases to S)', path: '/pub/%C5%BFecret', reason: /read as ASCII/ },
    { desc: 'a dotted capital I (İ, lower-cases to i)', path: '/pub/%C4%B0nternal/x', reason: /read as ASCII/ },
    { desc: 'a dotless i (ı, upper-cases to I)', path: '/pub/%C4%B1nternal/x', reason: /read as ASCII/ },
    { desc: 'the Kelvin sign (lower-cases to k)', path: '/pub/%E2%84%AAey', reason: /read as ASCII/ },
    { desc: 'a fullwidth letter', path: '/pub/%EF%BD%93ecret', reason: /read as ASCII/ },
    { desc: 'fullwidth dots and slash', path: '/pub/%EF%BC%8E%EF%BC%8E%EF%BC%8Fsecret', reason: /read as ASCII/ },
    { desc: 'a ligature (ﬁ is fi)', path: '/pub/%EF%AC%81les', reason: /read as ASCII/ },
    { desc: 'double-encoded dots', path: '/api/users/%252e%252e/orders', reason: /double-encoded/ },
    { desc: 'a double-encoded letter', path: '/api/%2561dmin', reason: /double-encoded/ },
    { desc: 'an encoded % alone', path: '/api/files/100%25', reason: /double-encoded/ },
    { desc: 'three dots (Windows strips trailing dots)', path: '/api/users/...', reason: /end in a dot/ },
    { desc: 'a trailing dot', path: '/api/admin./users', reason: /end in a dot/ },
    { desc: 'a trailing encoded space', path: '/api/admin%20', reason: /white space/ },
    { desc: 'a double slash', path: '/api/users//1', reason: /empty path segments/ },
    { desc: 'an encoded NUL', path: '/api/users/1%00', reason: /control characters/ },
    { desc: 'an encoded newline', path: '/api/users/1%0d%0aX-Injected:%201', reason: /control characters/ },
    { desc: 'overlong UTF-8 dots', path: '/api/users/%c0%ae%c0%ae/orders', reason: /percent-encoded UTF-8/ },
    { desc: 'a truncated escape', path: '/api/users/%e', reason: /percent-encoded UTF-8/ },
    { desc: 'a matrix parameter', path: '/api/users;jsessionid=1', reason: /path parameters/ },
    { desc: 'a matrix parameter mid-path', path: '/api/users;x/admin', reason: /path parameters/ },
    { desc: 'an encoded semicolon', path: '/api/users%3bx=1', reason: /path parameters/ },
    { desc: 'an upper-case encoded semicolon', path: '/api/users%3Bx=1', reason: /path parameters/ },
    { desc: 'a relative path', path: 'api/users', reason: /start with/ },
    { desc: 'a path longer than the limit', path: `/api/users/${'a'.repeat(3000)}`, reason: /longer than/ },
  ])('refuses $desc', ({ path, reason }) => {
    expect(pathProblem(path)).toMatch(reason);
  });

  // Every code point, against an oracle from other sources than the guard's list: NFKC makes it (or a part of it)
  // ASCII; its lower- or upper-case mapping is one ASCII character; a case-insensitive Unicode regular expression
  // (simple case folding) matches it to an ASCII letter; or it is İ, whose simple lower-case mapping is `i` where
  // JavaScript's full one adds U+0307. `ß` (`SS`: two letters, no simple mapping) and `ǰ` (`J̌`, a full mapping
  // only) pass.
  it('refuses a path exactly when its one non-ASCII character reads as ASCII (every code point)', () => {
    const oracle = (character: string) =>
      /[\u0000-\u007f]/.test(character.normalize('NFKC')) ||
      [character.toLowerCase(), character.toUpperCase()].some((mapped) => /^[\u0000-\u007f]$/.test(mapped)) ||
      /^[a-z]$/iu.test(character) ||
      character === '\u0130';
    const wrong: string[] = [];
    for (let code = 0x80; code <= 0x10ffff; code++) {
      if (code >= 0xd800 && code <= 0xdfff) continue;
      const character = String.fromCodePoint(code);
      const path = `/api/a${encodeURIComponent(character)}b`;
      const problem = pathProblem(path);
      // Other rules refuse some characters for their own reasons (white space at a segment's end cannot happen here).
      if (problem !== undefined && !/read as ASCII/.test(problem)) continue;
      if ((problem !== undefined) !== oracle(character)) wrong.push(code.toString(16));
    }
    expect(wrong).toEqual([]);
  });

  it('finds a dot segment exactly where the path, split on /, has a segment . or .. (generated paths)', () => {
    const segment = fc.constantFrom('', '.', '..', '...', 'a', '.a', 'a.', '%2e', '%2E%2e', 'a.b');
    fc.assert(
      fc.property(fc.array(segment, { minLength: 1, maxLength: 6 }), (segments) => {
        const path = `/${segments.join('/')}`;
        const decoded = decodeURIComponent(path);
        // Empty segments are refused first, for their own reason.
        fc.pre(!decoded.includes('//'));
        const hasDotSegment = decoded.split('/').some((part) => part === '.' || part === '..');
        expect(pathProblem(path) === 'dot segments are not allowed').toBe(hasDotSegment);
      }),
      { seed: 18, numRuns: 500 },
    );
  });

  it('refuses every path in which one decoding leaves a % (generated paths)', () => {
    const piece = fc.oneof(fc.constantFrom('a', 'admin', '%61', '%2561', '%25', '%2525', '%25%36%31', 'x.y'), fc.integer({ min: 0x20, max: 0x7e }).map((code) => `%25${code.toString(16)}`));
    fc.assert(
      fc.property(fc.array(fc.array(piece, { minLength: 1, maxLength: 3 }), { minLength: 1, maxLength: 4 }), (segments) => {
        const path = `/${segments.map((parts) => parts.join('')).join('/')}`;
        const once = decodeURIComponent(path);
        expect({ path, problem: pathProblem(path) }).toEqual({ path, problem: once.includes('%') ? 'double-encoded characters (an encoded %) are not allowed' : undefined });
      }),
      { seed: 32, numRuns: 500 },
    );
  });
});
