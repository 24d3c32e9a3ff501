/**
 * A prom-client registry as an OpenTelemetry `MetricProducer`: the SDK's periodic reader asks it for the
 * registry's current values at each export and sends them with its own, through the same OTLP exporter (same
 * OTEL_EXPORTER_OTLP_* settings, retries and transport). The gateway records its RED metrics once, in prom-client,
 * because prom-client keeps exemplars and sdk-metrics records none (docs/architecture.md, "Metrics").
 *
 * Mapping (https://opentelemetry.io/docs/specs/otel/compatibility/prometheus_and_openmetrics/):
 *   counter   -> Sum, monotonic, cumulative
 *   gauge     -> Gauge
 *   histogram -> Histogram, cumulative: explicit bounds are the finite `le` values, and each bucket count is the
 *                observations in that bucket alone (Prometheus buckets are cumulative), plus the one above the
 *                last bound; sum and count as recorded
 *   summary   -> not sent (the SDK's data model has no summary); reported once per metric as a collection error
 * Labels become attributes with string values, as a scrape would show them (one with an empty value, which
 * Prometheus takes for no label, is left out). Names stay as registered unless `names` and `attributes` give the
 * OTLP ones: the gateway's give the semantic conventions' (`http.server.request.duration`, `http.request.method`,
 * an int `http.response.status_code`, `http.server.active_requests` as an UpDownCounter), which Prometheus' OTLP
 * translation turns back into the scraped names, so one query still works on both paths. Exemplars are dropped:
 * the SDK's data points have no field for them and neither of its OTLP serializers (protobuf, JSON) writes one.
 */
import { ValueType, type Attributes, type HrTime } from '@opentelemetry/api';
import { millisToHrTime, type InstrumentationScope } from '@opentelemetry/core';
import { emptyResource } from '@opentelemetry/resources';
import {
  AggregationTemporality,
  DataPointType,
  type CollectionResult,
  type DataPoint,
  type Histogram,
  type MetricData,
  type MetricDescriptor,
  type MetricProducer,
} from '@opentelemetry/sdk-metrics';
import type { Registry } from 'prom-client';

export interface PromClientMetricProducerOptions {
  /**
   * When the registry started counting, ms since the epoch: the start time of every cumulative point. Default:
   * when the producer is created, so create it right after the registry (or pass the registry's creation time).
   */
  startTimeMs?: number;
  /** The instrumentation scope the metrics are sent under. Default `{ name: 'prom-client' }`. */
  scope?: InstrumentationScope;
  /** Clock, ms since the epoch; the time of each collected point. Default `Date.now`. */
  now?: () => number;
  /** How a metric is sent, by its registered (family) name; one not named here is sent as registered. */
  names?: Readonly<Record<string, OtlpMetricName>>;
  /** How a label is sent, by its name; one not named here becomes an attribute of that name, a string. */
  attributes?: Readonly<Record<string, OtlpAttributeName>>;
}

/** A metric's OTLP identity, where it is not the registered one. */
export interface OtlpMetricName {
  /** Its OTLP name (`http.server.request.duration`). */
  name: string;
  /** Its unit (UCUM: `s`, `{request}`). Default: from the registered name's suffix (`_seconds` is `s`), else none. */
  unit?: string;
  /**
   * A gauge that reads an UpDownCounter (requests in progress): sent as a non-monotonic cumulative Sum, the kind
   * the conventions give it, rather than as a Gauge. Ignored for other types.
   */
  upDownCounter?: boolean;
}

/** A label's OTLP attribute: its key, and `int` when its values are integers (a status code, a port). */
export interface OtlpAttributeName {
  key: string;
  /** Sent as an integer; a value that is not a whole number stays a string. */
  int?: boolean;
  /**
   * The label's value that stands for "no value" on the scrape, where an empty label would be unreadable in a
   * legend: that series is sent without the attribute, as the conventions want one that is not available.
   */
  absent?: string;
}

/** What `registry.getMetricsAsJSON()` returns at run time (its declared types name an enum it does not use). */
interface PromMetric {
  name: string;
  help: string;
  type: string;
  values: ReadonlyArray<{ value: number; labels: Readonly<Record<string, string | number | undefined>>; metricName?: string }>;
}

/** Units the OTLP side can state, from Prometheus' base-unit name suffixes. */
const UNIT_BY_SUFFIX: ReadonlyArray<readonly [string, string]> = [
  ['_seconds', 's'],
  ['_bytes', 'By'],
];

/** What the bridge reads of a registry; any content type will do. */
export type PromClientRegistry = Pick<Registry, 'getMetricsAsJSON'>;

/** Sends `registry`'s metrics with every export of the reader it is given to (`metricProducers`). */
export function createPromClientMetricProducer(registry: PromClientRegistry, options: PromClientMetricProducerOptions = {}): MetricProducer {
  const now = options.now ?? Date.now;
  const startTime = millisToHrTime(options.startTimeMs ?? now());
  const scope = options.scope ?? { name: 'prom-client' };
  const reportedUnsupported = new Set<string>();
  const naming: Naming = { metrics: options.names ?? {}, attributes: options.attributes ?? {} };

  return {
    async collect(): Promise<CollectionResult> {
      const errors: unknown[] = [];
      let metrics: PromMetric[];
      try {
        metrics = (await registry.getMetricsAsJSON()) as unknown as PromMetric[];
      } catch (error) {
        // A metric's collect() callback threw: nothing from this registry this time, the SDK's own still go.
        return { resourceMetrics: { resource: emptyResource(), scopeMetrics: [] }, errors: [error] };
      }
      const endTime = millisToHrTime(now());
      const converted: MetricData[] = [];
      for (const metric of metrics) {
        const data = toMetricData(metric, startTime, endTime, naming);
        if (data !== undefined) converted.push(data);
        else if (!reportedUnsupported.has(metric.name)) {
          reportedUnsupported.add(metric.name);
          errors.push(new Error(`prom-client ${metric.type} "${metric.name}" has no OTLP equivalent here; it is not exported`));
        }
      }
      return {
        // The reader replaces a producer's resource with the SDK's.
        resourceMetrics: { resource: emptyResource(), scopeMetrics: converted.length > 0 ? [{ scope, metrics: converted }] : [] },
        errors,
      };
    },
  };
}

interface Naming {
  metrics: Readonly<Record<string, OtlpMetricName>>;
  attributes: Readonly<Record<string, OtlpAttributeName>>;
}

function toMetricData(metric: PromMetric, startTime: HrTime, endTime: HrTime, naming: Naming): MetricData | undefined {
  const named = Object.hasOwn(naming.metrics, metric.name) ? naming.metrics[metric.name] : undefined;
  const descriptor: MetricDescriptor = {
    name: named?.name ?? metric.name,
    description: metric.help,
    unit: named?.unit ?? UNIT_BY_SUFFIX.find(([suffix]) => metric.name.endsWith(suffix))?.[1] ?? '',
    valueType: ValueType.DOUBLE,
  };
  const point = <T>(labels: PromMetric['values'][number]['labels'], value: T): DataPoint<T> => ({
    startTime,
    endTime,
    attributes: attributes(labels, naming.attributes),
    value,
  });
  /** A counter (monotonic) or a gauge the conventions make an UpDownCounter: an OTLP Sum either way. */
  const sum = (isMonotonic: boolean): MetricData => ({
    descriptor,
    aggregationTemporality: AggregationTemporality.CUMULATIVE,
    dataPointType: DataPointType.SUM,
    isMonotonic,
    dataPoints: metric.values.map((v) => point(v.labels, v.value)),
  });
  switch (metric.type) {
    case 'counter':
      return sum(true);
    case 'gauge':
      if (named?.upDownCounter) return sum(false);
      return {
        descriptor,
        aggregationTemporality: AggregationTemporality.CUMULATIVE,
        dataPointType: DataPointType.GAUGE,
        dataPoints: metric.values.map((v) => point(v.labels, v.value)),
      };
    case 'histogram':
      return {
        descriptor,
        aggregationTemporality: AggregationTemporality.CUMULATIVE,
        dataPointType: DataPointType.HISTOGRAM,
        dataPoints: histogramSeries(metric).map(({ labels, histogram }) => point(labels, histogram)),
      };
    default:
      return undefined;
  }
}

interface HistogramSeries {
  labels: Record<string, string | number | undefined>;
  /** Cumulative count at each finite `le`. */
  buckets: Array<{ le: number; cumulative: number }>;
  sum: number;
  count: number;
}

/**
 * prom-client lists a histogram as `<name>_bucket` lines (one per `le`, cumulative, `+Inf` last), then
 * `<name>_sum` and `<name>_count`, for each label set; this regroups them per label set.
 */
function histogramSeries(metric: PromMetric): Array<{ labels: HistogramSeries['labels']; histogram: Histogram }> {
  const series = new Map<string, HistogramSeries>();
  for (const { value, labels, metricName } of metric.values) {
    const { le, ...rest } = labels;
    const key = JSON.stringify(Object.entries(rest).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    let entry = series.get(key);
    if (entry === undefined) {
      entry = { labels: rest, buckets: [], sum: 0, count: 0 };
      series.set(key, entry);
    }
    if (metricName === `${metric.name}_sum`) entry.sum = value;
    else if (metricName === `${metric.name}_count`) entry.count = value;
    else if (metricName === `${metric.name}_bucket` && le !== undefined && Number.isFinite(Number(le))) {
      entry.buckets.push({ le: Number(le), cumulative: value });
    }
  }
  return [...series.values()].map(({ labels, buckets, sum, count }) => {
    buckets.sort((a, b) => a.le - b.le);
    const counts = buckets.map((bucket, i) => bucket.cumulative - (i === 0 ? 0 : buckets[i - 1]!.cumulative));
    counts.push(count - (buckets.at(-1)?.cumulative ?? 0));
    return { labels, histogram: { buckets: { boundaries: buckets.map((b) => b.le), counts }, sum, count } };
  });
}

/**
 * A label with an empty value is no label to Prometheus (a scrape drops it), so it is no attribute either; nor is
 * one whose value is its `absent` stand-in.
 */
function attributes(labels: Readonly<Record<string, string | number | undefined>>, names: Naming['attributes']): Attributes {
  const result: Attributes = {};
  for (const [label, value] of Object.entries(labels)) {
    if (value === undefined || value === '') continue;
    const named = Object.hasOwn(names, label) ? names[label] : undefined;
    const text = String(value);
    if (named?.absent === text) continue;
    result[named?.key ?? label] = named?.int && /^-?\d+$/.test(text) ? Number(text) : text;
  }
  return result;
}
