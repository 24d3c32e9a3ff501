/**
 * OTLP/protobuf encoding of finished spans (an `ExportTraceServiceRequest`) and log records (an
 * `ExportLogsServiceRequest`), byte for byte what `ProtobufTraceSerializer` and `ProtobufLogsSerializer` of
 * @opentelemetry/otlp-transformer 0.300 write (test/unit/otlp-protobuf-encoding.test.ts compares them), in one
 * pass instead of two. The SDK's serializer first walks every span to estimate the size,
 * then again to write it, copying strings and ids a character at a time; on the gateway it was the largest
 * single cost of tracing (about 15% of the main thread at 100% sampling, bench/RESULTS.md). Here strings, ids
 * and numbers go through Buffer's native writers, and a message's length is patched in after its content.
 *
 * Field numbers are those of opentelemetry-proto's trace.proto, logs.proto, common.proto and resource.proto (v1).
 */
import { SeverityNumber, type AttributeValue, type Attributes, type HrTime, type Link, type SpanContext, type SpanStatus } from '@opentelemetry/api';
import type { InstrumentationScope } from '@opentelemetry/core';
import type { Resource } from '@opentelemetry/resources';
import type { ReadableLogRecord } from '@opentelemetry/sdk-logs';
import type { ReadableSpan, TimedEvent } from '@opentelemetry/sdk-trace';

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_BYTES = 2;
const WIRE_FIXED32 = 5;

/** Span.flags bits: the parent's `is_remote` is known, and it is true (trace.proto SpanFlags). */
const FLAGS_HAS_IS_REMOTE = 0x100;
const FLAGS_IS_REMOTE = 0x200;

/** Strings shorter than this take the ASCII fast path of `ProtoWriter.string` (their length is one varint byte). */
const SHORT_STRING = 128;

/** The value of each hex digit's char code, -1 for every other code below 128. */
const HEX_VALUE: readonly number[] = Array.from({ length: 128 }, (_, code) => {
  const char = String.fromCharCode(code);
  return /[0-9a-f]/i.test(char) ? Number.parseInt(char, 16) : -1;
});

/**
 * The byte two hex digits stand for, by their char codes (below 128 each) as `high << 7 | low`; -1 where either is
 * not a hex digit. One table read per byte of an id instead of two and two checks (hexId).
 */
const HEX_PAIR = new Int16Array(128 * 128).fill(-1);
for (let high = 0; high < 128; high++) {
  for (let low = 0; low < 128; low++) {
    if (HEX_VALUE[high]! >= 0 && HEX_VALUE[low]! >= 0) HEX_PAIR[(high << 7) | low] = (HEX_VALUE[high]! << 4) | HEX_VALUE[low]!;
  }
}

/**
 * `charCodeAt` called through the prototype's own function: strings reach the encoder in half a dozen
 * representations (flat, sliced, concatenated, internalized...), so `value.charCodeAt` is a megamorphic property
 * load per character (~6k instructions per traced request in one count); a call of the known builtin compiles to
 * the character read itself.
 */
const charCodeAt = String.prototype.charCodeAt;

/**
 * The own-property test of `writeKeyValues`' for-in loop: TurboFan proves `hasOwnProperty.call(object, key)` true
 * from the loop's enum cache, where `Object.hasOwn` stays a call into a builtin per attribute (~5k instructions per
 * traced request, bench/RESULTS.md).
 */
const hasOwnProperty = Object.prototype.hasOwnProperty;

const MIN_INT64 = -(2 ** 63);
const MAX_INT64 = 2 ** 63;

/** A growable buffer with the few protobuf primitives OTLP traces need. */
class ProtoWriter {
  buffer: Buffer;
  pos = 0;
  /**
   * Where each message starts whose content `end` moved (it shifts everything after that start): a KeyValueRun
   * copies from where its list was written only while no move since started before the list's end.
   */
  readonly moveStarts: number[] = [];

  constructor(initialSize: number) {
    this.buffer = Buffer.allocUnsafe(initialSize);
  }

  ensure(bytes: number): void {
    if (this.pos + bytes <= this.buffer.length) return;
    let size = this.buffer.length * 2;
    while (size < this.pos + bytes) size *= 2;
    const grown = Buffer.allocUnsafe(size);
    this.buffer.copy(grown, 0, 0, this.pos);
    this.buffer = grown;
  }

  /** Every tag OTLP uses is one byte (fields below 16): written here, small enough to be inlined where it is called. */
  tag(field: number, wireType: number): void {
    const value = (field << 3) | wireType;
    if (value > 127 || this.pos >= this.buffer.length) {
      this.varint(value);
      return;
    }
    this.buffer[this.pos++] = value;
  }

  /** Unsigned values below 2^53, and negative ones as 64-bit two's complement (10 bytes), as int64 wants. */
  varint(value: number): void {
    this.ensure(10);
    const buffer = this.buffer;
    if (value >= 0 && value <= 0xffffffff) {
      let v = value >>> 0;
      while (v > 127) {
        buffer[this.pos++] = (v & 127) | 128;
        v >>>= 7;
      }
      buffer[this.pos++] = v;
      return;
    }
    let low: number;
    let high: number;
    if (value >= 0) {
      low = value >>> 0;
      high = (value / 4294967296) >>> 0;
    } else {
      const abs = Math.abs(value);
      low = ~(abs >>> 0) >>> 0;
      high = ~((abs / 4294967296) >>> 0) >>> 0;
      low = (low + 1) >>> 0;
      if (low === 0) high = (high + 1) >>> 0;
    }
    while (high > 0 || low > 127) {
      buffer[this.pos++] = (low & 127) | 128;
      low = ((low >>> 7) | (high << 25)) >>> 0;
      high >>>= 7;
    }
    buffer[this.pos++] = low & 127;
  }

  string(value: string): void {
    // Short ASCII strings (attribute keys, methods, paths, ids: nearly all of ours) are copied by this loop:
    // two native calls (byteLength, write) per string cost more than the copy itself. Anything else, by Buffer.
    // The type check lets the optimizing compiler read the length of any kind of string directly: strings come
    // here in half a dozen representations (flat, sliced, concatenated, internalized...), which made a plain
    // `value.length` a megamorphic load (~5k instructions per request in one count).
    if (typeof value !== 'string') value = String(value);
    const count = value.length;
    if (count < SHORT_STRING) {
      this.ensure(count + 1);
      const buffer = this.buffer;
      const start = this.pos;
      buffer[start] = count;
      let at = start + 1;
      for (let i = 0; i < count; i++) {
        const code = charCodeAt.call(value, i);
        if (code >= 0x80) {
          at = -1;
          break;
        }
        buffer[at++] = code;
      }
      if (at !== -1) {
        this.pos = at;
        return;
      }
    }
    const length = Buffer.byteLength(value, 'utf8');
    this.varint(length);
    this.ensure(length);
    this.buffer.write(value, this.pos, length, 'utf8');
    this.pos += length;
  }

  /**
   * Bytes already encoded, copied as they are: a few by a loop, more by `TypedArray.prototype.set` (a builtin, not a
   * call into C++ as Buffer's copy is), which beat the loop from about 16 bytes (a kept key-value pair is 20-60).
   */
  raw(encoded: Uint8Array): void {
    const count = encoded.length;
    this.ensure(count);
    const buffer = this.buffer;
    const start = this.pos;
    if (count > 16) buffer.set(encoded, start);
    else for (let i = 0; i < count; i++) buffer[start + i] = encoded[i]!;
    this.pos = start + count;
  }

  /**
   * Bytes [from, to) this writer wrote earlier, written again at the end: by a loop when few, else by
   * `copyWithin` (no view of the buffer to make). Growing keeps every byte where it was; `end` moving a message's
   * content does not, and records in `moveStarts` where it did.
   */
  copyWritten(from: number, to: number): void {
    const count = to - from;
    this.ensure(count);
    const buffer = this.buffer;
    const start = this.pos;
    if (count > 64) buffer.copyWithin(start, from, to);
    else for (let i = 0; i < count; i++) buffer[start + i] = buffer[from + i]!;
    this.pos = start + count;
  }

  bytes(value: Uint8Array): void {
    this.varint(value.length);
    this.ensure(value.length);
    this.buffer.set(value, this.pos);
    this.pos += value.length;
  }

  /** A trace or span id, given as hex, written as its bytes (by this loop: ids are 8 or 16 bytes). */
  hexId(hex: string): void {
    const length = hex.length >>> 1;
    this.varint(length);
    this.ensure(length);
    const buffer = this.buffer;
    const start = this.pos;
    for (let i = 0; i < length; i++) {
      const high = charCodeAt.call(hex, 2 * i);
      const low = charCodeAt.call(hex, 2 * i + 1);
      const byte = (high | low) < 128 ? HEX_PAIR[(high << 7) | low]! : -1;
      if (byte < 0) {
        // Not hex: exactly what Buffer writes for it (it stops at the first invalid pair).
        buffer.write(hex, start, length, 'hex');
        break;
      }
      buffer[start + i] = byte;
    }
    this.pos = start + length;
  }

  fixed32(value: number): void {
    this.ensure(4);
    this.uint32At(this.pos, value >>> 0);
    this.pos += 4;
  }

  /**
   * A 32-bit word, little-endian, stored byte by byte: Buffer's writeUInt32LE checks the value and offset on every
   * call (~110 instructions each, ten calls per traced request); `ensure` has made the room and `word` is unsigned.
   */
  private uint32At(at: number, word: number): void {
    const buffer = this.buffer;
    buffer[at] = word;
    buffer[at + 1] = word >>> 8;
    buffer[at + 2] = word >>> 16;
    buffer[at + 3] = word >>> 24;
  }

  double(value: number): void {
    this.ensure(8);
    this.buffer.writeDoubleLE(value, this.pos);
    this.pos += 8;
  }

  /**
   * HrTime as fixed64 nanoseconds since the epoch. seconds * 1e9 does not fit a double's 53 bits, so the product
   * is built from 16-bit halves of `seconds`, each partial product exact, and written as two 32-bit words (no
   * BigInt: two of them per timestamp were a tenth of the encoding's time). A time before 1970, which no SDK
   * writes, is written as 0 (Buffer's BigInt writer threw on it).
   */
  time([seconds, nanos]: HrTime): void {
    this.ensure(8);
    let low = 0;
    let high = 0;
    if (seconds >= 0 && nanos >= 0) {
      const lowSeconds = seconds % 65536;
      const highSeconds = (seconds - lowSeconds) / 65536;
      const a = lowSeconds * 1e9 + nanos; // < 2^46
      const b = highSeconds * 1e9; // < 2^46 for seconds < 2^32
      const bLow = b % 65536;
      const c = bLow * 65536 + a; // < 2^47
      low = c % 4294967296;
      high = (b - bLow) / 65536 + (c - low) / 4294967296;
    }
    this.uint32At(this.pos, low >>> 0);
    this.uint32At(this.pos + 4, high >>> 0);
    this.pos += 8;
  }

  /**
   * Starts a length-delimited message, reserving `reserved` bytes for its length (the length of most of our
   * messages fits in 1, a span's in 2); `end` writes it, moving the content when the guess was wrong.
   */
  begin(reserved: number): number {
    this.ensure(reserved);
    const start = this.pos;
    this.pos += reserved;
    return start;
  }

  end(start: number, reserved: number): void {
    const length = this.pos - start - reserved;
    const size = varintSize(length);
    if (size !== reserved) {
      this.ensure(size - reserved);
      this.buffer.copyWithin(start + size, start + reserved, this.pos);
      this.pos += size - reserved;
      this.moveStarts.push(start);
    }
    let at = start;
    let v = length;
    while (v > 127) {
      this.buffer[at++] = (v & 127) | 128;
      v >>>= 7;
    }
    this.buffer[at] = v;
  }
}

function varintSize(value: number): number {
  if (value < 128) return 1;
  if (value < 16384) return 2;
  if (value < 2097152) return 3;
  if (value < 268435456) return 4;
  return 5;
}

function spanFlags(traceFlags: number, isRemote: boolean | undefined): number {
  return (traceFlags & 0xff) | FLAGS_HAS_IS_REMOTE | (isRemote ? FLAGS_IS_REMOTE : 0);
}

/** AnyValue (common.proto): string 1, bool 2, int 3, double 4, array 5, kvlist 6, bytes 7. */
function writeAnyValue(writer: ProtoWriter, value: unknown): void {
  switch (typeof value) {
    case 'string':
      writer.tag(1, WIRE_BYTES);
      writer.string(value);
      return;
    case 'boolean':
      writer.tag(2, WIRE_VARINT);
      writer.varint(value ? 1 : 0);
      return;
    case 'number':
      if (Number.isInteger(value) && value >= MIN_INT64 && value < MAX_INT64) {
        writer.tag(3, WIRE_VARINT);
        writer.varint(value);
      } else {
        writer.tag(4, WIRE_FIXED64);
        writer.double(value);
      }
      return;
  }
  if (value instanceof Uint8Array) {
    writer.tag(7, WIRE_BYTES);
    writer.bytes(value);
  } else if (Array.isArray(value)) {
    writer.tag(5, WIRE_BYTES);
    const array = writer.begin(1);
    for (const item of value) {
      writer.tag(1, WIRE_BYTES);
      const itemStart = writer.begin(1);
      writeAnyValue(writer, item);
      writer.end(itemStart, 1);
    }
    writer.end(array, 1);
  } else if (typeof value === 'object' && value !== null) {
    writer.tag(6, WIRE_BYTES);
    const list = writer.begin(1);
    writeKeyValues(writer, value as Record<string, unknown>, 1);
    writer.end(list, 1);
  }
  // undefined and null: an empty AnyValue.
}

/**
 * What is kept per attribute key: its KeyValue key field (tag 1, length, UTF-8) as written, and the last
 * scalar value written under it with, once that value came twice in a row, the whole KeyValue as written
 * (its length, key and value). Attribute keys are a few dozen constants, each written on every span, and most
 * values repeat from span to span (method, scheme, route, host, port, status, service, user agent): a repeated
 * pair is one copy of bytes already encoded instead of tags, lengths and a string copied again (the encoder was
 * ~7% of a traced request's instructions). Bounded: keys are not always constants, and a kept pair is short.
 */
interface EncodedKey {
  key: Uint8Array;
  value: string | number | boolean | undefined;
  /** How many times in a row `value` was written under the key without a kept pair. */
  repeats: number;
  pair: Uint8Array | undefined;
}
const encodedKeys = new Map<string, EncodedKey>();
const MAX_ENCODED_KEYS = 1024;
const MAX_PAIR_BYTES = 128;
/**
 * A pair is kept once its value came this many times in a row. Not at twice: a request's id is the same on its
 * SERVER and CLIENT span and new with the next request, so every request kept (sliced, allocated) a pair that
 * was never used.
 */
const PAIR_AFTER_REPEATS = 3;

function encodedKey(key: string): EncodedKey {
  let encoded = encodedKeys.get(key);
  if (encoded === undefined) {
    const writer = new ProtoWriter(key.length * 3 + 6);
    writer.tag(1, WIRE_BYTES);
    writer.string(key);
    encoded = { key: Uint8Array.prototype.slice.call(writer.buffer, 0, writer.pos), value: undefined, repeats: 0, pair: undefined };
    if (encodedKeys.size < MAX_ENCODED_KEYS) encodedKeys.set(key, encoded);
  }
  return encoded;
}

/**
 * The key-value pairs last written for one kind of attribute list (a SERVER span's, a CLIENT span's, a log
 * record's): their keys and scalar values by position, and where their bytes are in the writer that wrote them.
 * The gateway builds each kind of list in the same order every time, and most values come again from one list to
 * the next (method, scheme, host, port, route, status, service...): pairs that match the last list's at the same
 * position are copied from where it was written, one copy per run of matches, where each was a lookup of its key
 * (a Map) and a copy of its own (writeKeyValues). Only within one export request's writer, and only while its
 * bytes stayed where they were (ProtoWriter.moveStarts); any list may come, and a pair that does not match is
 * written as before.
 */
class KeyValueRun {
  readonly keys: string[] = [];
  /** The scalar value of each pair, NOT_SCALAR for any other (never equal to a value). */
  readonly values: unknown[] = [];
  /** Where each pair ends, from the list's start. */
  readonly ends: number[] = [];
  count = 0;
  /** The writer the list was written by: an export request's, held (with its buffer) until the next list of the kind. */
  writer: ProtoWriter | undefined = undefined;
  /** How many moves the writer had made when the list was written (its `moveStarts.length`). */
  moves = 0;
  /** Where the list starts and ends in the writer's buffer. */
  start = 0;
  end = 0;

  /** How many of the last list's pairs `writer` can copy: none from another writer's, or once a move since shifted them. */
  copyable(writer: ProtoWriter): number {
    if (this.writer !== writer) return 0;
    const moveStarts = writer.moveStarts;
    for (let i = this.moves; i < moveStarts.length; i++) if (moveStarts[i]! < this.end) return 0;
    return this.count;
  }
}
const NOT_SCALAR = Symbol('not a scalar');

/** The runs of the span kinds (by the API's SpanKind, 0-4) and of log records. */
const spanRuns = [new KeyValueRun(), new KeyValueRun(), new KeyValueRun(), new KeyValueRun(), new KeyValueRun()];
const logRecordRun = new KeyValueRun();

/** `repeated KeyValue` as field `field`: KeyValue { key 1, value 2 }; with `run`, pairs matching its last list copied from it. */
function writeKeyValues(writer: ProtoWriter, attributes: Attributes | Record<string, unknown>, field: number, run?: KeyValueRun): void {
  const listStart = writer.pos;
  const known = run !== undefined ? run.copyable(writer) : 0;
  const knownStart = run !== undefined ? run.start : 0;
  let index = 0;
  // Matched pairs not yet copied: [copyFrom, copyTo) from the last list's start, contiguous as they were written.
  let copyFrom = 0;
  let copyTo = 0;
  // Where the pair before `index` ended in the last list, read before run.ends is overwritten with this list's.
  let previousEnd = 0;
  // This list's length so far, the pending copy included.
  let length = 0;
  for (const key in attributes) {
    if (!hasOwnProperty.call(attributes, key)) continue;
    const value = (attributes as Record<string, AttributeValue | undefined>)[key];
    if (run !== undefined) {
      const oldEnd = index < known ? run.ends[index]! : 0;
      if (index < known && key === run.keys[index] && value === run.values[index]) {
        if (copyFrom === copyTo) copyFrom = previousEnd;
        copyTo = oldEnd;
        length += oldEnd - previousEnd;
        previousEnd = oldEnd;
        run.ends[index++] = length;
        continue;
      }
      if (copyFrom !== copyTo) {
        writer.copyWritten(knownStart + copyFrom, knownStart + copyTo);
        copyFrom = copyTo = 0;
      }
      previousEnd = oldEnd;
    }
    const encoded = encodedKey(key);
    writer.tag(field, WIRE_BYTES);
    if (value === encoded.value && encoded.pair !== undefined) {
      writer.raw(encoded.pair);
    } else {
      const keyValue = writer.begin(1);
      writer.raw(encoded.key);
      writer.tag(2, WIRE_BYTES);
      const valueStart = writer.begin(1);
      writeAnyValue(writer, value);
      writer.end(valueStart, 1);
      writer.end(keyValue, 1);
      if (value !== encoded.value) {
        // Only scalars compare by value; an array or object (or undefined) is never taken for the last one.
        encoded.value = typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' ? value : undefined;
        encoded.repeats = 1;
        encoded.pair = undefined;
      } else if (encoded.value !== undefined && ++encoded.repeats >= PAIR_AFTER_REPEATS && writer.pos - keyValue <= MAX_PAIR_BYTES) {
        encoded.pair = Uint8Array.prototype.slice.call(writer.buffer, keyValue, writer.pos);
      }
    }
    if (run !== undefined) {
      length = writer.pos - listStart;
      run.keys[index] = key;
      run.values[index] = typeof value === 'string' || typeof value === 'number' || typeof value === 'boolean' ? value : NOT_SCALAR;
      run.ends[index++] = length;
    }
  }
  if (run !== undefined) {
    if (copyFrom !== copyTo) writer.copyWritten(knownStart + copyFrom, knownStart + copyTo);
    run.count = index;
    run.writer = writer;
    run.moves = writer.moveStarts.length;
    run.start = listStart;
    run.end = writer.pos;
  }
}

/** Span.Event: time 1, name 2, attributes 3, dropped_attributes_count 4. */
function writeEvent(writer: ProtoWriter, event: TimedEvent): void {
  const start = writer.begin(1);
  writer.tag(1, WIRE_FIXED64);
  writer.time(event.time);
  writer.tag(2, WIRE_BYTES);
  writer.string(event.name);
  if (event.attributes) writeKeyValues(writer, event.attributes, 3);
  writer.tag(4, WIRE_VARINT);
  writer.varint(event.droppedAttributesCount ?? 0);
  writer.end(start, 1);
}

/** trace_id 1, span_id 2, trace_state 3: the same first fields in Span and Span.Link. */
function writeSpanContext(writer: ProtoWriter, spanContext: SpanContext): void {
  writer.tag(1, WIRE_BYTES);
  writer.hexId(spanContext.traceId);
  writer.tag(2, WIRE_BYTES);
  writer.hexId(spanContext.spanId);
  const traceState = spanContext.traceState?.serialize();
  if (traceState) {
    writer.tag(3, WIRE_BYTES);
    writer.string(traceState);
  }
}

/** Span.Link: trace_id 1, span_id 2, trace_state 3, attributes 4, dropped_attributes_count 5, flags 6. */
function writeLink(writer: ProtoWriter, link: Link): void {
  const start = writer.begin(1);
  const linked = link.context;
  writeSpanContext(writer, linked);
  if (link.attributes) writeKeyValues(writer, link.attributes, 4);
  writer.tag(5, WIRE_VARINT);
  writer.varint(link.droppedAttributesCount ?? 0);
  writer.tag(6, WIRE_FIXED32);
  writer.fixed32(spanFlags(linked.traceFlags, linked.isRemote));
  writer.end(start, 1);
}

/** Status: message 2, code 3. */
function writeStatus(writer: ProtoWriter, status: SpanStatus): void {
  const start = writer.begin(1);
  if (status.message) {
    writer.tag(2, WIRE_BYTES);
    writer.string(status.message);
  }
  writer.tag(3, WIRE_VARINT);
  writer.varint(status.code);
  writer.end(start, 1);
}

/**
 * Span: trace_id 1, span_id 2, trace_state 3, parent_span_id 4, name 5, kind 6, start 7, end 8, attributes 9,
 * dropped_attributes_count 10, events 11, dropped_events_count 12, links 13, dropped_links_count 14,
 * status 15, flags 16.
 */
function writeSpan(writer: ProtoWriter, span: ReadableSpan): void {
  const start = writer.begin(2);
  const spanContext = span.spanContext();
  writeSpanContext(writer, spanContext);
  const parent = span.parentSpanContext;
  if (parent?.spanId) {
    writer.tag(4, WIRE_BYTES);
    writer.hexId(parent.spanId);
  }
  writer.tag(5, WIRE_BYTES);
  writer.string(span.name);
  // The API's SpanKind starts at INTERNAL = 0; the proto's at UNSPECIFIED = 0.
  const kind = span.kind == null ? 0 : span.kind + 1;
  if (kind !== 0) {
    writer.tag(6, WIRE_VARINT);
    writer.varint(kind);
  }
  writer.tag(7, WIRE_FIXED64);
  writer.time(span.startTime);
  writer.tag(8, WIRE_FIXED64);
  writer.time(span.endTime);
  writeKeyValues(writer, span.attributes, 9, spanRuns[span.kind] ?? undefined);
  writer.tag(10, WIRE_VARINT);
  writer.varint(span.droppedAttributesCount);
  for (const event of span.events) {
    writer.tag(11, WIRE_BYTES);
    writeEvent(writer, event);
  }
  writer.tag(12, WIRE_VARINT);
  writer.varint(span.droppedEventsCount);
  for (const link of span.links) {
    writer.tag(13, WIRE_BYTES);
    writeLink(writer, link);
  }
  writer.tag(14, WIRE_VARINT);
  writer.varint(span.droppedLinksCount);
  writer.tag(15, WIRE_BYTES);
  writeStatus(writer, span.status);
  writer.tag(16, WIRE_FIXED32);
  writer.fixed32(spanFlags(spanContext.traceFlags, parent?.isRemote));
  writer.end(start, 2);
}

/** InstrumentationScope: name 1, version 2, attributes 3, dropped_attributes_count 4. */
function writeScope(writer: ProtoWriter, scope: InstrumentationScope & { attributes?: Attributes; droppedAttributesCount?: number }): void {
  writer.tag(1, WIRE_BYTES);
  const start = writer.begin(1);
  writer.tag(1, WIRE_BYTES);
  writer.string(scope.name);
  if (scope.version) {
    writer.tag(2, WIRE_BYTES);
    writer.string(scope.version);
  }
  if (scope.attributes) writeKeyValues(writer, scope.attributes, 3);
  if (scope.droppedAttributesCount) {
    writer.tag(4, WIRE_VARINT);
    writer.varint(scope.droppedAttributesCount);
  }
  writer.end(start, 1);
}

/** Resource: attributes 1, dropped_attributes_count 2. */
function writeResource(writer: ProtoWriter, resource: Resource): void {
  writer.tag(1, WIRE_BYTES);
  const start = writer.begin(2);
  if (resource.attributes) writeKeyValues(writer, resource.attributes, 1);
  writer.tag(2, WIRE_VARINT);
  writer.varint(0);
  writer.end(start, 2);
}

/** What both signals' records have: the resource and scope they are grouped under. */
interface ScopedRecord {
  readonly resource: Resource;
  readonly instrumentationScope: InstrumentationScope;
}

/** Records grouped by resource, then by instrumentation scope, by identity and in order of first appearance. */
function groupRecords<T extends ScopedRecord>(records: readonly T[]): Map<Resource, Map<InstrumentationScope, T[]>> {
  const byResource = new Map<Resource, Map<InstrumentationScope, T[]>>();
  for (const record of records) {
    let byScope = byResource.get(record.resource);
    if (!byScope) byResource.set(record.resource, (byScope = new Map()));
    let group = byScope.get(record.instrumentationScope);
    if (!group) byScope.set(record.instrumentationScope, (group = []));
    group.push(record);
  }
  return byResource;
}

/**
 * Export*ServiceRequest { repeated Resource{Spans,Logs} = 1 }, where Resource{Spans,Logs} is { resource 1,
 * scope_{spans,logs} 2, schema_url 3 } and Scope{Spans,Logs} is { scope 1, {spans,log_records} 2, schema_url 3 }:
 * the two signals differ only in the record written.
 */
function encodeExportRequest<T extends ScopedRecord>(records: readonly T[], bytesPerRecord: number, writeRecord: (writer: ProtoWriter, record: T) => void): Uint8Array {
  // Growing is cheap and rare.
  const writer = new ProtoWriter(Math.max(4096, records.length * bytesPerRecord));
  for (const [resource, byScope] of groupRecords(records)) {
    writer.tag(1, WIRE_BYTES);
    // Batches are up to a few hundred KB: 3 bytes for the length.
    const resourceRecords = writer.begin(3);
    writeResource(writer, resource);
    for (const [scope, group] of byScope) {
      writer.tag(2, WIRE_BYTES);
      const scopeRecords = writer.begin(3);
      writeScope(writer, scope);
      for (const record of group) {
        writer.tag(2, WIRE_BYTES);
        writeRecord(writer, record);
      }
      if (scope.schemaUrl) {
        writer.tag(3, WIRE_BYTES);
        writer.string(scope.schemaUrl);
      }
      writer.end(scopeRecords, 3);
    }
    if (resource.schemaUrl) {
      writer.tag(3, WIRE_BYTES);
      writer.string(resource.schemaUrl);
    }
    writer.end(resourceRecords, 3);
  }
  return writer.buffer.subarray(0, writer.pos);
}

/**
 * LogRecord: time 1, severity_number 2, severity_text 3, body 5, attributes 6, dropped_attributes_count 7,
 * flags 8, trace_id 9, span_id 10, observed_time 11, event_name 12.
 */
function writeLogRecord(writer: ProtoWriter, record: ReadableLogRecord): void {
  const start = writer.begin(2);
  writer.tag(1, WIRE_FIXED64);
  writer.time(record.hrTime);
  if (record.severityNumber !== undefined && record.severityNumber !== SeverityNumber.UNSPECIFIED) {
    writer.tag(2, WIRE_VARINT);
    writer.varint(record.severityNumber);
  }
  if (record.severityText) {
    writer.tag(3, WIRE_BYTES);
    writer.string(record.severityText);
  }
  if (record.body !== undefined) {
    writer.tag(5, WIRE_BYTES);
    const body = writer.begin(1);
    writeAnyValue(writer, record.body);
    writer.end(body, 1);
  }
  if (record.attributes) writeKeyValues(writer, record.attributes, 6, logRecordRun);
  writer.tag(7, WIRE_VARINT);
  writer.varint(record.droppedAttributesCount);
  const spanContext = record.spanContext;
  if (spanContext?.traceFlags) {
    writer.tag(8, WIRE_FIXED32);
    writer.fixed32(spanContext.traceFlags);
  }
  if (spanContext?.traceId) {
    writer.tag(9, WIRE_BYTES);
    writer.hexId(spanContext.traceId);
  }
  if (spanContext?.spanId) {
    writer.tag(10, WIRE_BYTES);
    writer.hexId(spanContext.spanId);
  }
  writer.tag(11, WIRE_FIXED64);
  writer.time(record.hrTimeObserved);
  if (record.eventName) {
    writer.tag(12, WIRE_BYTES);
    writer.string(record.eventName);
  }
  writer.end(start, 2);
}

/** The OTLP/HTTP protobuf body for `spans` (ExportTraceServiceRequest); ~600 bytes per span of ours. */
export function encodeTraceExportRequest(spans: readonly ReadableSpan[]): Uint8Array {
  return encodeExportRequest(spans, 768, writeSpan);
}

/** The OTLP/HTTP protobuf body for log `records` (ExportLogsServiceRequest); ~400 bytes per access-log record. */
export function encodeLogsExportRequest(records: readonly ReadableLogRecord[]): Uint8Array {
  return encodeExportRequest(records, 512, writeLogRecord);
}
