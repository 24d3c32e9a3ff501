import fc from 'fast-check';
import { generateApiKey } from '../../src/consumers';
import { containsApiKey, hideUrlPasswords, redactQuery, redactUrl } from '../../otel/redact-url';

describe('redactUrl (access-log query redaction)', () => {
  it.each([
    '/api/users?q=hello&page=2&sort=name',
    '/api/users?filter=a=b&x=y%3Dz',
    '/api/users?next=%2Fcb%3Fpage%3D2',
    '/api/users?data=eyJhIjoxfQ',
    '/cb?next=https://alice@internal.example/&mail=a@b.example',
    '/api/eyJzeXN0ZW0/eyJ.x.y',
  ])('leaves %s as it is (nothing secret-looking in it)', (url) => {
    expect(redactUrl(url)).toBe(url);
  });

  it.each([
    { desc: 'a plain secret name', url: '/api/users?token=SECRET123', expected: '/api/users?token=REDACTED' },
    { desc: 'an encoded letter in the name', url: '/api/users?%74oken=SECRET123', expected: '/api/users?%74oken=REDACTED' },
    { desc: 'an upper-case escape', url: '/api/users?%54OKEN=SECRET123', expected: '/api/users?%54OKEN=REDACTED' },
    { desc: 'a fully encoded name', url: '/api/users?%70%61%73%73%77%6f%72%64=SECRET123', expected: '/api/users?%70%61%73%73%77%6f%72%64=REDACTED' },
    { desc: 'a double-encoded name', url: '/api/users?%2574oken=SECRET123', expected: '/api/users?%2574oken=REDACTED' },
    { desc: 'mixed case', url: '/api/users?Access_ToKeN=SECRET123', expected: '/api/users?Access_ToKeN=REDACTED' },
    { desc: 'a repeated name', url: '/api/users?token=SECRET123&a=1&token=SECRET456', expected: '/api/users?token=REDACTED&a=1&token=REDACTED' },
    { desc: 'an array-style name', url: '/api/users?token[]=SECRET123', expected: '/api/users?token[]=REDACTED' },
    { desc: 'a semicolon separator', url: '/api/users?a=1;password=SECRET123', expected: '/api/users?a=1;password=REDACTED' },
    { desc: 'a plus inside the name', url: '/api/users?api+key=SECRET123', expected: '/api/users?api+key=REDACTED' },
    { desc: 'a malformed escape before the name', url: '/api/users?%zz%74oken=SECRET123', expected: '/api/users?%zz%74oken=REDACTED' },
    { desc: 'an empty value', url: '/api/users?token=', expected: '/api/users?token=REDACTED' },
    { desc: 'an Azure SAS signature', url: '/api/files?sv=2022&sig=SECRET123', expected: '/api/files?sv=2022&sig=REDACTED' },
    { desc: 'a JWT under its own name', url: '/api/users?jwt=SECRET123', expected: '/api/users?jwt=REDACTED' },
    { desc: 'a session id', url: '/api/users?session=SECRET123', expected: '/api/users?session=REDACTED' },
    { desc: "Socket.IO's session id", url: '/socket.io/?EIO=4&transport=polling&sid=SECRET123', expected: '/socket.io/?EIO=4&transport=polling&sid=REDACTED' },
    { desc: 'an HMAC', url: '/api/hooks?ts=1&hmac=SECRET123', expected: '/api/hooks?ts=1&hmac=REDACTED' },
    { desc: 'a short password name', url: '/api/users?pwd=SECRET123', expected: '/api/users?pwd=REDACTED' },
    { desc: 'a credential', url: '/api/users?credential=SECRET123', expected: '/api/users?credential=REDACTED' },
    { desc: 'a SAML assertion', url: '/api/sso?SAMLAssertion=SECRET123', expected: '/api/sso?SAMLAssertion=REDACTED' },
    { desc: 'a one-time password', url: '/api/users?otp=123456', expected: '/api/users?otp=REDACTED' },
    { desc: "PHP's session id", url: '/api/x?PHPSESSID=abc', expected: '/api/x?PHPSESSID=REDACTED' },
    { desc: 'a passphrase', url: '/api/x?passphrase=hunter2', expected: '/api/x?passphrase=REDACTED' },
    { desc: 'a CAS service ticket', url: '/api/sso?ticket=ST-1-xyz', expected: '/api/sso?ticket=REDACTED' },
    // Node's querystring, URLSearchParams and Koa split on `&` only: the value is `abc;def`, all of it a secret.
    { desc: 'a secret value holding a semicolon', url: '/api/users?password=abc;def&page=2', expected: '/api/users?password=REDACTED&page=2' },
    { desc: 'a secret after a semicolon, then more', url: '/api/users?a=1;token=abc;def', expected: '/api/users?a=1;token=REDACTED' },
    // A refused absolute-form target's userinfo reached the access line as sent.
    { desc: 'userinfo in an absolute-form target', url: 'http://alice:S3cret@api.example.com/api/users', expected: 'http://REDACTED@api.example.com/api/users' },
    { desc: 'userinfo and a secret parameter', url: 'https://u:p@h/x?token=1', expected: 'https://REDACTED@h/x?token=REDACTED' },
    // Only the outer names were looked at: these went to the logs and spans whole.
    { desc: "a redirect URL's own secret parameter", url: '/api/users/1?redirect_uri=https://app.example/cb?access_token=SECRET_A&page=2', expected: '/api/users/1?redirect_uri=REDACTED&page=2' },
    { desc: "a signed URL's signature passed on", url: '/api/orders?url=https://bucket.s3.amazonaws.com/k?X-Amz-Signature=SECRET_B', expected: '/api/orders?url=REDACTED' },
    { desc: 'an encoded redirect holding a token', url: '/api/users/1?next=%2Fcb%3Ftoken%3DSECRET_C', expected: '/api/users/1?next=REDACTED' },
    { desc: 'a twice-encoded redirect holding a code', url: '/api/users/1?next=%252Fcb%253Fcode%253DSECRET_D', expected: '/api/users/1?next=REDACTED' },
    { desc: 'a JWT under a harmless name', url: '/a?t=eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl&x=1', expected: '/a?t=REDACTED&x=1' },
    { desc: 'an unsigned JWT', url: '/a?t=eyJhbGciOiJub25lIn0.eyJzdWIiOiIxIn0.', expected: '/a?t=REDACTED' },
    { desc: 'an encrypted JWT (five parts)', url: '/cb?t=eyJhbGciOiJSU0EtT0FFUCIsImVuYyI6IkEyNTZHQ00ifQ.OKOawDo13gRp2ojaHV7LFpZc.48V1_ALb6US04U3b.5eym8TW_c8SuK0ltJ3rpYIzOeDQz7TALvtu6UG9oMo4vpzs9tX_EFShS8iB7j6ji.XFBoMYUZodetZdvTiFvSkQ&x=1', expected: '/cb?t=REDACTED&x=1' },
    { desc: 'a directly encrypted JWT (an empty key part)', url: '/cb?t=eyJhbGciOiJkaXIiLCJlbmMiOiJBMjU2R0NNIn0..48V1_ALb6US04U3b.5eym8TW_c8SuK0lt.XFBoMYUZodetZdvTiFvSkQ', expected: '/cb?t=REDACTED' },
    { desc: 'a JWT in a path (a magic link)', url: '/api/reset/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl/confirm', expected: '/api/reset/REDACTED/confirm' },
    // An escape's hex digits before the token: `%3D` and `%2F` end in a base64url character, which hid the boundary.
    { desc: 'a JWT after an escape in an encoded redirect', url: '/login?next=%2Fcb%3Ft%3DeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln', expected: '/login?next=REDACTED' },
    { desc: 'a JWT after an escape in a path', url: '/magic%2FeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln', expected: '/magic%2FREDACTED' },
    { desc: 'a twice-encoded JWT', url: '/login?next=%252Fcb%253Ft%253DeyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln', expected: '/login?next=REDACTED' },
    // Koa reads a value to the next `&`: `/cb;?access_token=...` is `next`'s.
    { desc: 'an encoded secret after a raw semicolon in a value', url: '/cb?next=%2Fcb;%3Faccess_token%3DSECRET1', expected: '/cb?next=REDACTED' },
    { desc: 'an encoded secret two semicolon parts on', url: '/cb?next=%2Fcb%3Fa%3D1;b%26token%3DSECRET2', expected: '/cb?next=REDACTED' },
    { desc: "a URL's password in a value", url: '/cb?next=https://alice:s3cret@internal.example/', expected: '/cb?next=REDACTED' },
    { desc: "an encoded URL's password in a value", url: '/cb?next=https%3A%2F%2Falice%3As3cret%40internal.example%2F', expected: '/cb?next=REDACTED' },
  ])('redacts $desc', ({ url, expected }) => {
    expect(redactUrl(url)).toBe(expected);
  });

  it.each([
    { desc: 'no query', url: '/api/users/1' },
    { desc: 'harmless names', url: '/api/users?page=2&sort=name' },
    { desc: 'a name without a value', url: '/api/users?token' },
  ])('keeps $desc as it is', ({ url }) => {
    expect(redactUrl(url)).toBe(url);
  });

  // A gateway key is recognised by its shape wherever it stands: under a name that means nothing, bare, in a path.
  describe('gateway API keys', () => {
    const key = generateApiKey();
    const secret = key.slice('kgw_'.length);
    it.each([
      { desc: 'under a harmless name', url: `/api/x?k=${key}&page=2`, expected: '/api/x?k=REDACTED&page=2' },
      { desc: 'bare in the query', url: `/api/x?${key}`, expected: '/api/x?REDACTED' },
      { desc: 'in a path segment', url: `/api/orders/${key}/items`, expected: '/api/orders/REDACTED/items' },
      { desc: 'with its underscore percent-encoded', url: `/api/x?client=kgw%5F${secret}`, expected: '/api/x?client=REDACTED' },
      { desc: 'between dots', url: `/api/x/v1.${key}.json`, expected: '/api/x/v1.REDACTED.json' },
      // After a percent-escape, whose hex digits are no part of it: an encoded URL, JSON or phrase in a parameter.
      { desc: 'in an encoded URL in a parameter', url: `/api/x?redirect=https%3A%2F%2Fa%2Fcb%3Fk%3D${key}`, expected: '/api/x?redirect=https%3A%2F%2Fa%2Fcb%3Fk%3DREDACTED' },
      { desc: 'after an encoded blank', url: `/api/x?q=Bearer%20${key}`, expected: '/api/x?q=Bearer%20REDACTED' },
      { desc: 'in encoded JSON', url: `/api/x?filter=%7B%22key%22%3A%22${key}%22%7D`, expected: '/api/x?filter=%7B%22key%22%3A%22REDACTED%22%7D' },
      { desc: 'after an encoded slash in a path', url: `/api/x%2F${key}`, expected: '/api/x%2FREDACTED' },
    ])('redacts one $desc', ({ url, expected }) => {
      expect(redactUrl(url)).toBe(expected);
    });

    // Not a key: the shape exactly, or nothing. Inside a longer base64url run (a JWT's segment) the same letters
    // are the token's, which must reach the service and the logs as they are.
    it('keeps words that only start like one, and the shape inside a longer run', () => {
      for (const url of ['/api/x?q=kgw_short', '/api/kgw/items?kgw=1', `/api/x?c=${key.slice(0, 30)}`, `/api/x?t=eyJ${key}`, `/api/x?t=${key}A`, `/api/x?c=KGW_${secret}`]) expect(redactUrl(url)).toBe(url);
    });

    // A provider token of ~1 in 2,250 held `kgW_` and 20 base64url characters: its Authorization was not forwarded.
    // Here every token holds the prefix, in some case, and 43 characters after it, inside its base64url runs.
    it('never finds a key inside a JWT-shaped token (property)', () => {
      const run = (min: number, max: number) => fc.stringMatching(new RegExp(`^[A-Za-z0-9_-]{${min},${max}}$`));
      fc.assert(
        fc.property(run(1, 40), fc.constantFrom('kgw_', 'kgW_', 'KGW_', 'kgw-'), run(43, 43), run(1, 40), run(342, 342), (before, prefix, body, after, signature) => {
          expect(containsApiKey(`Bearer eyJhbGciOiJSUzI1NiJ9.eyJ${before}${prefix}${body}${after}.${signature}`)).toBe(false);
        }),
        { seed: 20261206, numRuns: 500 },
      );
    });

    it('finds every generated key, wherever it stands in a query or path (property)', () => {
      fc.assert(
        // Whatever stands beside it ends in (or starts with) a character no key holds: `/`, `=`, `&`, `.`.
        fc.property(fc.stringMatching(/^([a-z0-9/=&.-]{0,20}[/=&.])?$/), fc.stringMatching(/^([/=&.][a-z0-9/=&.-]{0,20})?$/), fc.boolean(), (before, after, inQuery) => {
          const generated = generateApiKey();
          const url = inQuery ? `/api/x?${before}${generated}${after}` : `/api/${before}${generated}${after}`;
          expect(containsApiKey(generated)).toBe(true);
          expect(redactUrl(url)).not.toContain(generated.slice(4, 24));
          if (inQuery) expect(redactQuery(url.slice(url.indexOf('?') + 1))).not.toContain(generated.slice(4, 24));
        }),
        { seed: 20261206, numRuns: 300 },
      );
    });
  });

  it('never lets the value of an encoded secret name through, however it is spelled (property)', () => {
    const secretNames = ['token', 'password', 'secret', 'api_key', 'code', 'signature', 'auth', 'sig', 'jwt', 'session', 'pwd', 'credential'];
    // Each character of the name: as is, upper-cased, or percent-encoded (either hex case), possibly twice.
    const spelled = (name: string) =>
      fc.array(fc.constantFrom('plain', 'upper', 'encode', 'encodeUpper', 'encodeTwice'), { minLength: name.length, maxLength: name.length }).map((ways) =>
        [...name]
          .map((char, index) => {
            const hex = char.charCodeAt(0).toString(16);
            switch (ways[index]) {
              case 'upper':
                return char.toUpperCase();
              case 'encode':
                return `%${hex}`;
              case 'encodeUpper':
                return `%${hex.toUpperCase()}`;
              case 'encodeTwice':
                return `%25${hex}`;
              default:
                return char;
            }
          })
          .join(''),
      );
    fc.assert(
      fc.property(fc.constantFrom(...secretNames).chain(spelled), fc.stringMatching(/^[A-Za-z0-9]{6,20}$/), fc.constantFrom('&', ';'), (name, value, separator) => {
        const url = `/api/orders?page=1${separator}${name}=${value}`;
        expect(redactUrl(url)).toBe(`/api/orders?page=1${separator}${name}=REDACTED`);
      }),
      { seed: 20261201, numRuns: 500 },
    );
  });
});

describe('hideUrlPasswords', () => {
  it.each([
    { desc: 'a plain password', value: 'http://svc:s3cret@127.0.0.1:4003', shown: '"http://svc:***@127.0.0.1:4003"' },
    { desc: 'a password with / and @', value: 'http://svc:ab/cd@ef@127.0.0.1:4003', shown: '"http://svc:***@127.0.0.1:4003"' },
    // JSON writes it \" : the quote ended the match and the whole password was shown.
    { desc: 'a password with a quote', value: 'http://svc:pa"ss@127.0.0.1:4003', shown: '"http://svc:***@127.0.0.1:4003"' },
    { desc: 'a password with a blank', value: 'redis://:pa ss@redis:6379', shown: '"redis://:***@redis:6379"' },
    { desc: 'a password= option', value: 'redis://redis:6379?password=pa"ss&db=1', shown: '"redis://redis:6379?password=***&db=1"' },
    // A JWKS URL's key (tokens.ts redacts the same URL in its own errors): a refused value is logged and answered.
    { desc: 'an api_key in a query', value: 'http://idp.corp/jwks?api_key=sk_live_9f8e&x=1', shown: '"http://idp.corp/jwks?api_key=***&x=1"' },
    { desc: 'a token after a semicolon', value: 'https://idp.corp/jwks?a=1;token=abc', shown: '"https://idp.corp/jwks?a=1;token=***"' },
    { desc: 'harmless parameters', value: 'https://idp.corp/jwks?tenant=acme&v=2', shown: '"https://idp.corp/jwks?tenant=acme&v=2"' },
    // Cut at `;` or `?`, the rest of such a password was shown; a `?` in another value hid the next secret.
    { desc: 'a password holding ; and ?', value: 'redis://cache:6379/?password=p;ss?Word1&db=0', shown: '"redis://cache:6379/?password=***&db=0"' },
    { desc: 'a secret after a ? inside another value', value: 'redis://cache:6379/?db=0?password=hunter2', shown: '"redis://cache:6379/?db=0?password=***"' },
    { desc: 'a password holding a quote, escaped by JSON', value: 'redis://cache:6379/?password=a"b&db=1', shown: '"redis://cache:6379/?password=***&db=1"' },
  ])('masks $desc in a JSON-quoted value', ({ value, shown }) => {
    expect(hideUrlPasswords(JSON.stringify(value))).toBe(shown);
  });
});
