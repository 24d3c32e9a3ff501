import { ROOT_CONTEXT, SeverityNumber, trace, TraceFlags } from '@opentelemetry/api';
import { LOG_CONTEXT, toLogRecord } from '../../otel/otlp-log-transport';
import { LOG_FIELD } from '../../otel/wire-names';

const spanContext = { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: TraceFlags.SAMPLED };

it('keeps the message as body, the level as severity, the fields as attributes and the logging context', () => {
  const context = trace.setSpanContext(ROOT_CONTEXT, spanContext);
  const record = toLogRecord({
    level: 'warn',
    message: 'upstream slow',
    timestamp: '2026-11-28T10:00:00.123Z',
    [LOG_FIELD.serviceName]: 'gateway',
    [LOG_FIELD.traceId]: spanContext.traceId,
    [LOG_FIELD.spanId]: spanContext.spanId,
    [LOG_FIELD.requestId]: 'abc',
    upstream: 'user-service',
    attempt: 2,
    [LOG_CONTEXT]: context,
  });

  expect(record).toEqual({
    severityNumber: SeverityNumber.WARN,
    severityText: 'warn',
    body: 'upstream slow',
    // service.name is on the resource; trace and span ids are the record's own context.
    attributes: { [LOG_FIELD.requestId]: 'abc', upstream: 'user-service', attempt: 2 },
    timestamp: new Date('2026-11-28T10:00:00.123Z'),
    context,
  });
});

it.each([
  { level: 'error', severity: SeverityNumber.ERROR },
  { level: 'info', severity: SeverityNumber.INFO },
  { level: 'http', severity: SeverityNumber.DEBUG3 },
  { level: 'verbose', severity: SeverityNumber.DEBUG2 },
  { level: 'debug', severity: SeverityNumber.DEBUG },
  { level: 'silly', severity: SeverityNumber.TRACE },
  { level: 'custom', severity: SeverityNumber.UNSPECIFIED },
  { level: 'constructor', severity: SeverityNumber.UNSPECIFIED },
])('maps winston level $level to severity $severity', ({ level, severity }) => {
  expect(toLogRecord({ level, message: 'x' }).severityNumber).toBe(severity);
});

it.each([
  { desc: 'an Error becomes its stack', value: Object.assign(new Error('boom'), { stack: 'Error: boom\n    at x' }), expected: 'Error: boom\n    at x' },
  { desc: 'a Date becomes ISO text', value: new Date('2026-01-02T03:04:05Z'), expected: '2026-01-02T03:04:05.000Z' },
  { desc: 'nested objects stay maps', value: { a: { b: [1, 'two'] } }, expected: { a: { b: [1, 'two'] } } },
  { desc: 'a bigint becomes text', value: 10n ** 20n, expected: '100000000000000000000' },
  { desc: 'NaN becomes text', value: Number.NaN, expected: 'NaN' },
  { desc: 'a function is dropped', value: () => 1, expected: undefined },
  { desc: 'undefined is dropped', value: undefined, expected: undefined },
])('converts field values to OTLP values: $desc', ({ value, expected }) => {
  expect(toLogRecord({ level: 'info', message: 'x', field: value }).attributes).toEqual(
    expected === undefined ? {} : { field: expected },
  );
});

it('stops at a cycle instead of looping', () => {
  const cyclic: Record<string, unknown> = { name: 'loop' };
  cyclic.self = cyclic;
  expect(() => toLogRecord({ level: 'info', message: 'x', cyclic })).not.toThrow();
});

it('leaves the time and context to the SDK when the line has none', () => {
  const record = toLogRecord({ level: 'info', message: { structured: true }, timestamp: 'not a date' });
  expect(record.timestamp).toBeUndefined();
  expect(record.context).toBeUndefined();
  expect(record.body).toEqual({ structured: true });
});
