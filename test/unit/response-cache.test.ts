import { spawnSync } from 'node:child_process';
import { hash } from 'node:crypto';
import path from 'node:path';
import fc from 'fast-check';
import { ConfigError, parseConfig } from '../../src/config';
import { cacheDirectives, cacheKey, currentAge, invalidationSpelling, isFresh, namesStored, parseCacheControl, retentionMs, REVALIDATION_WINDOW_SECONDS, storability, type CachedResponse, type StorabilityInput } from '../../src/response-cache';
import type { StaleResources } from '../../src/cache-invalidations';
import { createGatewayApps } from '../../src/gateway';
import { createMemoryResponseStore, MAX_REMEMBERED_INVALIDATIONS, sharingInvalidations, type CacheKey, type PeerInvalidations, type ResponseStore } from '../../src/response-store';
import { memoryLogger } from '../helpers/servers';
import { shippedConfigFile } from '../helpers/test-config';

const NOW = Date.parse('2026-12-01T12:00:00Z');
const base: StorabilityInput = { status: 200, headers: {}, sharedCredentialed: false, defaultTtlSeconds: 30, now: NOW };
const verdict = (headers: StorabilityInput['headers'], more: Partial<StorabilityInput> = {}) => storability({ ...base, ...more, headers });

/** Directives a Cache-Control of a generated test may hold, valid or not. */
const directive = fc.oneof(
  fc.constantFrom('public', 'private', 'no-cache', 'must-revalidate', 'proxy-revalidate', 'immutable', 'no-transform', 'private="set-cookie"', 'no-cache="x"'),
  fc.tuple(fc.constantFrom('max-age', 's-maxage', 'stale-if-error', 'stale-while-revalidate', 'MAX-AGE'), fc.oneof(fc.nat({ max: 1e12 }).map(String), fc.constantFrom('', '-1', 'abc', '"10"', '1.5', ' 7'))).map(([name, value]) => `${name}=${value}`),
  fc.string({ maxLength: 12 }),
);
const cacheControl = fc.array(directive, { maxLength: 6 }).map((parts) => parts.join(', '));

describe('Cache-Control and storability (RFC 9111)', () => {
  it.each([
    { desc: 'no directives: the route ttl', headers: {}, lifetime: 30 },
    { desc: 'max-age wins over the route ttl', headers: { 'cache-control': 'max-age=120' }, lifetime: 120 },
    { desc: 's-maxage wins over max-age in a shared cache', headers: { 'cache-control': 'max-age=0, s-maxage=90' }, lifetime: 90 },
    { desc: 'Expires relative to Date', headers: { date: new Date(NOW).toUTCString(), expires: new Date(NOW + 45_000).toUTCString() }, lifetime: 45 },
    { desc: 'a quoted max-age', headers: { 'cache-control': 'max-age="15"' }, lifetime: 15 },
    { desc: 'directives in two field lines', headers: { 'cache-control': ['public', 'max-age=12'] }, lifetime: 12 },
    { desc: 'upper-case directive names', headers: { 'cache-control': 'MAX-AGE=20' }, lifetime: 20 },
  ])('stores $desc', ({ headers, lifetime }) => {
    expect(verdict(headers)).toMatchObject({ store: true, lifetimeSeconds: lifetime });
  });

  it.each([
    { desc: 'no-store', headers: { 'cache-control': 'max-age=60, no-store' } },
    { desc: 'private', headers: { 'cache-control': 'private, max-age=60' } },
    { desc: 'private naming a field', headers: { 'cache-control': 'private="set-cookie", max-age=60' } },
    { desc: 'no-cache without a validator (nothing to revalidate it with)', headers: { 'cache-control': 'no-cache' } },
    { desc: 'max-age=0', headers: { 'cache-control': 'max-age=0' } },
    { desc: 'a malformed max-age', headers: { 'cache-control': 'max-age=abc' } },
    { desc: 'two different max-age values', headers: { 'cache-control': 'max-age=60, max-age=5' } },
    { desc: 'an invalid Expires', headers: { expires: '0' } },
    { desc: 'an Expires in the past', headers: { date: new Date(NOW).toUTCString(), expires: new Date(NOW - 1000).toUTCString() } },
    { desc: 'an Age beyond the lifetime', headers: { 'cache-control': 'max-age=60', age: '61' } },
    { desc: 'Set-Cookie', headers: { 'set-cookie': 'session=1' } },
    { desc: 'Vary: *', headers: { vary: 'Accept, *' } },
    { desc: 'a no-store hidden in a second line', headers: { 'cache-control': ['max-age=60', 'no-store'] } },
    { desc: 'a no-store after an unterminated quote', headers: { 'cache-control': 'max-age=60, x="a, no-store' } },
    // A `;` for a comma, a common slip: the scan reads `private;` as no directive, and kept the max-age.
    { desc: 'private followed by a semicolon', headers: { 'cache-control': 'private; max-age=600' } },
    { desc: 'private with a trailing semicolon', headers: { 'cache-control': 'max-age=3600, private;' } },
    { desc: 'no-store with a trailing semicolon', headers: { 'cache-control': 'no-store;' } },
    { desc: 'no-store glued to the next directive by a semicolon', headers: { 'cache-control': 'no-store;max-age=60' } },
  ])('does not store $desc', ({ headers }) => {
    expect(verdict(headers).store).toBe(false);
  });

  // Any character that cannot be part of a directive's name ends it: whatever touches the word, a service's
  // prohibition beside a lifetime is never stored.
  it('never stores a prohibition touched by any character outside a token, beside a lifetime (property)', () => {
    const outsideToken = fc.constantFrom(...';:/\\"()<>@[]?{}'.split(''), ' ', '\t', ',');
    fc.assert(
      fc.property(fc.constantFrom('no-store', 'private', 'PRIVATE', 'No-Store'), outsideToken, outsideToken, fc.boolean(), (word, before, after, first) => {
        const text = first ? `${word}${after}max-age=600` : `max-age=600${before}${word}${after}`;
        expect(verdict({ 'cache-control': text }).store).toBe(false);
      }),
      { seed: 20261206, numRuns: 300 },
    );
  });

  it.each([
    { desc: 'max-age=0 with stale-if-error', headers: { 'cache-control': 'max-age=0, stale-if-error=60' }, window: 'staleIfErrorSeconds' as const },
    { desc: 'max-age=0 with stale-while-revalidate', headers: { 'cache-control': 'max-age=0, stale-while-revalidate=60' }, window: 'staleWhileRevalidateSeconds' as const },
  ])('stores $desc and no validator for its window alone (RFC 5861: an answer for the next minute, never a fresh one)', ({ headers, window }) => {
    const stored = verdict(headers);
    expect(stored.store).toBe(true);
    if (!stored.store) return;
    expect(stored.lifetimeSeconds).toBe(0);
    expect(stored[window]).toBe(60);
    expect(verdict({ ...headers, age: '61' }).store).toBe(false);
  });

  it.each([
    { desc: 'no-cache with an ETag', headers: { 'cache-control': 'no-cache, max-age=60', etag: '"1"' } },
    { desc: 'max-age=0 with a Last-Modified', headers: { 'cache-control': 'max-age=0', 'last-modified': new Date(NOW - 60_000).toUTCString() } },
    { desc: 'an Age beyond the lifetime, with an ETag', headers: { 'cache-control': 'max-age=60', age: '61', etag: '"1"' } },
  ])('stores $desc stale from the start, to be revalidated before each use', ({ headers }) => {
    const stored = verdict(headers);
    expect(stored.store).toBe(true);
    if (!stored.store) return;
    expect(stored.lifetimeSeconds).toBeLessThanOrEqual(stored.initialAgeSeconds);
    expect(stored.staleIfErrorSeconds).toBe(0);
  });

  it('keeps a stale entry for the revalidation window, with a validator (a 304) or without (a HEAD\'s 200, RFC 9111 4.3.5), or its longer stale-if-error', () => {
    const entry = (headers: Record<string, string>, staleIfErrorSeconds = 0): CachedResponse => ({ status: 200, headers, body: Buffer.alloc(0), storedAt: NOW, initialAgeSeconds: 0, lifetimeSeconds: 10, staleIfErrorSeconds, staleWhileRevalidateSeconds: 0, vary: [], varyValues: [] });
    const window = (10 + REVALIDATION_WINDOW_SECONDS - 11) * 1000;
    expect(retentionMs(entry({}), NOW + 11_000)).toBe(window);
    expect(retentionMs(entry({ etag: '"1"' }), NOW + 11_000)).toBe(window);
    expect(retentionMs(entry({}, REVALIDATION_WINDOW_SECONDS + 5), NOW + 11_000)).toBe(window + 5_000);
    expect(retentionMs(entry({}), NOW + (10 + REVALIDATION_WINDOW_SECONDS) * 1000)).toBe(0);
  });

  it.each([200, 203, 204, 300, 301, 308, 404, 405, 410, 414])('stores status %i', (status) => {
    expect(verdict({}, { status }).store).toBe(true);
  });

  it.each([201, 202, 299, 302, 303, 307, 399])('stores status %i only with an explicit lifetime (RFC 9111 3)', (status) => {
    expect(verdict({ 'cache-control': 'public, max-age=60' }, { status }).store).toBe(true);
    expect(verdict({ 'cache-control': 's-maxage=60' }, { status }).store).toBe(true);
    expect(verdict({ expires: new Date(NOW + 60_000).toUTCString() }, { status }).store).toBe(true);
    expect(verdict({}, { status }).store).toBe(false);
    expect(verdict({ 'cache-control': 'public' }, { status }).store).toBe(false);
  });

  // A 4xx other than the heuristic ones speaks of the request, which a client chooses and the key does not wholly hold (CPDoS).
  it.each([206, 304, 400, 401, 403, 406, 411, 412, 413, 416, 417, 429, 431, 451, 499, 500, 501, 502, 503, 504, 599])('never stores status %i', (status) => {
    expect(verdict({ 'cache-control': 'public, max-age=60' }, { status }).store).toBe(false);
  });

  it('stores with must-understand only a status it knows the meaning of (RFC 9111 5.2.2.3)', () => {
    expect(verdict({ 'cache-control': 'must-understand, max-age=60' }, { status: 200 }).store).toBe(true);
    expect(verdict({ 'cache-control': 'must-understand, max-age=60' }, { status: 299 }).store).toBe(false);
    expect(verdict({ 'cache-control': 'max-age=60' }, { status: 299 }).store).toBe(true);
  });

  it('counts the time the service took to answer in the initial age, beside its Age (RFC 9111 4.2.3)', () => {
    expect(verdict({ 'cache-control': 'max-age=60', age: '5' }, { requestedAt: NOW - 2_000 })).toMatchObject({ store: true, initialAgeSeconds: 7 });
    expect(verdict({ 'cache-control': 'max-age=60' }, { requestedAt: NOW - 2_000 })).toMatchObject({ store: true, initialAgeSeconds: 2 });
    expect(verdict({ 'cache-control': 'max-age=2' }, { requestedAt: NOW - 3_000 }).store).toBe(false);
  });

  it('shares a response to a signed-in caller only when the service says public or s-maxage', () => {
    expect(verdict({ 'cache-control': 'max-age=60' }, { sharedCredentialed: true }).store).toBe(false);
    expect(verdict({}, { sharedCredentialed: true }).store).toBe(false);
    expect(verdict({ 'cache-control': 'public, max-age=60' }, { sharedCredentialed: true }).store).toBe(true);
    expect(verdict({ 'cache-control': 's-maxage=60' }, { sharedCredentialed: true }).store).toBe(true);
    expect(verdict({ 'cache-control': 'max-age=60' }, { sharedCredentialed: false }).store).toBe(true);
  });

  it('never stores what no-store, private or no-cache forbid, and never a negative lifetime, for any Cache-Control', () => {
    fc.assert(
      fc.property(cacheControl, fc.nat({ max: 100_000 }), fc.boolean(), (value, age, sharedCredentialed) => {
        const parsed = parseCacheControl(value);
        const result = verdict({ 'cache-control': value, age: String(age) }, { sharedCredentialed });
        const lower = value.toLowerCase();
        if (/(^|[\s,])(no-store|no-cache|private)(?=$|[\s,=])/.test(lower)) expect(result.store).toBe(false);
        if (sharedCredentialed && !parsed.public && parsed.sMaxAge === undefined) expect(result.store).toBe(false);
        if (result.store) {
          // Stale on arrival only while an RFC 5861 window still lets it answer (no validator in these).
          expect(result.lifetimeSeconds + Math.max(result.staleIfErrorSeconds, result.staleWhileRevalidateSeconds)).toBeGreaterThan(result.initialAgeSeconds);
          expect(result.initialAgeSeconds).toBeGreaterThanOrEqual(0);
          expect(result.staleIfErrorSeconds).toBeGreaterThanOrEqual(0);
          // RFC 9111 4.2.4, 5.2.2.10: s-maxage carries proxy-revalidate for a shared cache.
          if (parsed.mustRevalidate || parsed.sMaxAge !== undefined) expect(result.staleIfErrorSeconds + result.staleWhileRevalidateSeconds).toBe(0);
        }
      }),
      { seed: 9111, numRuns: 1000 },
    );
  });

  it('ages an entry from its initial age, and it stays fresh only while younger than its lifetime', () => {
    fc.assert(
      fc.property(fc.nat({ max: 10_000 }), fc.integer({ min: 1, max: 10_000 }), fc.nat({ max: 20_000_000 }), (initialAge, lifetime, elapsedMs) => {
        const entry: CachedResponse = { status: 200, headers: {}, body: Buffer.alloc(0), storedAt: NOW, initialAgeSeconds: initialAge, lifetimeSeconds: lifetime, staleIfErrorSeconds: 0, staleWhileRevalidateSeconds: 0, vary: [], varyValues: [] };
        const age = currentAge(entry, NOW + elapsedMs);
        expect(age).toBeCloseTo(initialAge + elapsedMs / 1000, 6);
        expect(isFresh(entry, NOW + elapsedMs)).toBe(age < lifetime);
        expect(retentionMs(entry, NOW + elapsedMs)).toBeGreaterThanOrEqual(0);
      }),
      { seed: 42, numRuns: 300 },
    );
  });

  it('keys every distinct list of parts apart (no separator trick joins two)', () => {
    expect(cacheKey(['r', 'a', 'b/c'])).not.toBe(cacheKey(['r', 'a/b', 'c']));
    expect(cacheKey(['r', null])).not.toBe(cacheKey(['r', 'null']));
    fc.assert(
      fc.property(fc.array(fc.option(fc.string({ maxLength: 8 })), { maxLength: 5 }), fc.array(fc.option(fc.string({ maxLength: 8 })), { maxLength: 5 }), (a, b) => {
        if (JSON.stringify(a) !== JSON.stringify(b)) expect(cacheKey(a)).not.toBe(cacheKey(b));
      }),
      { seed: 7, numRuns: 500 },
    );
  });

  it('gives a list of parts the same key every time, remembered or not (sha256 of its JSON text)', () => {
    const expected = (parts: (string | null)[]) => hash('sha256', JSON.stringify(parts), 'base64url');
    // Past the remembered keys' bound (16,384 nodes), texts too long to be remembered (over 512 characters), and
    // lists that are the start of others (a key on an inner node of the trie).
    const lists = Array.from({ length: 10_000 }, (_, index) => ['route', null, `/items/${index}`, index % 7 === 0 ? 'x'.repeat(600 + index) : 'v']);
    lists.push([], ['route'], ['route', null], ['route', null, '/items/1'], ['route', 'null', '/items/1']);
    for (const round of [1, 2]) for (const list of lists) expect([round, cacheKey(list)]).toEqual([round, expected(list)]);
    fc.assert(
      fc.property(fc.array(fc.option(fc.string({ maxLength: 700 })), { maxLength: 5 }), (parts) => {
        expect(cacheKey(parts)).toBe(expected(parts));
        expect(cacheKey([...parts])).toBe(expected(parts));
      }),
      { seed: 8, numRuns: 300 },
    );
  });
});

/** Stores as a fetch that started just now would. */
const put = async (store: ResponseStore, route: string, key: CacheKey, entry: CachedResponse) => store.set(route, key, entry, await store.fetchStarting(route, key.resource));

describe('Cache-Control lists read in one scan', () => {
  /** The regular expression the lists were read with: quadratic on a long name that fails to match. */
  const byRegularExpression = (text: string) => [...text.matchAll(/\s*([^=,\s]+)\s*(?:=\s*("(?:[^"\\]|\\.)*"?|[^,]*))?\s*(?:,|$)/g)].map((match) => [match[1]!.toLowerCase(), match[2]?.trim()]);
  const ows = fc.constantFrom('', ' ', '\t', '  ');
  const token = fc.stringMatching(/^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,12}$/);
  const quoted = fc.array(fc.oneof(fc.stringMatching(/^[ !#-[\]-~]{1,4}$/), fc.constantFrom('\\"', '\\\\', ',', ' ')), { maxLength: 5 }).map((parts) => `"${parts.join('')}"`);
  const element = fc.tuple(token, fc.option(fc.tuple(ows, ows, fc.oneof(token, quoted)), { nil: undefined }), ows, ows).map(([name, argument, before, after]) => `${before}${name}${argument === undefined ? '' : `${argument[0]}=${argument[1]}${argument[2]}`}${after}`);
  const list = fc.array(element, { minLength: 0, maxLength: 6 }).map((elements) => elements.join(','));

  it('reads every well-formed list as the regular expression did', () => {
    fc.assert(
      fc.property(list, (text) => {
        expect(cacheDirectives(text)).toEqual(byRegularExpression(text));
      }),
      { seed: 5122, numRuns: 3000 },
    );
  });

  // Malformed ones too (the read is the expression's on all 597,870 lists of up to six of these pieces, but for an
  // open quote ending in a lone backslash): a directive after a stray word (`public max-age=0`, `public; max-age=0`,
  // `;` being no separator) is read as before, not dropped with the word, which let the route's ttl stand.
  it('reads every list of these pieces as the regular expression did, but an open quote ending in a backslash', () => {
    const piece = fc.constantFrom('public', 'max-age=0', 'must-revalidate', 's-maxage=5', ' ', '\t', ',', ';', '"', 'x', '=', '\\');
    fc.assert(
      fc.property(fc.array(piece, { maxLength: 10 }).map((pieces) => pieces.join('')), (text) => {
        fc.pre(!text.endsWith('\\'));
        expect(cacheDirectives(text)).toEqual(byRegularExpression(text));
      }),
      { seed: 5123, numRuns: 5000 },
    );
  });

  it.each([
    { desc: 'empty elements and blanks', text: ' , ,public,, max-age=5 ,', directives: [['public', undefined], ['max-age', '5']] },
    { desc: 'a comma inside quotes', text: 'private="a, b", max-age=7', directives: [['private', '"a, b"'], ['max-age', '7']] },
    { desc: 'an escaped quote', text: 'x="a\\"b", no-store', directives: [['x', '"a\\"b"'], ['no-store', undefined]] },
    { desc: 'an unterminated quote, which runs to the end', text: 'max-age=60, x="a, no-store', directives: [['max-age', '60'], ['x', '"a, no-store']] },
    { desc: 'a quoted argument with more after it, read to the comma', text: 'max-age="5"x, public', directives: [['max-age', '"5"x'], ['public', undefined]] },
    { desc: 'a stray word before a directive, which is none', text: 'foo max-age=60, public', directives: [['max-age', '60'], ['public', undefined]] },
    { desc: 'a semicolon where a comma belongs', text: 'public; max-age=0', directives: [['max-age', '0']] },
    { desc: 'an empty argument', text: 'max-age=', directives: [['max-age', '']] },
  ])('reads $desc', ({ text, directives }) => {
    expect(cacheDirectives(text)).toEqual(directives);
  });

  // Each shape took the regular expression time quadratic in its length (1.7 s at 16 KiB, a header's limit): at
  // 100,000 characters about a minute, past the test's time; read in one scan, a few milliseconds.
  it.each([
    { desc: 'a long name, then another token', text: `${'a'.repeat(100_000)} b` },
    { desc: 'a long run of blanks between two tokens', text: `a${' '.repeat(100_000)}b` },
    { desc: 'a long quoted argument, then more', text: `x="${'q'.repeat(100_000)}"y z` },
  ])('reads $desc in one scan', ({ text }) => {
    const alone = parseCacheControl(text);
    expect([alone.noStore, alone.maxAge]).toEqual([false, undefined]);
    expect(parseCacheControl(`${text}, no-store, max-age=9`)).toMatchObject({ noStore: true, maxAge: 9 });
  });
});

describe('which stored copy a 304 to a client\'s own conditions names (RFC 9111 4.3.4)', () => {
  const stored = (headers: Record<string, string>): CachedResponse => ({ status: 200, headers, body: Buffer.alloc(0), storedAt: 0, initialAgeSeconds: 0, lifetimeSeconds: 0, staleIfErrorSeconds: 0, staleWhileRevalidateSeconds: 0, vary: [], varyValues: [] });
  const LM = 'Tue, 01 Dec 2026 10:00:00 GMT';
  const OTHER_LM = 'Tue, 01 Dec 2026 11:00:00 GMT';
  it.each<{ copy: Record<string, string>; answer: Record<string, string>; names: boolean }>([
    { copy: { etag: '"a"' }, answer: { etag: '"a"' }, names: true },
    { copy: { etag: 'W/"a"' }, answer: { etag: 'W/"a"' }, names: true },
    { copy: { etag: '"a"', 'last-modified': LM }, answer: { etag: '"a"', 'last-modified': OTHER_LM }, names: true },
    { copy: { 'last-modified': LM }, answer: { 'last-modified': LM }, names: true },
    { copy: { etag: '"a"' }, answer: { etag: '"b"' }, names: false },
    { copy: { etag: '"a"' }, answer: { etag: 'W/"a"' }, names: false },
    // No entity-tag in the 304: the client's If-Modified-Since may be about another version than the stored one.
    { copy: { etag: '"a"', 'last-modified': LM }, answer: { 'last-modified': LM }, names: false },
    { copy: { etag: '"a"' }, answer: {}, names: false },
    { copy: { 'last-modified': LM }, answer: { etag: '"a"', 'last-modified': LM }, names: false },
    { copy: { 'last-modified': LM }, answer: { 'last-modified': OTHER_LM }, names: false },
    { copy: { 'last-modified': LM }, answer: {}, names: false },
    { copy: {}, answer: {}, names: false },
  ])('a copy with $copy, a 304 with $answer: $names', ({ copy, answer, names }) => {
    expect(namesStored(stored(copy), answer)).toBe(names);
  });
});

describe('HTTP-dates (RFC 9110 5.6.7) are UTC in every form, whatever the process’s time zone', () => {
  /**
   * parseHttpDate of each date, in a process of its own under TZ=`zone` (the zone is read when a process starts; in
   * Jest, setting process.env.TZ changes a copy and no date parsing). The built module, as the gateway runs it.
   */
  const parsedUnder = (zone: string, dates: string[]): number[] => {
    const script = `const { parseHttpDate } = require(${JSON.stringify(path.resolve(__dirname, '../../dist/src/response-cache.js'))}); process.stdout.write(JSON.stringify(${JSON.stringify(dates)}.map((date) => parseHttpDate(date, ${NOW}))));`;
    const child = spawnSync(process.execPath, ['-e', script], { env: { TZ: zone }, encoding: 'utf8' });
    expect(child.stderr).toBe('');
    return JSON.parse(child.stdout) as number[];
  };

  // RFC 9110's own example in its three forms. asctime names no zone, and Date.parse read it as local time: under
  // America/New_York five hours late, so an asctime Expires 60 s ahead gave a copy five hours of life.
  it.each(['UTC', 'America/New_York', 'Asia/Tokyo', 'Pacific/Kiritimati'])('reads all three forms of one instant alike under TZ=%s', (zone) => {
    const instant = Date.UTC(1994, 10, 6, 8, 49, 37);
    expect(parsedUnder(zone, ['Sun, 06 Nov 1994 08:49:37 GMT', 'Sunday, 06-Nov-94 08:49:37 GMT', 'Sun Nov  6 08:49:37 1994'])).toEqual([instant, instant, instant]);
  });

  it('still refuses an asctime date with a zone of its own, or none of the three forms', () => {
    expect(parsedUnder('America/New_York', ['Sun Nov  6 08:49:37 1994 GMT', 'Sun Nov  6 08:49:37 1994 EST', '1994-11-06 08:49:37'])).toEqual([null, null, null]);
  });
});

describe('the in-memory store', () => {
  const at = (resource: string, variant = 'v'): CacheKey => ({ resource, variant });
  const entry = (bytes: number): CachedResponse => ({ status: 200, headers: {}, body: Buffer.alloc(bytes), storedAt: Date.now(), initialAgeSeconds: 0, lifetimeSeconds: 60, staleIfErrorSeconds: 0, staleWhileRevalidateSeconds: 0, vary: [], varyValues: [] });

  it('drops the least recently used entries of a route beyond its byte budget', async () => {
    // Each counts as 800 body bytes plus bookkeeping (about 1.9 kB): two fit in 4500, three do not.
    const store = createMemoryResponseStore({ maxBytes: 1_000_000, routeMaxBytes: new Map([['a', 4500]]) });
    await put(store, 'a', at('k1'), entry(800));
    await put(store, 'a', at('k2'), entry(800));
    await store.get('a', at('k1')); // k1 is now the most recently used
    await put(store, 'a', at('k3'), entry(800));
    expect(await store.get('a', at('k1'))).toBeDefined();
    expect(await store.get('a', at('k2'))).toBeUndefined();
    expect(await store.get('a', at('k3'))).toBeDefined();
  });

  it('keeps all routes within the global budget, taking from the largest route first', async () => {
    // Each entry counts as 1000 body bytes plus bookkeeping (about 2.1 kB): three fit in 6500, four do not.
    const store = createMemoryResponseStore({ maxBytes: 6500, routeMaxBytes: new Map([['big', 6500], ['small', 6500]]) });
    await put(store, 'big', at('b1'), entry(1000));
    await put(store, 'big', at('b2'), entry(1000));
    await put(store, 'big', at('b3'), entry(1000));
    await put(store, 'small', at('s1'), entry(1000));
    expect(await store.get('big', at('b1'))).toBeUndefined();
    expect(await store.get('big', at('b2'))).toBeDefined();
    expect(await store.get('big', at('b3'))).toBeDefined();
    expect(await store.get('small', at('s1'))).toBeDefined();
  });

  it('never keeps an entry larger than the budget, and forgets entries past their retention', async () => {
    let now = Date.now();
    const store = createMemoryResponseStore({ maxBytes: 2000, routeMaxBytes: new Map([['a', 2000]]), now: () => now });
    await put(store, 'a', at('huge'), entry(5000));
    expect(await store.get('a', at('huge'))).toBeUndefined();
    await put(store, 'a', at('k'), { ...entry(10), storedAt: now });
    now += 61_000;
    expect(await store.get('a', at('k'))).toBeDefined();
    now += REVALIDATION_WINDOW_SECONDS * 1000;
    expect(await store.get('a', at('k'))).toBeUndefined();
  });

  // Redis refuses such an entry (its TTL would be <= 0); the memory store took it, pushing out live copies for
  // an entry its first read drops.
  it('keeps no entry already past its retention when stored (an Age beyond lifetime and grace), evicting nothing for it', async () => {
    const store = createMemoryResponseStore({ maxBytes: 1_000_000, routeMaxBytes: new Map([['a', 2500]]) });
    await put(store, 'a', at('live'), entry(1000));
    const pastRetention = { ...entry(1000), initialAgeSeconds: 60 + REVALIDATION_WINDOW_SECONDS + 1 };
    expect(retentionMs(pastRetention, Date.now())).toBeLessThanOrEqual(0);
    await put(store, 'a', at('expired'), pastRetention);
    expect(await store.get('a', at('live'))).toBeDefined();
    expect(await store.get('a', at('expired'))).toBeUndefined();
  });

  // A small body Buffer.concat or Buffer.from made is a view of a shared pool slab: kept as it was, each entry
  // counted at a few hundred bytes held the whole slab alive.
  it('keeps a body in memory of its own, not a view of a larger (pooled) buffer', async () => {
    const store = createMemoryResponseStore({ maxBytes: 100_000, routeMaxBytes: new Map([['a', 100_000]]) });
    const pooled = Buffer.concat([Buffer.from('{"id":'), Buffer.from('42}')]);
    const sliced = Buffer.alloc(4096, 7).subarray(100, 110);
    expect(pooled.buffer.byteLength).toBeGreaterThan(pooled.length);
    await put(store, 'a', at('pooled'), { ...entry(0), body: pooled });
    await put(store, 'a', at('sliced'), { ...entry(0), body: sliced });
    for (const [name, original] of [['pooled', pooled], ['sliced', sliced]] as const) {
      const { body } = (await store.get('a', at(name)))!;
      expect(body.equals(original)).toBe(true);
      expect(body.buffer.byteLength).toBe(body.length);
    }
  });

  it('drops every variant of a resource on invalidation, and nothing else', async () => {
    const store = createMemoryResponseStore({ maxBytes: 100_000, routeMaxBytes: new Map([['a', 100_000]]) });
    await put(store, 'a', at('r1', 'alice'), entry(10));
    await put(store, 'a', at('r1', 'bob'), entry(10));
    await put(store, 'a', at('r2', 'alice'), entry(10));
    await put(store, 'b', at('r1', 'alice'), entry(10));
    await store.invalidate('a', 'r1');
    expect(await store.get('a', at('r1', 'alice'))).toBeUndefined();
    expect(await store.get('a', at('r1', 'bob'))).toBeUndefined();
    expect(await store.get('a', at('r2', 'alice'))).toBeDefined();
    expect(await store.get('b', at('r1', 'alice'))).toBeDefined();
  });

  it('stores nothing from a fetch that started before an invalidation of its resource (its answer may predate the write)', async () => {
    const store = createMemoryResponseStore({ maxBytes: 100_000, routeMaxBytes: new Map([['a', 100_000]]) });
    const before = await store.fetchStarting('a', 'r1');
    const elsewhere = await store.fetchStarting('a', 'r2');
    await store.invalidate('a', 'r1');
    await store.set('a', at('r1'), entry(10), before);
    await store.set('a', at('r2'), entry(10), elsewhere);
    expect(await store.get('a', at('r1'))).toBeUndefined();
    expect(await store.get('a', at('r2'))).toBeDefined();
    await put(store, 'a', at('r1'), entry(10));
    expect(await store.get('a', at('r1'))).toBeDefined();
  });

  it('refuses every fetch from before it forgot the invalidations it remembers (past MAX_REMEMBERED_INVALIDATIONS), none after', async () => {
    const store = createMemoryResponseStore({ maxBytes: 100_000, routeMaxBytes: new Map([['a', 100_000]]) });
    const before = await store.fetchStarting('a', 'untouched');
    for (let resource = 0; resource <= MAX_REMEMBERED_INVALIDATIONS; resource++) await store.invalidate('a', `r${resource}`);
    await store.set('a', at('untouched'), entry(10), before);
    expect(await store.get('a', at('untouched'))).toBeUndefined();
    await put(store, 'a', at('r0'), entry(10));
    expect(await store.get('a', at('r0'))).toBeDefined();
  });

  it('tells its peers of its own invalidations, and drops what theirs name without telling them again (it went round for ever)', async () => {
    const published: string[] = [];
    let fromPeer: ((resources: StaleResources) => void) | undefined;
    const memory = createMemoryResponseStore({ maxBytes: 100_000, routeMaxBytes: new Map([['a', 100_000], ['b', 100_000]]) });
    const store = sharingInvalidations(memory, {
      publish: async (route, resource) => published.push(`${route} ${resource}`) > 0,
      subscribe: (drop) => (fromPeer = drop),
    });
    await put(store, 'a', at('r1'), entry(10));
    await put(store, 'a', at('r2'), entry(10));
    await put(store, 'b', at('r3'), entry(10));
    expect(await store.invalidate('a', 'r1')).toBeUndefined();
    expect(published).toEqual(['a r1']);
    expect(await store.get('a', at('r1'))).toBeUndefined();
    // Dropped by the time `drop` returns: the peer's confirmation follows at once.
    fromPeer!([{ route: 'a', resource: 'r2' }]);
    expect(await store.get('a', at('r2'))).toBeUndefined();
    expect(await store.get('b', at('r3'))).toBeDefined();
    fromPeer!('all');
    expect(await store.get('b', at('r3'))).toBeUndefined();
    expect(published).toEqual(['a r1']);
  });

  it('says why a copy may be left when its peers do not confirm the invalidation in time', async () => {
    const memory = createMemoryResponseStore({ maxBytes: 100_000, routeMaxBytes: new Map() });
    const store = sharingInvalidations(memory, { publish: async () => false, subscribe: () => undefined });
    expect(await store.invalidate('a', 'r1')).toMatch(/other workers did not confirm within 1000 ms/);
  });
});

describe('the store that takes the other workers\' invalidations', () => {
  it('is let go when a reload leaves no cached route (it kept its memory and went on dropping for them)', () => {
    let drop: ((resources: StaleResources) => void) | undefined;
    const peers: PeerInvalidations = { publish: async () => true, subscribe: (next) => void (drop = next) };
    const build = (cache: unknown) => {
      const routes = (shippedConfigFile().routes as Record<string, unknown>[]).map((route) => (route.name === 'notifications' ? { ...route, cache } : route));
      createGatewayApps(parseConfig({ ...shippedConfigFile(), routes }), { logger: memoryLogger('gateway').logger, metrics: false, cachePeers: peers });
    };
    build({ ttlSeconds: 30 });
    expect(drop).toBeDefined();
    build(undefined);
    expect(drop).toBeUndefined();
  });
});

describe('cache settings in the config', () => {
  const routesWith = (cache: unknown, more: Record<string, unknown> = {}) =>
    (shippedConfigFile().routes as Record<string, unknown>[]).map((route) => (route.name === 'notifications' ? { ...route, ...more, cache } : route));
  const parse = (cache: unknown, more: Record<string, unknown> = {}, top: Record<string, unknown> = {}) => parseConfig({ ...shippedConfigFile(), ...top, routes: routesWith(cache, more) });

  it('applies the documented defaults', () => {
    const config = parse({ ttlSeconds: 30 });
    expect(config.routes[4]!.cache).toEqual({ ttlSeconds: 30, scope: 'user', varyHeaders: [] });
    expect(config.cache).toEqual({ statusHeader: 'x-cache', maxBytes: 64 * 1024 * 1024, maxEntryBytes: 1024 * 1024, redisKeyPrefix: 'koa-gateway:cache', lockTimeoutMs: 5000 });
  });

  it.each([-1, 60_001, 1.5])('refuses a cache.lockTimeoutMs of %d (0 to 60,000 ms)', (lockTimeoutMs) => {
    expect(() => parse({ ttlSeconds: 5 }, {}, { cache: { lockTimeoutMs } })).toThrow(/cache\.lockTimeoutMs/);
  });

  it.each([
    { desc: 'no ttl', cache: {}, message: /routes\.4\.cache\.ttlSeconds/ },
    { desc: 'a zero ttl', cache: { ttlSeconds: 0 }, message: /routes\.4\.cache\.ttlSeconds/ },
    { desc: 'an unknown scope', cache: { ttlSeconds: 5, scope: 'everyone' }, message: /routes\.4\.cache\.scope/ },
    { desc: 'Authorization in the key', cache: { ttlSeconds: 5, varyHeaders: ['Authorization'] }, message: /credential/ },
    { desc: 'an identity header in the key', cache: { ttlSeconds: 5, varyHeaders: ['x-user-id'] }, message: /varyHeaders\.0.*never reaches/ },
    { desc: 'Via, which the gateway writes, in the key', cache: { ttlSeconds: 5, varyHeaders: ['Via'] }, message: /varyHeaders\.0.*Via the gateway writes/ },
    { desc: 'a route budget over the global one', cache: { ttlSeconds: 5, maxBytes: 128 * 1024 * 1024 }, message: /cache\.maxBytes/ },
    { desc: 'an unknown key', cache: { ttlSeconds: 5, methods: ['POST'] }, message: /routes\.4\.cache/ },
  ])('refuses $desc', ({ cache, message }) => {
    expect(() => parse(cache)).toThrow(ConfigError);
    expect(() => parse(cache)).toThrow(message);
  });

  it('refuses a cache on a route without GET', () => {
    expect(() => parse({ ttlSeconds: 5 }, { methods: ['POST'] })).toThrow(/needs GET/);
  });

  it('refuses a status header the gateway owns', () => {
    expect(() => parse({ ttlSeconds: 5 }, {}, { cache: { statusHeader: 'X-Request-Id' } })).toThrow(/cache\.statusHeader/);
  });

  it.each(['Cache-Control', 'age', 'ETag', 'Vary'])('refuses %s as the status header (HIT would overwrite the field)', (statusHeader) => {
    expect(() => parse({ ttlSeconds: 5 }, {}, { cache: { statusHeader } })).toThrow(/cache\.statusHeader.*standard response field/);
  });
});

describe('invalidationSpelling', () => {
  // The spellings a service reads as one resource are one resource to invalidate: an escaped unreserved character,
  // an escape's hex case, the path's case, trailing slashes.
  it('gives every spelling of a path the same resource, and is its own fixed point (property)', () => {
    const segment = fc.stringMatching(/^[a-z0-9._~-]{1,8}$/);
    fc.assert(
      fc.property(fc.array(segment, { minLength: 1, maxLength: 4 }), fc.array(fc.constantFrom('escape', 'upper', 'plain'), { minLength: 40, maxLength: 40 }), fc.integer({ min: 0, max: 3 }), (segments, ways, slashes) => {
        const path = `/${segments.join('/')}`;
        const spelt = [...path]
          .map((character, index) => {
            if (character === '/') return character;
            if (ways[index % ways.length] === 'escape') return `%${character.charCodeAt(0).toString(16)}`;
            return ways[index % ways.length] === 'upper' ? character.toUpperCase() : character;
          })
          .join('');
        const target = `${spelt}${'/'.repeat(slashes)}?q=%7e`;
        expect(invalidationSpelling(target)).toBe(invalidationSpelling(`${path}?q=~`));
        expect(invalidationSpelling(invalidationSpelling(target))).toBe(invalidationSpelling(target));
      }),
      { seed: 20261206, numRuns: 300 },
    );
  });

  it('keeps escapes of reserved characters escaped, and the query\'s case', () => {
    expect(invalidationSpelling('/A%2fB?X=%2f')).toBe('/a%2fb?X=%2F');
    expect(invalidationSpelling('/')).toBe('/');
  });
});
