/**
 * `new Date().toISOString()` for now, its date and time to the second formatted once per second (a whole
 * `toISOString` is about 0.6 µs a call): each request writes it twice, its access-log line (otel/logger.ts) and the
 * `X-Gateway-Timestamp` its service receives (src/upstream-headers.ts). Kept per millisecond only, it was formatted
 * afresh for every request of a gateway serving fewer than a thousand a second, and under callgrind (7.5k of a cache
 * hit's 370k instructions, bench/RESULTS.md).
 */
let formattedMs = Number.NaN;
let formatted = '';
/** The second `prefix` formats (ms since the epoch, a multiple of 1000), and `YYYY-MM-DDTHH:MM:SS.` for it. */
let prefixSecond = Number.NaN;
let prefix = '';

export function isoTimestamp(): string {
  const now = Date.now();
  if (now === formattedMs) return formatted;
  // Before 1970 too (a clock set wrong): the millisecond within its second is never negative.
  const millis = ((now % 1000) + 1000) % 1000;
  const second = now - millis;
  if (second !== prefixSecond) {
    prefixSecond = second;
    // Everything but the `mmmZ` toISOString always ends with (years beyond 9999 included: `+010000-...`).
    prefix = new Date(second).toISOString().slice(0, -4);
  }
  formattedMs = now;
  formatted = `${prefix}${millis < 10 ? '00' : millis < 100 ? '0' : ''}${millis}Z`;
  return formatted;
}
