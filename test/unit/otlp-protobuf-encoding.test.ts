import { context, SeverityNumber, SpanKind, SpanStatusCode, trace, TraceFlags, type Tracer } from '@opentelemetry/api';
import { TraceState } from '@opentelemetry/core';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { InMemorySpanExporter, SimpleSpanProcessor, TracerProvider, type ReadableSpan } from '@opentelemetry/sdk-trace';
import { InMemoryLogRecordExporter, LoggerProvider, SimpleLogRecordProcessor, type ReadableLogRecord } from '@opentelemetry/sdk-logs';
import { ProtobufLogsSerializer, ProtobufTraceSerializer } from '@opentelemetry/otlp-transformer';
import { encodeLogsExportRequest, encodeTraceExportRequest } from '../../otel/otlp-protobuf-encoding';
import fc from 'fast-check';
import { decodeExport } from '../helpers/otlp-decoding';

/** Spans from a real SDK provider: the encoder must take exactly what the BatchSpanProcessor hands it. */
function recordSpans(build: (tracers: { gateway: Tracer; other: Tracer }) => void, resourceAttributes: Record<string, unknown> = { 'service.name': 'gateway' }): ReadableSpan[] {
  const exporter = new InMemorySpanExporter();
  const provider = new TracerProvider({
    resource: resourceFromAttributes(resourceAttributes as Record<string, string>),
    spanProcessors: [new SimpleSpanProcessor({ exporter })],
    spanLimits: { attributeCountLimit: 3 },
  });
  build({ gateway: provider.getTracer('koa-gateway', '0.1.0'), other: provider.getTracer('other-scope') });
  return exporter.getFinishedSpans();
}

/** Our encoding and the SDK's serializer give the very same bytes. */
function expectSameEncoding(ours: Uint8Array, sdks: Uint8Array | undefined): void {
  expect(sdks).toBeDefined();
  expect(Buffer.from(ours).toString('hex')).toBe(Buffer.from(sdks!).toString('hex'));
}

function expectSameBytes(spans: ReadableSpan[]): void {
  expectSameEncoding(encodeTraceExportRequest(spans), ProtobufTraceSerializer.serializeRequest(spans));
}

describe('OTLP/protobuf span encoding', () => {
  it("writes the SDK serializer's bytes for generated names, attributes and times (ASCII, non-ASCII, long)", () => {
    // Strings around the writer's short-ASCII fast path (under 128 characters) and past it, with and without
    // non-ASCII characters; times from 1970 to past 2106 (more than 32 bits of seconds) with every nanosecond.
    const text = fc.oneof(fc.string({ maxLength: 140 }), fc.string({ unit: 'grapheme', maxLength: 140 }), fc.string({ unit: fc.constantFrom('a', '/', 'é', '€', '😀'), minLength: 120, maxLength: 135 }));
    const value = fc.oneof(text, fc.integer(), fc.double({ noNaN: true }), fc.boolean(), fc.array(fc.oneof(text, fc.integer()), { maxLength: 3 }));
    const time = fc.tuple(fc.integer({ min: 0, max: 2 ** 33 }), fc.integer({ min: 0, max: 999_999_999 }));
    fc.assert(
      fc.property(text, fc.dictionary(text, value, { maxKeys: 3 }), time, time, (name, attributes, start, end) => {
        const spans = recordSpans(({ gateway }) => {
          const span = gateway.startSpan(name, { kind: SpanKind.SERVER, attributes, startTime: start });
          span.end(end);
        });
        expectSameBytes(spans);
      }),
      { seed: 1201, numRuns: 300 },
    );
  });

  it('writes the same bytes for lone surrogates, astral characters, non-finite and 64-bit-edge numbers, links, events and status', () => {
    // What the generator above leaves out: strings that are not well-formed UTF-16 (a lone surrogate is written as
    // U+FFFD by both), at and across the 128-character fast path; doubles that are not finite; integers past 2^53
    // and at 2^63 (the int64 edge, past which a number is a double); mixed arrays with holes; parent, links with trace
    // state and flags, events with times, dropped counts under tight limits, and every status with or without a message.
    const text = fc.oneof(
      fc.string({ unit: 'binary', maxLength: 140 }),
      fc.string({ unit: fc.constantFrom('a', '\uD800', '\uDC00', '😀', 'é', '\u0000', '\u0080'), maxLength: 135 }),
      fc.constantFrom('', 'x'.repeat(127), 'x'.repeat(126) + '\uD800', '\uD83D'.repeat(70)),
    );
    const edgeNumber = fc.constantFrom(Number.NaN, Infinity, -Infinity, -0, 2 ** 53 + 2, 2 ** 63, -(2 ** 63), 2 ** 64, -(2 ** 64), 1e300, Number.MIN_VALUE, -(2 ** 62) - 2048);
    const scalar = fc.oneof(text, fc.integer(), fc.double(), edgeNumber, fc.bigInt({ min: -(2n ** 64n), max: 2n ** 64n }).map(Number), fc.boolean());
    const value = fc.oneof(scalar, fc.array(fc.oneof(scalar, fc.constant(null), fc.constant(undefined)), { maxLength: 4 }));
    const attributes = fc.dictionary(text, value, { maxKeys: 4 });
    const hex = (length: number) => fc.stringMatching(new RegExp(`^[0-9a-f]{${length}}$`));
    const time = fc.tuple(fc.integer({ min: 0, max: 2 ** 33 }), fc.integer({ min: 0, max: 999_999_999 }));
    const link = fc.record({ traceId: hex(32), spanId: hex(16), traceFlags: fc.integer({ min: 0, max: 255 }), isRemote: fc.boolean(), traceState: fc.option(fc.constantFrom('a=b', 'k=v,z=1')), attributes });
    const status = fc.record({ code: fc.constantFrom(SpanStatusCode.UNSET, SpanStatusCode.OK, SpanStatusCode.ERROR), message: fc.option(text) });
    fc.assert(
      fc.property(text, attributes, fc.array(fc.tuple(text, attributes, time), { maxLength: 3 }), fc.array(link, { maxLength: 3 }), status, fc.option(fc.tuple(hex(32), hex(16), fc.boolean())), fc.integer({ min: 0, max: 4 }), (name, given, events, links, { code, message }, parent, kind) => {
        const exporter = new InMemorySpanExporter();
        const provider = new TracerProvider({ spanProcessors: [new SimpleSpanProcessor({ exporter })], spanLimits: { attributeCountLimit: 3, eventCountLimit: 2, linkCountLimit: 2, attributePerEventCountLimit: 2, attributePerLinkCountLimit: 2 } });
        const context_ = parent ? trace.setSpanContext(context.active(), { traceId: parent[0], spanId: parent[1], traceFlags: TraceFlags.SAMPLED, isRemote: parent[2] }) : context.active();
        const span = provider.getTracer('koa-gateway', '0.1.0', { schemaUrl: 'https://opentelemetry.io/schemas/1.45.0' }).startSpan(
          name,
          { kind, attributes: given, links: links.map(({ traceState, attributes: linkAttributes, ...linked }) => ({ context: { ...linked, traceState: traceState === null ? undefined : new TraceState(traceState) }, attributes: linkAttributes })) },
          context_,
        );
        for (const [eventName, eventAttributes, eventTime] of events) span.addEvent(eventName, eventAttributes, eventTime);
        span.setStatus(message === null ? { code } : { code, message });
        span.end();
        expectSameBytes(exporter.getFinishedSpans());
      }),
      { seed: 1203, numRuns: 300 },
    );
  });

  it('writes the same bytes when values repeat, alternate and change type across spans and batches (the pairs it keeps per key)', () => {
    // Few keys and few values, so a value comes again under its key (copied from the kept pair), gives way to
    // another, to one of another type with the same bytes' look (0 and -0, '' and false), or to an array.
    const key = fc.constantFrom('http.route', 'server.port', 'k', 'flag');
    const value = fc.constantFrom<string | number | boolean | string[] | number[]>('GET', 'POST', '', 'é', 'x'.repeat(200), 4001, 0, -0, 2 ** 40, -7, 1.5, true, false, ['GET'], [1, 2]);
    fc.assert(
      fc.property(fc.array(fc.array(fc.dictionary(key, value, { maxKeys: 3 }), { minLength: 1, maxLength: 4 }), { minLength: 1, maxLength: 5 }), (batches) => {
        for (const batch of batches) {
          const spans = recordSpans(({ gateway }) => {
            for (const attributes of batch) gateway.startSpan('GET', { attributes }).end();
          });
          expectSameBytes(spans);
        }
      }),
      { seed: 1202, numRuns: 300 },
    );
  });

  it('writes the same bytes when attribute lists of each span kind match, shift and differ from the last one (the runs it copies)', () => {
    // Lists of up to 8 pairs from few keys and values, in few orders, so that a list repeats its kind's last one in
    // whole, in part (a run, then a changed value or an extra key shifting the rest), or not at all.
    const key = fc.constantFrom('http.request.method', 'url.path', 'server.port', 'http.route', 'request.id', 'flag');
    const value = fc.constantFrom<string | number | boolean | string[]>('GET', '/api/users/1', '/api/users/2', 'é', 'x'.repeat(140), 4001, 200, 0, -0, true, ['user'], '0af7651916cd43dd8448eb211c80319c');
    const list = fc.uniqueArray(fc.tuple(key, value), { selector: ([name]) => name, maxLength: 8 });
    const kind = fc.constantFrom(SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL);
    fc.assert(
      fc.property(fc.array(fc.array(fc.tuple(kind, list, fc.boolean()), { minLength: 1, maxLength: 6 }), { minLength: 1, maxLength: 4 }), (batches) => {
        let last: [string, unknown][] = [];
        for (const batch of batches) {
          const exporter = new InMemorySpanExporter();
          const provider = new TracerProvider({ resource: resourceFromAttributes({ 'service.name': 'gateway' }), spanProcessors: [new SimpleSpanProcessor({ exporter })] });
          const tracer = provider.getTracer('koa-gateway');
          for (const [spanKind, pairs, again] of batch) {
            const written = again ? last : pairs;
            last = written;
            tracer.startSpan('GET', { kind: spanKind, attributes: Object.fromEntries(written) as never }).end();
          }
          expectSameBytes(exporter.getFinishedSpans());
        }
      }),
      { seed: 1204, numRuns: 400 },
    );
  });

  it('writes the same bytes when ids repeat across spans, parents and links, in any case of hex', () => {
    // Few ids, so one comes again as a trace, parent, link or span id, in another case of hex or the same.
    const traceId = fc.constantFrom('4bf92f3577b34da6a3ce929d0e0e4736', '4BF92F3577B34DA6A3CE929D0E0E4736', 'abcdef0123456789abcdef0123456789');
    const spanId = fc.constantFrom('00f067aa0ba902b7', '00F067AA0BA902B7', 'ffffffffffffffff', '0123456789abcdef');
    const parent = fc.record({ traceId, spanId });
    fc.assert(
      fc.property(fc.array(fc.tuple(parent, fc.option(parent)), { minLength: 1, maxLength: 6 }), (calls) => {
        const spans = recordSpans(({ gateway }) => {
          for (const [remote, linked] of calls) {
            const context_ = trace.setSpanContext(context.active(), { ...remote, traceFlags: TraceFlags.SAMPLED, isRemote: true });
            const links = linked === null ? [] : [{ context: { ...linked, traceFlags: TraceFlags.NONE } }];
            const server = gateway.startSpan('GET', { kind: SpanKind.SERVER, links }, context_);
            gateway.startSpan('GET', { kind: SpanKind.CLIENT }, trace.setSpan(context_, server)).end();
            server.end();
          }
        });
        expectSameBytes(spans);
      }),
      { seed: 1205, numRuns: 200 },
    );
  });

  it("writes the same bytes as the SDK's serializer for a gateway request's two spans", () => {
    const spans = recordSpans(({ gateway }) => {
      const server = gateway.startSpan('GET /api/users/*', { kind: SpanKind.SERVER, attributes: { 'http.request.method': 'GET', 'url.path': '/api/users/1', 'request.id': '0af7651916cd43dd8448eb211c80319c' } });
      const client = gateway.startSpan('GET', { kind: SpanKind.CLIENT, attributes: { 'url.full': 'http://127.0.0.1:4001/users/1', 'server.port': 4001 } }, trace.setSpan(context.active(), server));
      client.setAttribute('http.response.status_code', 200);
      client.end();
      server.end();
    });
    expect(spans).toHaveLength(2);
    expectSameBytes(spans);
  });

  it('writes the same bytes for every attribute type, events, links, trace state, status and dropped counts', () => {
    const remoteParent = trace.setSpanContext(context.active(), { traceId: '4bf92f3577b34da6a3ce929d0e0e4736', spanId: '00f067aa0ba902b7', traceFlags: TraceFlags.SAMPLED, isRemote: true, traceState: new TraceState('vendor=value,other=1') });
    const spans = recordSpans(({ gateway, other }) => {
      const span = gateway.startSpan(
        'every type ✓ ünïcödé',
        {
          kind: SpanKind.PRODUCER,
          attributes: { text: 'ascii', unicode: 'naïve café 日本語 🚀', empty: '' },
          links: [
            { context: { traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), traceFlags: TraceFlags.NONE, traceState: new TraceState('k=v') }, attributes: { 'link.reason': 'retry', weight: 0.5 } },
            { context: { traceId: '0123456789abcdef0123456789abcdef', spanId: '0123456789abcdef', traceFlags: TraceFlags.SAMPLED, isRemote: true } },
          ],
        },
        remoteParent,
      );
      // Over the limit of 3: counted as dropped.
      span.setAttributes({ flag: true, off: false });
      span.addEvent('upstream retry', { 'gateway.upstream.attempts': 1, negative: -42, big: 2 ** 40, huge: -(2 ** 52), ratio: 3.25, nan: Number.NaN, list: ['a', 'b'], numbers: [1, 2.5, -3], bools: [true, false], holes: ['x', null, undefined] });
      span.addEvent('no attributes');
      span.setStatus({ code: SpanStatusCode.ERROR, message: 'upstream refused' });
      span.end();
      const internal = other.startSpan('internal, unset status, root');
      internal.end();
      const ok = gateway.startSpan('ok', { kind: SpanKind.CONSUMER, attributes: { 'request.id': 'r-1' } });
      ok.setStatus({ code: SpanStatusCode.OK });
      ok.end();
    });
    expect(spans.map((s) => s.instrumentationScope.name)).toEqual(['koa-gateway', 'other-scope', 'koa-gateway']);
    expectSameBytes(spans);
  });

  it('writes the same bytes for ids in upper- and mixed-case hex (trace, span, parent and link ids)', () => {
    const parent = trace.setSpanContext(context.active(), { traceId: '4BF92F3577B34DA6A3CE929D0E0E4736', spanId: '00F067aa0BA902B7', traceFlags: TraceFlags.SAMPLED, isRemote: true });
    const spans = recordSpans(({ gateway }) => {
      const link = { context: { traceId: 'ABCDEF0123456789abcdef0123456789', spanId: 'FFFFFFFFFFFFFFFF', traceFlags: TraceFlags.NONE } };
      gateway.startSpan('GET', { kind: SpanKind.CLIENT, links: [link] }, parent).end();
    });
    expect(spans[0]!.spanContext().traceId).toBe('4BF92F3577B34DA6A3CE929D0E0E4736');
    expectSameBytes(spans);
  });

  it('writes the same bytes when lengths need 1, 2 or 3 bytes (messages of 100 B to 100 KB)', () => {
    const spans = recordSpans(({ gateway }) => {
      for (const size of [10, 100, 200, 16_000, 20_000, 100_000]) gateway.startSpan(`size ${size}`, { attributes: { payload: 'x'.repeat(size) } }).end();
    });
    expectSameBytes(spans);
  });

  it('writes the same bytes for a full batch (512 spans, several hundred KB)', () => {
    const spans = recordSpans(({ gateway }) => {
      for (let i = 0; i < 256; i++) {
        const server = gateway.startSpan(`GET /api/orders/${i}`, { kind: SpanKind.SERVER, attributes: { 'http.route': '/api/orders/*', 'enduser.id': String(i), 'http.response.status_code': 200 } });
        gateway.startSpan('GET', { kind: SpanKind.CLIENT, attributes: { 'url.full': `http://127.0.0.1:4002/orders/${i}` } }, trace.setSpan(context.active(), server)).end();
        server.end();
      }
    }, { 'service.name': 'gateway', 'service.version': '0.1.0', 'deployment.environment.name': 'production', 'process.pid': 1234 });
    expect(spans).toHaveLength(512);
    expectSameBytes(spans);
  });

  it('decodes as OTLP with the spans, ids and attributes it was given', () => {
    const spans = recordSpans(({ gateway }) => {
      gateway.startSpan('GET /api/users/*', { kind: SpanKind.SERVER, attributes: { 'request.id': 'abc', 'server.port': 3000 } }).end();
    });
    const decoded = decodeExport('traces', 'application/x-protobuf', Buffer.from(encodeTraceExportRequest(spans))).spans;
    expect(decoded).toEqual([
      expect.objectContaining({
        name: 'GET /api/users/*',
        kind: 'SERVER',
        parentSpanId: undefined,
        traceId: spans[0]!.spanContext().traceId,
        spanId: spans[0]!.spanContext().spanId,
        serviceName: 'gateway',
        attributes: { 'request.id': 'abc', 'server.port': 3000 },
        scope: { name: 'koa-gateway', version: '0.1.0' },
      }),
    ]);
  });
});

describe('OTLP/protobuf log record encoding', () => {
  function recordLogs(emit: (provider: LoggerProvider) => void): ReadableLogRecord[] {
    const exporter = new InMemoryLogRecordExporter();
    const provider = new LoggerProvider({
      resource: resourceFromAttributes({ 'service.name': 'gateway', 'deployment.environment.name': 'production' }),
      processors: [new SimpleLogRecordProcessor({ exporter })],
    });
    emit(provider);
    return exporter.getFinishedLogRecords();
  }

  function expectSameLogBytes(records: ReadableLogRecord[]): void {
    expectSameEncoding(encodeLogsExportRequest(records), ProtobufLogsSerializer.serializeRequest(records));
  }

  it("writes the same bytes as the SDK's serializer for access-log records, with and without a span", () => {
    const inSpan = trace.setSpanContext(context.active(), { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: TraceFlags.SAMPLED });
    const records = recordLogs((provider) => {
      const logger = provider.getLogger('koa-gateway/winston');
      for (let i = 0; i < 300; i++) {
        logger.emit({
          severityNumber: SeverityNumber.INFO,
          severityText: 'info',
          body: 'request completed',
          attributes: { method: 'GET', url: `/api/users/${i}`, status: 200, duration_ms: 1.25 + i, request_id: 'abc', route: 'users', user_id: null as unknown as string, error_code: null as unknown as string },
          context: i % 2 === 0 ? inSpan : undefined,
        });
      }
    });
    expect(records).toHaveLength(300);
    expectSameLogBytes(records);
  });

  it('writes the same bytes for every body and attribute type, event names, unspecified severity and two scopes', () => {
    const unsampled = trace.setSpanContext(context.active(), { traceId: 'a'.repeat(32), spanId: 'b'.repeat(16), traceFlags: TraceFlags.NONE });
    const records = recordLogs((provider) => {
      const logger = provider.getLogger('koa-gateway/winston', '1.0.0');
      logger.emit({ body: { nested: { list: [1, 'two', true, null], ratio: 0.5 }, text: 'naïve ✓' }, attributes: { big: 2 ** 40, negative: -7, flags: [true, false] } });
      logger.emit({ severityNumber: SeverityNumber.UNSPECIFIED, severityText: 'custom', context: unsampled });
      logger.emit({ severityNumber: SeverityNumber.ERROR, eventName: 'gateway.upstream.failure', body: 'x'.repeat(20_000) });
      provider.getLogger('other-scope').emit({ severityNumber: SeverityNumber.WARN, body: 42 });
    });
    expect(records).toHaveLength(4);
    expectSameLogBytes(records);
  });

  it('writes the same bytes for generated bodies and attributes: nested lists and maps, bytes, lone surrogates, edge numbers', () => {
    const text = fc.oneof(fc.string({ unit: 'binary', maxLength: 140 }), fc.constantFrom('', '\uD800', 'x'.repeat(126) + '\uDC00', '😀'.repeat(70)));
    const scalar = fc.oneof(text, fc.integer(), fc.double(), fc.constantFrom(Number.NaN, -0, 2 ** 63, -(2 ** 63), 2 ** 53 + 2), fc.boolean(), fc.constant(null), fc.uint8Array({ maxLength: 5 }));
    const anyValue = fc.letrec<{ value: unknown }>((tie) => ({ value: fc.oneof({ depthSize: 'small' }, scalar, fc.array(tie('value'), { maxLength: 3 }), fc.dictionary(text, tie('value'), { maxKeys: 3 })) })).value;
    const ids = fc.tuple(fc.stringMatching(/^[0-9a-f]{32}$/), fc.stringMatching(/^[0-9a-f]{16}$/), fc.integer({ min: 0, max: 255 }));
    const record = fc.record({ body: fc.option(anyValue), attributes: fc.dictionary(text, anyValue, { maxKeys: 4 }), severity: fc.option(fc.integer({ min: 0, max: 24 })), severityText: fc.option(text), eventName: fc.option(text), ids: fc.option(ids) });
    fc.assert(
      fc.property(fc.array(record, { minLength: 1, maxLength: 4 }), (generated) => {
        const records = recordLogs((provider) => {
          const logger = provider.getLogger('koa-gateway/winston');
          for (const { body, attributes, severity, severityText, eventName, ids: spanIds } of generated) {
            const inSpan = spanIds === null ? undefined : trace.setSpanContext(context.active(), { traceId: spanIds[0], spanId: spanIds[1], traceFlags: spanIds[2] });
            logger.emit({ body: (body ?? undefined) as never, attributes: attributes as never, severityNumber: severity ?? undefined, severityText: severityText ?? undefined, eventName: eventName ?? undefined, context: inSpan });
          }
        });
        expectSameLogBytes(records);
      }),
      { seed: 1204, numRuns: 300 },
    );
  });

  it('decodes as OTLP logs with the trace context and attributes it was given', () => {
    const inSpan = trace.setSpanContext(context.active(), { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: TraceFlags.SAMPLED });
    const records = recordLogs((provider) => provider.getLogger('koa-gateway/winston').emit({ severityNumber: SeverityNumber.WARN, severityText: 'warn', body: 'upstream slow', attributes: { request_id: 'abc' }, context: inSpan }));
    const decoded = decodeExport('logs', 'application/x-protobuf', Buffer.from(encodeLogsExportRequest(records))).logs;
    expect(decoded).toEqual([expect.objectContaining({ traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', body: 'upstream slow', serviceName: 'gateway', attributes: { request_id: 'abc' } })]);
  });
});
