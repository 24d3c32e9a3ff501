/**
 * Decoding for the OTLP test receiver: both encodings the JS exporters use, `application/x-protobuf` (protobufjs
 * over the subset of opentelemetry-proto below) and `application/json` (OTLP/JSON), gzip or not, flattened to
 * spans, log records and metric data points with lower-case hex ids, decimal-string times, number int
 * attributes and number counts.
 * Spec: https://opentelemetry.io/docs/specs/otlp/#otlphttp
 */
import { gunzipSync } from 'node:zlib';
import protobuf from 'protobufjs';

/**
 * The part of opentelemetry-proto v1 (common, resource, trace, logs, metrics and the three collector services)
 * that the receiver decodes. Field numbers are the spec's; fields not listed are skipped by the decoder.
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

message ResourceMetrics { Resource resource = 1; repeated ScopeMetrics scope_metrics = 2; string schema_url = 3; }
message ScopeMetrics { InstrumentationScope scope = 1; repeated Metric metrics = 2; string schema_url = 3; }
message Metric {
  string name = 1;
  string description = 2;
  string unit = 3;
  oneof data {
    Gauge gauge = 5;
    Sum sum = 7;
    Histogram histogram = 9;
    ExponentialHistogram exponential_histogram = 10;
    Summary summary = 11;
  }
  repeated KeyValue metadata = 12;
}
message Gauge { repeated NumberDataPoint data_points = 1; }
message Sum { repeated NumberDataPoint data_points = 1; int32 aggregation_temporality = 2; bool is_monotonic = 3; }
message Histogram { repeated HistogramDataPoint data_points = 1; int32 aggregation_temporality = 2; }
message ExponentialHistogram { repeated ExponentialHistogramDataPoint data_points = 1; int32 aggregation_temporality = 2; }
message Summary { repeated SummaryDataPoint data_points = 1; }
message NumberDataPoint {
  repeated KeyValue attributes = 7;
  fixed64 start_time_unix_nano = 2;
  fixed64 time_unix_nano = 3;
  oneof value {
    double as_double = 4;
    sfixed64 as_int = 6;
  }
  repeated Exemplar exemplars = 5;
  uint32 flags = 8;
}
message HistogramDataPoint {
  repeated KeyValue attributes = 9;
  fixed64 start_time_unix_nano = 2;
  fixed64 time_unix_nano = 3;
  fixed64 count = 4;
  optional double sum = 5;
  repeated fixed64 bucket_counts = 6;
  repeated double explicit_bounds = 7;
  repeated Exemplar exemplars = 8;
  uint32 flags = 10;
  optional double min = 11;
  optional double max = 12;
}
message ExponentialHistogramDataPoint {
  repeated KeyValue attributes = 1;
  fixed64 start_time_unix_nano = 2;
  fixed64 time_unix_nano = 3;
  fixed64 count = 4;
  optional double sum = 5;
  sint32 scale = 6;
  fixed64 zero_count = 7;
  message Buckets { sint32 offset = 1; repeated uint64 bucket_counts = 2; }
  Buckets positive = 8;
  Buckets negative = 9;
  uint32 flags = 10;
  repeated Exemplar exemplars = 11;
  optional double min = 12;
  optional double max = 13;
}
message SummaryDataPoint {
  repeated KeyValue attributes = 7;
  fixed64 start_time_unix_nano = 2;
  fixed64 time_unix_nano = 3;
  fixed64 count = 4;
  double sum = 5;
  message ValueAtQuantile { double quantile = 1; double value = 2; }
  repeated ValueAtQuantile quantile_values = 6;
  uint32 flags = 8;
}
message Exemplar {
  repeated KeyValue filtered_attributes = 7;
  fixed64 time_unix_nano = 2;
  oneof value {
    double as_double = 3;
    sfixed64 as_int = 6;
  }
  bytes span_id = 4;
  bytes trace_id = 5;
}

message ExportTraceServiceRequest { repeated ResourceSpans resource_spans = 1; }
message ExportLogsServiceRequest { repeated ResourceLogs resource_logs = 1; }
message ExportMetricsServiceRequest { repeated ResourceMetrics resource_metrics = 1; }
`;

const root = protobuf.parse(OTLP_PROTO).root;
const TraceRequest = root.lookupType('opentelemetry.proto.ExportTraceServiceRequest');
const LogsRequest = root.lookupType('opentelemetry.proto.ExportLogsServiceRequest');
const MetricsRequest = root.lookupType('opentelemetry.proto.ExportMetricsServiceRequest');

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
  /** The scope's `schema_url` (ScopeSpans') is the semantic conventions version its spans follow, when it names one. */
  scope: { name: string; version: string | undefined; schemaUrl?: string };
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

/** The metric types of OTLP; `exponentialHistogram` and `summary` points carry only their count and sum here. */
export type MetricTypeName = 'gauge' | 'sum' | 'histogram' | 'exponentialHistogram' | 'summary';

export interface ReceivedExemplar {
  value: number;
  timeUnixNano: string;
  traceId: string | undefined;
  spanId: string | undefined;
  attributes: Attributes;
}

/** One data point of one metric, with what it belongs to: the shape a query over a metrics backend returns. */
export interface ReceivedMetricPoint {
  name: string;
  description: string;
  unit: string;
  type: MetricTypeName;
  /** Sums and histograms: how the points add up over exports; undefined for gauges and summaries. */
  temporality: 'delta' | 'cumulative' | undefined;
  /** Sums only. */
  monotonic: boolean | undefined;
  serviceName: string | undefined;
  resource: Attributes;
  scope: { name: string; version: string | undefined };
  attributes: Attributes;
  startTimeUnixNano: string;
  timeUnixNano: string;
  /** Gauges and sums. */
  value: number | undefined;
  /** Histograms (also count and sum of exponential histograms and summaries). */
  count: number | undefined;
  sum: number | undefined;
  min: number | undefined;
  max: number | undefined;
  /** Explicit-bucket histograms: observations per bucket (not cumulative), one more than the bounds. */
  bucketCounts: number[] | undefined;
  explicitBounds: number[] | undefined;
  exemplars: ReceivedExemplar[];
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
  metrics: ReceivedMetricPoint[];
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
  let message: Json;
  let encoding: Encoding;
  if (contentType === 'application/x-protobuf') {
    const type = signal === 'traces' ? TraceRequest : signal === 'logs' ? LogsRequest : MetricsRequest;
    message = type.toObject(type.decode(body), { longs: String }) as Json;
    encoding = PROTOBUF;
  } else if (contentType === 'application/json') {
    message = JSON.parse(body.toString('utf8')) as Json;
    encoding = JSON_ENCODING;
  } else {
    throw new Error(`unsupported Content-Type "${contentType}"`);
  }
  return {
    spans: signal === 'traces' ? flattenSpans(message, encoding) : [],
    logs: signal === 'logs' ? flattenLogs(message, encoding) : [],
    metrics: signal === 'metrics' ? flattenMetrics(message, encoding) : [],
  };
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
      const scope = { ...scopeOf(scopeSpans.scope), schemaUrl: text(scopeSpans.schemaUrl) };
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

const METRIC_TYPES: readonly MetricTypeName[] = ['gauge', 'sum', 'histogram', 'exponentialHistogram', 'summary'];
const TEMPORALITIES: Record<string, number> = {
  AGGREGATION_TEMPORALITY_UNSPECIFIED: 0,
  AGGREGATION_TEMPORALITY_DELTA: 1,
  AGGREGATION_TEMPORALITY_CUMULATIVE: 2,
};

function flattenMetrics(message: Json, encoding: Encoding): ReceivedMetricPoint[] {
  const result: ReceivedMetricPoint[] = [];
  for (const resourceMetrics of list(message.resourceMetrics)) {
    const resource = attributes(object(resourceMetrics.resource).attributes);
    for (const scopeMetrics of list(resourceMetrics.scopeMetrics)) {
      const scope = scopeOf(scopeMetrics.scope);
      for (const metric of list(scopeMetrics.metrics)) {
        const type = METRIC_TYPES.find((name) => name in metric);
        if (type === undefined) continue;
        const data = object(metric[type]);
        const temporality = ['delta', 'cumulative'][enumNumber(data.aggregationTemporality, TEMPORALITIES) - 1] as ReceivedMetricPoint['temporality'];
        for (const point of list(data.dataPoints)) {
          const bucketed = type === 'histogram';
          result.push({
            name: text(metric.name) ?? '',
            description: text(metric.description) ?? '',
            unit: text(metric.unit) ?? '',
            type,
            temporality,
            monotonic: type === 'sum' ? data.isMonotonic === true : undefined,
            serviceName: serviceName(resource),
            resource,
            scope,
            attributes: attributes(point.attributes),
            startTimeUnixNano: nanos(point.startTimeUnixNano),
            timeUnixNano: nanos(point.timeUnixNano),
            value: type === 'gauge' || type === 'sum' ? numberValue(point) : undefined,
            // proto3 leaves zeros off the wire: a point without a count counted nothing.
            count: type === 'gauge' || type === 'sum' ? undefined : Number(point.count ?? 0),
            sum: optionalNumber(point.sum),
            min: optionalNumber(point.min),
            max: optionalNumber(point.max),
            bucketCounts: bucketed ? numbers(point.bucketCounts) : undefined,
            explicitBounds: bucketed ? numbers(point.explicitBounds) : undefined,
            exemplars: list(point.exemplars).map((exemplar) => ({
              value: numberValue(exemplar) ?? 0,
              timeUnixNano: nanos(exemplar.timeUnixNano),
              traceId: encoding.id(exemplar.traceId),
              spanId: encoding.id(exemplar.spanId),
              attributes: attributes(exemplar.filteredAttributes),
            })),
          });
        }
      }
    }
  }
  return result;
}

/** int64s arrive as strings (protobuf decoded with `longs: String`, and OTLP/JSON from other senders) or numbers. */
function optionalNumber(value: unknown): number | undefined {
  return value === undefined || value === null ? undefined : Number(value);
}
function numbers(value: unknown): number[] {
  return Array.isArray(value) ? value.map(Number) : [];
}
function numberValue(point: Json): number | undefined {
  return optionalNumber(point.asDouble ?? point.asInt);
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
