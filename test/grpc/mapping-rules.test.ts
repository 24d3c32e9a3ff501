import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import fc from 'fast-check';
import { parseConfig } from '../../src/config';
import { buildRequestMessage, loadGrpcServiceMapping, parseQuery } from '../../src/grpc/http-rules';
import { compileGrpcRoutes } from '../../src/grpc/route-mappings';
import { shippedConfigFile, TEST_JWT_SECRET } from '../helpers/test-config';
import protobuf from 'protobufjs';
import { JsonBodyTooLargeError, JsonMappingError, JsonNumberText, MAX_JSON_ANSWER_FIELDS, MAX_JSON_BODY_VALUES, messageFromJson, messageToJson, parseJsonBody, ResponseMappingError } from '../../src/grpc/json-mapping';
import { matchPathTemplate, MAX_PATH_VARIABLE_LENGTH, parsePathTemplate, PathVariableError } from '../../src/grpc/path-template';
import { MAPPING_PROTO, MAPPING_SERVICE } from './mapping-server';

/** Rules of the REST <-> gRPC mapping that must hold for every input, checked over generated ones. */
const RUNS = { seed: 15, numRuns: 300 };
const mapping = loadGrpcServiceMapping(MAPPING_PROTO, MAPPING_SERVICE);
const everything = mapping.bindings.find((binding) => binding.method.name === 'Echo')!.method.requestType;
const roundTrip = (json: Record<string, unknown>) => messageToJson(everything, everything.decode(everything.encode(messageFromJson(everything, json)).finish())) as Record<string, unknown>;

// Which method a path goes to when several templates fit it: the reference matcher's (grpc-httpjson-transcoding, in
// Envoy), segment by segment from the left, a literal before `*` before `**`. Sorted by literal counts, `/v1/x/y` went
// to `{name=**}` and, at equal counts, the proto's order decided.
/** A proto3 file of `lines` in a directory of its own (package `name`, google/api/annotations.proto imported): its path. */
function protoFile(name: string, lines: readonly string[]): string {
  const file = path.join(mkdtempSync(path.join(os.tmpdir(), `${name}-`)), `${name}.proto`);
  writeFileSync(file, ['syntax = "proto3";', `package ${name};`, 'import "google/api/annotations.proto";', ...lines, ''].join('\n'));
  return file;
}

describe('templates that compete for a path', () => {
  const competing = (templates: string[]) => {
    const rpcs = templates.map((template, index) => `  rpc M${index}(Fields) returns (google.protobuf.Empty) { option (google.api.http) = { get: "${template}" }; }`);
    const fields = 'message Fields { string name = 1; string a = 2; string b = 3; string p = 4; string id = 5; string rest = 6; }';
    return loadGrpcServiceMapping(protoFile('competing', ['import "google/protobuf/empty.proto";', fields, 'service Competing {', ...rpcs, '}']), 'competing.Competing');
  };
  it.each([
    { templates: ['/v1/{name=**}', '/v1/{a}/{b}'], path: '/v1/x/y', chosen: '/v1/{a}/{b}' },
    { templates: ['/v1/{p=files/**}', '/v1/files/{id}'], path: '/v1/files/abc', chosen: '/v1/files/{id}' },
    { templates: ['/v1/{id}/x', '/v1/things/{id}'], path: '/v1/things/x', chosen: '/v1/things/{id}' },
    { templates: ['/v1/files/{rest=**}', '/v1/files'], path: '/v1/files', chosen: '/v1/files' },
    { templates: ['/v1/{a}/{b}', '/v1/things/special'], path: '/v1/things/special', chosen: '/v1/things/special' },
    { templates: ['/v1/{name=**}', '/v1/{a}/{b}'], path: '/v1/x/y/z', chosen: '/v1/{name=**}' },
  ])('$path goes to $chosen of $templates, in either order', ({ templates, path: requested, chosen }) => {
    for (const order of [templates, [...templates].reverse()]) {
      const found = competing(order).find('GET', requested);
      expect(found?.kind === 'matched' ? found.binding.template.source : found).toBe(chosen);
    }
  });
});

describe('path variables', () => {
  const template = parsePathTemplate('/v1/things/{id}');
  // An empty segment is no value at all: the path fits no template (404), it is not a hostile value (400).
  // eslint-disable-next-line no-control-regex
  const refused = (value: string) => value === '.' || value === '..' || /[/\\\u0000-\u001f\u007f]/.test(value) || value.length > MAX_PATH_VARIABLE_LENGTH;

  it('give the service exactly the decoded segment, or are refused when the value could mean another resource', () => {
    fc.assert(
      fc.property(fc.oneof(fc.string({ unit: 'grapheme', maxLength: 40 }), fc.constantFrom('..', '.', 'a/b', 'a\\b', 'x'.repeat(MAX_PATH_VARIABLE_LENGTH + 1))), (value) => {
        const path = `/v1/things/${encodeURIComponent(value)}`;
        let bound: string | undefined;
        try {
          const match = matchPathTemplate(template, path);
          if (value === '') return expect(match).toBeUndefined();
          bound = match?.[0]?.value;
        } catch (error) {
          expect(error).toBeInstanceOf(PathVariableError);
          expect(refused(value)).toBe(true);
          return;
        }
        expect(refused(value)).toBe(false);
        expect(bound).toBe(value);
      }),
      RUNS,
    );
  });

  it.each([
    { template: '/v1/{name=files/**}', path: '/v1/files', name: 'files' },
    { template: '/v1/{name=files/**}', path: '/v1/files/a/b', name: 'files/a/b' },
    { template: '/v1/files/{rest=**}', path: '/v1/files', name: '' },
    { template: '/v1/files/**', path: '/v1/files', name: undefined },
    { template: '/v1/{name=files/**}', path: '/v1', name: null },
    { template: '/v1/{name=files/**}', path: '/v1/other', name: null },
    { template: '/v1/{name=files/**}', path: '/v1/files/a/', name: null },
    { template: '/v1/{name=files/**}', path: '/v1/files/', name: null },
    { template: '/v1/things/{id}', path: '/v1/things/', name: null },
    { template: '/v1/things/{id}', path: '/v1/things/a/', name: null },
  ])('"**" matches zero or more segments: $template takes $path as $name', ({ template, path, name }) => {
    const bound = matchPathTemplate(parsePathTemplate(template), path);
    if (name === null) return expect(bound).toBeUndefined();
    if (name === undefined) return expect(bound).toEqual([]);
    expect(bound?.[0]?.value).toBe(name);
  });

  it.each([
    { desc: 'a verb', source: '/v1/things:cancel' },
    { desc: '"**" before the end', source: '/v1/**/x' },
    { desc: 'a dot segment', source: '/v1/../x' },
    { desc: 'text around a variable', source: '/v1/x{id}' },
    { desc: 'unbalanced braces', source: '/v1/{id' },
    { desc: 'a relative path', source: 'v1/x' },
  ])('refuses a template with $desc at start-up', ({ source }) => {
    expect(() => parsePathTemplate(source)).toThrow(/path template/);
  });
});

describe('query strings', () => {
  it('give the service what the client percent-encoded, or are refused when that is not UTF-8 (never U+FFFD)', () => {
    fc.assert(
      fc.property(fc.string({ unit: 'grapheme', maxLength: 20 }), fc.string({ unit: 'grapheme', maxLength: 20 }), (name, value) => {
        expect([...parseQuery(`${encodeURIComponent(name)}=${encodeURIComponent(value)}`)]).toEqual([[name, value]]);
      }),
      RUNS,
    );
    for (const raw of ['type=%ff', 'type=%c3', '%e2%82=1', 'a=1&b=%80']) expect(() => parseQuery(raw)).toThrow(JsonMappingError);
    expect([...parseQuery('q=a+b&r=%C3%A9')]).toEqual([['q', 'a b'], ['r', 'é']]);
  });
});

describe('the JSON mapping', () => {
  it('keeps every int64 and uint64 digit for digit, and refuses values out of range', () => {
    fc.assert(
      fc.property(fc.bigInt({ min: -(2n ** 64n), max: 2n ** 65n }), (value) => {
        const text = value.toString();
        const signedOk = value >= -(2n ** 63n) && value < 2n ** 63n;
        const unsignedOk = value >= 0n && value < 2n ** 64n;
        if (signedOk) expect(roundTrip({ bigNumber: text }).bigNumber).toBe(text);
        else expect(() => messageFromJson(everything, { bigNumber: text })).toThrow(JsonMappingError);
        if (unsignedOk) expect(roundTrip({ unsignedBig: text }).unsignedBig).toBe(text);
        else expect(() => messageFromJson(everything, { unsignedBig: text })).toThrow(JsonMappingError);
      }),
      RUNS,
    );
  });

  it('carries every string that is Unicode text exactly, and refuses every one holding a lone UTF-16 surrogate', () => {
    // Any UTF-16 code unit, so lone surrogates (which a JSON escape can name) come up as often as pairs.
    const codeUnits = fc.string({ unit: fc.integer({ min: 0, max: 0xffff }).map((unit) => String.fromCharCode(unit)), maxLength: 12 });
    fc.assert(
      fc.property(codeUnits, codeUnits, (text, key) => {
        // Buffer replaces a lone surrogate with U+FFFD: the text comes back changed exactly when it holds one.
        const isText = (value: string) => Buffer.from(value, 'utf8').toString('utf8') === value;
        const json = { tags: [text], labels: { [key]: text }, extra: { [key]: [text] } };
        if (isText(text) && isText(key)) {
          const back = roundTrip(json);
          expect([back.tags, back.labels, back.extra]).toEqual([json.tags, json.labels, json.extra]);
        } else {
          expect(() => messageFromJson(everything, json)).toThrow(JsonMappingError);
        }
      }),
      RUNS,
    );
  });

  it('takes a float or double in a string only as a JSON number (or NaN, Infinity, -Infinity)', () => {
    const isJsonNumber = (text: string) => {
      try {
        return text === text.trim() && typeof JSON.parse(text) === 'number';
      } catch {
        return false;
      }
    };
    const numberish = fc.string({ unit: fc.constantFrom(...'0123456789+-.eExXbBoOaf _'), maxLength: 8 });
    fc.assert(
      fc.property(fc.oneof(numberish, fc.double().map(String)), (text) => {
        const special = text === 'NaN' || text === 'Infinity' || text === '-Infinity';
        if (special || (isJsonNumber(text) && Number.isFinite(Number(text)))) expect(Object.is(roundTrip({ ratio: text }).ratio, special ? text : Number(text))).toBe(true);
        else expect(() => messageFromJson(everything, { ratio: text })).toThrow(JsonMappingError);
      }),
      RUNS,
    );
  });

  it('takes every double a float can hold, and refuses the ones it cannot (never Infinity in their place)', () => {
    fc.assert(
      fc.property(fc.double({ noNaN: true, noDefaultInfinity: true }), (value) => {
        if (Number.isFinite(Math.fround(value))) expect(Object.is(roundTrip({ fraction: value }).fraction, Math.fround(value))).toBe(true);
        else expect(() => messageFromJson(everything, { fraction: value })).toThrow(JsonMappingError);
        expect(Object.is(roundTrip({ ratio: value }).ratio, value)).toBe(true);
      }),
      RUNS,
    );
  });

  it('gives back every Timestamp from 0001 to 9999 as the same instant, in UTC', () => {
    fc.assert(
      fc.property(fc.date({ min: new Date('0001-01-01T00:00:00Z'), max: new Date('9999-12-31T23:59:59.999Z'), noInvalidDate: true }), (date) => {
        const iso = date.toISOString();
        const back = roundTrip({ createdAt: iso }).createdAt as string;
        expect(Date.parse(back)).toBe(date.getTime());
        expect(back.endsWith('Z')).toBe(true);
      }),
      RUNS,
    );
  });

  it('gives back every Struct of JSON values as it was', () => {
    fc.assert(
      fc.property(fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 4 })), (extra) => {
        // JSON has no -0 and protobuf doubles keep it; compare as JSON text.
        expect(JSON.stringify(roundTrip({ extra }).extra)).toBe(JSON.stringify(JSON.parse(JSON.stringify(extra))));
      }),
      RUNS,
    );
  });
});

/**
 * Points of the proto3 JSON mapping its conformance suite checks (its REQUIRED cases named), each of which this
 * mapping got wrong: lower-case `t`/`z` taken, unknown enum numbers refused, out-of-range Durations and non-finite
 * Struct numbers written out, a non-canonical 64-bit map key sent as another number, null refused for a repeated
 * or map field of Value.
 */
describe('the JSON mapping, as the proto3 conformance suite checks it', () => {
  const root = new protobuf.Root();
  root.addJSON(protobuf.common.get('google/protobuf/struct.proto')!.nested!);
  protobuf.parse('syntax = "proto3"; package t; import "google/protobuf/struct.proto"; message M { map<int64, string> by_id = 1; repeated google.protobuf.Value items = 2; map<string, google.protobuf.Value> named = 3; google.protobuf.Value one = 4; }', root);
  root.resolveAll();
  const withValues = root.lookupType('t.M');
  const answered = (json: Record<string, unknown>) => () => messageToJson(everything, everything.fromObject(json));

  it.each(['2026-01-01t00:00:00Z', '2026-01-01T00:00:00z'])('refuses the Timestamp %s (TimestampJsonInputLowercaseT, -Z)', (createdAt) => {
    expect(() => messageFromJson(everything, { createdAt })).toThrow(JsonMappingError);
    expect(roundTrip({ createdAt: createdAt.toUpperCase() }).createdAt).toBe('2026-01-01T00:00:00Z');
  });

  it('takes a quoted integer with an exponent or a fraction that leaves a whole number (Int32FieldQuotedExponentialValue), and refuses one that does not', () => {
    expect(roundTrip({ smallNumber: '1e5', bigNumber: '-2.50e1', unsignedBig: '18446744073709551615e0' })).toMatchObject({ smallNumber: 100000, bigNumber: '-25', unsignedBig: '18446744073709551615' });
    expect(roundTrip({ bigNumber: '9223372036854775807.000' }).bigNumber).toBe('9223372036854775807');
    for (const text of ['1.5', '1e-1', '2.5e0', '1e40', '3e9', '1e400', '.5', '1.', '+1', '0x10', ' 1']) {
      expect(() => messageFromJson(everything, { smallNumber: text })).toThrow(JsonMappingError);
    }
    expect(() => messageFromJson(everything, { bigNumber: '1e19' })).toThrow(JsonMappingError);
  });

  it('keeps an enum number the proto does not name, both ways (EnumFieldUnknownValue), and refuses one past int32', () => {
    expect(roundTrip({ color: 123 }).color).toBe(123);
    expect(roundTrip({ colors: [1, 123] }).colors).toEqual(['COLOR_RED', 123]);
    expect(() => messageFromJson(everything, { color: 2 ** 31 })).toThrow(JsonMappingError);
    expect(() => messageFromJson(everything, { color: 'COLOR_PURPLE' })).toThrow(JsonMappingError);
  });

  it.each([
    { desc: 'past 315,576,000,000 s (DurationProtoInputTooLarge)', ttl: { seconds: 315_576_000_001 } },
    { desc: 'before -315,576,000,000 s (DurationProtoInputTooSmall)', ttl: { seconds: -315_576_000_001 } },
    { desc: 'with nanos of the other sign (DurationProtoNanosWrongSign)', ttl: { seconds: 1, nanos: -500_000_000 } },
    { desc: 'with a second or more of nanos (DurationProtoNanosTooLarge)', ttl: { seconds: 1, nanos: 1_500_000_000 } },
  ])('refuses to write a Duration $desc', ({ ttl }) => {
    expect(answered({ ttl })).toThrow(ResponseMappingError);
  });

  it('still writes the Durations at the limits and of one sign', () => {
    expect(answered({ ttl: { seconds: -315_576_000_000, nanos: -999_999_999 } })()).toMatchObject({ ttl: '-315576000000.999999999s' });
    expect(answered({ ttl: { seconds: 0, nanos: -500_000_000 } })()).toMatchObject({ ttl: '-0.500s' });
  });

  it(`refuses to write an answer of more than ${MAX_JSON_ANSWER_FIELDS} list items of scalars or enums (packed, a byte each: they counted nothing)`, () => {
    const decoded = (json: Record<string, unknown>) => () => messageToJson(everything, everything.decode(everything.encode(everything.fromObject(json)).finish()));
    expect(decoded({ colors: Array(MAX_JSON_ANSWER_FIELDS + 1).fill(0) })).toThrow(ResponseMappingError);
    expect(decoded({ numbers: Array(MAX_JSON_ANSWER_FIELDS + 1).fill(0) })).toThrow(ResponseMappingError);
    expect((decoded({ colors: Array(1000).fill(1), numbers: [1, 2] })() as { colors: unknown[] }).colors).toHaveLength(1000);
  });

  // Each message counted as one field, 200,000 small ones took 0.7-0.9 s to write and a Struct of 190,000 entries 1-2 s.
  it('counts each message of an answer as more than one field: many small messages or Struct entries are refused', () => {
    const decoded = (json: Record<string, unknown>) => () => messageToJson(everything, everything.decode(everything.encode(everything.fromObject(json)).finish()));
    const struct = (entries: number) => ({ extra: { fields: Object.fromEntries(Array.from({ length: entries }, (_, i) => [`k${i}`, { numberValue: i }])) } });
    expect(decoded({ owners: Array.from({ length: 200_000 }, () => ({ id: 'x' })) })).toThrow(ResponseMappingError);
    expect(decoded(struct(150_000))).toThrow(ResponseMappingError);
    expect((decoded({ owners: Array.from({ length: 50_000 }, () => ({ id: 'x' })) })() as { owners: unknown[] }).owners).toHaveLength(50_000);
    expect(Object.keys((decoded(struct(50_000))() as { extra: object }).extra)).toHaveLength(50_000);
  });

  it.each([Number.NaN, Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY])('refuses to write a Struct number %s (ValueRejectNanNumberValue, -InfNumberValue)', (numberValue) => {
    expect(answered({ extra: { fields: { a: { numberValue } } } })).toThrow(ResponseMappingError);
    expect(answered({ anything: { numberValue } })).toThrow(ResponseMappingError);
  });

  it('sends a 64-bit map key as the number it spells, and refuses two spellings of one key', () => {
    const sent = withValues.decode(withValues.encode(messageFromJson(withValues, { byId: { '01234567': 'a', '-0000001': 'b' } })).finish());
    expect(messageToJson(withValues, sent)).toMatchObject({ byId: { '1234567': 'a', '-1': 'b' } });
    expect(() => messageFromJson(withValues, { byId: { '1': 'a', '01': 'b' } })).toThrow(JsonMappingError);
  });

  it('reads a 64-bit map key written with an exponent as the integer it is (it was a 500: BigInt("1e5") threw)', () => {
    const sent = withValues.decode(withValues.encode(messageFromJson(withValues, { byId: { '1e5': 'a', '25.0': 'b' } })).finish());
    expect(messageToJson(withValues, sent)).toMatchObject({ byId: { '100000': 'a', '25': 'b' } });
    expect(() => messageFromJson(withValues, { byId: { '1.5': 'a' } })).toThrow(JsonMappingError);
    expect(() => messageFromJson(withValues, { byId: { '1e2': 'a', '100': 'b' } })).toThrow(JsonMappingError);
  });

  it('takes null as the default of a repeated or map field of Value, and as NULL_VALUE of a single one', () => {
    const sent = withValues.decode(withValues.encode(messageFromJson(withValues, { items: null, named: null, one: null })).finish());
    expect(messageToJson(withValues, sent)).toEqual({ byId: {}, items: [], named: {}, one: null });
    expect(() => messageFromJson(withValues, { items: [null] })).not.toThrow();
  });
});

/** A request body as the gateway reads it (parseJsonBody: numbers keep their text), mapped onto Echo's request. */
const fromBody = (text: string) => roundTrip(parseJsonBody(text) as Record<string, unknown>);
const refusesBody = (text: string) => () => messageFromJson(everything, parseJsonBody(text));

describe('JSON numbers as the client wrote them (a double between rounded some)', () => {
  it.each([
    { desc: 'int64 past 2^53', text: '{"bigNumber": 9007199254740993}', field: 'bigNumber', sent: '9007199254740993' },
    { desc: 'int64 at its maximum (Int64FieldMaxValueNotQuoted)', text: '{"bigNumber": 9223372036854775807}', field: 'bigNumber', sent: '9223372036854775807' },
    { desc: 'int64 at its minimum (Int64FieldMinValueNotQuoted)', text: '{"bigNumber": -9223372036854775808}', field: 'bigNumber', sent: '-9223372036854775808' },
    { desc: 'uint64 at its maximum (Uint64FieldMaxValueNotQuoted)', text: '{"unsignedBig": 18446744073709551615}', field: 'unsignedBig', sent: '18446744073709551615' },
    { desc: 'int64 with an exponent', text: '{"bigNumber": 1.5e3}', field: 'bigNumber', sent: '1500' },
    { desc: 'int32 with a zero fraction', text: '{"smallNumber": 7.0}', field: 'smallNumber', sent: 7 },
    { desc: 'an enum by number with an exponent', text: '{"color": 1e0}', field: 'color', sent: 'COLOR_RED' },
    { desc: 'a double that rounds (a double field takes the double)', text: '{"ratio": 0.1000000000000000055511151231257827}', field: 'ratio', sent: 0.1 },
  ])('sends $desc as written', ({ text, field, sent }) => {
    expect(fromBody(text)[field]).toEqual(sent);
  });

  it.each([
    { desc: 'int64 with a fraction its double rounds away', text: '{"bigNumber": 9007199254740991.4}' },
    { desc: 'int32 with a fraction its double rounds away', text: '{"smallNumber": 1.0000000000000001}' },
    { desc: 'int32 smaller than a double can hold', text: '{"smallNumber": 1e-400}' },
    { desc: 'int64 past its range, as digits', text: '{"bigNumber": 9223372036854775808}' },
    { desc: 'uint64 past its range, as digits', text: '{"unsignedBig": 18446744073709551616}' },
    { desc: 'an enum number with a fraction its double rounds away', text: '{"color": 1.0000000000000001}' },
    { desc: 'a Value number past a double (Infinity)', text: '{"anything": 1e400}' },
    { desc: 'a Struct number past a double (-Infinity)', text: '{"extra": {"a": -1e400}}' },
    { desc: 'a bare number for the whole message', text: '1.5' },
  ])('refuses $desc (it was sent as another value, or answered 502)', ({ text }) => {
    expect(refusesBody(text)).toThrow(JsonMappingError);
  });

  // A path variable into the body's message (`{book.name=...}`, body "book") spread the number into an object:
  // `book has no field "value"`, or, with fields named value and text, a message the client never sent.
  it('refuses a number where the body binds a message a path variable reaches into', () => {
    const file = protoFile('books', ['message Book { string name = 1; double value = 2; string text = 3; }', 'message UpdateBookRequest { Book book = 1; }', 'service Books {', '  rpc UpdateBook(UpdateBookRequest) returns (Book) { option (google.api.http) = { patch: "/v1/{book.name=books/*}" body: "book" }; }', '}']);
    const found = loadGrpcServiceMapping(file, 'books.Books').find('PATCH', '/v1/books/b1');
    if (found?.kind !== 'matched') throw new Error('the binding did not match');
    const build = (text: string) => () => buildRequestMessage(found.binding, found.variables, parseJsonBody(text), new URLSearchParams());
    for (const body of ['1.5', '5', '"x"', 'true', '[1]']) expect(build(body)).toThrow(/UpdateBookRequest\.book must be an object/);
    expect(build('{"value": 1.5}')().toJSON()).toEqual({ book: { name: 'books/b1', value: 1.5 } });
  });

  it('reads every number as JSON.parse does where its double is exact', () => {
    fc.assert(
      fc.property(fc.integer({ min: -(2 ** 31), max: 2 ** 31 - 1 }), fc.double({ noNaN: true, noDefaultInfinity: true }).map((value) => (value === 0 ? 0 : value)), (small, ratio) => {
        const back = fromBody(JSON.stringify({ smallNumber: small, ratio }));
        expect([back.smallNumber, back.ratio]).toEqual([small, ratio]);
      }),
      RUNS,
    );
  });
});

describe('a request body read before it is parsed', () => {
  /** parseJsonBody as it was: the reviver on every body. */
  const withReviver = (text: string) =>
    JSON.parse(text, (_key: string, value: unknown, context?: { source?: string }) => {
      if (typeof value !== 'number' || context?.source === undefined) return value;
      return Number.isSafeInteger(value) && !/[.eE]/.test(context.source) ? value : new JsonNumberText(value, context.source);
    });
  /** Integers of any size, fractions and exponents as a client may write them, beside JSON.stringify's own numbers. */
  const numberText = fc.oneof(fc.bigInt({ min: -(10n ** 22n), max: 10n ** 22n }).map(String), fc.constantFrom('0', '-0', '1.0', '1e5', '-2E-3', '9007199254740993', '123456789012345', '1234567890123456', '0.1'));
  const bodyText = fc.oneof(
    fc.jsonValue().map((value) => JSON.stringify(value)),
    fc.array(fc.tuple(fc.string({ maxLength: 6 }), numberText), { maxLength: 8 }).map((pairs) => `{${pairs.map(([key, number], index) => `${JSON.stringify(`${key}${index}`)}: [${number}, ${JSON.stringify(number)}]`).join(',')}}`),
  );

  it('gives what the reviver gave on every body (generated), parsing without it when no number needs its text', () => {
    fc.assert(
      fc.property(bodyText, (text) => {
        expect(parseJsonBody(text)).toStrictEqual(withReviver(text));
      }),
      { seed: 4244, numRuns: 3000 },
    );
  });

  it(`refuses a body of more than ${MAX_JSON_BODY_VALUES} values (0.7 s of the event loop for 500,000), and one nested past 66 levels (0.3 s to parse 500,000), before parsing`, () => {
    const zeros = (count: number) => `{"numbers":[${Array(count).fill('0').join(',')}]}`;
    // The object and the array count: two values besides the zeros.
    expect(() => parseJsonBody(zeros(MAX_JSON_BODY_VALUES - 2))).not.toThrow();
    expect(() => parseJsonBody(zeros(MAX_JSON_BODY_VALUES - 1))).toThrow(JsonBodyTooLargeError);
    expect(() => parseJsonBody(zeros(500_000))).toThrow(JsonBodyTooLargeError);
    // Keys are not values: an object of 60,000 keys holds 60,001.
    expect(() => parseJsonBody(`{${Array.from({ length: 60_000 }, (_, index) => `"k${index}":1`).join(',')}}`)).not.toThrow();
    // The deepest the mapping takes: the root, 32 messages each in a list, a last list of scalars.
    const deepest = `${'{"children":['.repeat(32)}{"v":[1]}${']}'.repeat(32)}`;
    expect(() => parseJsonBody(deepest)).not.toThrow();
    expect(() => parseJsonBody(`${'['.repeat(66)}${']'.repeat(66)}`)).not.toThrow();
    expect(() => parseJsonBody(`${'['.repeat(67)}${']'.repeat(67)}`)).toThrow(JsonMappingError);
    expect(() => parseJsonBody(`${'['.repeat(500_000)}${']'.repeat(500_000)}`)).toThrow(/nests deeper than 66 levels/);
    // Strings holding brackets, quotes and digits are strings: nothing in them counts.
    expect(parseJsonBody(JSON.stringify({ a: '[[[{"1.5": 1e400}]]]\\"', b: [1, 2] }))).toEqual({ a: '[[[{"1.5": 1e400}]]]\\"', b: [1, 2] });
  });
});

describe('start-up', () => {
  const withGrpcRoute = (grpc: Record<string, unknown>) => {
    const shipped = shippedConfigFile() as { routes: unknown[] };
    return parseConfig({ ...shipped, routes: [...shipped.routes, { name: 'broken', prefix: '/api/broken', service: 'users', upstreamPath: '/v1', grpc }] }, { JWT_SECRET: TEST_JWT_SECRET });
  };

  it.each([
    { desc: 'a proto file that does not exist', grpc: { proto: 'proto/missing.proto', service: 'a.B' }, message: /routes\.\d+\.grpc: proto proto\/missing\.proto/ },
    { desc: 'a service the proto does not define', grpc: { proto: MAPPING_PROTO, service: 'koagateway.test.v1.Nope' }, message: /routes\.\d+\.grpc: .*no service koagateway\.test\.v1\.Nope/ },
  ])('stops with the route named for $desc', ({ grpc, message }) => {
    expect(() => compileGrpcRoutes(withGrpcRoute(grpc))).toThrow(message);
  });

  it('refuses a service name that is not fully qualified in the config itself', () => {
    expect(() => withGrpcRoute({ proto: MAPPING_PROTO, service: 'Mapping' })).toThrow(/routes\.\d+\.grpc\.service: must be a fully qualified service name/);
  });

  it.each([
    { desc: 'a response cache', key: 'cache', value: { ttlSeconds: 30 } },
    { desc: 'header rules', key: 'headers', value: { request: { remove: ['cookie'] } } },
  ])('refuses $desc on a grpc route (they never run for it)', ({ key, value }) => {
    const shipped = shippedConfigFile() as { routes: unknown[] };
    const route = { name: 'broken', prefix: '/api/broken', service: 'users', upstreamPath: '/v1', grpc: { proto: MAPPING_PROTO, service: MAPPING_SERVICE }, [key]: value };
    expect(() => parseConfig({ ...shipped, routes: [...shipped.routes, route] }, { JWT_SECRET: TEST_JWT_SECRET })).toThrow(new RegExp(`routes\\.\\d+\\.${key}: does not apply to a grpc route`));
  });

  it('compiles the shipped notifications route, and only the annotated methods', () => {
    const compiled = compileGrpcRoutes(parseConfig(shippedConfigFile(), { JWT_SECRET: TEST_JWT_SECRET }));
    const names = compiled.get('notifications-grpc')!.mapping.bindings.map((binding) => `${binding.httpMethod} ${binding.template.source} ${binding.method.name}`);
    expect(names.sort()).toEqual(['GET /v1/notifications ListNotifications', 'GET /v1/notifications/stream StreamNotifications', 'GET /v1/notifications/{id} GetNotification']);
  });
});
