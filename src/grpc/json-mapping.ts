import * as protobuf from 'protobufjs';
import { isWellFormedText } from '../unicode-text';

/**
 * The proto3 JSON mapping (https://protobuf.dev/programming-guides/json/) on top of protobufjs, which
 * implements only part of it: `fromObject` coerces silently (`"abc"` becomes 0 in an int32) and neither
 * direction knows the well-known types' JSON forms (Timestamp as RFC 3339, Duration as `"1.5s"`, wrappers
 * as their value, Struct as a plain object). So requests are checked field by field against the message
 * type and converted into what `fromObject` takes; responses go through `toObject` (int64 as strings, enums
 * as names, bytes as base64) and then get the well-known types' forms. Field names are lowerCamelCase.
 */

/** The client's JSON does not fit the message type (-> 400 with this message). */
export class JsonMappingError extends Error {
  override name = 'JsonMappingError';
}

/** A service's message has no JSON form (a Timestamp beyond year 9999, ...): the service's fault (-> 502). */
export class ResponseMappingError extends Error {
  override name = 'ResponseMappingError';
}

const INT32 = new Set(['int32', 'sint32', 'sfixed32']);
const UINT32 = new Set(['uint32', 'fixed32']);
const INT64 = new Set(['int64', 'sint64', 'sfixed64']);
const UINT64 = new Set(['uint64', 'fixed64']);
const FLOAT = new Set(['double', 'float']);
const WRAPPERS: Readonly<Record<string, string>> = {
  '.google.protobuf.DoubleValue': 'double',
  '.google.protobuf.FloatValue': 'float',
  '.google.protobuf.Int64Value': 'int64',
  '.google.protobuf.UInt64Value': 'uint64',
  '.google.protobuf.Int32Value': 'int32',
  '.google.protobuf.UInt32Value': 'uint32',
  '.google.protobuf.BoolValue': 'bool',
  '.google.protobuf.StringValue': 'string',
  '.google.protobuf.BytesValue': 'bytes',
};
const INT64_RANGE = { signed: [-(2n ** 63n), 2n ** 63n - 1n], unsigned: [0n, 2n ** 64n - 1n] } as const;
/** Duration limits of google/protobuf/duration.proto (about 10 000 years), s. */
const MAX_DURATION_SECONDS = 315_576_000_000n;
/** RFC 3339 as google/protobuf/timestamp.proto takes it: `T` and `Z` upper case (the conformance suite refuses `t`, `z`). */
const TIMESTAMP = /^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$/;
const DURATION = /^(-)?(\d+)(?:\.(\d{1,9}))?s$/;
/** RFC 8259's number grammar: the only text the mapping reads as a float or double. */
const JSON_NUMBER = /^-?(?:0|[1-9]\d*)(?:\.\d+)?(?:[eE][+-]?\d+)?$/;
const BASE64 = /^(?:[A-Za-z0-9+/_-]{4})*(?:[A-Za-z0-9+/_-]{2}(?:==)?|[A-Za-z0-9+/_-]{3}=?)?$/;
/** 0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z, as google/protobuf/timestamp.proto allows, s. */
const MIN_TIMESTAMP_SECONDS = -62_135_596_800;
const MAX_TIMESTAMP_SECONDS = 253_402_300_799;
/** Nesting beyond this is refused (Struct and messages are recursive). */
const MAX_DEPTH = 32;

/**
 * A JSON number whose double may not be what its text says: a fraction, an exponent, or an integer past 2^53.
 * `parseJsonBody` keeps the text beside the double, so an integer field takes the number the client wrote (its
 * digits, no double between: `9007199254740993`, `9223372036854775807`) and refuses one with a fraction the double
 * rounded away (`1.0000000000000001`), while a float or double field takes the double as JSON.parse made it.
 */
export class JsonNumberText {
  constructor(
    readonly value: number,
    readonly text: string,
  ) {}
}

/**
 * Most values a request body may hold (strings, numbers, true, false, null, objects and arrays; object keys not
 * counted). Each costs the reviver below ~0.75 µs and the message built from it ~0.4 µs, all on the event loop: a
 * 1 MiB body of 500,000 zeros held it 0.7-0.8 s, every other request behind it. 100,000 keep a body's work near a
 * tenth of a second and take a 1 MiB body of ordinary objects (~10 values per 100 bytes).
 */
export const MAX_JSON_BODY_VALUES = 100_000;

/**
 * Deepest nesting of a request body (parsing 500,000 levels first took 0.3 s): the deepest the mapping takes, messages
 * MAX_DEPTH deep each reached through a list or map (two levels each), under the root object and over a last list.
 */
const MAX_BODY_NESTING = 2 * MAX_DEPTH + 2;

/** A request body over MAX_JSON_BODY_VALUES (-> 413). */
export class JsonBodyTooLargeError extends Error {
  override name = 'JsonBodyTooLargeError';
}

/**
 * A request body's JSON: JSON.parse, with each number that is not a safe integer written as digits kept as a
 * JsonNumberText (the reviver's `context.source`, Node 21+). Every other value is JSON.parse's own. The text is read
 * once first (bodyShape): a body of too many values or too deep is refused before it is parsed, and one whose numbers
 * are all integers of at most 15 digits, which JSON.parse reads exactly, is parsed without the reviver (~50 times
 * faster), to the same values.
 */
export function parseJsonBody(text: string): unknown {
  if (!bodyShape(text).numbersNeedText) return JSON.parse(text);
  return JSON.parse(text, (_key: string, value: unknown, context?: { source?: string }) => {
    if (typeof value !== 'number' || context?.source === undefined) return value;
    const source = context.source;
    return Number.isSafeInteger(value) && !/[.eE]/.test(source) ? value : new JsonNumberText(value, source);
  });
}

/**
 * One linear pass over a body's text, valid JSON or not (JSON.parse judges that after): throws past
 * MAX_JSON_BODY_VALUES values (JsonBodyTooLargeError) or MAX_BODY_NESTING levels (JsonMappingError), and says
 * whether a number token has a fraction, an exponent or more than 15 digits (its double may not be its text).
 */
function bodyShape(text: string): { numbersNeedText: boolean } {
  let values = 0;
  let numbersNeedText = false;
  /** Per open container, whether it is an object; and whether the next string there is a key. */
  const objects: boolean[] = [];
  let expectingKey = false;
  for (let at = 0; at < text.length; at++) {
    const char = text.charCodeAt(at);
    if (char === 34 /* " */) {
      for (at++; at < text.length && text.charCodeAt(at) !== 34; at++) if (text.charCodeAt(at) === 92 /* \ */) at++;
      if (expectingKey) {
        expectingKey = false;
        continue;
      }
      values++;
    } else if (char === 123 /* { */ || char === 91 /* [ */) {
      values++;
      objects.push(char === 123);
      expectingKey = char === 123;
      if (objects.length > MAX_BODY_NESTING) throw new JsonMappingError(`The request body nests deeper than ${MAX_BODY_NESTING} levels.`);
    } else if (char === 125 /* } */ || char === 93 /* ] */) {
      objects.pop();
      expectingKey = false;
    } else if (char === 44 /* , */) {
      expectingKey = objects.at(-1) === true;
    } else if (char === 45 /* - */ || (char >= 48 && char <= 57)) {
      let digits = 0;
      for (; at < text.length; at++) {
        const next = text.charCodeAt(at);
        if (next >= 48 && next <= 57) digits++;
        else if (next === 46 /* . */ || next === 101 /* e */ || next === 69 /* E */ || next === 43 /* + */) numbersNeedText = true;
        else if (next !== 45) break;
      }
      at--;
      if (digits > 15) numbersNeedText = true;
      values++;
    } else if (char >= 97 && char <= 122 /* true, false, null */) {
      while (at + 1 < text.length && text.charCodeAt(at + 1) >= 97 && text.charCodeAt(at + 1) <= 122) at++;
      values++;
    }
    if (values > MAX_JSON_BODY_VALUES) throw new JsonBodyTooLargeError(`The request body holds more than ${MAX_JSON_BODY_VALUES} JSON values.`);
  }
  return { numbersNeedText };
}

const TO_OBJECT: protobuf.IConversionOptions = { longs: String, enums: String, bytes: String, defaults: true, arrays: true, objects: true, json: true };

/** A message, checked and converted from its JSON form. */
export function messageFromJson(type: protobuf.Type, json: unknown): protobuf.Message {
  return type.fromObject(objectFromJson(type, json, type.name, 0));
}

/**
 * Most fields one answer may be written with (every field of every message in it, unset ones too, and each item of a
 * list or map, scalars and enums too). Unset fields cost nothing on the wire and are written all the same: a 4 MiB answer of 2 million empty items of a 25-field
 * message is 366 MB of JSON, and converting it held the event loop, every other request with it, for 6 s.
 * 2 Mi fields convert in about a third of a second, about what decoding the largest answer takes.
 */
export const MAX_JSON_ANSWER_FIELDS = 2 * 1024 * 1024;

/**
 * What each message of an answer counts beside its fields: writing one (an object, its fields looked up and copied)
 * costs about as much as 16-24 scalar fields. Counted as one field each, messages were the cheap way past the budget:
 * 200,000 `Owner {id}` items (1 MB) counted 600,000 fields and took 0.7-0.9 s to convert, and a Struct of 190,000
 * entries (each a Value message) held the event loop 1-2 s (Node 24, a 2-core VM, 2026-12-07: converted alone, 2 M
 * int64 items 0.4-0.6 s, 100,000 two-field messages about 0.4 s, a 50,000-entry Struct 0.2 s). Weighted, both are
 * refused, and the largest answers still written (100,000 such messages, a Struct of about 110,000 entries) cost
 * what 2 Mi scalars do.
 */
const JSON_MESSAGE_WEIGHT = 16;

/** A decoded message in its JSON form (unset scalars as their defaults, unset messages as null). */
export function messageToJson(type: protobuf.Type, message: protobuf.Message): unknown {
  if (jsonFieldCount(type, message, MAX_JSON_ANSWER_FIELDS) > MAX_JSON_ANSWER_FIELDS) {
    throw new ResponseMappingError(`a message that would be written as more than ${MAX_JSON_ANSWER_FIELDS} JSON fields`);
  }
  return toJsonValue(type, type.toObject(message, TO_OBJECT), 0);
}

/**
 * How many fields the JSON form of a decoded message has (toObject writes every field outside a oneof, set or
 * not, and the set member of each oneof), counting no further once past `budget`. It visits only what is set
 * (a decoded message's own properties: unset fields are its prototype's defaults), so the count costs steps in
 * proportion to the bytes received, however wide the message types.
 */
function jsonFieldCount(type: protobuf.Type, message: protobuf.Message, budget: number): number {
  let count = 0;
  const pending: [protobuf.Type, protobuf.Message][] = [[type, message]];
  while (pending.length > 0 && count <= budget) {
    const [current, node] = pending.pop()!;
    count += JSON_MESSAGE_WEIGHT + writtenUnset(current);
    // An Any's message is written too (anyToJson): counted as it will be, from its bytes.
    if (current.fullName === ANY) {
      const packed = packedMessage(current, node as unknown as PackedAny);
      if (packed) pending.push(packed);
      continue;
    }
    for (const name of Object.keys(node)) {
      const field = Object.hasOwn(current.fields, name) ? current.fields[name]! : undefined;
      if (!field) continue;
      if (field.partOf) count++;
      const resolved = field.resolvedType;
      const value = (node as unknown as Record<string, unknown>)[name];
      // Each item of a list or map is written, scalars and enums too: 4 MiB of packed enum zeros were 4 million
      // names (84 MB of JSON, a second of the event loop) that counted nothing.
      const items = field instanceof protobuf.MapField ? Object.values(value as object) : field.repeated ? (value as unknown[]) : undefined;
      count += items?.length ?? 0;
      if (!(resolved instanceof protobuf.Type)) continue;
      if (items === undefined) {
        count++;
        if (value) pending.push([resolved, value as protobuf.Message]);
      } else for (const item of items) if (item) pending.push([resolved, item as protobuf.Message]);
    }
  }
  return count;
}

const fieldsOutsideOneofs = new WeakMap<protobuf.Type, number>();

/** The fields of `type` its JSON form has even when unset: those outside any oneof. */
function writtenUnset(type: protobuf.Type): number {
  let count = fieldsOutsideOneofs.get(type);
  if (count === undefined) {
    count = type.fieldsArray.filter((field) => !field.partOf).length;
    fieldsOutsideOneofs.set(type, count);
  }
  return count;
}

/** The JSON form of a scalar from text (a path variable or query parameter): booleans parsed, the rest as JSON strings. */
export function jsonFromText(field: protobuf.Field, text: string, where: string): unknown {
  const scalar = field.resolvedType instanceof protobuf.Type ? WRAPPERS[field.resolvedType.fullName] : field.type;
  if (scalar === 'bool') {
    if (text === 'true' || text === 'false') return text === 'true';
    throw new JsonMappingError(`${where} must be true or false`);
  }
  if (field.resolvedType instanceof protobuf.Type && !isTextSettable(field.resolvedType)) {
    throw new JsonMappingError(`${where} is a message and cannot be set from text`);
  }
  // An enum by number (`?color=2`), as a body may give it: text has no numbers, so digits are the number's form.
  if (field.resolvedType instanceof protobuf.Enum && /^-?\d{1,10}$/.test(text)) return Number(text);
  return text;
}

/** Message types whose JSON form is a string or scalar, so a path variable or query parameter can set them. */
export function isTextSettable(type: protobuf.Type): boolean {
  return WRAPPERS[type.fullName] !== undefined || TEXT_TYPES.has(type.fullName);
}
const TEXT_TYPES = new Set(['.google.protobuf.Timestamp', '.google.protobuf.Duration', '.google.protobuf.FieldMask']);

function objectFromJson(type: protobuf.Type, json: unknown, where: string, depth: number): Record<string, unknown> {
  if (depth > MAX_DEPTH) throw new JsonMappingError(`${where} is nested too deeply`);
  const special = wellKnownFromJson(type, json, where, depth);
  if (special !== undefined) return special;
  if (!isPlainObject(json)) throw new JsonMappingError(`${where} must be an object`);
  const result: Record<string, unknown> = {};
  const seen = new Set<string>();
  for (const [key, value] of Object.entries(json)) {
    const field = fieldNamed(type, key);
    if (!field) throw new JsonMappingError(`${where} has no field "${truncate(key)}"`);
    // `display_name` and `displayName` are one field: the later would silently win, over a path variable too.
    if (seen.has(field.name)) throw new JsonMappingError(`${where}.${field.name} is set twice`);
    seen.add(field.name);
    // null is the field's default, but for a single google.protobuf.Value, where it is the NULL_VALUE it names.
    if (value === null && !(isValueType(field) && !field.repeated && !(field instanceof protobuf.MapField))) continue;
    result[field.name] = fieldFromJson(field, value, `${where}.${field.name}`, depth);
  }
  // Two members of one oneof would both go on the wire and the service would take whichever it read last.
  for (const oneof of type.oneofsArray) {
    const set = oneof.oneof.filter((name) => result[name] !== undefined);
    if (set.length > 1) throw new JsonMappingError(`${where} sets ${set.join(' and ')}, which are one oneof (${oneof.name})`);
  }
  return result;
}

/**
 * The first key that one object of a JSON text names twice (after unescaping: `"a"` and `"\u0061"` are one
 * key), or undefined. JSON.parse keeps the last silently; a field named twice is refused instead, as its two
 * spellings (`display_name`, `displayName`) are. `text` must already be valid JSON (JSON.parse accepted it):
 * only strings and the structure are tracked.
 */
export function duplicateJsonKey(text: string): string | undefined {
  /** Per open container: its keys (objects), and whether the next string is a key. */
  const open: { keys: Set<string> | undefined; expectingKey: boolean }[] = [];
  for (let i = 0; i < text.length; i++) {
    const char = text.charCodeAt(i);
    if (char === 34 /* " */) {
      const start = i;
      for (i++; text.charCodeAt(i) !== 34; i++) if (text.charCodeAt(i) === 92 /* \ */) i++;
      const top = open.at(-1);
      if (top?.keys && top.expectingKey) {
        const key = JSON.parse(text.slice(start, i + 1)) as string;
        if (top.keys.has(key)) return key;
        top.keys.add(key);
        top.expectingKey = false;
      }
    } else if (char === 123 /* { */) open.push({ keys: new Set(), expectingKey: true });
    else if (char === 91 /* [ */) open.push({ keys: undefined, expectingKey: false });
    else if (char === 125 /* } */ || char === 93 /* ] */) open.pop();
    else if (char === 44 /* , */) {
      const top = open.at(-1);
      if (top?.keys) top.expectingKey = true;
    }
  }
  return undefined;
}

/**
 * The field of `type` that `name` names in JSON, a query parameter or a path template: its JSON name (protoc's
 * lowerCamelCase, or the proto's `json_name`), its name in the proto, or protobufjs's own camelCase of it (the
 * gateway's inner name, which differs from protoc's for `foo_1bar` or `field__x`), in that order, as protoc's
 * parsers look names up. Never an inherited property such as `constructor`.
 */
export function fieldNamed(type: protobuf.Type, name: string): protobuf.Field | undefined {
  let names = fieldsByName.get(type);
  if (!names) {
    names = new Map();
    for (const field of type.fieldsArray) if (!names.has(field.name)) names.set(field.name, field);
    for (const field of type.fieldsArray) names.set(field.protoName, field);
    for (const field of type.fieldsArray) names.set(field.jsonName, field);
    fieldsByName.set(type, names);
  }
  return names.get(name);
}
const fieldsByName = new WeakMap<protobuf.Type, Map<string, protobuf.Field>>();

function fieldFromJson(field: protobuf.Field, value: unknown, where: string, depth: number): unknown {
  if (field instanceof protobuf.MapField) {
    if (!isPlainObject(value)) throw new JsonMappingError(`${where} must be an object`);
    // Any string is a map key, "__proto__" too: fromEntries makes each an own property, where `entries[key] =`
    // on a plain object would set that one's prototype and drop the entry without a word.
    const entries = Object.entries(value).map(([key, item]): [string, unknown] => {
      wellFormed(key, `${where} key`);
      const checked = field.keyType === 'string' ? key : scalarFromJson(field.keyType, field.keyType === 'bool' ? key === 'true' || (key === 'false' ? false : key) : key, `${where} key`);
      // An integer key in its one decimal spelling: protobufjs reads an 8-character 64-bit key that is not one
      // (`01234567`) as a binary hash, another number, and `1` and `01` would go as two entries for one key. The
      // checked value, not the key's text: a key the mapping reads as an integer (`1e5`) is no BigInt literal.
      const canonical = field.keyType === 'string' || field.keyType === 'bool' ? key : String(checked);
      return [canonical, singleFromJson(field, item, `${where}.${truncate(key)}`, depth)];
    });
    const keys = new Set(entries.map(([key]) => key));
    if (keys.size !== entries.length) throw new JsonMappingError(`${where} names one key twice`);
    return Object.fromEntries(entries);
  }
  if (field.repeated) {
    if (!Array.isArray(value)) throw new JsonMappingError(`${where} must be an array`);
    return value.map((item, index) => singleFromJson(field, item, `${where}[${index}]`, depth));
  }
  return singleFromJson(field, value, where, depth);
}

function singleFromJson(field: protobuf.Field, value: unknown, where: string, depth: number): unknown {
  const resolved = field.resolvedType;
  if (resolved instanceof protobuf.Type) return objectFromJson(resolved, value, where, depth + 1);
  if (resolved instanceof protobuf.Enum) {
    if (typeof value === 'string' && Object.hasOwn(resolved.values, value)) return value;
    // Proto3 enums are open: a number the proto does not name is kept and sent on (the conformance suite's
    // EnumFieldUnknownValue), as answers with one are written as that number.
    const number = value instanceof JsonNumberText ? integerOfText(value.text) : value;
    if (typeof number === 'number' && Number.isInteger(number) && number >= -(2 ** 31) && number < 2 ** 31) return number;
    throw new JsonMappingError(`${where} must be one of ${Object.keys(resolved.values).join(', ')}`);
  }
  return scalarFromJson(field.type, value, where);
}

function scalarFromJson(type: string, value: unknown, where: string): unknown {
  if (type === 'string') {
    if (typeof value !== 'string') throw new JsonMappingError(`${where} must be a string`);
    return wellFormed(value, where);
  }
  if (type === 'bool') {
    if (typeof value !== 'boolean') throw new JsonMappingError(`${where} must be true or false`);
    return value;
  }
  if (type === 'bytes') {
    if (typeof value !== 'string' || !BASE64.test(value)) throw new JsonMappingError(`${where} must be base64`);
    return Buffer.from(value, 'base64');
  }
  if (FLOAT.has(type)) {
    if (value === 'NaN' || value === 'Infinity' || value === '-Infinity') return Number(value);
    // A JSON number, bare or quoted: Number() alone would also read " 1", "0x10", "0b101" and "0o7".
    const number = typeof value === 'string' && JSON_NUMBER.test(value) ? Number(value) : value instanceof JsonNumberText ? value.value : value;
    if (typeof number !== 'number' || !Number.isFinite(number)) throw new JsonMappingError(`${where} must be a number`);
    // Past about 3.4e38 protobufjs would write a float as Infinity, a value the client never sent.
    if (type === 'float' && !Number.isFinite(Math.fround(number))) throw new JsonMappingError(`${where} is out of range for float`);
    return number;
  }
  const signed = INT32.has(type) || INT64.has(type);
  const wide = INT64.has(type) || UINT64.has(type);
  if (!signed && !wide && !UINT32.has(type)) throw new JsonMappingError(`${where} has an unsupported type ${type}`);
  let integer: bigint | undefined;
  if (typeof value === 'number' && Number.isSafeInteger(value)) integer = BigInt(value);
  // A bare number as written: past 2^53 (`9223372036854775807` is exact as digits, not as a double) or with a
  // fraction or exponent (`1e5` is an integer; `1.0000000000000001` is not, though its double is 1).
  else if (value instanceof JsonNumberText) integer = exactInteger(value.text);
  else if (typeof value === 'string' && /^-?\d{1,20}$/.test(value)) integer = BigInt(value);
  // A quoted JSON number with an exponent or a fraction that is still a whole number (`"1e5"`, `"2.50e1"`): the
  // mapping takes exponents (the conformance suite's Int32FieldQuotedExponentialValue), and this was refused.
  else if (typeof value === 'string' && JSON_NUMBER.test(value)) integer = exactInteger(value);
  if (integer === undefined) throw new JsonMappingError(`${where} must be an integer (a string for 64-bit values)`);
  const [min, max] = wide ? INT64_RANGE[signed ? 'signed' : 'unsigned'] : signed ? [-(2n ** 31n), 2n ** 31n - 1n] : [0n, 2n ** 32n - 1n];
  if (integer < min || integer > max) throw new JsonMappingError(`${where} is out of range for ${type}`);
  // 64-bit values stay strings so no digit is lost (protobufjs reads them with Long.fromString).
  return wide ? integer.toString() : Number(integer);
}

/**
 * The integer a JSON number's text names exactly (`1e5`, `-2.50e1`), computed on its digits (no float between), or
 * undefined when it has a fraction left or an exponent past any 64-bit value.
 */
/** exactInteger as a number, where it is a safe one (an enum's number), else undefined. */
function integerOfText(text: string): number | undefined {
  const integer = exactInteger(text);
  return integer !== undefined && integer >= BigInt(Number.MIN_SAFE_INTEGER) && integer <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(integer) : undefined;
}

function exactInteger(text: string): bigint | undefined {
  const [, sign, whole, fraction = '', exponentText = '0'] = /^(-?)(\d+)(?:\.(\d+))?(?:[eE]([+-]?\d+))?$/.exec(text)!;
  const exponent = Number(exponentText) - fraction.length;
  if (!(Math.abs(exponent) <= 40)) return undefined;
  const digits = BigInt(whole! + fraction);
  const scale = 10n ** BigInt(Math.abs(exponent));
  if (exponent < 0 && digits % scale !== 0n) return undefined;
  const magnitude = exponent < 0 ? digits / scale : digits * scale;
  return sign === '-' ? -magnitude : magnitude;
}

/** The `fromObject` form of a well-known type from its JSON form, or undefined for any other type. */
function wellKnownFromJson(type: protobuf.Type, json: unknown, where: string, depth: number): Record<string, unknown> | undefined {
  const name = type.fullName;
  const wrapped = WRAPPERS[name];
  if (wrapped !== undefined) return { value: scalarFromJson(wrapped, json, where) };
  switch (name) {
    case '.google.protobuf.Timestamp':
      return timestampFromJson(json, where);
    case '.google.protobuf.Duration':
      return durationFromJson(json, where);
    case '.google.protobuf.FieldMask':
      if (typeof json !== 'string') throw new JsonMappingError(`${where} must be a comma-separated string`);
      wellFormed(json, where);
      return { paths: json === '' ? [] : json.split(',').map((path) => path.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`)) };
    case '.google.protobuf.Struct':
      if (!isPlainObject(json)) throw new JsonMappingError(`${where} must be an object`);
      return { fields: fieldsFromJson(json, where, depth) };
    case '.google.protobuf.ListValue':
      if (!Array.isArray(json)) throw new JsonMappingError(`${where} must be an array`);
      return { values: json.map((item, index) => valueFromJson(item, `${where}[${index}]`, depth + 1)) };
    case '.google.protobuf.Value':
      return valueFromJson(json, where, depth);
    case '.google.protobuf.Any':
      throw new JsonMappingError(`${where}: google.protobuf.Any is not supported`);
    default:
      return undefined;
  }
}

function valueFromJson(json: unknown, where: string, depth: number): Record<string, unknown> {
  if (depth > MAX_DEPTH) throw new JsonMappingError(`${where} is nested too deeply`);
  if (json === null) return { nullValue: 'NULL_VALUE' };
  const number = json instanceof JsonNumberText ? json.value : json;
  // A number past a double's range (`1e400`) is Infinity to JSON.parse, which a Value has no JSON form for.
  if (typeof number === 'number') {
    if (!Number.isFinite(number)) throw new JsonMappingError(`${where} is a number out of range for a double`);
    return { numberValue: number };
  }
  if (typeof json === 'string') return { stringValue: wellFormed(json, where) };
  if (typeof json === 'boolean') return { boolValue: json };
  if (Array.isArray(json)) return { listValue: { values: json.map((item, index) => valueFromJson(item, `${where}[${index}]`, depth + 1)) } };
  if (isPlainObject(json)) return { structValue: { fields: fieldsFromJson(json, where, depth) } };
  throw new JsonMappingError(`${where} is not a JSON value`);
}

/** A Struct's `fields` from a JSON object: its keys are proto3 strings too. */
function fieldsFromJson(json: Record<string, unknown>, where: string, depth: number): Record<string, unknown> {
  return Object.fromEntries(Object.entries(json).map(([key, item]) => [wellFormed(key, `${where} key`), valueFromJson(item, `${where}.${truncate(key)}`, depth + 1)]));
}

/**
 * `text`, if it is Unicode text. A JSON escape can name half of a UTF-16 surrogate pair alone (`"\ud800"`), which
 * protobufjs would encode as bytes that are not UTF-8 (ED A0 80): proto3 strings must be UTF-8, so the service
 * could not even decode the request, and the client would get a 502 blaming it.
 */
function wellFormed(text: string, where: string): string {
  if (!isWellFormedText(text)) throw new JsonMappingError(`${where} holds a lone UTF-16 surrogate (not Unicode text)`);
  return text;
}

function timestampFromJson(json: unknown, where: string): Record<string, unknown> {
  const match = typeof json === 'string' ? TIMESTAMP.exec(json) : null;
  if (!match) throw new JsonMappingError(`${where} must be an RFC 3339 timestamp like 2026-01-31T12:00:00Z`);
  const [, year, month, day, hour, minute, second, fraction = '', zone] = match as unknown as string[];
  // Not Date.UTC: it reads years 0-99 as 1900-1999.
  const check = new Date(0);
  check.setUTCFullYear(Number(year), Number(month) - 1, Number(day));
  check.setUTCHours(Number(hour), Number(minute), Number(second), 0);
  const millis = check.getTime();
  // RFC 3339 5.6: time-numoffset is 00-23 hours and 00-59 minutes (`+99:99` is no offset at all).
  const badOffset = zone!.length === 6 && (Number(zone!.slice(1, 3)) > 23 || Number(zone!.slice(4, 6)) > 59);
  if (Number.isNaN(millis) || badOffset || check.getUTCDate() !== Number(day) || check.getUTCMonth() !== Number(month) - 1 || Number(hour) > 23 || Number(minute) > 59 || Number(second) > 59) {
    throw new JsonMappingError(`${where} is not a valid date and time`);
  }
  const offsetMinutes = zone!.toUpperCase() === 'Z' ? 0 : (zone!.startsWith('-') ? -1 : 1) * (Number(zone!.slice(1, 3)) * 60 + Number(zone!.slice(4, 6)));
  const seconds = Math.floor(millis / 1000) - offsetMinutes * 60;
  if (seconds < MIN_TIMESTAMP_SECONDS || seconds > MAX_TIMESTAMP_SECONDS) throw new JsonMappingError(`${where} is out of range`);
  return { seconds: String(seconds), nanos: Number(fraction.padEnd(9, '0')) };
}

function durationFromJson(json: unknown, where: string): Record<string, unknown> {
  const match = typeof json === 'string' ? DURATION.exec(json) : null;
  if (!match) throw new JsonMappingError(`${where} must be a duration like "1.5s"`);
  const [, minus, whole, fraction = ''] = match as unknown as string[];
  const seconds = BigInt(whole!);
  if (seconds > MAX_DURATION_SECONDS) throw new JsonMappingError(`${where} is out of range`);
  const sign = minus ? -1 : 1;
  const nanos = Number(fraction.padEnd(9, '0'));
  return { seconds: String(BigInt(sign) * seconds), nanos: sign * nanos };
}

/** `toObject`'s plain form of `type`, with the well-known types in their JSON form and each field under its JSON name. */
function toJsonValue(type: protobuf.Type, object: Record<string, unknown>, depth: number): unknown {
  const special = wellKnownToJson(type, object, depth);
  if (special !== NOT_SPECIAL) return special;
  const json: Record<string, unknown> = {};
  for (const field of type.fieldsArray) {
    if (!Object.hasOwn(object, field.name)) continue;
    const resolved = field.resolvedType;
    const value = object[field.name];
    // toObject keys fields by protobufjs's camelCase; the JSON mapping writes the JSON name (`json_name`, `foo1bar`).
    if (!(resolved instanceof protobuf.Type) || value === null || value === undefined) {
      json[field.jsonName] = value;
      continue;
    }
    const convert = (item: unknown) => toJsonValue(resolved, item as Record<string, unknown>, depth + 1);
    if (field instanceof protobuf.MapField) json[field.jsonName] = Object.fromEntries(Object.entries(value as object).map(([key, item]) => [key, convert(item)]));
    else if (field.repeated) json[field.jsonName] = (value as unknown[]).map(convert);
    else json[field.jsonName] = convert(value);
  }
  return json;
}

const NOT_SPECIAL = Symbol('not a well-known type');

function wellKnownToJson(type: protobuf.Type, object: Record<string, unknown>, depth: number): unknown {
  if (WRAPPERS[type.fullName] !== undefined) return object.value;
  switch (type.fullName) {
    case '.google.protobuf.Timestamp': {
      const seconds = Number(object.seconds ?? 0);
      const nanos = Number(object.nanos ?? 0);
      // RFC 3339 has no other years; past them toISOString writes `+010000-...` or throws (Invalid time value).
      if (!(seconds >= MIN_TIMESTAMP_SECONDS && seconds <= MAX_TIMESTAMP_SECONDS) || !(nanos >= 0 && nanos <= 999_999_999)) {
        throw new ResponseMappingError(`a Timestamp out of range (${truncate(String(object.seconds))} s)`);
      }
      const iso = new Date(seconds * 1000).toISOString().replace(/\.\d{3}Z$/, '');
      return `${iso}${fractionText(nanos)}Z`;
    }
    case '.google.protobuf.Duration': {
      const seconds = BigInt(String(object.seconds ?? '0'));
      const nanos = Number(object.nanos ?? 0);
      // duration.proto: at most 315,576,000,000 s either way, nanos within a second and of the seconds' sign. Out of
      // it, `{1 s, -0.5 s}` went out as "-1.500s" and 1.5e9 nanos as "1.150s".
      const signsAgree = seconds === 0n || nanos === 0 || seconds < 0n === nanos < 0;
      if (seconds > MAX_DURATION_SECONDS || seconds < -MAX_DURATION_SECONDS || !(Math.abs(nanos) <= 999_999_999) || !signsAgree) {
        throw new ResponseMappingError(`a Duration out of range (${truncate(String(object.seconds))} s, ${truncate(String(object.nanos))} ns)`);
      }
      const negative = seconds < 0n || nanos < 0;
      const whole = seconds < 0n ? -seconds : seconds;
      return `${negative ? '-' : ''}${whole}${fractionText(Math.abs(nanos))}s`;
    }
    case '.google.protobuf.FieldMask':
      return ((object.paths as string[] | undefined) ?? []).map((path) => protobuf.util.camelCase(path)).join(',');
    case '.google.protobuf.Struct':
      return structToJson(object);
    case '.google.protobuf.ListValue':
      return ((object.values as Record<string, unknown>[] | undefined) ?? []).map((item) => valueToJson(item, depth + 1));
    case '.google.protobuf.Value':
      return valueToJson(object, depth);
    case '.google.protobuf.Empty':
      return {};
    case ANY:
      return anyToJson(type, object, depth);
    default:
      return NOT_SPECIAL;
  }
}

const ANY = '.google.protobuf.Any';

/** Well-known types whose JSON form is not an object of their fields: inside an Any it goes under `value`. */
const OWN_JSON_FORM = new Set([...Object.keys(WRAPPERS), ...TEXT_TYPES, '.google.protobuf.Struct', '.google.protobuf.Value', '.google.protobuf.ListValue', '.google.protobuf.Empty', ANY]);

/**
 * An Any as the JSON mapping writes it: `{"@type": url, ...the message's fields}`, or `{"@type": url, "value": ...}`
 * for a well-known type with a JSON form of its own. toObject has already decoded the message when it knew the type
 * and had bytes (it gives `@type` and the message's fields, protobufjs-named); a type the gateway's protos do not
 * define has no JSON form here (502): the client must not get `{}` or raw bytes for data the service sent.
 */
function anyToJson(type: protobuf.Type, object: Record<string, unknown>, depth: number): unknown {
  const { '@type': decodedUrl, ...fields } = object;
  const url = typeof decodedUrl === 'string' ? decodedUrl : (anyTypeUrl(object as PackedAny) ?? '');
  if (url === '') return {};
  const packed = packedType(type, url);
  if (!packed) throw new ResponseMappingError(`an Any of a type the gateway does not know (${truncate(url)})`);
  // An Any of a message with every field unset carries no bytes, and toObject leaves it undecoded.
  const plain = typeof decodedUrl === 'string' ? fields : packed.toObject(packed.create(), TO_OBJECT);
  const json = toJsonValue(packed, plain, depth + 1);
  return OWN_JSON_FORM.has(packed.fullName) ? { '@type': url, value: json } : { '@type': url, ...(json as Record<string, unknown>) };
}

/** The message type an Any's type URL names (`type.googleapis.com/pkg.Message`), if the gateway's protos define it. */
function packedType(any: protobuf.Type, url: string): protobuf.Type | undefined {
  const found = any.root.lookup(url.slice(url.lastIndexOf('/') + 1));
  return found instanceof protobuf.Type ? found : undefined;
}

/** An Any, decoded or as toObject leaves it: protobufjs's built-in Any keeps the proto name `type_url`. */
interface PackedAny {
  type_url?: string;
  typeUrl?: string;
  value?: Uint8Array | string;
}

function anyTypeUrl(any: PackedAny): string | undefined {
  return any.type_url || any.typeUrl || undefined;
}

/** A decoded Any's message, decoded, with its type (undefined when it is empty or its type unknown: anyToJson decides). */
function packedMessage(any: protobuf.Type, node: PackedAny): [protobuf.Type, protobuf.Message] | undefined {
  const url = anyTypeUrl(node);
  const packed = url ? packedType(any, url) : undefined;
  if (!packed) return undefined;
  try {
    return [packed, packed.decode(typeof node.value === 'object' ? node.value : new Uint8Array())];
  } catch (error) {
    throw new ResponseMappingError(`an Any whose ${truncate(url!)} message does not decode (${(error as Error).message})`);
  }
}

function structToJson(object: Record<string, unknown>, depth = 0): Record<string, unknown> {
  const fields = (object.fields as Record<string, Record<string, unknown>> | undefined) ?? {};
  return Object.fromEntries(Object.entries(fields).map(([key, item]) => [key, valueToJson(item, depth + 1)]));
}

function valueToJson(value: Record<string, unknown> | null, depth: number): unknown {
  if (value === null) return null;
  // Refused rather than cut to null: the client would take data the service never sent for its answer.
  if (depth > MAX_DEPTH) throw new ResponseMappingError(`a Struct nested more than ${MAX_DEPTH} levels deep`);
  // Members of a oneof get no defaults from toObject: the one present is the one set.
  if (value.structValue !== undefined) return structToJson(value.structValue as Record<string, unknown>, depth);
  if (value.listValue !== undefined) return ((value.listValue as { values?: Record<string, unknown>[] }).values ?? []).map((item) => valueToJson(item, depth + 1));
  if (value.stringValue !== undefined) return value.stringValue;
  if (value.boolValue !== undefined) return value.boolValue;
  if (value.numberValue !== undefined) {
    // struct.proto: NaN and the infinities have no JSON form; toObject gave them as the strings "NaN", "Infinity",
    // which the client would read as string values the service never sent.
    if (typeof value.numberValue !== 'number' || !Number.isFinite(value.numberValue)) throw new ResponseMappingError(`a Value number that is not finite (${truncate(String(value.numberValue))})`);
    return value.numberValue;
  }
  return null;
}

/** 0, 3, 6 or 9 fractional digits, as the JSON mapping prefers. */
function fractionText(nanos: number): string {
  if (nanos === 0) return '';
  const digits = String(nanos).padStart(9, '0');
  return `.${nanos % 1_000_000 === 0 ? digits.slice(0, 3) : nanos % 1000 === 0 ? digits.slice(0, 6) : digits}`;
}

function isValueType(field: protobuf.Field): boolean {
  return field.resolvedType?.fullName === '.google.protobuf.Value';
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value) && !(value instanceof JsonNumberText);
}

function truncate(text: string): string {
  return text.length > 64 ? `${text.slice(0, 61)}...` : text;
}
