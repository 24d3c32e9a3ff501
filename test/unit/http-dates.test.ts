/**
 * HTTP-dates (RFC 9110 5.6.7) read field by field (src/response-cache.ts parseHttpDate): the year as written, and a
 * date or time that does not exist invalid rather than rolled over. ISO 8601 strings are the oracle: Date.parse
 * takes their four-digit years as written.
 */
import { parseHttpDate, storability } from '../../src/response-cache';

const NOW = Date.parse('2026-06-01T00:00:00Z');
const at = (iso: string) => Date.parse(iso);

describe('HTTP-dates read field by field', () => {
  it.each([
    { desc: 'the RFC example, IMF-fixdate', date: 'Sun, 06 Nov 1994 08:49:37 GMT', time: at('1994-11-06T08:49:37Z') },
    { desc: 'the RFC example, RFC 850', date: 'Sunday, 06-Nov-94 08:49:37 GMT', time: at('1994-11-06T08:49:37Z') },
    { desc: 'the RFC example, asctime', date: 'Sun Nov  6 08:49:37 1994', time: at('1994-11-06T08:49:37Z') },
    { desc: 'asctime with a zero-padded day', date: 'Sun Nov 06 08:49:37 1994', time: at('1994-11-06T08:49:37Z') },
    { desc: 'year 0001 as written, not 2001', date: 'Mon, 01 Jan 0001 00:00:00 GMT', time: at('0001-01-01T00:00:00Z') },
    { desc: 'year 0030 as written, not 2030', date: 'Tue, 01 Jan 0030 00:00:00 GMT', time: at('0030-01-01T00:00:00Z') },
    { desc: 'year 0049 as written, not 2049', date: 'Fri, 01 Jan 0049 00:00:00 GMT', time: at('0049-01-01T00:00:00Z') },
    { desc: 'year 0050 as written, not 1950', date: 'Sat, 01 Jan 0050 00:00:00 GMT', time: at('0050-01-01T00:00:00Z') },
    { desc: 'year 0000 as written, not 2000', date: 'Sat, 01 Jan 0000 00:00:00 GMT', time: at('0000-01-01T00:00:00Z') },
    { desc: 'an asctime year 0030 as written', date: 'Tue Jan  1 00:00:00 0030', time: at('0030-01-01T00:00:00Z') },
    { desc: 'the last second there is', date: 'Fri, 31 Dec 9999 23:59:59 GMT', time: at('9999-12-31T23:59:59Z') },
    { desc: '29 Feb of a leap year', date: 'Thu, 29 Feb 2024 00:00:00 GMT', time: at('2024-02-29T00:00:00Z') },
    { desc: '29 Feb 2000 (divisible by 400)', date: 'Tue, 29 Feb 2000 12:00:00 GMT', time: at('2000-02-29T12:00:00Z') },
    { desc: 'the leap second 23:59:60, as the next midnight', date: 'Sat, 31 Dec 2016 23:59:60 GMT', time: at('2017-01-01T00:00:00Z') },
    { desc: 'an RFC 850 year up to 50 years ahead: this century', date: 'Thursday, 18-Aug-50 00:00:00 GMT', time: at('2050-08-18T00:00:00Z') },
    { desc: 'an RFC 850 year more than 50 years ahead: the last century', date: 'Thursday, 18-Aug-77 00:00:00 GMT', time: at('1977-08-18T00:00:00Z') },
  ])('reads $desc', ({ date, time }) => {
    expect(parseHttpDate(date, NOW)).toBe(time);
  });

  it.each([
    { desc: 'hour 24', date: 'Thu, 01 Jan 2026 24:00:00 GMT' },
    { desc: 'minute 60', date: 'Thu, 01 Jan 2026 00:60:00 GMT' },
    { desc: 'second 60 outside the leap second', date: 'Thu, 01 Jan 2026 12:00:60 GMT' },
    { desc: 'second 61', date: 'Wed, 31 Dec 2025 23:59:61 GMT' },
    { desc: '31 Feb', date: 'Tue, 31 Feb 2026 00:00:00 GMT' },
    { desc: '29 Feb of a common year', date: 'Sun, 29 Feb 2026 00:00:00 GMT' },
    { desc: '29 Feb 2100 (divisible by 100, not 400)', date: 'Mon, 29 Feb 2100 00:00:00 GMT' },
    { desc: '31 Apr', date: 'Thu, 31 Apr 2026 00:00:00 GMT' },
    { desc: 'day 00', date: 'Thu, 00 Jan 2026 00:00:00 GMT' },
    { desc: 'day 32', date: 'Thu, 32 Jan 2026 00:00:00 GMT' },
    { desc: '31 Feb in RFC 850', date: 'Saturday, 31-Feb-26 00:00:00 GMT' },
    { desc: 'hour 24 in asctime', date: 'Thu Jan  1 24:00:00 2026' },
    { desc: '30 Feb in asctime', date: 'Mon Feb 30 00:00:00 2026' },
    { desc: 'not one of the three forms', date: '2026-01-01T00:00:00Z' },
    { desc: 'a bare year', date: '2099' },
  ])('refuses $desc', ({ date }) => {
    expect(parseHttpDate(date, NOW)).toBeNaN();
  });

  // RFC 9111 5.3: an Expires that is not a valid date means already expired, as one long past does.
  it.each([
    { desc: 'in year 0030 (read as 2030: 3.6 years of life)', expires: 'Tue, 01 Jan 0030 00:00:00 GMT' },
    { desc: 'on 31 Feb (rolled over into March)', expires: 'Wed, 31 Feb 2027 00:00:00 GMT' },
    { desc: 'at 24:00:00 (rolled over into the next day)', expires: 'Tue, 01 Jun 2027 24:00:00 GMT' },
  ])('gives no lifetime to a response whose Expires is $desc', ({ expires }) => {
    const verdict = storability({ status: 200, headers: { date: new Date(NOW).toUTCString(), expires, etag: '"a"' }, sharedCredentialed: false, defaultTtlSeconds: 60, now: NOW });
    expect(verdict).toMatchObject({ store: true, lifetimeSeconds: 0 });
  });
});
