import fc from 'fast-check';
import { publicLocation } from '../../src/upstream-headers';

describe('publicLocation: a Location naming the instance, as the client must see it', () => {
  const instance = 'http://10.0.3.7:4001';
  const publicOrigin = 'https://api.example.com';
  const route = { prefix: '/api/users', upstreamPath: '/users' };

  it.each([
    ['the instance, under the upstream path', 'http://10.0.3.7:4001/users/7?tab=a', 'https://api.example.com/api/users/7?tab=a'],
    ['the instance, the upstream path itself', 'http://10.0.3.7:4001/users', 'https://api.example.com/api/users'],
    ['the instance, elsewhere', 'http://10.0.3.7:4001/login?next=%2F', 'https://api.example.com/login?next=%2F'],
    ['the instance, no path', 'http://10.0.3.7:4001', 'https://api.example.com/'],
    ['the instance in capitals', 'HTTP://10.0.3.7:4001/users/7', 'https://api.example.com/api/users/7'],
    ['a path that only starts like the upstream path', 'http://10.0.3.7:4001/usersettings', 'https://api.example.com/usersettings'],
    ['a relative URL', '/users/7', '/users/7'],
    ['another origin', 'https://idp.example.com/authorize?x=1', 'https://idp.example.com/authorize?x=1'],
    ['another port of the same address', 'http://10.0.3.7:40011/users/7', 'http://10.0.3.7:40011/users/7'],
    ['the instance as userinfo of another host', 'http://10.0.3.7:4001@evil.example/x', 'http://10.0.3.7:4001@evil.example/x'],
    ['the instance, scheme-relative', '//10.0.3.7:4001/users/7', 'https://api.example.com/api/users/7'],
    ['the instance, scheme-relative with backslashes', '\\\\10.0.3.7:4001/users/7', 'https://api.example.com/api/users/7'],
    ['the instance, scheme-relative with one backslash', '/\\10.0.3.7:4001/users/7', 'https://api.example.com/api/users/7'],
    ['the instance, scheme-relative with backslashes after the authority', '//10.0.3.7:4001\\users\\7', 'https://api.example.com/api/users/7'],
    ['the instance, absolute with a backslash after the authority', 'http://10.0.3.7:4001\\users/7', 'https://api.example.com/api/users/7'],
    ['the instance, scheme-relative with a tab a browser drops', '/\t/10.0.3.7:4001/users/7', 'https://api.example.com/api/users/7'],
    ['the instance, http: without slashes (absolute from an https page)', 'http:10.0.3.7:4001/users/7', 'https://api.example.com/api/users/7'],
    ['another host, scheme-relative', '//cdn.example.com/users/7', '//cdn.example.com/users/7'],
    ['another port of the same address, scheme-relative', '//10.0.3.7:40011/users/7', '//10.0.3.7:40011/users/7'],
    // Raw bytes outside ASCII as undici hands them over (one character per byte): read as their text, encoded once.
    ['the instance, a path in raw UTF-8', 'http://10.0.3.7:4001/users/caf\xc3\xa9', 'https://api.example.com/api/users/caf%C3%A9'],
    ['the instance, a path in raw ISO-8859-1', 'http://10.0.3.7:4001/users/caf\xe9', 'https://api.example.com/api/users/caf%C3%A9'],
    ['another origin, a path in raw UTF-8 (passed on as its bytes)', 'https://idp.example.com/caf\xc3\xa9', 'https://idp.example.com/caf\xc3\xa9'],
  ])('%s', (_desc, value, expected) => {
    expect(publicLocation(value, instance, publicOrigin, route)).toBe(expected);
  });

  it('maps every path under a route whose upstream path is empty (generated)', () => {
    fc.assert(
      fc.property(fc.stringMatching(/^(\/[a-z0-9]{1,8}){0,4}$/), (path) => publicLocation(`${instance}${path}`, instance, publicOrigin, { prefix: '/api/x', upstreamPath: '' }) === `${publicOrigin}/api/x${path || '/'}`),
      { seed: 20261202, numRuns: 200 },
    );
  });
});
