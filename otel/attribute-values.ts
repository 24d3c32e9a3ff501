import { getNumberFromEnv } from '@opentelemetry/core';

/**
 * The longest attribute value a span or log record keeps when OTEL_*ATTRIBUTE_VALUE_LENGTH_LIMIT is unset (the spec's
 * default is none), in characters. A client chooses the length of the URL, query and User-Agent every SERVER span,
 * CLIENT span (`url.full`) and access-log record carries, up to the 16 KiB header limit (HTTP/2 twice that): with the
 * export queues full behind a slow collector (2,048 spans and 2,048 log records, plus the batch being sent), records
 * of that size held 100-280 MiB against the Kubernetes manifest's 384 MiB limit. 4,096 keeps any URL a browser sends
 * whole; `OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT=Infinity` restores the spec's default.
 */
export const DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT = 4096;

/** A positive number from the environment, else undefined (0 or less is no limit to the tracer: read as unset). */
export function positiveNumberFromEnv(name: string): number | undefined {
  const value = getNumberFromEnv(name);
  return value !== undefined && value > 0 ? value : undefined;
}

/** The longest attribute value a log record keeps (OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT, else the shared one). */
export function logRecordValueLengthLimit(): number {
  return positiveNumberFromEnv('OTEL_LOGRECORD_ATTRIBUTE_VALUE_LENGTH_LIMIT') ?? positiveNumberFromEnv('OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT') ?? DEFAULT_ATTRIBUTE_VALUE_LENGTH_LIMIT;
}

/**
 * `value` cut to its first `limit` UTF-16 units, as a string of its own. V8 makes `substring` of 13 characters or
 * more a sliced string that keeps the whole original alive, so the SDK's cut (core's copyAndTruncAnyValue) freed
 * nothing: a span's `url.query` cut to 4,096 still held the client's 16 KiB query until exported, and the CLIENT
 * span's `url.full`, concatenated, a flat 16 KiB copy made only to be cut (2,048 SERVER and 2,048 CLIENT spans with
 * 16 KiB values kept 98 MiB of heap cut, 66 MiB uncut, 26 MiB cut this way: bench/micro/cut-attribute-retained.cjs).
 * Copied unit for unit, as the SDK's cut is (half a surrogate pair stays half): through Latin-1 when every unit is
 * one (a one-byte string, as a URL's is), else through UTF-16.
 */
export function cutString(value: string, limit: number): string {
  if (value.length <= limit) return value;
  const cut = value.substring(0, limit);
  const encoding = BEYOND_LATIN1.test(cut) ? 'utf16le' : 'latin1';
  return Buffer.from(cut, encoding).toString(encoding);
}

const BEYOND_LATIN1 = /[^\x00-\xff]/;

/**
 * An attribute value (AnyValue) with every string in it longer than `limit` cut by cutString and every byte array
 * by `slice` (a copy). Arrays and maps are cut in place: pass copies (cleanAttributes makes them).
 */
export function cutAnyValue<T>(value: T, limit: number): T {
  if (typeof value === 'string') return cutString(value, limit) as T;
  if (typeof value !== 'object' || value === null || limit === Infinity) return value;
  if (value instanceof Uint8Array) return (value.length <= limit ? value : value.slice(0, limit)) as T;
  if (Array.isArray(value)) {
    for (let index = 0; index < value.length; index++) value[index] = cutAnyValue(value[index], limit);
    return value;
  }
  const map = value as Record<string, unknown>;
  for (const key of Object.keys(map)) map[key] = cutAnyValue(map[key], limit);
  return value;
}
