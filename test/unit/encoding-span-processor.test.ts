/**
 * The processor that encodes spans as they end (otel/encoding-span-processor.ts) against the SDK's
 * BatchSpanProcessor: both get the same spans from the same providers, and every request body it exports must be
 * the one the SDK's serializer writes for the batch the BatchSpanProcessor exports at that point. Then what the
 * comparison cannot reach: the queue limit, the timer, export failures and timeouts, shutdown, a span that
 * cannot be encoded.
 */
import fc from 'fast-check';
import { diag, DiagLogLevel, ROOT_CONTEXT, SamplingDecision, SpanKind, type Attributes, type DiagLogger, type Exception, type Tracer } from '@opentelemetry/api';
import { ExportResultCode, setGlobalErrorHandler, type ExportResult } from '@opentelemetry/core';
import { ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor, TracerProvider, type ReadableSpan, type Sampler, type SpanExporter, type SpanProcessor } from '@opentelemetry/sdk-trace';
import { EncodingSpanProcessor, type EncodedSpans } from '../../otel/encoding-span-processor';
import { encodeTraceExportRequest } from '../../otel/otlp-protobuf-encoding';

const hex = (bytes: Uint8Array | undefined) => Buffer.from(bytes ?? []).toString('hex');

/** Samples every span but those named `unsampled`. */
const byName: Sampler = {
  shouldSample: (_context, _traceId, name) => ({ decision: name === 'unsampled' ? SamplingDecision.RECORD : SamplingDecision.RECORD_AND_SAMPLED }),
  toString: () => 'byName',
};

/** An exporter that keeps what it was given and answers at once (or as `answer` says). */
function encodedExporter(answer: (batch: EncodedSpans) => ExportResult | undefined = () => ({ code: ExportResultCode.SUCCESS })) {
  const bodies: string[] = [];
  const counts: number[] = [];
  const pending: ((result: ExportResult) => void)[] = [];
  let shutdowns = 0;
  return {
    bodies,
    counts,
    pending,
    get shutdowns() {
      return shutdowns;
    },
    export(batch: EncodedSpans, done: (result: ExportResult) => void) {
      bodies.push(hex(batch.body));
      counts.push(batch.spanCount);
      const result = answer(batch);
      if (result) done(result);
      else pending.push(done);
    },
    async shutdown() {
      shutdowns++;
    },
  };
}

function sdkExporter(): SpanExporter & { bodies: string[] } {
  const bodies: string[] = [];
  return {
    bodies,
    export(spans: ReadableSpan[], done: (result: ExportResult) => void) {
      bodies.push(hex(ProtobufTraceSerializer.serializeRequest(spans)));
      done({ code: ExportResultCode.SUCCESS });
    },
    shutdown: async () => {},
  };
}

/** Two providers (two resources), each with two scopes, feeding both processors. */
function providers(processors: SpanProcessor[]) {
  const build = (service: string) => new TracerProvider({ resource: resourceFromAttributes({ 'service.name': service, 'service.instance.id': `${service}-1` }), sampler: byName, spanProcessors: processors });
  const [first, second] = [build('gateway'), build('orders')];
  return [first.getTracer('koa-gateway'), first.getTracer('other', '1.2.3', { schemaUrl: 'https://opentelemetry.io/schemas/1.30.0' }), second.getTracer('koa-gateway'), second.getTracer('other')];
}

const attributeValue = fc.oneof(fc.string({ maxLength: 20 }), fc.integer(), fc.boolean(), fc.array(fc.string({ maxLength: 5 }), { maxLength: 2 }));
const spanOp = fc.record({
  tracer: fc.integer({ min: 0, max: 3 }),
  name: fc.oneof(fc.constantFrom('GET /api/users', 'unsampled', 'GET'), fc.string({ maxLength: 12 })),
  kind: fc.constantFrom(SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL),
  attributes: fc.dictionary(fc.string({ minLength: 1, maxLength: 10 }), attributeValue, { maxKeys: 4 }),
});
const op = fc.oneof({ weight: 12, arbitrary: spanOp }, { weight: 1, arbitrary: fc.constant('flush' as const) });

/** A span of the gateway's shape, started and ended on `tracer`. */
function endSpan(tracer: Tracer, name = 'GET /api/users', attributes: Attributes = { 'http.request.method': 'GET', 'url.path': '/api/users/42' }): void {
  tracer.startSpan(name, { kind: SpanKind.SERVER, attributes }, ROOT_CONTEXT).end();
}

async function waitFor(condition: () => boolean): Promise<void> {
  for (let tries = 0; !condition(); tries++) {
    if (tries > 500) throw new Error('condition not met');
    await new Promise((resolve) => setImmediate(resolve));
  }
}

describe('EncodingSpanProcessor', () => {
  afterEach(() => {
    jest.useRealTimers();
    diag.disable();
    setGlobalErrorHandler(() => {});
  });

  it("exports, batch for batch, the SDK serializer's bytes for what the BatchSpanProcessor exports (generated spans, scopes, resources, flushes)", async () => {
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 40 }), fc.integer({ min: 1, max: 6 }), async (ops, batchSize) => {
        const options = { maxExportBatchSize: batchSize, maxQueueSize: 64, scheduledDelayMillis: 60_000 };
        const reference = sdkExporter();
        const ours = encodedExporter();
        const bsp = new BatchSpanProcessor({ exporter: reference, ...options });
        const encoding = new EncodingSpanProcessor({ exporter: ours, ...options });
        const tracers = providers([bsp, encoding]);
        for (const step of ops) {
          if (step === 'flush') {
            await Promise.all([bsp.forceFlush(), encoding.forceFlush()]);
            continue;
          }
          tracers[step.tracer]!.startSpan(step.name, { kind: step.kind, attributes: step.attributes as Attributes }, ROOT_CONTEXT).end();
          expect(ours.bodies).toEqual(reference.bodies);
        }
        await Promise.all([bsp.shutdown(), encoding.shutdown()]);
        expect(ours.bodies).toEqual(reference.bodies);
        // The exporter's metrics count spans: each batch says how many it holds.
        expect(ours.counts.reduce((sum, count) => sum + count, 0)).toBe(ops.filter((step) => step !== 'flush' && step.name !== 'unsampled').length);
      }),
      { seed: 1202, numRuns: 150 },
    );
  });

  it('keeps at most maxQueueSize spans while an export is in flight, drops the rest and says how many once there is room', async () => {
    const warnings: string[] = [];
    diag.setLogger({ warn: (message: string) => warnings.push(message), debug() {}, info() {}, error() {}, verbose() {} } as DiagLogger, DiagLogLevel.DEBUG);
    const exporter = encodedExporter(() => undefined);
    const processor = new EncodingSpanProcessor({ exporter, maxExportBatchSize: 2, maxQueueSize: 4, scheduledDelayMillis: 60_000 });
    const [tracer] = providers([processor]);
    // The first two go out at once and stay in flight; four more fill the queue; three are dropped.
    for (let count = 0; count < 9; count++) endSpan(tracer!);
    expect(exporter.counts).toEqual([2]);
    exporter.pending.shift()!({ code: ExportResultCode.SUCCESS });
    await waitFor(() => exporter.counts.length === 2);
    expect(exporter.counts).toEqual([2, 2]);
    expect(warnings).toEqual([]);
    endSpan(tracer!);
    expect(warnings).toEqual(['Dropped 3 spans because maxQueueSize reached']);
    exporter.pending.shift()!({ code: ExportResultCode.SUCCESS });
    await waitFor(() => exporter.counts.length === 3);
    expect(exporter.counts).toEqual([2, 2, 2]);
    exporter.pending.shift()!({ code: ExportResultCode.SUCCESS });
    // 7 of 10 ended spans went out: the 3 dropped are gone, not late.
    const flushed = processor.forceFlush();
    await waitFor(() => exporter.pending.length === 1);
    exporter.pending.shift()!({ code: ExportResultCode.SUCCESS });
    await flushed;
    expect(exporter.counts.reduce((sum, count) => sum + count, 0)).toBe(7);
  });

  it('exports a partial batch scheduledDelayMillis after its first span, not before', async () => {
    jest.useFakeTimers();
    const exporter = encodedExporter();
    const processor = new EncodingSpanProcessor({ exporter, maxExportBatchSize: 10, scheduledDelayMillis: 1000 });
    const [tracer] = providers([processor]);
    endSpan(tracer!);
    jest.advanceTimersByTime(600);
    endSpan(tracer!);
    jest.advanceTimersByTime(399);
    expect(exporter.counts).toEqual([]);
    jest.advanceTimersByTime(1);
    expect(exporter.counts).toEqual([2]);
  });

  it('hands a failed export to the global error handler and goes on with the next batch', async () => {
    const errors: Exception[] = [];
    setGlobalErrorHandler((error) => errors.push(error));
    let calls = 0;
    const exporter = encodedExporter(() => (++calls === 1 ? { code: ExportResultCode.FAILED, error: new Error('collector said 503') } : { code: ExportResultCode.SUCCESS }));
    const processor = new EncodingSpanProcessor({ exporter, maxExportBatchSize: 1, scheduledDelayMillis: 60_000 });
    const [tracer] = providers([processor]);
    endSpan(tracer!);
    await waitFor(() => errors.length === 1);
    expect((errors[0] as Error).message).toBe('collector said 503');
    endSpan(tracer!);
    expect(exporter.counts).toEqual([1, 1]);
    await expect(processor.forceFlush()).resolves.toBeUndefined();
  });

  it('fails a flush whose export does not answer within exportTimeoutMillis', async () => {
    const exporter = encodedExporter(() => undefined);
    const processor = new EncodingSpanProcessor({ exporter, maxExportBatchSize: 10, scheduledDelayMillis: 60_000, exportTimeoutMillis: 20 });
    const [tracer] = providers([processor]);
    endSpan(tracer!);
    await expect(processor.forceFlush()).rejects.toThrow('Timeout');
  });

  it('flushes on shutdown, shuts the exporter down once, and ignores spans that end after it', async () => {
    const exporter = encodedExporter();
    const processor = new EncodingSpanProcessor({ exporter, maxExportBatchSize: 2, scheduledDelayMillis: 60_000 });
    const [tracer] = providers([processor]);
    for (let count = 0; count < 5; count++) endSpan(tracer!);
    await Promise.all([processor.shutdown(), processor.shutdown()]);
    expect(exporter.counts).toEqual([2, 2, 1]);
    expect(exporter.shutdowns).toBe(1);
    endSpan(tracer!);
    await processor.forceFlush();
    expect(exporter.counts).toEqual([2, 2, 1]);
  });

  it("loses only a span it cannot encode, reports it, and never throws into the code that ended it", async () => {
    const errors: Exception[] = [];
    setGlobalErrorHandler((error) => errors.push(error));
    const exporter = encodedExporter();
    const processor = new EncodingSpanProcessor({ exporter, maxExportBatchSize: 3, scheduledDelayMillis: 60_000 });
    const spans: ReadableSpan[] = [];
    const keep = { onStart() {}, onEnd: (span: ReadableSpan) => spans.push(span), forceFlush: async () => {}, shutdown: async () => {} };
    const [tracer] = providers([keep]);
    endSpan(tracer!, 'first');
    endSpan(tracer!, 'third');
    processor.onEnd(spans[0]!);
    // A span whose attributes cannot be read: encoding stops halfway through it.
    const broken = Object.create(spans[1]!, { attributes: { get: () => { throw new Error('unreadable'); } } }) as ReadableSpan;
    expect(() => processor.onEnd(broken)).not.toThrow();
    expect((errors[0] as Error).message).toBe('unreadable');
    processor.onEnd(spans[1]!);
    await processor.forceFlush();
    expect(exporter.bodies).toEqual([hex(encodeTraceExportRequest(spans))]);
    expect(exporter.counts).toEqual([2]);

    // Alone in its scope and resource: they are left out with it, not sent empty.
    const [, otherScope, otherResource] = providers([keep]);
    endSpan(otherScope!, 'alone in its scope');
    endSpan(otherResource!, 'alone in its resource');
    for (const lone of spans.slice(2)) processor.onEnd(Object.create(lone, { attributes: { get: () => { throw new Error('unreadable'); } } }) as ReadableSpan);
    processor.onEnd(spans[0]!);
    await processor.forceFlush();
    expect(exporter.bodies[1]).toBe(hex(encodeTraceExportRequest([spans[0]!])));
  });
});
