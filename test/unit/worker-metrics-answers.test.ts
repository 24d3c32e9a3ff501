import fc from 'fast-check';
import { AggregatorRegistry, Counter, Histogram, Registry, type OpenMetricsContentType } from 'prom-client';
import { workerRegistriesOf } from '../../src/metrics';

/**
 * What the cluster primary keeps of a worker's answer to a scrape (prom-client's channel, which the gateway's message
 * check did not cover): an answer prom-client's sum cannot read is dropped on arrival. Kept, the next scrape's sum
 * threw in the primary's timer, an uncaught exception that ended the primary and every worker with it.
 */
describe("a worker's answer to the primary's scrape", () => {
  it('keeps what a real registry answers', async () => {
    const registry = new Registry();
    new Counter({ name: 'answers_total', help: 'h', labelNames: ['route'], registers: [registry] }).inc({ route: 'a' }, 3);
    new Histogram({ name: 'answer_seconds', help: 'h', buckets: [0.1, 1], registers: [registry] }).observe(0.5);
    const answer = JSON.parse(JSON.stringify([await registry.getMetricsAsJSON()])) as unknown;
    expect(workerRegistriesOf(answer)).toBe(answer);
  });

  it('keeps what a real registry answers with exemplars (OpenMetrics), buckets without one included', async () => {
    const registry = new Registry<OpenMetricsContentType>();
    registry.setContentType(Registry.OPENMETRICS_CONTENT_TYPE);
    new Histogram({ name: 'answer_seconds', help: 'h', buckets: [0.1, 1], registers: [registry], enableExemplars: true }).observe({ value: 0.5, exemplarLabels: { trace_id: 'abc' } });
    const answer = JSON.parse(JSON.stringify([await registry.getMetricsAsJSON()])) as unknown;
    expect(JSON.stringify(answer)).toContain('"exemplar":null');
    expect(workerRegistriesOf(answer)).toBe(answer);
  });

  const family = { name: 'answers_total', help: 'h', type: 'counter', aggregator: 'sum', values: [{ value: 1, labels: {} }] };
  /** A histogram's bucket sample with `exemplar` (as a worker would send it in place of prom-client's). */
  const bucketWith = (exemplar: unknown) => [[{ ...family, name: 'answer_seconds', type: 'histogram', values: [{ value: 1, metricName: 'answer_seconds_bucket', labels: { le: 1 }, exemplar }] }]];
  it.each([
    { desc: 'no list', answer: {} },
    { desc: 'a registry that is no list', answer: [{}] },
    { desc: 'a family that is no object', answer: [[null]] },
    { desc: 'an aggregator prom-client does not have', answer: [[{ ...family, aggregator: 'median' }]] },
    { desc: "an aggregator named after Object's prototype", answer: [[{ ...family, aggregator: 'constructor' }]] },
    { desc: 'a type prom-client does not write', answer: [[{ ...family, type: 'untyped' }]] },
    { desc: 'no name', answer: [[{ ...family, name: 7 }]] },
    { desc: 'a name that is no metric name', answer: [[{ ...family, name: 'a b' }]] },
    // prom-client's registry keeps families in a plain object: this one read as already registered, and the sum threw.
    { desc: "a name Object's prototype has", answer: [[{ ...family, name: 'constructor' }]] },
    { desc: 'values that are no list', answer: [[{ ...family, values: {} }]] },
    { desc: 'a value that is no number', answer: [[{ ...family, values: [{ value: '1', labels: {} }] }]] },
    { desc: 'labels that are no object', answer: [[{ ...family, values: [{ value: 1, labels: 'route' }] }]] },
    { desc: 'more samples than any config makes', answer: [[{ ...family, values: Array.from({ length: 200_001 }, () => ({ value: 1, labels: {} })) }]] },
    // String() of it threw in the primary's message listener, which ended the primary.
    { desc: 'a type that is an object with a toString that is no function', answer: [[{ ...family, type: { toString: 1 } }]] },
    // The rest, kept as the worker's last answer, failed every later scrape (500) until it answered well again.
    { desc: 'a label value that is an object', answer: [[{ ...family, values: [{ value: 1, labels: { route: { toString: 1 } } }] }]] },
    { desc: 'a label value that is null', answer: [[{ ...family, values: [{ value: 1, labels: { route: null } }] }]] },
    { desc: 'a label value that is a list', answer: [[{ ...family, values: [{ value: 1, labels: { route: ['a'] } }] }]] },
    { desc: 'a label name the exposition formats do not allow (written as it is)', answer: [[{ ...family, values: [{ value: 1, labels: { 'route="x"} 9\nforged': 'a' } }] }]] },
    { desc: 'a sample without labels', answer: [[{ ...family, values: [{ value: 1 }] }]] },
    { desc: 'a sample name that is no string', answer: [[{ ...family, values: [{ value: 1, labels: {}, metricName: { toString: 1 } }] }]] },
    { desc: 'an exemplar that is no object', answer: bucketWith('trace') },
    { desc: 'an exemplar without a value', answer: bucketWith({ labelSet: { trace_id: 'abc' } }) },
    { desc: 'an exemplar without labels', answer: bucketWith({ value: 0.5 }) },
    { desc: 'an exemplar whose label value is an object', answer: bucketWith({ labelSet: { trace_id: { toString: 1 } }, value: 0.5 }) },
    { desc: 'an exemplar whose timestamp is no number', answer: bucketWith({ labelSet: { trace_id: 'abc' }, value: 0.5, timestamp: { toString: 1 } }) },
  ])('drops $desc', ({ answer }) => {
    expect(workerRegistriesOf(answer)).toBeUndefined();
  });

  // Whatever the check lets through, prom-client's sum reads: generated answers, most of them near the real shape.
  it('lets through only answers that prom-client can sum', async () => {
    const sample = fc.record({ value: fc.oneof(fc.double(), fc.integer(), fc.string()), labels: fc.oneof(fc.dictionary(fc.string({ maxLength: 5 }), fc.oneof(fc.string({ maxLength: 5 }), fc.integer())), fc.constant(null)) }, { requiredKeys: ['value'] });
    const generatedFamily = fc.record(
      {
        name: fc.oneof(fc.constantFrom('a_total', 'b_seconds', '__proto__', 'constructor'), fc.string({ maxLength: 8 }), fc.integer()),
        help: fc.oneof(fc.string({ maxLength: 8 }), fc.constant(undefined)),
        type: fc.constantFrom('counter', 'gauge', 'histogram', 'summary', 'untyped', 3),
        aggregator: fc.constantFrom('sum', 'first', 'omit', 'average', 'min', 'max', 'median', 'toString', '__proto__'),
        values: fc.oneof(fc.array(sample, { maxLength: 4 }), fc.constant('values')),
      },
      { requiredKeys: ['name', 'type', 'aggregator', 'values'] },
    );
    const answers = fc.oneof(fc.array(fc.array(generatedFamily, { maxLength: 4 }), { maxLength: 3 }), fc.anything());
    await fc.assert(
      fc.asyncProperty(answers, async (answer) => {
        const kept = workerRegistriesOf(answer);
        if (kept) await AggregatorRegistry.aggregate(kept).getMetricsAsJSON();
      }),
      { seed: 20261205, numRuns: 2000 },
    );
  });
});
