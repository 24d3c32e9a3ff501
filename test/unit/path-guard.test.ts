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
