/**
 * W3C Baggage (https://www.w3.org/TR/baggage/) for OpenTelemetry, in place of @opentelemetry/core's
 * W3CBaggagePropagator (3.0), which percent-decodes keys and re-encodes them with encodeURIComponent (`user#id`
 * went on as `user%23id`, `a%41` as `aA`: a key is a token, never encoded), re-encodes every value the same way
 * (`a:b` became `a%3Ab`, three bytes for one, so 64 members well under 8192 bytes grew past it and lost their
 * right-most third, where the spec says they MUST all go on), and drops a value whose escapes are not UTF-8
 * instead of decoding it with U+FFFD. Here keys go on as received, values are decoded as the spec says and
 * encoded only where they must be, and properties are kept as the opaque metadata OpenTelemetry makes of them.
 */
import { baggageEntryMetadataFromString, propagation, type Baggage, type BaggageEntry, type Context, type TextMapGetter, type TextMapPropagator, type TextMapSetter } from '@opentelemetry/api';
import { isTracingSuppressed } from '@opentelemetry/core';
import { withoutLeadingWhitespace, withoutTrailingWhitespace } from './field-whitespace';
import { trimOws } from './trace-context';
import { HEADER } from './wire-names';

/** Most list members read or sent: the grammar's 180 (the spec asks everyone to carry at least 64). */
export const MAX_BAGGAGE_MEMBERS = 180;
/**
 * Longest `baggage` read or sent, bytes: the spec's 8192, counted over whole members as sent and their commas. No
 * member is ever cut, only left out. There is no limit per member below it: the spec's Limits section says every member MUST
 * go on while the whole is within 64 members and 8192 bytes, one member of 8192 bytes too (its test suite's
 * test_serialize_long_entry). @opentelemetry/core's propagator still leaves out any member over 4096, a limit
 * the spec dropped in 2022.
 */
export const MAX_BAGGAGE_LENGTH = 8192;

/** RFC 9110 token: a key, and a property's key. */
const TOKEN = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
/** `*baggage-octet`: printable ASCII but space, `"`, `,`, `;` and `\`. */
const VALUE = /^[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$/;
/** What a value may hold unencoded when sent: a baggage-octet that is not `%`. */
const SENDABLE_VALUE = /^[\x21\x23\x24\x26-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*$/;
/** A property as sent, `key "=" value` or `key`: what a received `key OWS "=" OWS value` is rewritten to. */
const PROPERTY = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:=[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*)?$/;
const HEX = /^[0-9A-Fa-f]{2}$/;
/**
 * Not fatal: escapes that are not UTF-8 become U+FFFD, as the spec says for a value. `ignoreBOM`: a value's leading
 * U+FEFF (`%EF%BB%BF`) is a character of it, not a byte-order mark to strip.
 */
const UTF8 = new TextDecoder('utf-8', { ignoreBOM: true });

/**
 * One list member as `[key, entry]`, or undefined when it is not `key OWS "=" OWS value *( OWS ";" OWS property )`.
 * Such a member is left out and the rest kept (the spec leaves the choice to the receiver).
 */
function parseMember(member: string): [string, BaggageEntry] | undefined {
  const semicolon = member.indexOf(';');
  const pair = semicolon === -1 ? member : member.slice(0, semicolon);
  const equals = pair.indexOf('=');
  if (equals === -1) return undefined;
  const key = trimOws(pair.slice(0, equals));
  const value = trimOws(pair.slice(equals + 1));
  if (!TOKEN.test(key) || !VALUE.test(value)) return undefined;
  if (semicolon === -1) return [key, { value: decodeValue(value) }];
  const properties = member
    .slice(semicolon + 1)
    .split(';')
    // Without blanks: a tab is no gRPC metadata (grpc-js refuses the whole header, request.id with it).
    .map((property) => withoutBlanksAroundEquals(trimOws(property)))
    .filter((property) => property !== '');
  if (!properties.every((property) => PROPERTY.test(property))) return undefined;
  return [key, properties.length === 0 ? { value: decodeValue(value) } : { value: decodeValue(value), metadata: baggageEntryMetadataFromString(properties.join(';')) }];
}

/**
 * A property without the blanks around its first `=`, which are not part of its key or value. Cut by index: a
 * regular expression (blanks, `=`, blanks) retried a long run of blanks from each of its positions in a property
 * without `=` (16 KiB of them held the event loop 0.2-0.35 s).
 */
export function withoutBlanksAroundEquals(property: string): string {
  const equals = property.indexOf('=');
  if (equals === -1) return property;
  return `${withoutTrailingWhitespace(property.slice(0, equals))}=${withoutLeadingWhitespace(property.slice(equals + 1))}`;
}

/** Percent-decoding to UTF-8 bytes and then text; a `%` not followed by two hex digits stays as it is. */
function decodeValue(value: string): string {
  if (!value.includes('%')) return value;
  const bytes: number[] = [];
  for (let i = 0; i < value.length; i++) {
    const escape = value.charCodeAt(i) === 0x25 ? value.slice(i + 1, i + 3) : '';
    if (HEX.test(escape)) {
      bytes.push(Number.parseInt(escape, 16));
      i += 2;
    } else {
      bytes.push(value.charCodeAt(i));
    }
  }
  return UTF8.decode(Uint8Array.from(bytes));
}

/** A value as sent: its UTF-8 bytes, those that are not baggage-octets (and `%`) percent-encoded. */
function encodeValue(value: string): string {
  if (SENDABLE_VALUE.test(value)) return value;
  let encoded = '';
  for (const byte of Buffer.from(value, 'utf8')) {
    encoded += SENDABLE_VALUE.test(String.fromCharCode(byte)) && byte < 0x80 ? String.fromCharCode(byte) : `%${byte.toString(16).toUpperCase().padStart(2, '0')}`;
  }
  return encoded;
}

/**
 * A `baggage` header (several header fields are one list) as entries in their order, as many as formatBaggage will
 * send (180, and 8192 bytes as sent); a repeated key keeps its first value. A Map, not an object: an object lists
 * keys that look like array indexes (`0`, `42`) before all others, whatever their order in the header.
 */
export function parseBaggage(header: string | readonly string[]): Map<string, BaggageEntry> {
  const entries = new Map<string, BaggageEntry>();
  let members = 0;
  let length = 0;
  for (const raw of (typeof header === 'string' ? header : header.join(',')).split(',')) {
    const member = trimOws(raw);
    if (member === '') continue;
    const parsed = parseMember(member);
    if (parsed === undefined || entries.has(parsed[0])) continue;
    // Counted as it will be sent (the Limits are the resulting baggage-string's), not as received: `k = v` and a
    // needless `%41` for `A` go on as `k=v` and `A`, so 64 members sent under 8192 bytes all fit here too.
    const added = sentMember(parsed[0], parsed[1])!.length + (members > 0 ? 1 : 0);
    if (length + added > MAX_BAGGAGE_LENGTH) continue;
    entries.set(parsed[0], parsed[1]);
    length += added;
    if (++members === MAX_BAGGAGE_MEMBERS) break;
  }
  return entries;
}

/**
 * The `baggage` to send for `entries`, in their order: whole members only, at most 180 and 8192 bytes (one that
 * does not fit is left out). A key that is not a token cannot be sent and is left out; properties that are not
 * the grammar's are not sent.
 */
export function formatBaggage(entries: Iterable<readonly [string, BaggageEntry]>): string {
  let header = '';
  let members = 0;
  for (const [key, entry] of entries) {
    const member = sentMember(key, entry);
    if (member === undefined || header.length + member.length + (members > 0 ? 1 : 0) > MAX_BAGGAGE_LENGTH) continue;
    header += members > 0 ? `,${member}` : member;
    if (++members === MAX_BAGGAGE_MEMBERS) break;
  }
  return header;
}

/** One list member as sent: the value encoded where it must be, properties only when they are the grammar's; none for a key that is not a token. */
function sentMember(key: string, entry: BaggageEntry): string | undefined {
  if (!TOKEN.test(key)) return undefined;
  const member = `${key}=${encodeValue(entry.value)}`;
  const metadata = entry.metadata?.toString();
  return metadata !== undefined && metadata !== '' && metadata.split(';').every((property) => PROPERTY.test(property)) ? `${member};${metadata}` : member;
}

/**
 * Baggage of one entry, as the gateway gives each request its own (`request.id`, src/middleware/request-id.ts):
 * what the API's BaggageImpl does, without its per-request work. BaggageImpl keeps its entries in a Map, copied by
 * every `setEntry`, and the propagator's inject read them through `getAllEntries` (an array built from the Map's
 * iterator by `Array.from`: 3.3k instructions per proxied request in one callgrind run, 0.2k in another, as V8
 * tiered it) and formatted the header on every call. This one holds its entry and formats the header it sends once. It answers as
 * BaggageImpl does (a copy from getEntry, the entry itself in getAllEntries, a new baggage from every change);
 * test/unit/baggage-propagator.test.ts holds the two to the same answers.
 */
export class OneEntryBaggage implements Baggage {
  private sent: string | undefined = undefined;

  constructor(
    private readonly key: string,
    private readonly entry: BaggageEntry,
  ) {}

  getEntry(key: string): BaggageEntry | undefined {
    return key === this.key ? { ...this.entry } : undefined;
  }

  getAllEntries(): [string, BaggageEntry][] {
    return [[this.key, this.entry]];
  }

  setEntry(key: string, entry: BaggageEntry): Baggage {
    return this.general().setEntry(key, entry);
  }

  removeEntry(key: string): Baggage {
    return this.general().removeEntry(key);
  }

  removeEntries(...keys: string[]): Baggage {
    return this.general().removeEntries(...keys);
  }

  clear(): Baggage {
    return propagation.createBaggage();
  }

  /** The `baggage` header it is sent as (formatBaggage's), formatted on the first call. */
  header(): string {
    return (this.sent ??= formatBaggage(this.getAllEntries()));
  }

  /** The API's own baggage of the same entry, for every change. */
  private general(): Baggage {
    return propagation.createBaggage().setEntry(this.key, this.entry);
  }
}

/**
 * Baggage whose entries keep the order they were given in, which the API's `createBaggage` (an object's entries)
 * does not for keys that look like array indexes: a trusted client's `0=a,1=b,...` came before the gateway's
 * `request.id`, and at 180 members or 8192 bytes pushed it out of what the services receive. Otherwise it answers
 * as the API's BaggageImpl does (a copy from getEntry, a new baggage from every change).
 */
export class OrderedBaggage implements Baggage {
  constructor(private readonly entries: ReadonlyMap<string, BaggageEntry>) {}

  getEntry(key: string): BaggageEntry | undefined {
    const entry = this.entries.get(key);
    return entry === undefined ? undefined : { ...entry };
  }

  getAllEntries(): [string, BaggageEntry][] {
    return [...this.entries];
  }

  setEntry(key: string, entry: BaggageEntry): Baggage {
    return new OrderedBaggage(new Map(this.entries).set(key, entry));
  }

  removeEntry(key: string): Baggage {
    const entries = new Map(this.entries);
    entries.delete(key);
    return new OrderedBaggage(entries);
  }

  removeEntries(...keys: string[]): Baggage {
    const entries = new Map(this.entries);
    for (const key of keys) entries.delete(key);
    return new OrderedBaggage(entries);
  }

  clear(): Baggage {
    return new OrderedBaggage(new Map());
  }
}

/** The W3C Baggage propagator every process registers (trace-context-propagator.ts createTextMapPropagator). */
export class BaggagePropagator implements TextMapPropagator {
  inject(context: Context, carrier: unknown, setter: TextMapSetter): void {
    const baggage = propagation.getBaggage(context);
    if (!baggage || isTracingSuppressed(context)) return;
    const header = baggage instanceof OneEntryBaggage ? baggage.header() : formatBaggage(baggage.getAllEntries());
    if (header !== '') setter.set(carrier, HEADER.baggage, header);
  }

  extract(context: Context, carrier: unknown, getter: TextMapGetter): Context {
    const header = getter.get(carrier, HEADER.baggage);
    if (header === undefined || header.length === 0) return context;
    const entries = parseBaggage(header);
    return entries.size === 0 ? context : propagation.setBaggage(context, new OrderedBaggage(entries));
  }

  fields(): string[] {
    return [HEADER.baggage];
  }
}
