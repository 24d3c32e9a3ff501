/**
 * Decoding for the OTLP test receiver: both encodings the JS exporters use, `application/x-protobuf` (protobufjs
 * over the subset of opentelemetry-proto below) and `application/json` (OTLP/JSON), gzip or not, flattened to
 * spans and log records with lower-case hex ids, decimal-string times and number int attributes.
 * Spec: https://opentelemetry.io/docs/specs/otlp/#otlphttp
 */
import { gunzipSync } from 'node:zlib';
import protobuf from 'protobufjs';

/**
 * The part of opentelemetry-proto v1 (common, resource, trace, logs and the two collector services) that the
 * receiver decodes. Field numbers are the spec's; fields not listed are skipped by the decoder.
 */
const OTLP_PROTO = `
syntax = "proto3";
package opentelemetry.proto;

message AnyValue {
  oneof value {
    string string_value = 1;
    bool bool_value = 2;
    int64 int_value = 3;
    double double_value = 4;
    ArrayValue array_value = 5;
    KeyValueList kvlist_value = 6;
    bytes bytes_value = 7;
  }
}
message ArrayValue { repeated AnyValue values = 1; }
message KeyValueList { repeated KeyValue values = 1; }
message KeyValue { string key = 1; AnyValue value = 2; }
message InstrumentationScope {
  string name = 1;
  string version = 2;
  repeated KeyValue attributes = 3;
  uint32 dropped_attributes_count = 4;
}
message Resource {
  repeated KeyValue attributes = 1;
  uint32 dropped_attributes_count = 2;
}

message ResourceSpans { Resource resource = 1; repeated ScopeSpans scope_spans = 2; string schema_url = 3; }
message ScopeSpans { InstrumentationScope scope = 1; repeated Span spans = 2; string schema_url = 3; }
message Span {
  bytes trace_id = 1;
  bytes span_id = 2;
  string trace_state = 3;
  bytes parent_span_id = 4;
  fixed32 flags = 16;
  string name = 5;
  int32 kind = 6;
  fixed64 start_time_unix_nano = 7;
  fixed64 end_time_unix_nano = 8;
  repeated KeyValue attributes = 9;
  uint32 dropped_attributes_count = 10;
  message Event {
    fixed64 time_unix_nano = 1;
    string name = 2;
    repeated KeyValue attributes = 3;
    uint32 dropped_attributes_count = 4;
  }
  repeated Event events = 11;
  uint32 dropped_events_count = 12;
  message Link {
    bytes trace_id = 1;
    bytes span_id = 2;
    string trace_state = 3;
    repeated KeyValue attributes = 4;
    uint32 dropped_attributes_count = 5;
    fixed32 flags = 6;
  }
  repeated Link links = 13;
  uint32 dropped_links_count = 14;
  Status status = 15;
}
message Status { string message = 2; int32 code = 3; }

message ResourceLogs { Resource resource = 1; repeated ScopeLogs scope_logs = 2; string schema_url = 3; }
message ScopeLogs { InstrumentationScope scope = 1; repeated LogRecord log_records = 2; string schema_url = 3; }
message LogRecord {
  fixed64 time_unix_nano = 1;
  fixed64 observed_time_unix_nano = 11;
  int32 severity_number = 2;
  string severity_text = 3;
  AnyValue body = 5;
  repeated KeyValue attributes = 6;
  uint32 dropped_attributes_count = 7;
  fixed32 flags = 8;
  bytes trace_id = 9;
  bytes span_id = 10;
  string event_name = 12;
}

message ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
message ExportLogsServiceRequest { repeated ResourceLogs resource_logs = 1; }
`;

const root = protobuf.parse(OTLP_PROTO).root;
const TraceRequest = root.lookupType('opentelemetry.proto.ExportTraceServiceRequest');
const LogsRequest = root.lookupType('opentelemetry.proto.ExportLogsServiceRequest');

/** OTLP span kinds by number; the API's `SpanKind` enum is numbered differently, so names avoid mix-ups. */
const SPAN_KINDS = ['UNSPECIFIED', 'INTERNAL', 'SERVER', 'CLIENT', 'PRODUCER', 'CONSUMER'] as const;
export type SpanKindName = (typeof SPAN_KINDS)[number];

export type Attributes = Record<string, unknown>;

export interface ReceivedSpanEvent {
  name: string;
  timeUnixNano: string;
  attributes: Attributes;
}

export interface ReceivedSpan {
  traceId: string;
  spanId: string;
  /** Undefined for a root span. */
  parentSpanId: string | undefined;
  name: string;
  kind: SpanKindName;
  serviceName: string | undefined;
  resource: Attributes;
  attributes: Attributes;
  /** `code` is 0 unset, 1 ok, 2 error: the same numbers as the API's `SpanStatusCode`. */
  status: { code: number; message: string };
  events: ReceivedSpanEvent[];
  startTimeUnixNano: string;
  endTimeUnixNano: string;
  scope: { name: string; version: string | undefined };
}

export interface ReceivedLog {
  /** Undefined when the record was emitted outside any span. */
  traceId: string | undefined;
  spanId: string | undefined;
  serviceName: string | undefined;
  severityText: string | undefined;
  severityNumber: number;
  body: unknown;
  attributes: Attributes;
  resource: Attributes;
  timeUnixNano: string;
  scope: { name: string; version: string | undefined };
}


export type Signal = 'traces' | 'logs' | 'metrics';

export function decodeContentEncoding(body: Buffer, encoding: string | undefined): Buffer {
  if (encoding === undefined || encoding === 'identity') return body;
  if (encoding === 'gzip') return gunzipSync(body);
  throw new Error(`unsupported Content-Encoding "${encoding}"`);
}

interface Decoded {
  spans: ReceivedSpan[];
  logs: ReceivedLog[];
}

/** How each encoding writes trace and span ids: bytes in protobuf, hex strings in OTLP/JSON. */
interface Encoding {
  id(value: unknown): string | undefined;
}
const PROTOBUF: Encoding = {
  // ArrayBuffer.isView, not instanceof: under Jest, Buffers can come from another realm.
  id: (value) =>
    ArrayBuffer.isView(value) && value.byteLength > 0
      ? Buffer.from(value.buffer, value.byteOffset, value.byteLength).toString('hex')
      : undefined,
};
const JSON_ENCODING: Encoding = {
  id: (value) => {
    if (typeof value !== 'string' || value === '') return undefined;
    // OTLP/JSON writes ids as hex (a deliberate deviation from proto3 JSON); accept base64 from other senders.
    return /^[0-9a-f]+$/i.test(value) ? value.toLowerCase() : Buffer.from(value, 'base64').toString('hex');
  },
};

export function decodeExport(signal: Signal, contentType: string, body: Buffer): Decoded {
  if (signal === 'metrics') return { spans: [], logs: [] };
  let message: Json;
  let encoding: Encoding;
  if (contentType === 'application/x-protobuf') {
    const type = signal === 'traces' ? TraceRequest : LogsRequest;
    message = type.toObject(type.decode(body), { longs: String }) as Json;
    encoding = PROTOBUF;
  } else if (contentType === 'application/json') {
    message = JSON.parse(body.toString('utf8')) as Json;
    encoding = JSON_ENCODING;
  } else {
    throw new Error(`unsupported Content-Type "${contentType}"`);
  }
  return signal === 'traces'
    ? { spans: flattenSpans(message, encoding), logs: [] }
    : { spans: [], logs: flattenLogs(message, encoding) };
}

type Json = Record<string, unknown>;

function list(value: unknown): Json[] {
  return Array.isArray(value) ? (value as Json[]) : [];
}
function object(value: unknown): Json {
  return typeof value === 'object' && value !== null ? (value as Json) : {};
}
function text(value: unknown): string | undefined {
  return typeof value === 'string' && value !== '' ? value : undefined;
}
function nanos(value: unknown): string {
  return value === undefined ? '0' : String(value);
}
function scopeOf(scope: unknown): ReceivedSpan['scope'] {
  const s = object(scope);
  return { name: text(s.name) ?? '', version: text(s.version) };
}

function flattenSpans(message: Json, encoding: Encoding): ReceivedSpan[] {
  const result: ReceivedSpan[] = [];
  for (const resourceSpans of list(message.resourceSpans)) {
    const resource = attributes(object(resourceSpans.resource).attributes);
    for (const scopeSpans of list(resourceSpans.scopeSpans)) {
      const scope = scopeOf(scopeSpans.scope);
      for (const span of list(scopeSpans.spans)) {
        const status = object(span.status);
        result.push({
          traceId: encoding.id(span.traceId) ?? '',
          spanId: encoding.id(span.spanId) ?? '',
          parentSpanId: encoding.id(span.parentSpanId),
          name: text(span.name) ?? '',
          kind: spanKind(span.kind),
          serviceName: serviceName(resource),
          resource,
          attributes: attributes(span.attributes),
          status: { code: enumNumber(status.code, STATUS_CODES), message: text(status.message) ?? '' },
          events: list(span.events).map((event) => ({
            name: text(event.name) ?? '',
            timeUnixNano: nanos(event.timeUnixNano),
            attributes: attributes(event.attributes),
          })),
          startTimeUnixNano: nanos(span.startTimeUnixNano),
          endTimeUnixNano: nanos(span.endTimeUnixNano),
          scope,
        });
      }
    }
  }
  return result;
}

function flattenLogs(message: Json, encoding: Encoding): ReceivedLog[] {
  const result: ReceivedLog[] = [];
  for (const resourceLogs of list(message.resourceLogs)) {
    const resource = attributes(object(resourceLogs.resource).attributes);
    for (const scopeLogs of list(resourceLogs.scopeLogs)) {
      const scope = scopeOf(scopeLogs.scope);
      for (const record of list(scopeLogs.logRecords)) {
        result.push({
          traceId: encoding.id(record.traceId),
          spanId: encoding.id(record.spanId),
          serviceName: serviceName(resource),
          severityText: text(record.severityText),
          severityNumber: enumNumber(record.severityNumber, {}),
          body: record.body === undefined ? undefined : anyValue(object(record.body)),
          attributes: attributes(record.attributes),
          resource,
          timeUnixNano: nanos(record.timeUnixNano),
          scope,
        });
      }
    }
  }
  return result;
}

const STATUS_CODES: Record<string, number> = { STATUS_CODE_UNSET: 0, STATUS_CODE_OK: 1, STATUS_CODE_ERROR: 2 };

/** Enums arrive as numbers (protobuf, and OTLP/JSON as the JS exporter writes it) or, from other senders, names. */
function enumNumber(value: unknown, names: Record<string, number>): number {
  if (typeof value === 'number') return value;
  if (typeof value === 'string') return Object.hasOwn(names, value) ? names[value]! : Number(value) || 0;
  return 0;
}

function spanKind(value: unknown): SpanKindName {
  if (typeof value === 'string' && value.startsWith('SPAN_KIND_')) {
    const name = value.slice('SPAN_KIND_'.length);
    if ((SPAN_KINDS as readonly string[]).includes(name)) return name as SpanKindName;
  }
  return SPAN_KINDS[enumNumber(value, {})] ?? 'UNSPECIFIED';
}

function serviceName(resource: Attributes): string | undefined {
  const name = resource['service.name'];
  return typeof name === 'string' ? name : undefined;
}

function attributes(keyValues: unknown): Attributes {
  const result: Attributes = {};
  for (const { key, value } of list(keyValues)) {
    if (typeof key === 'string') result[key] = anyValue(object(value));
  }
  return result;
}

function anyValue(value: Json): unknown {
  if ('stringValue' in value) return value.stringValue;
  if ('boolValue' in value) return value.boolValue;
  if ('intValue' in value) {
    const n = Number(value.intValue);
    return Number.isSafeInteger(n) ? n : String(value.intValue);
  }
  if ('doubleValue' in value) return Number(value.doubleValue);
  if ('arrayValue' in value) return list(object(value.arrayValue).values).map((v) => anyValue(v));
  if ('kvlistValue' in value) return attributes(object(value.kvlistValue).values);
  if ('bytesValue' in value) {
    const bytes = value.bytesValue;
    return ArrayBuffer.isView(bytes)
      ? Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength)
      : Buffer.from(String(bytes), 'base64');
  }
  return undefined;
}
