import { TraceFlags, type SpanContext } from '@opentelemetry/api';
import { Histogram, Registry, type OpenMetricsContentType } from 'prom-client';
import { EXEMPLAR_INTERVAL_MS, histogramSeries, type HistogramSeries } from '../../src/metric-series';

/** Which observations of a histogram series carry an exemplar (src/metric-series.ts, HistogramSeries.observe). */
const sampled = (traceId: string): SpanContext => ({ traceId, spanId: '1'.repeat(16), traceFlags: TraceFlags.SAMPLED });
const unsampled = (traceId: string): SpanContext => ({ traceId, spanId: '1'.repeat(16), traceFlags: TraceFlags.NONE });

describe('exemplar gate', () => {
  let clock: number;
  let histogram: Histogram<'series'>;
  let a: HistogramSeries;
  let b: HistogramSeries;
  beforeEach(() => {
    clock = 1_000_000;
    const registry = new Registry<OpenMetricsContentType>();
    registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    histogram = new Histogram({ name: 'duration_seconds', help: 'Durations.', labelNames: ['series'], buckets: [0.01, 0.1, 1], enableExemplars: true, registers: [registry] });
    a = histogramSeries(histogram, { series: 'a' });
    b = histogramSeries(histogram, { series: 'b' });
  });

  /** The trace id of each bucket's exemplar (`le` -> trace id), of one series. */
  async function exemplars(series: string): Promise<Record<string, string>> {
    // What get() returns at run time: each bucket's `le` among the labels, and its exemplar (or null).
    const values = (await histogram.get()).values as unknown as Array<{ labels: Record<string, string | number>; exemplar?: { labelSet: { trace_id: string } } | null }>;
    const withExemplar = values.filter((v) => v.labels.series === series && v.exemplar);
    return Object.fromEntries(withExemplar.map((v) => [String(v.labels.le), v.exemplar!.labelSet.trace_id]));
  }

  it('gives a sampled observation its trace id, and an unsampled one none', async () => {
    a.observe(0.005, sampled('a'.repeat(32)), clock);
    b.observe(0.005, unsampled('b'.repeat(32)), clock);
    b.observe(0.05, undefined, clock);
    expect(await exemplars('a')).toEqual({ '0.01': 'a'.repeat(32) });
    expect(await exemplars('b')).toEqual({});
  });

  it('gives one series and bucket at most one exemplar per interval, then the next one', async () => {
    a.observe(0.005, sampled('1'.repeat(32)), clock);
    a.observe(0.006, sampled('2'.repeat(32)), clock);
    clock += EXEMPLAR_INTERVAL_MS - 1;
    a.observe(0.007, sampled('3'.repeat(32)), clock);
    expect(await exemplars('a')).toEqual({ '0.01': '1'.repeat(32) });
    clock += 1;
    a.observe(0.008, sampled('4'.repeat(32)), clock);
    expect(await exemplars('a')).toEqual({ '0.01': '4'.repeat(32) });
  });

  it('never lets a hot bucket or series take the exemplar of a rare one (the slow tail)', async () => {
    a.observe(0.005, sampled('1'.repeat(32)), clock);
    a.observe(0.5, sampled('2'.repeat(32)), clock);
    a.observe(5, sampled('3'.repeat(32)), clock);
    b.observe(0.005, sampled('4'.repeat(32)), clock);
    expect(await exemplars('a')).toEqual({ '0.01': '1'.repeat(32), '1': '2'.repeat(32), '+Inf': '3'.repeat(32) });
    expect(await exemplars('b')).toEqual({ '0.01': '4'.repeat(32) });
  });

  it('leaves the exemplar of a sampled observation in place when an unsampled one lands in its bucket', async () => {
    a.observe(0.005, sampled('1'.repeat(32)), clock);
    clock += EXEMPLAR_INTERVAL_MS;
    a.observe(0.006, unsampled('2'.repeat(32)), clock);
    expect(await exemplars('a')).toEqual({ '0.01': '1'.repeat(32) });
  });
});
