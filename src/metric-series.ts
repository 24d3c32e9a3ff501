import { TraceFlags, type SpanContext } from '@opentelemetry/api';
import type { Counter, Gauge, Histogram, LabelValues } from 'prom-client';
import { EXEMPLAR_LABEL } from '../otel/wire-names';

/**
 * One label combination of a prom-client instrument, recorded without prom-client's per-call work. On every
 * `observe`/`inc`, prom-client 15 allocates a closure and an object, validates the labels (for-in and
 * `includes`), joins every label into a hash string, looks the series up by it and turns the bucket bound into
 * a property name. For the two histograms, the gauge and the counter a proxied request records, that was 23.2k
 * instructions (callgrind, steady state), 2.6k through series (issue 11: metrics cost <= 5% per request).
 * A series does that once: its first update goes through prom-client's own API, which creates the record
 * prom-client keeps for the combination; later updates change that record's fields directly. The registry,
 * the scrape output and the OTLP bridge read the same records as before.
 *
 * Before each direct update a series checks that the registry still holds its record under the combination's
 * hash (`reset()` and `remove()` drop it) and goes through prom-client again otherwise, so it never writes to
 * a record nobody reads. This reaches into prom-client's internals (`hashMap`, `sortedLabelNames`,
 * `upperBounds`, the record's fields), which is why package.json pins prom-client exactly;
 * test/unit/metric-series.test.ts compares every update with prom-client's own path and fails if they move.
 */

/** Least time between two exemplars of one series and bucket, ms: see HistogramSeries.observe. */
export const EXEMPLAR_INTERVAL_MS = 1000;

export interface HistogramSeries {
  /**
   * Records `value` (s). The observation carries the trace id of `spanContext` as its bucket's exemplar when
   * that span was sampled (W3C flag 01: an exemplar pointing at a trace that was never exported would be a
   * dead link) and this series and bucket had none in the EXEMPLAR_INTERVAL_MS before `nowMs` (any
   * monotonic ms clock, e.g. `performance.now()`). Prometheus keeps one exemplar per series and bucket per
   * scrape (every 15 s in compose), so more than one a second is bookkeeping nobody reads; a hot bucket then
   * costs one exemplar a second while a rare one (the slow tail worth opening) still gets its exemplar at once.
   */
  observe(value: number, spanContext: SpanContext | undefined, nowMs: number): void;
}

export interface CounterSeries {
  /** Adds `value` (default 1); a counter refuses a negative one, as prom-client does. */
  inc(value?: number): void;
}

export interface GaugeSeries extends CounterSeries {
  /** Subtracts `value` (default 1). */
  dec(value?: number): void;
}

/** The record prom-client 15 keeps per label combination of a histogram (lib/histogram.js createBaseValues). */
interface HistogramRecord {
  bucketValues: Record<string, number>;
  /** With `enableExemplars`: per bound's name (`'-1'` for +Inf), the bucket's exemplar or null. */
  bucketExemplars?: Record<string, ExemplarRecord | null>;
  sum: number;
  count: number;
}

/** prom-client 15's exemplar (lib/exemplar.js); its exposition reads these three fields. */
interface ExemplarRecord {
  labelSet: LabelValues<string>;
  value: number;
  timestamp?: number;
}

/** The record prom-client 15 keeps per label combination of a counter or gauge (lib/counter.js, lib/util.js). */
interface ValueRecord {
  value: number;
}

interface Internals<R> {
  hashMap: Record<string, R>;
  sortedLabelNames: readonly string[];
}

interface HistogramInternals extends Internals<HistogramRecord> {
  upperBounds: readonly number[];
}

/** prom-client's key of a label combination in `hashMap` (lib/util.js hashObject), used as it is. */
const { hashObject } = require('prom-client/lib/util') as { hashObject(labels: object, sortedLabelNames: readonly string[]): string };
const Exemplar = require('prom-client/lib/exemplar') as new () => ExemplarRecord;
/** OpenMetrics' bound on an exemplar's label set (names and values, in characters), as prom-client checks it. */
const EXEMPLAR_LABEL_SET_MAX = 128;

/**
 * How many times `histogram` dropped or replaced records (`reset()`, `remove()`, `zero()`: the only prom-client 15
 * calls that do), counted by wrapping those three once per histogram. A series checks this one number before each
 * direct update, where it looked its record up in `hashMap` by its key string: one dictionary lookup per
 * observation through a megamorphic inline cache (every series' key is another name at the same site).
 */
interface RecordGeneration {
  value: number;
}

const generations = new WeakMap<object, RecordGeneration>();

function recordGeneration(histogram: HistogramInternals & Record<'reset' | 'remove' | 'zero', (...args: never[]) => unknown>): RecordGeneration {
  const known = generations.get(histogram);
  if (known !== undefined) return known;
  const counted: RecordGeneration = { value: 0 };
  for (const method of ['reset', 'remove', 'zero'] as const) {
    const original = histogram[method];
    histogram[method] = function (this: unknown, ...args: never[]) {
      counted.value++;
      return original.apply(this, args);
    };
  }
  generations.set(histogram, counted);
  return counted;
}

/** The bucket counts each record's bucketValues read, shared by every series that reaches the record. */
const bucketCounts = new WeakMap<HistogramRecord, Float64Array>();

/**
 * The finite buckets' counts of `record` (one per bound, in `bounds` order), starting from those it has. The first
 * time, each bound's property of its bucketValues becomes an accessor over its slot, under the name and in the
 * order prom-client made it, so prom-client's reads (`bucketValues[bound]`) and its own `+= 1` (the `observe()`
 * path) see and change the same counts. A series then counts a bucket with one typed-array store, where
 * `bucketValues[name] += 1` was a keyed load and store through megamorphic inline caches (the name differs per bucket).
 */
function countsOf(record: HistogramRecord, bounds: readonly number[]): Float64Array {
  const known = bucketCounts.get(record);
  if (known !== undefined) return known;
  const counts = new Float64Array(bounds.length);
  const bucketValues: Record<string, number> = {};
  bounds.forEach((bound, index) => {
    counts[index] = record.bucketValues[String(bound)] ?? 0;
    Object.defineProperty(bucketValues, String(bound), {
      get: () => counts[index]!,
      set: (count: number) => void (counts[index] = count),
      enumerable: true,
    });
  });
  record.bucketValues = bucketValues;
  bucketCounts.set(record, counts);
  return counts;
}

/** `histogram`'s series for `labels` (every label name of the histogram, values as they are to be exported). */
export function histogramSeries<T extends string>(histogram: Histogram<T>, labels: LabelValues<T>): HistogramSeries {
  const internals = histogram as unknown as HistogramInternals;
  const generation = recordGeneration(histogram as unknown as Parameters<typeof recordGeneration>[0]);
  const key = hashObject(labels, internals.sortedLabelNames);
  // A copy: prom-client freezes its array, and V8's optimized code loads a frozen array's elements through the
  // keyed-load IC (one call per bound compared, on every observation) where a typed array's are inlined.
  const bounds = Float64Array.from(internals.upperBounds);
  /** Per bucket (the last one +Inf), the earliest nowMs at which it may take an exemplar again. */
  const nextExemplarAt = new Float64Array(bounds.length + 1);
  /** Per bucket, the name prom-client's bucketExemplars give it (its findBound: the bound, or -1 above the last). */
  const exemplarKeys = [...internals.upperBounds.map(String), '-1'];
  /** The finite buckets' counts of `record`, which its bucketValues read (countsOf). */
  let counts: Float64Array | undefined;
  let record: HistogramRecord | undefined;
  /** generation.value when `record` was taken from hashMap: while unchanged, hashMap still holds it under `key`. */
  let recordedIn = -1;

  return {
    observe(value, spanContext, nowMs) {
      let bucket = 0;
      while (bucket < bounds.length && value > bounds[bucket]!) bucket++;
      const exemplar = spanContext !== undefined && (spanContext.traceFlags & TraceFlags.SAMPLED) !== 0 && nextExemplarAt[bucket]! <= nowMs;
      if (recordedIn === generation.value && record !== undefined && counts !== undefined && Number.isFinite(value)) {
        record.sum += value;
        record.count += 1;
        if (bucket < bounds.length) counts[bucket]! += 1;
      } else {
        // The first observation, or the registry dropped or replaced records: prom-client's own path, which
        // also validates the labels and the value once (and throws as it would for a bad one).
        histogram.observe({ labels, value });
        record = internals.hashMap[key]!;
        counts = countsOf(record, internals.upperBounds);
        recordedIn = generation.value;
      }
      if (exemplar) {
        nextExemplarAt[bucket] = nowMs + EXEMPLAR_INTERVAL_MS;
        // What prom-client's updateExemplar does, on the record at hand: it would hash the labels again, find
        // the bound again and look the record up by its key, and check the label set through Object.entries.
        const { traceId } = spanContext;
        if (EXEMPLAR_LABEL.traceId.length + traceId.length > EXEMPLAR_LABEL_SET_MAX) throw new RangeError('Label set size must be smaller than 128 UTF-8 chars');
        // Only a histogram with `enableExemplars` keeps them (its records have bucketExemplars).
        const exemplars = record.bucketExemplars;
        if (exemplars !== undefined) {
          const name = exemplarKeys[bucket]!;
          let held = exemplars[name];
          if (typeof held !== 'object' || held === null) {
            held = new Exemplar();
            exemplars[name] = held;
          }
          held.labelSet = { [EXEMPLAR_LABEL.traceId]: traceId };
          held.value = value;
          held.timestamp = Date.now() / 1000;
        }
      }
    },
  };
}

/** `counter`'s series for `labels`. */
export function counterSeries<T extends string>(counter: Counter<T>, labels: LabelValues<T>): CounterSeries {
  const internals = counter as unknown as Internals<ValueRecord> & { enableExemplars: boolean };
  // Such a counter's inc() takes an options object: not one this series could fall back on.
  if (internals.enableExemplars) throw new TypeError('counterSeries: counters with exemplars are not supported');
  const key = hashObject(labels, internals.sortedLabelNames);
  let record: ValueRecord | undefined;
  return {
    inc(value = 1) {
      if (record !== undefined && internals.hashMap[key] === record && value >= 0 && Number.isFinite(value)) {
        record.value += value;
        return;
      }
      counter.inc(labels, value);
      record = internals.hashMap[key];
    },
  };
}

/** `gauge`'s series for `labels`. */
export function gaugeSeries<T extends string>(gauge: Gauge<T>, labels: LabelValues<T>): GaugeSeries {
  const internals = gauge as unknown as Internals<ValueRecord>;
  const key = hashObject(labels, internals.sortedLabelNames);
  let record: ValueRecord | undefined;
  const add = (delta: number) => {
    if (record !== undefined && internals.hashMap[key] === record) {
      record.value += delta;
      return;
    }
    gauge.inc(labels, delta);
    record = internals.hashMap[key];
  };
  return {
    inc: (value = 1) => add(value),
    dec: (value = 1) => add(-value),
  };
}

/** A label value as the series record keeps it: the request histogram's status code stays a number, as before. */
export type LabelValue = string | number;

/**
 * Series made on first use and found again by their label values (in `labelNames` order) with one Map lookup
 * per label, rather than by a key string built per call. Two combinations never share a series: a series is
 * reached only through the same value at every level. Keeps every combination it saw, as prom-client does.
 */
export function seriesByLabels<T extends string, S>(labelNames: readonly T[], create: (labels: LabelValues<T>) => S): (...values: LabelValue[]) => S {
  const root = new Map<LabelValue, unknown>();
  const last = labelNames.length - 1;
  // The last combination asked for and its series: consecutive requests mostly share every label (route, method,
  // status), and comparing them is cheaper than a Map lookup per label, each in a Map of its own (0.67k instructions
  // per proxied request for the request and upstream series: bench/RESULTS.md). Safe because the tree only grows:
  // a series, once made, is never replaced.
  let lastValues: LabelValue[] | undefined;
  let lastSeries: S | undefined;
  return (...values) => {
    if (lastValues !== undefined && sameValues(values, lastValues)) return lastSeries!;
    let level = root;
    for (let index = 0; index < last; index++) {
      let next = level.get(values[index]!) as Map<LabelValue, unknown> | undefined;
      if (next === undefined) {
        next = new Map();
        level.set(values[index]!, next);
      }
      level = next;
    }
    let series = level.get(values[last]!) as S | undefined;
    if (series === undefined) {
      if (values.length !== labelNames.length) throw new RangeError(`${values.length} label values for ${labelNames.length} labels (${labelNames.join(', ')})`);
      const labels = {} as LabelValues<T>;
      labelNames.forEach((name, index) => (labels[name] = values[index]!));
      series = create(labels);
      level.set(values[last]!, series);
    }
    lastValues = values;
    lastSeries = series;
    return series;
  };
}

/** Whether two lists of label values are the same values in the same order. */
function sameValues(values: readonly LabelValue[], others: readonly LabelValue[]): boolean {
  if (values.length !== others.length) return false;
  for (let index = 0; index < values.length; index++) if (values[index] !== others[index]) return false;
  return true;
}
