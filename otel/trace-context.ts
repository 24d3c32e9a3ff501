/**
 * W3C Trace Context Level 2 (https://www.w3.org/TR/trace-context-2/): `traceparent` and `tracestate` parsed and
 * formatted, as pure functions. Where the spec leaves a receiver a choice (a list over 32 members, a duplicate
 * key), the W3C test suite (w3c/trace-context, test/test.py, SPEC_LEVEL=2 STRICT_LEVEL=2) decides; the rows of
 * test/unit/trace-context.test.ts pin every rule. We parse strictly and always send version 00, lower case,
 * without whitespace.
 */
import type { TraceState } from '@opentelemetry/api';
import { withoutEdgeWhitespace } from './field-whitespace';

/** The caller may have recorded the trace. */
export const TRACE_FLAG_SAMPLED = 0x01;
/** Level 2: at least the right-most 7 bytes of the trace id are random. */
export const TRACE_FLAG_RANDOM = 0x02;
/** The flags version 00 defines. The others are reserved: read as zero, sent as zero. */
const KNOWN_TRACE_FLAGS = TRACE_FLAG_SAMPLED | TRACE_FLAG_RANDOM;

/** The four fields of a `traceparent` this specification version knows. */
export interface TraceParent {
  traceId: string;
  parentId: string;
  /** Known flags only (sampled, random). */
  traceFlags: number;
}

/** A header as Node or a propagation carrier holds it. */
export type HeaderValue = string | readonly string[] | undefined;

const VERSION_00 = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/;
/** A later version: its first four fields as version 00's, then the end or a dash (what follows is not ours to read). */
const LATER_VERSION = /^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(?:-|$)/;
const INVALID_TRACE_ID = '0'.repeat(32);
const INVALID_PARENT_ID = '0'.repeat(16);

/**
 * The trace a `traceparent` header continues, or undefined when the header is absent, repeated or invalid (the
 * caller then starts a new trace and must not read `tracestate`). Version ff is invalid; a later version is read
 * leniently (its first four fields); upper-case hex and all-zero ids are invalid.
 */
export function parseTraceparent(header: HeaderValue): TraceParent | undefined {
  const single = typeof header === 'string' ? header : header?.length === 1 ? header[0] : undefined;
  if (single === undefined) return undefined;
  const value = trimOws(single);
  const version = value.slice(0, 2);
  if (version === 'ff') return undefined;
  // A repeated header arrives as one value joined by `, ` (Node, and any proxy may, RFC 9110 5.3), and a list in
  // one field line is the same thing. Version 00's exact pattern refuses it; a later version's tail is open-ended,
  // so `cc-...-01-x, cc-...-01-x` would pass as one header. No version's fields can hold a comma.
  if (value.includes(',')) return undefined;
  const match = (version === '00' ? VERSION_00 : LATER_VERSION).exec(value);
  if (!match) return undefined;
  const [, traceId, parentId, flags] = match as unknown as [string, string, string, string];
  if (traceId === INVALID_TRACE_ID || parentId === INVALID_PARENT_ID) return undefined;
  return { traceId, parentId, traceFlags: Number.parseInt(flags, 16) & KNOWN_TRACE_FLAGS };
}

/** A version 00 `traceparent` (also the format of `traceresponse`); flags other than sampled and random are sent as zero. */
export function formatTraceparent({ traceId, parentId, traceFlags }: TraceParent): string {
  return `00-${traceId}-${parentId}-${(traceFlags & KNOWN_TRACE_FLAGS).toString(16).padStart(2, '0')}`;
}

/** One `tracestate` list member. */
export type TracestateEntry = readonly [key: string, value: string];

/** Most list members a `tracestate` may have. */
export const MAX_TRACESTATE_MEMBERS = 32;
/**
 * Longest `tracestate` we send, characters: the 512 the spec asks everyone to propagate at least. Longer lists
 * (up to 32 members of 513 characters are valid) lose whole entries, as the spec says: those over 128 first,
 * then from the right.
 */
export const MAX_TRACESTATE_LENGTH = 512;
const LONG_ENTRY = 128;

/** `( lcalpha / DIGIT ) 0*255 keychar`: since 2020 the grammar has allowed `@` anywhere after the first character. */
const KEY = /^[a-z0-9][a-z0-9_\-*/@]{0,255}$/;
/** Printable ASCII but `,` and `=`, up to 256 characters, not ending in a space. */
const VALUE = /^[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]$/;

/**
 * The members of a `tracestate` (several header fields are one list, in order), or undefined when it must be
 * dropped whole: a member that is not `key=value` by the grammar (a 257-character key, a value with `=`, an
 * empty value), or more than 32 members. Empty members and spaces or tabs around members are allowed. A repeated
 * key keeps its left-most (most recent) value. Absent or empty: an empty list.
 */
export function parseTracestate(header: HeaderValue): TracestateEntry[] | undefined {
  if (header === undefined) return [];
  const value = typeof header === 'string' ? header : header.join(',');
  const entries: TracestateEntry[] = [];
  const keys = new Set<string>();
  let members = 0;
  for (const raw of value.split(',')) {
    const member = trimOws(raw);
    if (member === '') continue;
    if (++members > MAX_TRACESTATE_MEMBERS) return undefined;
    const equals = member.indexOf('=');
    const key = member.slice(0, equals);
    const memberValue = member.slice(equals + 1);
    if (equals < 0 || !KEY.test(key) || !VALUE.test(memberValue)) return undefined;
    // The spec lets a receiver keep or drop a duplicate; the suite accepts either. Only one may be sent on.
    if (keys.has(key)) continue;
    keys.add(key);
    entries.push([key, memberValue]);
  }
  return entries;
}

/** The `tracestate` to send: at most 32 members and 512 characters, no whitespace; empty when there is nothing to send. */
export function formatTracestate(entries: readonly TracestateEntry[]): string {
  const members = entries.slice(0, MAX_TRACESTATE_MEMBERS).map(([key, value]) => `${key}=${value}`);
  let length = members.join(',').length;
  const dropFromRight = (which: (member: string) => boolean) => {
    for (let i = members.length - 1; i >= 0 && length > MAX_TRACESTATE_LENGTH; i--) {
      if (!which(members[i]!)) continue;
      length -= members[i]!.length + (members.length > 1 ? 1 : 0);
      members.splice(i, 1);
    }
  };
  dropFromRight((member) => member.length > LONG_ENTRY);
  dropFromRight(() => true);
  return members.join(',');
}

/**
 * OpenTelemetry's `TraceState` over a validated member list (the SDK copies a parent's onto its children, and
 * serializes it into OTLP). Immutable; `set` validates as `parseTracestate` does and puts the key first.
 * `received`: the list as it came, for a participant that passes the caller's `traceparent` on unchanged (one that
 * does not trace), which must not modify `tracestate` either; `set` and `unset` make lists without it.
 */
export class W3CTraceState implements TraceState {
  constructor(
    private readonly entries: readonly TracestateEntry[] = [],
    readonly received?: string,
  ) {}

  get(key: string): string | undefined {
    return this.entries.find(([entryKey]) => entryKey === key)?.[1];
  }

  /** Adds or updates `key` at the left; over 32 members, the right-most goes. Invalid keys or values change nothing. */
  set(key: string, value: string): W3CTraceState {
    if (!KEY.test(key) || !VALUE.test(value)) return this;
    const rest = this.entries.filter(([entryKey]) => entryKey !== key);
    return new W3CTraceState([[key, value] as const, ...rest].slice(0, MAX_TRACESTATE_MEMBERS));
  }

  unset(key: string): W3CTraceState {
    return this.get(key) === undefined ? this : new W3CTraceState(this.entries.filter(([entryKey]) => entryKey !== key));
  }

  serialize(): string {
    return formatTracestate(this.entries);
  }
}

/** Strips the spaces and tabs (RFC 9110 OWS) around a value; by index, so a long run of blanks costs one pass. */
export const trimOws = withoutEdgeWhitespace;
