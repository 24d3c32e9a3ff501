import type { IncomingHttpHeaders } from 'node:http';
import { parseHttpDate, requestHeaderValue, type CachedResponse } from './response-cache';

/** Conditional GET and HEAD requests (RFC 9110 13.1) as the response cache answers them from a stored copy. */

/** An entity-tag (RFC 9110 8.8.3): optional `W/`, then an opaque tag in quotes, which may itself hold commas. */
const ENTITY_TAG = /\s*(?:W\/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)/gy;

/** The opaque tags of an entity-tag list, or undefined when the list is not one. */
function opaqueTags(list: string): string[] | undefined {
  const tags: string[] = [];
  ENTITY_TAG.lastIndex = 0;
  for (let match = ENTITY_TAG.exec(list); match; match = ENTITY_TAG.exec(list)) {
    tags.push(match[1]!);
    if (ENTITY_TAG.lastIndex >= list.length) return tags;
  }
  return undefined;
}

/**
 * A conditional GET/HEAD the stored response satisfies (RFC 9110 13.1.2 and 13.1.3, weak comparison;
 * If-None-Match first). An If-Modified-Since or Last-Modified that is not an HTTP-date is ignored. Without a
 * Last-Modified, the stored response is as of its Date, else of when it was stored (RFC 9111 4.3.2): a client
 * whose copy is from then or later already has what the cache would send.
 */
export function satisfiesConditional(request: IncomingHttpHeaders, entry: CachedResponse): boolean {
  const ifNoneMatch = requestHeaderValue(request['if-none-match']);
  if (ifNoneMatch !== null) {
    if (ifNoneMatch.trim() === '*') return true;
    const etag = opaqueTags(requestHeaderValue(entry.headers.etag) ?? '')?.[0];
    return etag !== undefined && (opaqueTags(ifNoneMatch)?.includes(etag) ?? false);
  }
  const since = parseHttpDate(request['if-modified-since']);
  // No If-Modified-Since (nearly every request): nothing to compare, and the stored dates are not parsed per hit
  // (Date.parse was ~3k instructions of every cache hit).
  if (Number.isNaN(since)) return false;
  const lastModified = entry.headers['last-modified'];
  const date = parseHttpDate(entry.headers.date);
  const modified = lastModified !== undefined ? parseHttpDate(lastModified) : Number.isNaN(date) ? entry.storedAt : date;
  return !Number.isNaN(modified) && modified <= since;
}
