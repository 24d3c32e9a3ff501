/**
 * The prom-client -> OTLP bridge on its own: a registry with known observations, collected as the SDK's reader
 * would, gives exactly these ResourceMetrics.
 */
import { ValueType } from '@opentelemetry/api';
import { millisToHrTime } from '@opentelemetry/core';
import { AggregationTemporality, DataPointType, type MetricData } from '@opentelemetry/sdk-metrics';
import { Counter, Gauge, Histogram, Registry, Summary, type LabelValues, type OpenMetricsContentType } from 'prom-client';
import { createPromClientMetricProducer } from '../../otel/prom-client-otlp-bridge';

const CREATED_MS = Date.UTC(2026, 10, 28, 10, 0, 0);
const COLLECTED_MS = CREATED_MS + 90_000;
const START = millisToHrTime(CREATED_MS);
const END = millisToHrTime(COLLECTED_MS);

function knownRegistry(): Registry<OpenMetricsContentType> {
  // OpenMetrics, as the gateway's: prom-client keeps exemplars only there.
  const registry = new Registry<OpenMetricsContentType>();
  registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
  const registers = [registry];
  const decisions = new Counter({ name: 'rate_limit_decisions', help: 'Decisions.', labelNames: ['policy', 'decision'], registers });
  decisions.inc({ policy: 'global', decision: 'allowed' }, 3);
  decisions.inc({ policy: 'global', decision: 'limited' });
  const active = new Gauge({ name: 'active_requests', help: 'In flight.', labelNames: ['method'], registers });
  active.set({ method: 'GET' }, 2);
  const duration = new Histogram({
    name: 'request_duration_seconds',
    help: 'Durations.',
    labelNames: ['route', 'status'],
    buckets: [0.1, 0.5, 1],
    enableExemplars: true,
    registers,
  });
  // route /a: one per bucket, two above the last bound; route /b: one observation, with an exemplar.
  for (const value of [0.05, 0.3, 0.7, 2, 3]) duration.observe({ labels: { route: '/a', status: 200 }, value });
  const exemplar: LabelValues<string> = { trace_id: '0af7651916cd43dd8448eb211c80319c' };
  duration.observe({ labels: { route: '/b', status: 503 }, value: 0.1, exemplarLabels: exemplar });
  return registry;
}

const descriptor = (name: string, description: string, unit = '') => ({ name, description, unit, valueType: ValueType.DOUBLE });
const point = <T>(attributes: Record<string, string>, value: T) => ({ startTime: START, endTime: END, attributes, value });

it('collects counters as monotonic cumulative sums, gauges as gauges and histograms per bucket, labels as attributes', async () => {
  const producer = createPromClientMetricProducer(knownRegistry(), { startTimeMs: CREATED_MS, now: () => COLLECTED_MS, scope: { name: 'gateway', version: '1.0.0' } });
  const { resourceMetrics, errors } = await producer.collect();

  expect(errors).toEqual([]);
  expect(resourceMetrics.scopeMetrics).toHaveLength(1);
  expect(resourceMetrics.scopeMetrics[0]!.scope).toEqual({ name: 'gateway', version: '1.0.0' });
  expect(resourceMetrics.scopeMetrics[0]!.metrics).toEqual<MetricData[]>([
    {
      descriptor: descriptor('rate_limit_decisions', 'Decisions.'),
      aggregationTemporality: AggregationTemporality.CUMULATIVE,
      dataPointType: DataPointType.SUM,
      isMonotonic: true,
      dataPoints: [point({ policy: 'global', decision: 'allowed' }, 3), point({ policy: 'global', decision: 'limited' }, 1)],
    },
    {
      descriptor: descriptor('active_requests', 'In flight.'),
      aggregationTemporality: AggregationTemporality.CUMULATIVE,
      dataPointType: DataPointType.GAUGE,
      dataPoints: [point({ method: 'GET' }, 2)],
    },
    {
      descriptor: descriptor('request_duration_seconds', 'Durations.', 's'),
      aggregationTemporality: AggregationTemporality.CUMULATIVE,
      dataPointType: DataPointType.HISTOGRAM,
      dataPoints: [
        // Prometheus says le=0.1: 1, le=0.5: 2, le=1: 3, +Inf: 5; OTLP wants 1, 1, 1 and 2 above the last bound.
        point({ route: '/a', status: '200' }, { buckets: { boundaries: [0.1, 0.5, 1], counts: [1, 1, 1, 2] }, sum: 6.05, count: 5 }),
        // An observation equal to a bound is in that bound's bucket (le is inclusive, as OTLP's upper bounds).
        point({ route: '/b', status: '503' }, { buckets: { boundaries: [0.1, 0.5, 1], counts: [1, 0, 0, 0] }, sum: 0.1, count: 1 }),
      ],
    },
  ]);
});

it('sends the names, units, kinds and attribute keys it is given: an UpDownCounter as a non-monotonic sum, int attributes as numbers', async () => {
  const producer = createPromClientMetricProducer(knownRegistry(), {
    startTimeMs: CREATED_MS,
    now: () => COLLECTED_MS,
    names: {
      active_requests: { name: 'http.server.active_requests', unit: '{request}', upDownCounter: true },
      request_duration_seconds: { name: 'http.server.request.duration' },
    },
    attributes: { method: { key: 'http.request.method' }, route: { key: 'http.route' }, status: { key: 'http.response.status_code', int: true } },
  });
  const metrics = (await producer.collect()).resourceMetrics.scopeMetrics[0]!.metrics;
  // Not named: as registered.
  expect(metrics[0]!.descriptor.name).toBe('rate_limit_decisions');
  expect(metrics[0]!.dataPoints.map((p) => p.attributes)).toEqual([{ policy: 'global', decision: 'allowed' }, { policy: 'global', decision: 'limited' }]);
  expect(metrics[1]).toEqual<MetricData>({
    descriptor: descriptor('http.server.active_requests', 'In flight.', '{request}'),
    aggregationTemporality: AggregationTemporality.CUMULATIVE,
    dataPointType: DataPointType.SUM,
    isMonotonic: false,
    dataPoints: [point({ 'http.request.method': 'GET' }, 2)],
  });
  // The unit still follows the registered name's suffix when none is given.
  expect(metrics[2]!.descriptor).toEqual(descriptor('http.server.request.duration', 'Durations.', 's'));
  expect(metrics[2]!.dataPoints.map((p) => p.attributes)).toEqual([
    { 'http.route': '/a', 'http.response.status_code': 200 },
    { 'http.route': '/b', 'http.response.status_code': 503 },
  ]);
});

it('stays cumulative: a later collection carries the totals since the start, with the same start time', async () => {
  const registry = new Registry();
  const counter = new Counter({ name: 'hits', help: 'Hits.', registers: [registry] });
  let now = CREATED_MS;
  const producer = createPromClientMetricProducer(registry, { now: () => now });
  counter.inc(2);
  now += 1_000;
  const first = await producer.collect();
  counter.inc(5);
  now += 1_000;
  const second = await producer.collect();
  const points = [first, second].map((r) => r.resourceMetrics.scopeMetrics[0]!.metrics[0]!.dataPoints[0]!);
  expect(points.map((p) => [p.startTime, p.endTime, p.value])).toEqual([
    [START, millisToHrTime(CREATED_MS + 1_000), 2],
    [START, millisToHrTime(CREATED_MS + 2_000), 7],
  ]);
});

it('applies the registry default labels, as a scrape shows them', async () => {
  const registry = new Registry();
  registry.setDefaultLabels({ instance: 'gw-1' });
  new Gauge({ name: 'up_since', help: 'Start.', registers: [registry] }).set(1);
  const { resourceMetrics } = await createPromClientMetricProducer(registry).collect();
  expect(resourceMetrics.scopeMetrics[0]!.metrics[0]!.dataPoints[0]!.attributes).toEqual({ instance: 'gw-1' });
});

// Prometheus takes a label with an empty value for no label at all (its scrape drops it); an OTLP attribute of ""
// is a value. The gateway writes "" for what a request did not have (error_type, a route name, a status never sent).
it('leaves out labels whose value is empty, as a Prometheus scrape does', async () => {
  const registry = new Registry();
  const registers = [registry];
  new Counter({ name: 'failures', help: 'Failures.', labelNames: ['route', 'error_type'], registers }).inc({ route: 'users', error_type: '' });
  new Histogram({ name: 'wait_seconds', help: 'Waits.', labelNames: ['route', 'status'], buckets: [1], registers }).observe({ route: '', status: 200 }, 0.5);
  const { resourceMetrics } = await createPromClientMetricProducer(registry).collect();
  expect(resourceMetrics.scopeMetrics[0]!.metrics.map((metric) => metric.dataPoints.map((each) => each.attributes))).toEqual([[{ route: 'users' }], [{ status: '200' }]]);
});

it('sends no scope for an empty registry, so the reader skips an export with nothing in it', async () => {
  const { resourceMetrics, errors } = await createPromClientMetricProducer(new Registry()).collect();
  expect({ scopeMetrics: resourceMetrics.scopeMetrics, errors }).toEqual({ scopeMetrics: [], errors: [] });
});

it('leaves out a summary, which the SDK cannot carry, and says so once, not at every export', async () => {
  const registry = new Registry();
  new Summary({ name: 'latency_summary', help: 'Quantiles.', registers: [registry] }).observe(1);
  new Counter({ name: 'kept', help: 'Kept.', registers: [registry] }).inc();
  const producer = createPromClientMetricProducer(registry);
  const first = await producer.collect();
  const second = await producer.collect();
  expect(first.resourceMetrics.scopeMetrics[0]!.metrics.map((m) => m.descriptor.name)).toEqual(['kept']);
  expect(first.errors).toEqual([new Error('prom-client summary "latency_summary" has no OTLP equivalent here; it is not exported')]);
  expect(second.errors).toEqual([]);
});

it('reports a failing collect callback as a collection error instead of failing the export', async () => {
  const registry = new Registry();
  new Gauge({
    name: 'broken',
    help: 'Throws.',
    registers: [registry],
    collect() {
      throw new Error('sensor unavailable');
    },
  });
  const { resourceMetrics, errors } = await createPromClientMetricProducer(registry).collect();
  expect(resourceMetrics.scopeMetrics).toEqual([]);
  expect(errors).toEqual([new Error('sensor unavailable')]);
});
