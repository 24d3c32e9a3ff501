import { TraceFlags, type SpanContext } from '@opentelemetry/api';
import fc from 'fast-check';
import { Counter, Gauge, Histogram, Registry, type LabelValues, type OpenMetricsContentType } from 'prom-client';
import { counterSeries, EXEMPLAR_INTERVAL_MS, gaugeSeries, histogramSeries, seriesByLabels, type LabelValue } from '../../src/metric-series';

/**
 * Series write into prom-client's own records (src/metric-series.ts), so whatever they record must read back
 * exactly as prom-client's public API would have recorded it: same buckets, sums, counts, values, exemplars and
 * series order, through resets and removals. A prom-client upgrade that moves its internals fails here.
 */

const BUCKETS = [0.005, 0.01, 0.1, 1, 2.5];
const METHODS = ['GET', 'POST'];
// '' and values with prom-client's hash separators (',' and ':') next to each other: keys built by joining
// labels would confuse 'a,b' + '' with 'a' + 'b'.
const ROUTES = ['', 'a', 'a,b', 'b', 'x:1,', '/api/users/*'];
const STATUSES = [200, 404];

function instruments() {
  const registry = new Registry<OpenMetricsContentType>();
  registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
  const registers = [registry];
  return {
    registry,
    duration: new Histogram({ name: 'duration_seconds', help: 'Durations.', labelNames: ['method', 'route', 'status'], buckets: BUCKETS, enableExemplars: true, registers }),
    decisions: new Counter({ name: 'decisions', help: 'Decisions.', labelNames: ['policy', 'decision'], registers }),
    active: new Gauge({ name: 'active', help: 'Active.', labelNames: ['method'], registers }),
  };
}

/** The exposition with exemplar timestamps (prom-client's wall clock, s) left out: the two registries differ only there. */
async function exposition(registry: Registry<OpenMetricsContentType>): Promise<string> {
  return (await registry.metrics()).replace(/( # \{[^}]*\} \S+) \S+$/gm, '$1');
}

const value = fc.oneof(fc.constantFrom(0, ...BUCKETS, 3), fc.double({ min: 0, max: 4, noNaN: true }));
const operation = fc.oneof(
  { weight: 12, arbitrary: fc.record({ kind: fc.constant('observe' as const), method: fc.constantFrom(...METHODS), route: fc.constantFrom(...ROUTES), status: fc.constantFrom(...STATUSES), value, sampled: fc.boolean(), advanceMs: fc.constantFrom(0, 1, 400, EXEMPLAR_INTERVAL_MS) }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('count' as const), policy: fc.constantFrom(...ROUTES), decision: fc.constantFrom('allowed', 'limited'), by: fc.constantFrom(undefined, 0, 1, 2.5) }) },
  { weight: 4, arbitrary: fc.record({ kind: fc.constant('gauge' as const), method: fc.constantFrom(...METHODS), up: fc.boolean(), by: fc.constantFrom(undefined, 1, 3) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('reset' as const), which: fc.constantFrom('duration' as const, 'decisions' as const, 'active' as const) }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('remove' as const), method: fc.constantFrom(...METHODS), route: fc.constantFrom(...ROUTES), status: fc.constantFrom(...STATUSES) }) },
  // zero() replaces a combination's record with an empty one, as reset() and remove() drop records.
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('zero' as const), method: fc.constantFrom(...METHODS), route: fc.constantFrom(...ROUTES), status: fc.constantFrom(...STATUSES) }) },
  // prom-client's own observe() on a combination a series also records (its `+= 1` on the bucket counts).
  { weight: 2, arbitrary: fc.record({ kind: fc.constant('direct' as const), method: fc.constantFrom(...METHODS), route: fc.constantFrom(...ROUTES), status: fc.constantFrom(...STATUSES), value }) },
);

describe('metric series', () => {
  it("record exactly what prom-client's own observe, inc and dec record, through resets, removals, zeroes and its own observe calls", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(operation, { minLength: 20, maxLength: 120, size: 'max' }), async (operations) => {
        const fast = instruments();
        const reference = instruments();
        const durations = seriesByLabels(['method', 'route', 'status'], (labels) => histogramSeries(fast.duration, labels));
        // A second series per combination, as two callers of one histogram would have: both must count into one record.
        const twins = seriesByLabels(['method', 'route', 'status'], (labels) => histogramSeries(fast.duration, labels));
        const decisions = seriesByLabels(['policy', 'decision'], (labels) => counterSeries(fast.decisions, labels));
        const active = seriesByLabels(['method'], (labels) => gaugeSeries(fast.active, labels));
        // The reference's exemplars, chosen as the series promise: sampled, and once per interval per series and bucket.
        const nextExemplarAt = new Map<string, number>();
        let clock = 5_000;
        let trace = 0;

        for (const op of operations) {
          switch (op.kind) {
            case 'observe': {
              clock += op.advanceMs;
              const traceId = (++trace).toString(16).padStart(32, '0');
              const span: SpanContext = { traceId, spanId: '1'.repeat(16), traceFlags: op.sampled ? TraceFlags.SAMPLED : TraceFlags.NONE };
              // A twin has an exemplar gate of its own (the model keeps one per combination): it records none here.
              const twin = trace % 3 === 0;
              if (twin) twins(op.method, op.route, op.status).observe(op.value, undefined, clock);
              else durations(op.method, op.route, op.status).observe(op.value, span, clock);

              const labels = { method: op.method, route: op.route, status: op.status };
              const key = `${JSON.stringify(labels)} ${BUCKETS.findIndex((bound) => op.value <= bound)}`;
              const open = !twin && op.sampled && (nextExemplarAt.get(key) ?? 0) <= clock;
              if (open) nextExemplarAt.set(key, clock + EXEMPLAR_INTERVAL_MS);
              // prom-client types exemplar labels as the histogram's own label names; any names are valid.
              const exemplarLabels = { trace_id: traceId } as LabelValues<string>;
              reference.duration.observe({ labels, value: op.value, ...(open ? { exemplarLabels } : {}) });
              break;
            }
            case 'count':
              decisions(op.policy, op.decision).inc(op.by);
              reference.decisions.inc({ policy: op.policy, decision: op.decision }, op.by);
              break;
            case 'gauge':
              if (op.up) active(op.method).inc(op.by);
              else active(op.method).dec(op.by);
              if (op.up) reference.active.inc({ method: op.method }, op.by);
              else reference.active.dec({ method: op.method }, op.by);
              break;
            case 'reset':
              fast[op.which].reset();
              reference[op.which].reset();
              // A reset drops the exemplars with the series; the series' own gate state does not matter then,
              // as a later exemplar is chosen by time alone, the same way on both sides.
              break;
            case 'remove':
              fast.duration.remove({ method: op.method, route: op.route, status: op.status });
              reference.duration.remove({ method: op.method, route: op.route, status: op.status });
              break;
            case 'zero':
              fast.duration.zero({ method: op.method, route: op.route, status: op.status });
              reference.duration.zero({ method: op.method, route: op.route, status: op.status });
              break;
            case 'direct':
              fast.duration.observe({ labels: { method: op.method, route: op.route, status: op.status }, value: op.value });
              reference.duration.observe({ labels: { method: op.method, route: op.route, status: op.status }, value: op.value });
              break;
          }
          // Not after every step: a series must not depend on being read (a scrape) between updates and resets.
          if (op.kind !== 'observe' || trace % 4 === 0) expect(await exposition(fast.registry)).toBe(await exposition(reference.registry));
        }
        expect(await exposition(fast.registry)).toBe(await exposition(reference.registry));
      }),
      { seed: 11, numRuns: 60 },
    );
  });

  it('throws for a value prom-client refuses, as prom-client does, and records nothing', async () => {
    const { registry, duration, decisions } = instruments();
    const series = histogramSeries(duration, { method: 'GET', route: 'a', status: 200 });
    series.observe(0.5, undefined, 0);
    const before = await registry.metrics();
    expect(() => series.observe(Number.NaN, undefined, 0)).toThrow(TypeError);
    expect(() => series.observe(Infinity, undefined, 0)).toThrow(TypeError);
    const counter = counterSeries(decisions, { policy: 'p', decision: 'allowed' });
    counter.inc();
    expect(() => counter.inc(-1)).toThrow('It is not possible to decrease a counter');
    expect((await registry.metrics()).replace('decisions_total{policy="p",decision="allowed"} 1\n', '')).toBe(before);
  });
});

describe('series by label values', () => {
  const labelValue = fc.oneof(fc.constantFrom<LabelValue>('', 'a', 'a,b', 'b', ',', ':', '1', 1, 200, '200', 0, -0), fc.string({ maxLength: 3 }));

  it('gives two calls one series exactly when every label value is the same, with those labels', () => {
    fc.assert(
      fc.property(fc.array(fc.tuple(labelValue, labelValue, labelValue), { minLength: 1, maxLength: 40 }), (calls) => {
        const created: Array<Record<string, LabelValue>> = [];
        const find = seriesByLabels(['x', 'y', 'z'], (labels) => {
          created.push(labels);
          return { labels };
        });
        const found = calls.map((values) => find(...values));
        calls.forEach((values, i) => {
          expect(found[i]!.labels).toEqual({ x: values[0], y: values[1], z: values[2] });
          calls.forEach((other, j) => {
            // SameValueZero, as a Map compares keys: 1 and '1' are two entries (of one prom-client series).
            const same = values.every((v, k) => Object.is(v, other[k]) || (v === 0 && other[k] === 0));
            expect(found[i] === found[j]).toBe(same);
          });
        });
        expect(created).toHaveLength(new Set(found).size);
      }),
      { seed: 11, numRuns: 300 },
    );
  });

  it('refuses a number of label values that is not the number of labels', () => {
    const find = seriesByLabels(['x', 'y'], (labels) => labels);
    expect(() => find('a')).toThrow(RangeError);
    expect(() => find('a', 'b', 'c')).toThrow(RangeError);
  });
});
