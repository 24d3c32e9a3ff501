import { hash } from 'node:crypto';
import { STATUS_CODES } from 'node:http';
import { z } from 'zod';
import { FIELD_NAME_TOKEN, HEADER } from '../otel/wire-names';

/**
 * What the response cache stores and when (RFC 9111 for a shared cache): the route and gateway settings, the
 * Cache-Control parser, freshness and age, and the cache key. The stores are src/response-store.ts, the
 * request path src/middleware/cache.ts.
 */

/** Longest lifetime the gateway keeps anything for, s (also RFC 9111 1.2.2's cap on delta-seconds). */
const MAX_LIFETIME_SECONDS = 2_147_483_648;

/** A route's `cache`: opt-in, GET and HEAD only. */
export const routeCacheSchema = z.strictObject({
  /** Lifetime of a response whose service names none (no `max-age`, `s-maxage` or `Expires`), s. The service's own wins. */
  ttlSeconds: z.int().positive().max(31_536_000),
  /** Bytes this route's entries may take in the in-memory store (bodies and headers). Default 8 MiB, at most `cache.maxBytes`. */
  maxBytes: z.int().positive().optional(),
  /**
   * `user` (default): responses to a signed-in caller are kept per user (or API-key consumer) and never shown
   * to anyone else. `public`: one copy for everybody, but a response to a signed-in caller is stored only when
   * the service allows it with `Cache-Control: public` or `s-maxage`.
   */
  scope: z.enum(['public', 'user']).default('user'),
  /** Request headers whose values are part of the key (e.g. `accept-language`), beside whatever the service's `Vary` names. */
  varyHeaders: z
    .array(
      z
        .string()
        .regex(FIELD_NAME_TOKEN, 'must be a header name')
        .refine((name) => !['authorization', HEADER.apiKey, 'cookie'].includes(name.toLowerCase()), 'is a credential: use scope "user" to keep responses per caller'),
    )
    .max(8)
    .default([]),
});
export type RouteCacheConfig = z.output<typeof routeCacheSchema>;

/** Default of `cache.maxEntryBytes`. */
const DEFAULT_MAX_ENTRY_BYTES = 1024 * 1024;

/** Gateway-wide cache settings (top-level `cache`). */
export const cacheSettingsSchema = z
  .strictObject({
    /** Response header that says how the cache answered: `HIT`, `REVALIDATED`, `MISS`, `STALE` or `BYPASS`. Default `X-Cache`. */
    statusHeader: z.string().regex(FIELD_NAME_TOKEN, 'must be a header name').default('x-cache'),
    /** Bytes all routes' entries may take together in the in-memory store. Default 64 MiB; at most 16 GiB. */
    maxBytes: z.int().positive().max(16 * 1024 ** 3).default(64 * 1024 * 1024),
    /** Largest response body stored, bytes; larger ones are passed on and not kept. Default 1 MiB (or `maxBytes` if less); at most `maxBytes`. */
    maxEntryBytes: z.int().positive().optional(),
    /** Prefix of every Redis key of the shared store (with `REDIS_URL`). */
    redisKeyPrefix: z.string().regex(/^[A-Za-z0-9:_-]+$/).default('koa-gateway:cache'),
    /**
     * Longest a miss waits for another request's fetch of the same key before fetching its own, ms (nginx's
     * `proxy_cache_lock_timeout`). Default 5,000; at most 60,000.
     */
    lockTimeoutMs: z.int().nonnegative().max(60_000).default(5_000),
  })
  // An entry larger than the whole store could never be kept: the operator meant one of the two otherwise. The default
  // is held to a smaller store instead (a cache.maxBytes under 1 MiB alone is a store that small).
  .refine((settings) => settings.maxEntryBytes === undefined || settings.maxEntryBytes <= settings.maxBytes, { path: ['maxEntryBytes'], message: 'must not exceed cache.maxBytes' })
  .transform((settings) => ({ ...settings, maxEntryBytes: settings.maxEntryBytes ?? Math.min(DEFAULT_MAX_ENTRY_BYTES, settings.maxBytes) }))
  .prefault({});
export type CacheSettings = z.output<typeof cacheSettingsSchema>;

/** Default of a route's `maxBytes`. */
export const DEFAULT_ROUTE_MAX_BYTES = 8 * 1024 * 1024;

/**
 * Statuses stored: those RFC 9110 15.1 calls heuristically cacheable, minus 206 (the gateway does not combine
 * ranges) and 501 (a server error: an outage must not outlive itself in the cache).
 */
export const CACHEABLE_STATUSES: ReadonlySet<number> = new Set([200, 203, 204, 300, 301, 308, 404, 405, 410, 414]);

/**
 * Whether a status outside CACHEABLE_STATUSES is stored when the service gave the answer an explicit lifetime
 * (`max-age`, `s-maxage`, `Expires`): RFC 9111 3 allows any final status the cache understands then. Stored: a 2xx
 * or 3xx (a 201, 302, 307, or an unknown 299 read as 200, RFC 9110 15), not a 206 (a range of one request) nor a
 * 304 (its own conditions). Never a 4xx beyond the heuristic 404, 405, 410, 414: a client error speaks of the
 * request (its form, credentials, address, Accept), and a client chooses its request; much of it is no part of the
 * key, so one client's malformed, oversized or unauthorized request would make every client's answer that error for
 * as long as a blanket `max-age` of the service's says (cache-poisoned denial of service, CPDoS). Nor a 5xx: an
 * outage must not outlive itself.
 */
function storableWithExplicitLifetime(status: number): boolean {
  return status >= 200 && status < 400 && status !== 206 && status !== 304;
}

/** The response directives of `Cache-Control` (RFC 9111 5.2.2) the cache acts on. */
export interface CacheControl {
  noStore: boolean;
  noCache: boolean;
  private: boolean;
  public: boolean;
  /** `must-revalidate` or `proxy-revalidate`: never served stale. */
  mustRevalidate: boolean;
  /** `must-understand` (RFC 9111 5.2.2.3): stored only with a status the cache knows the meaning of. */
  mustUnderstand: boolean;
  maxAge?: number;
  /** The lifetime for a shared cache; it also means proxy-revalidate there (RFC 9111 5.2.2.10): never served stale. */
  sMaxAge?: number;
  /** RFC 5861: how long past freshness the response may stand in for a failed service, s. */
  staleIfError?: number;
  /** RFC 5861 3: how long past freshness the response may be answered at once while it is fetched again in the background, s. */
  staleWhileRevalidate?: number;
  /** A lifetime directive without a valid number, or given twice with different values: the response counts as stale (RFC 9111 4.2.1). */
  invalid: boolean;
}

/** The directives with delta-seconds the cache reads, by the CacheControl key each fills. */
const LIFETIME_DIRECTIVES: Readonly<Record<string, 'maxAge' | 'sMaxAge' | 'staleIfError' | 'staleWhileRevalidate'>> = {
  'max-age': 'maxAge',
  's-maxage': 'sMaxAge',
  'stale-if-error': 'staleIfError',
  'stale-while-revalidate': 'staleWhileRevalidate',
};

/** Parses `Cache-Control` (all field lines); unknown directives are ignored, as RFC 9111 5.2.3 says. */
export function parseCacheControl(value: string | string[] | undefined): CacheControl {
  const parsed: CacheControl = { noStore: false, noCache: false, private: false, public: false, mustRevalidate: false, mustUnderstand: false, invalid: false };
  if (value === undefined) return parsed;
  const text = Array.isArray(value) ? value.join(',') : value;
  for (const [name, raw] of cacheDirectives(text)) {
    switch (name) {
      case 'no-store':
        parsed.noStore = true;
        break;
      case 'no-cache':
        parsed.noCache = true;
        break;
      case 'private':
        parsed.private = true;
        break;
      case 'public':
        parsed.public = true;
        break;
      case 'must-revalidate':
      case 'proxy-revalidate':
        parsed.mustRevalidate = true;
        break;
      case 'must-understand':
        parsed.mustUnderstand = true;
        break;
      case 'max-age':
      case 's-maxage':
      case 'stale-if-error':
      case 'stale-while-revalidate': {
        const seconds = deltaSeconds(raw);
        const key = LIFETIME_DIRECTIVES[name]!;
        if (seconds === undefined || (parsed[key] !== undefined && parsed[key] !== seconds)) {
          // A stale window that cannot be read is none (RFC 5861 names no other meaning); a lifetime, stale (4.2.1).
          if (key === 'staleIfError' || key === 'staleWhileRevalidate') parsed[key] = 0;
          else parsed.invalid = true;
        } else parsed[key] = seconds;
        break;
      }
    }
  }
  // A malformed list (an unterminated quote swallowing the rest, a `;` for a comma: `private; max-age=600`, which the
  // scan reads as no directive) must not hide a prohibition: the word counts wherever no token character touches it.
  for (const match of text.matchAll(/(?<![!#$%&'*+.^_`|~0-9a-z-])(no-store|no-cache|private)(?![!#$%&'*+.^_`|~0-9a-z-])/gi)) {
    const name = match[1]!.toLowerCase();
    if (name === 'no-store') parsed.noStore = true;
    else if (name === 'no-cache') parsed.noCache = true;
    else parsed.private = true;
  }
  return parsed;
}

const COMMA = 0x2c;
const EQUALS = 0x3d;
const QUOTE = 0x22;
const BACKSLASH = 0x5c;
/** `\s` as a regular expression reads it in a field value: space, tab, and the line breaks and others no field holds. */
const isBlank = (code: number) => code === 0x20 || code === 0x09 || code === 0x0a || code === 0x0b || code === 0x0c || code === 0x0d || code === 0xa0 || code === 0xfeff || (code >= 0x2000 && code <= 0x200a) || code === 0x1680 || code === 0x2028 || code === 0x2029 || code === 0x202f || code === 0x205f || code === 0x3000;

/**
 * The directives of a Cache-Control list (RFC 9111 5.2: `token [ "=" ( token / quoted-string ) ]`, comma separated;
 * a comma inside quotes does not separate), in order, each name lower-cased and its argument as written (a
 * quoted-string with its quotes; an unterminated one runs to the end), in one scan. A name followed by another token
 * is none, the list read on from that token (`foo max-age=60`: `max-age`), and a quoted argument followed by more
 * than whitespace is taken up to the next comma as it is (`max-age="5"x`: not delta-seconds). A regular expression
 * did this, and it retried a failed match from every position of a long name: 16 KiB of `Cache-Control` a client
 * sends on a cached route held the event loop for 1.7 s. The scan reads every list as it did (a property test), but
 * an open quote ending in a lone backslash.
 */
export function cacheDirectives(text: string): [name: string, raw: string | undefined][] {
  const directives: [string, string | undefined][] = [];
  const length = text.length;
  const skipBlanks = (from: number) => {
    let at = from;
    while (at < length && isBlank(text.charCodeAt(at))) at++;
    return at;
  };
  const nextComma = (from: number) => {
    const at = text.indexOf(',', from);
    return at === -1 ? length : at;
  };
  let at = 0;
  while (at < length) {
    const code = text.charCodeAt(at);
    // Separators and blanks between elements; an `=` with no name before it is skipped too, as the expression did.
    if (code === COMMA || code === EQUALS || isBlank(code)) {
      at++;
      continue;
    }
    const nameStart = at;
    while (at < length) {
      const c = text.charCodeAt(at);
      if (c === COMMA || c === EQUALS || isBlank(c)) break;
      at++;
    }
    const name = text.slice(nameStart, at);
    at = skipBlanks(at);
    let raw: string | undefined;
    if (at < length && text.charCodeAt(at) === EQUALS) {
      const valueStart = skipBlanks(at + 1);
      // The argument ends at the next comma; a quoted-string ends at its closing quote when only blanks follow it.
      at = nextComma(valueStart);
      if (valueStart < length && text.charCodeAt(valueStart) === QUOTE) {
        let close = valueStart + 1;
        while (close < length && text.charCodeAt(close) !== QUOTE) close += text.charCodeAt(close) === BACKSLASH ? 2 : 1;
        const closed = Math.min(close + 1, length);
        const after = skipBlanks(closed);
        if (after === length || text.charCodeAt(after) === COMMA) at = closed;
      }
      raw = text.slice(valueStart, at).trim();
    }
    // With an argument, `at` is at a comma or the end. Without one, a name followed by another token (`public
    // max-age=0`; `public; max-age=0`, `;` being no separator here) is, as the expression had it, no directive, and
    // the list is read on from that token, so a directive after a stray word is not lost.
    const end = skipBlanks(at);
    if (end < length && text.charCodeAt(end) !== COMMA) {
      at = end;
      continue;
    }
    if (name !== '') directives.push([name.toLowerCase(), raw]);
    at = end + 1;
  }
  return directives;
}

/** delta-seconds (RFC 9111 1.2.2), quoted or not; anything else is undefined. Capped at 2^31. */
function deltaSeconds(raw: string | undefined): number | undefined {
  if (raw === undefined) return undefined;
  const unquoted = raw.startsWith('"') && raw.endsWith('"') && raw.length >= 2 ? raw.slice(1, -1) : raw;
  if (!/^\d+$/.test(unquoted)) return undefined;
  return Math.min(Number(unquoted), MAX_LIFETIME_SECONDS);
}

/** A header's single value (the first of several lines). */
function first(value: string | string[] | undefined): string | undefined {
  return Array.isArray(value) ? value[0] : value;
}

/**
 * The three HTTP-date forms (RFC 9110 5.6.7), their fields named: IMF-fixdate, the obsolete RFC 850 one (a
 * two-digit year) and asctime. The day name is not checked against the date, as Date.parse did not check it.
 */
const IMF_FIXDATE = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun), (?<day>\d{2}) (?<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?<year>\d{4}) (?<hour>\d{2}):(?<minute>\d{2}):(?<second>\d{2}) GMT$/;
const RFC_850_DATE = /^(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday), (?<day>\d{2})-(?<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)-(?<year>\d{2}) (?<hour>\d{2}):(?<minute>\d{2}):(?<second>\d{2}) GMT$/;
const ASCTIME_DATE = /^(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun) (?<month>Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec) (?<day>[ \d]\d) (?<hour>\d{2}):(?<minute>\d{2}):(?<second>\d{2}) (?<year>\d{4})$/;
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];

/**
 * An HTTP-date in ms since the epoch (`now`, ms, places a two-digit year), or NaN for anything else. Not Date.parse:
 * it takes `2099-01-01` or `2099`, which RFC 9111 5.3 and RFC 9110 13.1.3 say to treat as invalid (an Expires as
 * already expired, a conditional as absent), and a lenient parse made such an Expires a 73-year lifetime. Nor
 * Date.parse of the three forms alone: it read a four-digit year 0000-0099 as 1950-2049 (`Expires: ... 0030 ...`
 * gave 3.6 years of life to a copy long expired), rolled `31 Feb` and `24:00:00` over into the next month or day,
 * and read asctime, which names no zone, as local time (under TZ=America/New_York, five hours late).
 */
export function parseHttpDate(value: string | string[] | undefined, now: number = Date.now()): number {
  const text = first(value)?.trim();
  if (text === undefined) return Number.NaN;
  const fourDigitYear = (IMF_FIXDATE.exec(text) ?? ASCTIME_DATE.exec(text))?.groups;
  if (fourDigitYear !== undefined) return utcTime(fourDigitYear, Number(fourDigitYear.year));
  const twoDigitYear = RFC_850_DATE.exec(text)?.groups;
  if (twoDigitYear === undefined) return Number.NaN;
  // RFC 9110 5.6.7: a two-digit year is this century's unless that is more than 50 years ahead, then the last
  // century's. Date.parse made every one 19xx: `Expires: Thursday, 18-Aug-50 ...` (2050) had long expired.
  const year = new Date(now).getUTCFullYear();
  const limit = new Date(now).setUTCFullYear(year + 50);
  const century = year - (year % 100);
  const thisCentury = utcTime(twoDigitYear, century + Number(twoDigitYear.year));
  return thisCentury > limit ? utcTime(twoDigitYear, century - 100 + Number(twoDigitYear.year)) : thisCentury;
}

/**
 * An HTTP-date's fields in ms since the epoch, UTC, in `year` as written; NaN for a time that does not exist
 * (`31 Feb`, `24:00:00`, `12:00:60`). The one second 60 is RFC 9110's leap second, 23:59:60, read as the next
 * midnight (as POSIX time counts it).
 */
function utcTime(fields: Record<string, string>, year: number): number {
  const day = Number(fields.day);
  const hour = Number(fields.hour);
  const minute = Number(fields.minute);
  const second = Number(fields.second);
  if (hour > 23 || minute > 59 || (second > 59 && !(second === 60 && hour === 23 && minute === 59))) return Number.NaN;
  // setUTCFullYear, not Date.UTC: that too makes a year 0-99 into 1900-1999.
  const time = new Date(0);
  time.setUTCFullYear(year, MONTHS.indexOf(fields.month!), day);
  // A day the month does not have (00, 31 Feb, 29 Feb of a common year) rolled over into another month.
  if (time.getUTCDate() !== day) return Number.NaN;
  return time.setUTCHours(hour, minute, second);
}

/** The names a `Vary` lists, lower-case (`*` included as such). */
export function varyNames(value: string | string[] | undefined): string[] {
  if (value === undefined) return [];
  const text = Array.isArray(value) ? value.join(',') : value;
  return [...new Set(text.split(',').map((name) => name.trim().toLowerCase()).filter(Boolean))];
}

export interface StorabilityInput {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  /**
   * The stored copy would answer callers other than this one, and this request carried a credential the
   * service saw (a verified identity on a `public`-scope route, or a cookie where the key has no caller).
   */
  sharedCredentialed: boolean;
  /** The route's `ttlSeconds`: the lifetime when the service names none. */
  defaultTtlSeconds: number;
  /** When the response arrived, ms since the epoch. */
  now: number;
  /** When the request went to the service, ms since the epoch (RFC 9111 4.2.3 request_time); default `now`. */
  requestedAt?: number;
}

export type Storability = { store: false; reason: string } | { store: true; lifetimeSeconds: number; initialAgeSeconds: number; staleIfErrorSeconds: number; staleWhileRevalidateSeconds: number };

/**
 * Whether a service's response may be stored, and for how long (RFC 9111 3 and 4.2.1). Conservative: a
 * response is kept only when nothing in it says otherwise. `private` is never stored (even per user: the entry
 * sits in a shared store), nor a response that sets cookies (a session cookie served to the next caller is a
 * session handed over). One that is stale from the start (`no-cache`, `max-age=0`, an Age past its lifetime) is
 * stored only with a validator: it is never answered from without the service's 304 (RFC 9111 4.3), and without a
 * validator there is nothing to ask the service with.
 */
export function storability(input: StorabilityInput): Storability {
  const { headers } = input;
  const control = parseCacheControl(headers['cache-control']);
  const explicitLifetime = control.sMaxAge !== undefined || control.maxAge !== undefined || headers.expires !== undefined;
  if (!CACHEABLE_STATUSES.has(input.status) && !(explicitLifetime && storableWithExplicitLifetime(input.status))) return { store: false, reason: 'status' };
  // RFC 9111 5.2.2.3: a status the cache only reads as its class (299, 499) is not understood.
  if (control.mustUnderstand && STATUS_CODES[input.status] === undefined) return { store: false, reason: 'status' };
  if (control.noStore) return { store: false, reason: 'no-store' };
  if (control.private) return { store: false, reason: 'private' };
  const validated = hasValidator(headers);
  if (control.noCache && !validated) return { store: false, reason: 'no-cache' };
  if (control.invalid && !validated) return { store: false, reason: 'invalid cache-control' };
  if (headers['set-cookie'] !== undefined) return { store: false, reason: 'set-cookie' };
  const vary = varyNames(headers.vary);
  if (vary.includes('*')) return { store: false, reason: 'vary *' };
  // `Vary: Accept, x y`: a member that names no header says nothing the key could match (RFC 9110 12.5.5). Kept, the
  // shared store refused the entry on every read, and logged Redis as failing (src/response-store.ts storedMeta).
  if (!vary.every((name) => FIELD_NAME_TOKEN.test(name))) return { store: false, reason: 'vary names no header' };
  // RFC 9111 3.5: a response to an authenticated request is shared only when the service says so.
  if (input.sharedCredentialed && !control.public && control.sMaxAge === undefined) return { store: false, reason: 'credentialed, not public' };

  const date = parseHttpDate(headers.date, input.now);
  const dateValue = Number.isNaN(date) ? input.now : date;
  let lifetime = control.sMaxAge ?? control.maxAge;
  if (lifetime === undefined && headers.expires !== undefined) {
    // An invalid Expires (often "0", or not an HTTP-date) means already expired (RFC 9111 5.3).
    const expires = parseHttpDate(headers.expires, input.now);
    lifetime = Number.isNaN(expires) ? 0 : Math.min(MAX_LIFETIME_SECONDS, Math.max(0, Math.floor((expires - dateValue) / 1000)));
  }
  lifetime ??= input.defaultTtlSeconds;
  // Age given as a list (two lines, or `100, 100`): the first member counts (RFC 9111 5.1), not none.
  const ageHeader = deltaSeconds(first(headers.age)?.split(',')[0]?.trim()) ?? 0;
  const apparentAge = Math.max(0, (input.now - dateValue) / 1000);
  // RFC 9111 4.2.3: the Age was the copy's as the service began to answer; the time the answer took counts too.
  const responseDelay = Math.max(0, (input.now - (input.requestedAt ?? input.now)) / 1000);
  const initialAge = Math.max(ageHeader + responseDelay, apparentAge);
  // `no-cache` (5.2.2.4) and a lifetime that cannot be read (4.2.1) make it stale from the start: each use revalidated.
  if (control.noCache || control.invalid) lifetime = 0;
  // What forbids a stale answer wins over RFC 5861's windows (RFC 9111 4.2.4): must-revalidate, proxy-revalidate,
  // no-cache and, in a shared cache, s-maxage (5.2.2.10), which a service sends to say how long the gateway may answer for it.
  const neverStale = control.mustRevalidate || control.noCache || control.sMaxAge !== undefined;
  const staleIfErrorSeconds = neverStale ? 0 : (control.staleIfError ?? 0);
  const staleWhileRevalidateSeconds = neverStale ? 0 : (control.staleWhileRevalidate ?? 0);
  // Stale from the start and nothing to ask the service with: kept only while a window of RFC 5861 lets it answer
  // (`max-age=0, stale-if-error=60` is an answer for an outage in the next minute, never a fresh one).
  const window = Math.max(staleIfErrorSeconds, staleWhileRevalidateSeconds);
  if (!validated && lifetime + window <= initialAge) return { store: false, reason: 'stale on arrival' };
  return { store: true, lifetimeSeconds: lifetime, initialAgeSeconds: initialAge, staleIfErrorSeconds, staleWhileRevalidateSeconds };
}

/** Whether a response carries a validator the service can be asked with: an `ETag`, or a `Last-Modified` that is an HTTP-date. */
export function hasValidator(headers: Record<string, string | string[] | undefined>): boolean {
  return headers.etag !== undefined || !Number.isNaN(parseHttpDate(headers['last-modified']));
}

/**
 * How long past its freshness a stored response is kept, s (nginx's `proxy_cache_path ... inactive` default): one
 * with a validator to be revalidated (a 304 then refreshes it instead of the whole answer being sent again), one
 * without for a HEAD's 200 to freshen (RFC 9111 4.3.5, the way to refresh exactly such a copy). Dropped as it went
 * stale, a copy without a validator left the HEAD nothing to update, and the next GET went to the service.
 */
export const REVALIDATION_WINDOW_SECONDS = 600;

/**
 * The request header fields that ask the service whether the stored response is still current (RFC 9111 4.3.1):
 * its entity-tag, else its Last-Modified.
 */
export function validatorsOf(entry: CachedResponse): Record<string, string> {
  const etag = requestHeaderValue(entry.headers.etag);
  const lastModified = first(entry.headers['last-modified']);
  if (etag !== null) return { 'if-none-match': etag, ...(lastModified !== undefined ? { 'if-modified-since': lastModified } : {}) };
  return lastModified !== undefined ? { 'if-modified-since': lastModified } : {};
}

/**
 * Whether a 304 is about this stored response (RFC 9111 4.3.4): not when it names another entity-tag, or (without
 * one) another Last-Modified than the stored one.
 */
export function selectsStored(entry: CachedResponse, notModified: Record<string, string | string[] | undefined>): boolean {
  const etag = requestHeaderValue(notModified.etag);
  if (etag !== null) return etag === requestHeaderValue(entry.headers.etag);
  const lastModified = first(notModified['last-modified']);
  return lastModified === undefined || entry.headers['last-modified'] === undefined || lastModified === first(entry.headers['last-modified']);
}

/**
 * Whether a 304 to a client's own conditions is about this stored response, so that it may freshen it (RFC 9111
 * 4.3.4): the client's validators need not be the stored copy's (it may hold a newer or an older one, or have made
 * its If-Modified-Since up), so the 304 must name the stored copy itself: its entity-tag, or, where neither the copy
 * nor the 304 has one, its Last-Modified. A 304 that names neither says nothing of the stored copy (selectsStored would take it:
 * that is for the 304 to the gateway's own validators, which are the copy's).
 */
export function namesStored(entry: CachedResponse, notModified: Record<string, string | string[] | undefined>): boolean {
  const etag = requestHeaderValue(notModified.etag);
  const storedEtag = requestHeaderValue(entry.headers.etag);
  if (etag !== null || storedEtag !== null) return etag !== null && etag === storedEtag;
  const lastModified = first(notModified['last-modified']);
  return lastModified !== undefined && lastModified === first(entry.headers['last-modified']);
}

/** A stored response. */
export interface CachedResponse {
  status: number;
  /** The service's end-to-end headers (no framing headers, no `Age`). */
  headers: Record<string, string | string[]>;
  body: Buffer;
  /** When it was stored, ms since the epoch. */
  storedAt: number;
  /**
   * When it was stored on this process's monotonic clock (performance.now()), for a copy that stays in this process
   * (the memory store): its time there is counted on that clock. On the wall clock, a step back (NTP, a resumed VM)
   * stopped every copy's age for the step's length: a `max-age=1` answer was a HIT with `Age: 0` for the hour.
   * Absent on a copy read from Redis, stored by another process (its own clock).
   */
  storedAtMonotonicMs?: number;
  initialAgeSeconds: number;
  lifetimeSeconds: number;
  staleIfErrorSeconds: number;
  /** RFC 5861 3: past its lifetime, how long it is answered at once while fetched again in the background, s. */
  staleWhileRevalidateSeconds: number;
  /** The request header names the service's `Vary` lists, and digests of the values the storing request had (null: none). */
  vary: string[];
  varyValues: (string | null)[];
}

/** Current age of an entry, s (RFC 9111 4.2.3): its age when stored plus its time in the store since. */
export function currentAge(entry: CachedResponse, now: number): number {
  const resident = entry.storedAtMonotonicMs === undefined ? now - entry.storedAt : performance.now() - entry.storedAtMonotonicMs;
  return entry.initialAgeSeconds + Math.max(0, resident) / 1000;
}

export function isFresh(entry: CachedResponse, now: number): boolean {
  return currentAge(entry, now) < entry.lifetimeSeconds;
}

/** Whether a stale entry may still be answered at once while it is fetched again (RFC 5861 3). */
export function mayRevalidateInBackground(entry: CachedResponse, now: number): boolean {
  return entry.staleWhileRevalidateSeconds > 0 && currentAge(entry, now) < entry.lifetimeSeconds + entry.staleWhileRevalidateSeconds;
}

/**
 * How long a store keeps an entry, ms: its freshness left plus the longest of its stale-if-error and
 * stale-while-revalidate windows and the revalidation window. Past its freshness a copy answers nothing by itself
 * (only a 304, a HEAD's 200, or one of those windows lets it).
 */
export function retentionMs(entry: CachedResponse, now: number): number {
  const pastFreshness = Math.max(entry.staleIfErrorSeconds, entry.staleWhileRevalidateSeconds, REVALIDATION_WINDOW_SECONDS);
  return Math.max(0, (entry.lifetimeSeconds + pastFreshness - currentAge(entry, now)) * 1000);
}

/** The one value of a request header as compared for `Vary` (lines joined; absent is null). */
export function requestHeaderValue(value: string | string[] | undefined): string | null {
  return value === undefined ? null : Array.isArray(value) ? value.join(', ') : value;
}

/**
 * A key from its parts: hashed (bounded length whatever the URL), and no separator trick can join two
 * different lists into one key. The cache keys a request twice (src/middleware/cache.ts): its resource (what
 * the service is asked for) and its variant within it (whose answer, and the values of `varyHeaders`).
 */
export function cacheKey(parts: readonly (string | null)[]): string {
  let node: KeyNode | undefined = hashedKeys;
  for (let i = 0; i < parts.length && node !== undefined; i++) node = node.children?.get(parts[i]!);
  if (node?.key !== undefined) return node.key;
  const text = JSON.stringify(parts);
  // crypto.hash, one call: createHash builds a Hash object per key (1.36 against 0.45 µs here).
  const key = hash('sha256', text, 'base64url');
  if (text.length <= MAX_HASHED_KEY_TEXT) rememberKey(parts, key);
  return key;
}

/**
 * A resource's key: the route's name and the upstream target (path and query) as invalidationSpelling writes it.
 * What a successful write invalidates, every variant at once: also those stored under another configuration of the
 * route (the variant holds its digest), by a replica in the middle of a rollout that changes it. The variant holds
 * the target byte for byte, so two spellings never share an answer.
 */
export function resourceKey(routeName: string, upstreamTarget: string): string {
  return cacheKey([routeName, invalidationSpelling(upstreamTarget)]);
}

/**
 * A target as one resource however it is spelt: percent-encoded unreserved characters decoded and the hex of other
 * escapes upper-cased (RFC 3986 6.2.2.1-2: `/%69tem` is `/item`), the path lower-cased and without trailing slashes,
 * as the gateway's routing and the services' routers match it. Keyed byte for byte, a write through `/%69tem` or
 * `/item/` left the copy of `/item` served for its whole lifetime (RFC 9111 4.4 invalidates the URI, any spelling).
 * Spellings a service tells apart that share it cost a miss after a write, never a wrong answer.
 */
export function invalidationSpelling(target: string): string {
  const queryStart = target.indexOf('?');
  let path = queryStart === -1 ? target : target.slice(0, queryStart);
  let query = queryStart === -1 ? '' : target.slice(queryStart);
  if (path.includes('%')) path = normalizedEscapes(path);
  path = path.toLowerCase();
  let end = path.length;
  while (end > 1 && path.charCodeAt(end - 1) === 0x2f) end--;
  if (query.includes('%')) query = normalizedEscapes(query);
  return path.slice(0, end) + query;
}

/** Unreserved characters (RFC 3986 2.3): an escape of one is the character. */
const UNRESERVED = /^[A-Za-z0-9._~-]$/;

function normalizedEscapes(text: string): string {
  return text.replace(/%([0-9A-Fa-f]{2})/g, (_escape, hex: string) => {
    const character = String.fromCharCode(parseInt(hex, 16));
    return UNRESERVED.test(character) ? character : `%${hex.toUpperCase()}`;
  });
}

/**
 * Keys hashed lately, found by their parts one level at a time (a Map per level, null and "null" apart): a hit
 * computes two keys (resource and variant), and the same few recur request after request. The hash was ~14k of a
 * cache hit's ~370k instructions; looking up each key's JSON text instead cost ~4k more per hit (the text built
 * by JSON.stringify, then hashed for the Map), the parts themselves far less. Bounded in nodes and in the text they
 * hold (each key's JSON at most MAX_HASHED_KEY_TEXT; at most ~4 MiB in all); past the bound it starts again, so a
 * client sending ever-new URLs only costs the hashing it cost before.
 */
interface KeyNode {
  children: Map<string | null, KeyNode> | undefined;
  key: string | undefined;
}
const emptyKeyNode = (): KeyNode => ({ children: undefined, key: undefined });
let hashedKeys = emptyKeyNode();
let hashedKeyNodes = 0;
let hashedKeyChars = 0;
const MAX_HASHED_KEY_NODES = 16_384;
const MAX_HASHED_KEY_CHARS = 2 * 1024 * 1024;
const MAX_HASHED_KEY_TEXT = 512;

function rememberKey(parts: readonly (string | null)[], key: string): void {
  let node = hashedKeys;
  for (const part of parts) {
    let next = node.children?.get(part);
    if (next === undefined) {
      if (hashedKeyNodes >= MAX_HASHED_KEY_NODES || hashedKeyChars >= MAX_HASHED_KEY_CHARS) {
        // Full: start again from nothing (this key's parts first).
        hashedKeys = emptyKeyNode();
        hashedKeyNodes = 0;
        hashedKeyChars = 0;
        return rememberKey(parts, key);
      }
      next = emptyKeyNode();
      (node.children ??= new Map()).set(part, next);
      hashedKeyNodes++;
      hashedKeyChars += part?.length ?? 0;
    }
    node = next;
  }
  node.key = key;
}

/**
 * A GET the cache sends to the service to revalidate its stale copy (src/middleware/cache.ts): the proxy adds
 * `headers` (the validators) to the request, and a 304 to it is not forwarded (the client asked for no condition)
 * but handed to `notModified`, which takes it (true) or says it is about another response than the stored one
 * (false): the proxy then asks again without the validators.
 */
export interface Revalidation {
  headers: Record<string, string>;
  notModified(headers: Record<string, string | string[] | undefined>): boolean;
}

/**
 * What the proxy shows the cache of a service's response as it forwards it (src/middleware/proxy.ts): the
 * status and headers as received, each body chunk, and the end. A response cut short never reaches `end`.
 */
export interface ResponseTap {
  start(status: number, headers: Record<string, string | string[] | undefined>): void;
  data(chunk: Buffer): void;
  /** The client reads slower than the service sends, so the service is paused: the end may be long in coming. */
  clientBackedUp(): void;
  end(): void;
}
