import fc from 'fast-check';
import { withoutBlanksAroundEquals } from '../../otel/baggage-propagator';
import { absoluteFormTarget } from '../../otel/lifecycle';
import { isSecretName, redactQuery, REDACTED } from '../../otel/redact-url';
import { forwardedWithoutClients } from '../../src/cache-forwarded-origin';
import { mediaRanges } from '../../src/metrics-exposition';
import { methodOverrideParameter, withoutArraySuffix } from '../../src/middleware/path-guard';
import { percentDecodedLeniently } from '../../otel/percent-decoding';
import { unescape as querystringUnescape } from 'node:querystring';

/**
 * Parsers of what a client or a service sends, each once a regular expression (or a recursion) that a long run of
 * one character made quadratic (0.2-0.45 s of the event loop at a header's 16 KiB) or overflowed the stack. Each is
 * held to the old expression's answers on generated inputs, and must read 100,000 characters of the shape that
 * was slow (about a minute for the old expressions, past the test's time; milliseconds now).
 */
const LONG = 100_000;
const text = (alphabet: readonly string[], maxLength = 24) => fc.array(fc.constantFrom(...alphabet), { maxLength }).map((characters) => characters.join(''));

describe('absolute-form request targets', () => {
  const byExpression = (target: string) => {
    const absolute = /^https?:\/\/([^/?#]*)([^#]*)$/i.exec(target);
    if (!absolute || absolute[1]!.includes('@')) return undefined;
    const rest = absolute[2] || '/';
    return { authority: absolute[1]!, originForm: rest.charCodeAt(0) === 47 ? rest : `/${rest}` };
  };

  it('are split as the expression split them', () => {
    fc.assert(
      fc.property(fc.constantFrom('http://', 'HTTPS://', 'ftp://', '/'), text(['a', '/', '?', '#', '@', ':', '.']), (scheme, rest) => {
        expect(absoluteFormTarget(scheme + rest)).toEqual(byExpression(scheme + rest));
      }),
      { seed: 9112, numRuns: 2000 },
    );
  });

  it('are read at once when a long authority ends in a fragment', () => {
    expect(absoluteFormTarget(`http://${'a'.repeat(LONG)}/#`)).toBeUndefined();
    expect(absoluteFormTarget(`http://${'a'.repeat(LONG)}/x`)).toEqual({ authority: 'a'.repeat(LONG), originForm: '/x' });
  });
});

describe('a query parameter name without its array suffix', () => {
  it('is cut as /\\[[^\\]]*\\]$/ cut it', () => {
    fc.assert(
      fc.property(text(['a', '[', ']', '_']), (name) => {
        expect(withoutArraySuffix(name)).toBe(name.replace(/\[[^\]]*\]$/, ''));
      }),
      { seed: 3986, numRuns: 3000 },
    );
  });

  it('is cut at once from a name made of brackets', () => {
    expect(withoutArraySuffix(`${'['.repeat(LONG)}`)).toBe('['.repeat(LONG));
    expect(withoutArraySuffix(`${'['.repeat(LONG)}]`)).toBe('');
  });
});

describe('Forwarded without its clients (the cache key)', () => {
  const PAIR = /\s*([!#$%&'*+.^_`|~0-9A-Za-z-]+)\s*=\s*("[^"\\]*"|[!#$%&'*+.^_`|~0-9A-Za-z-]*)\s*([;,]|$)/y;
  const NODE = /^"?[0-9A-Za-z.:[\]_-]*"?$/;
  const byExpression = (value: string) => {
    let kept = '';
    PAIR.lastIndex = 0;
    while (PAIR.lastIndex < value.length) {
      const pair = PAIR.exec(value);
      if (!pair) return value;
      const [whole, name, nodeOrValue, separator] = pair;
      if (name!.toLowerCase() !== 'for') kept += whole;
      else if (NODE.test(nodeOrValue!)) kept += separator;
      else return value;
    }
    return kept;
  };

  it('is what the expression kept', () => {
    fc.assert(
      fc.property(text(['for', 'host', '=', ' ', '\t', ';', ',', '"', 'a', '1', '.', '@']), (value) => {
        expect(forwardedWithoutClients(value)).toBe(byExpression(value));
      }),
      { seed: 7239, numRuns: 3000 },
    );
  });

  it('is read at once with a long run of blanks after an =', () => {
    const value = `a=${' '.repeat(LONG)}@`;
    expect(forwardedWithoutClients(value)).toBe(value);
    expect(forwardedWithoutClients(`for=1.2.3.4;host=${' '.repeat(LONG)}x`)).toBe(`;host=${' '.repeat(LONG)}x`);
  });
});

describe('Accept media ranges (the metrics listener)', () => {
  it('are read from a well-formed Accept as before', () => {
    expect(mediaRanges('application/openmetrics-text; version=1.0.0; q=0.9, text/plain;q="0.5", */*;q=0.1').map(({ type, subtype, q }) => [type, subtype, q])).toEqual([
      ['application', 'openmetrics-text', 0.9],
      ['text', 'plain', 0.5],
      ['*', '*', 0.1],
    ]);
    expect(mediaRanges('text/plain; x="a, b; c"').map(({ params }) => params.get('x'))).toEqual(['a, b; c']);
  });

  it('are read at once from an Accept of quotes that never close', () => {
    expect(mediaRanges(`"${'\\"'.repeat(LONG)}`)).toEqual([]);
    expect(mediaRanges(`text/plain; x="${'\\"'.repeat(LONG)}`).map(({ type, subtype }) => `${type}/${subtype}`)).toEqual(['text/plain']);
  });
});

describe('a baggage property without the blanks around its =', () => {
  it('is what /[ \\t]*=[ \\t]*/ made of it', () => {
    fc.assert(
      fc.property(text(['k', '=', ' ', '\t', 'v']), (property) => {
        expect(withoutBlanksAroundEquals(property)).toBe(property.replace(/[ \t]*=[ \t]*/, '='));
      }),
      { seed: 2024, numRuns: 3000 },
    );
  });

  it('is made at once from a long run of blanks without =', () => {
    const property = `a${' '.repeat(LONG)}b`;
    expect(withoutBlanksAroundEquals(property)).toBe(property);
  });
});

describe('redacted queries', () => {
  /** Whether a value holds a secret-named parameter of its own, as sent or decoded (each escape one Latin-1 character). */
  const nestedSecret = (value: string): boolean => {
    let text = value;
    for (let round = 0; round <= 3; round++) {
      if ([...text.matchAll(/(?:^|[?&;#])([^=?&;#]*)=/g)].some((found) => isSecretName(found[1]!))) return true;
      const decoded = text.replace(/%[0-9a-f]{2}/gi, (escape) => String.fromCharCode(parseInt(escape.slice(1), 16)));
      if (decoded === text) return false;
      text = decoded;
    }
    return false;
  };

  /** The recursive expression a parameter was redacted with. */
  const partsByExpression = (parameter: string): string =>
    parameter.replace(/(^|;)([^;=]*)=([^;]*)((?:;.*)?)$/, (pair, separator: string, name: string, _value: string, rest: string) => {
      if (isSecretName(name)) return `${separator}${name}=${REDACTED}`;
      return rest === '' ? pair : `${pair.slice(0, pair.length - rest.length)};${partsByExpression(rest.slice(1))}`;
    });

  /** Each `&` parameter as the expression made it; one it left alone whose value holds a secret of its own, redacted whole. */
  const byExpression = (query: string): string =>
    query
      .split('&')
      .map((parameter) => {
        const parts = parameter.includes('=') ? partsByExpression(parameter) : parameter;
        if (parts !== parameter || !parameter.includes('=')) return parts;
        const equals = parameter.indexOf('=');
        return nestedSecret(parameter.slice(equals + 1)) ? `${parameter.slice(0, equals)}=${REDACTED}` : parameter;
      })
      .join('&');

  it('are what the expression made of them', () => {
    fc.assert(
      fc.property(text(['a', 'token', 'pass', 'sig', '=', '&', ';', 'x', '1', '%74', '?', '#', '%3D', '%26', '%3F'], 16), (query) => {
        expect(redactQuery(query)).toBe(byExpression(query));
      }),
      { seed: 3986, numRuns: 3000 },
    );
  });

  it('are made of many parts without overflowing the stack', () => {
    const many = '=;'.repeat(LONG);
    expect(redactQuery(many)).toBe(many);
    // Each part's `=` looked for within the part: searched to the next `=` anywhere, this was read once per part.
    expect(redactQuery(`${';'.repeat(LONG)}=`)).toBe(`${';'.repeat(LONG)}=`);
    expect(redactQuery(`${'a=1;'.repeat(LONG)}token=x;y`)).toBe(`${'a=1;'.repeat(LONG)}token=${REDACTED}`);
    // A value of many nested starts, and runs of what begins a JSON Web Token: each read once.
    expect(redactQuery(`a=${'?='.repeat(LONG)}`)).toBe(`a=${'?='.repeat(LONG)}`);
    expect(redactQuery(`a=${'%3F%3D'.repeat(LONG / 2)}`)).toBe(`a=${'%3F%3D'.repeat(LONG / 2)}`);
    expect(redactQuery(`a=${'eyJ'.repeat(LONG)}`)).toBe(`a=${'eyJ'.repeat(LONG)}`);
    expect(redactQuery(`a=${'eyJ.'.repeat(LONG)}`)).toBe(`a=${'eyJ.'.repeat(LONG)}`);
    expect(redactQuery(`a=eyJaa.${'aa.'.repeat(LONG)}`)).toBe(`a=${REDACTED}`);
    // Four parts after each escape: neither a signed nor an encrypted token.
    const fourParts = `a=${'%3DeyJaa.aa.aa.aa'.repeat(LONG / 16)}`;
    expect(redactQuery(fourParts) === fourParts).toBe(true);
  });
});

/**
 * Query parameter names decoded without an exception each: 16 KiB of `%=&` held the event loop ~0.28 s per request in
 * thrown URIErrors (four per name while looking for secrets, twice per request, one more for method overrides). Each
 * decoding is held to the answers of the code that threw, on generated text; the cost is bench/micro/hostile-query-cost.cjs's.
 */
describe('percent-decoding of client text', () => {
  const ESCAPY = ['%', '%2', '%25', '%74', '%C3', '%A9', '%ff', '%zz', '%00', '+', 'a', 't', 'oken', '_method', 'x', '=', '&', ';', '[]', 'é'];

  it("is decodeURIComponent's where that decodes, and Node's querystring.unescape's where it throws (ASCII text)", () => {
    fc.assert(
      fc.property(text(ESCAPY.filter((part) => part !== 'é'), 12), (raw) => {
        expect(percentDecodedLeniently(raw)).toBe(querystringUnescape(raw));
      }),
      { seed: 3986, numRuns: 5000 },
    );
  });

  it('leaves text other than escapes as it is, as decodeURIComponent does', () => {
    fc.assert(
      fc.property(text(['é', '\u20ac', 'a', '%C3%A9', '%E2%82%AC', '%41'], 12), (raw) => {
        expect(percentDecodedLeniently(raw)).toBe(decodeURIComponent(raw));
      }),
      { seed: 3986, numRuns: 2000 },
    );
  });

  /** isSecretName as it was: decodeURIComponent, and on its throw every well-formed escape as one Latin-1 character. */
  const secretNameByThrowing = (rawName: string): boolean => {
    const SECRET = /token|pass|pwd|secret|key|code|sig|auth|jwt|sess|sid|hmac|credential|assertion|otp|ticket/i;
    let name = rawName.replaceAll('+', ' ');
    for (let round = 0; round <= 3; round++) {
      if (SECRET.test(name)) return true;
      if (!name.includes('%')) return false;
      try {
        name = decodeURIComponent(name);
      } catch {
        name = name.replace(/%[0-9a-f]{2}/gi, (escape) => String.fromCharCode(parseInt(escape.slice(1), 16)));
      }
    }
    return SECRET.test(name);
  };

  it('judges a parameter name a secret exactly as the decoding that threw did', () => {
    fc.assert(
      fc.property(text(ESCAPY, 10), (name) => {
        expect(isSecretName(name)).toBe(secretNameByThrowing(name));
      }),
      { seed: 3986, numRuns: 5000 },
    );
    expect(isSecretName('%2574oken')).toBe(true);
    expect(isSecretName('%zz%74oken')).toBe(true);
    expect(isSecretName('%2525252574oken')).toBe(false);
  });

  /** methodOverrideParameter as it was, with Node's querystring.unescape. */
  const overrideByQuerystring = (query: string): boolean => {
    if (query === '') return false;
    for (const pair of query.split(/[&;]/)) {
      const name = querystringUnescape(pair.split('=', 1)[0]!.replaceAll('+', ' '));
      const nul = name.indexOf('\0');
      const folded = withoutArraySuffix((nul === -1 ? name : name.slice(0, nul)).toLowerCase().trimStart()).replace(/[-. []/g, '_');
      if (['_method', 'x_http_method_override', 'x_http_method', 'x_method_override'].includes(folded)) return true;
    }
    return false;
  };

  it('finds a method override in a query exactly as querystring.unescape did', () => {
    fc.assert(
      fc.property(text([...ESCAPY, '_m%65thod', 'x-http-method-override', '%5fmethod', '%00', ' '], 8), (query) => {
        expect(methodOverrideParameter(query)).toBe(overrideByQuerystring(query));
      }),
      { seed: 3986, numRuns: 5000 },
    );
    expect(methodOverrideParameter('%=&'.repeat(LONG / 3) + '_method=PUT')).toBe(true);
    expect(redactQuery('%=&'.repeat(LONG / 3) + '%74oken=x')).toBe(`${'%=&'.repeat(LONG / 3)}%74oken=${REDACTED}`);
  });
});
