/**
 * The test receiver decodes exactly what the real OTLP exporters send, in every encoding the project can
 * configure. Everything else in test/telemetry trusts it, so it is checked against known ids, times and values.
 * The exporters run in a child process (test/fixtures/emit-known-telemetry.js): they load `http` with a dynamic
 * import(), which Jest's module sandbox refuses.
 */
import { execFile } from 'node:child_process';
import path from 'node:path';
import { promisify } from 'node:util';
import { SeverityNumber, SpanStatusCode } from '@opentelemetry/api';
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver';
import { childEnvironment } from '../helpers/process-stack';

const EMITTER = path.resolve(__dirname, '../fixtures/emit-known-telemetry.js');
const TRACE_ID = '0af7651916cd43dd8448eb211c80319c';
const REMOTE_PARENT_ID = 'b7ad6b7169203331';
const SPAN_ID = '00f067aa0ba902b7';
/** 2026-11-28T10:00:00.123456789Z as [seconds, nanoseconds], and the same in nanoseconds. */
const START = [1795860000, 123456789];
const START_NANOS = '1795860000123456789';
const END = [1795860001, 5];
const END_NANOS = '1795860001000000005';
const RESOURCE = { 'service.name': 'receiver-test', 'service.version': '1.2.3' };

let receiver: OtlpReceiver;
beforeAll(async () => {
  receiver = await startOtlpReceiver();
});
afterAll(() => receiver.close());

describe.each([
  { desc: 'protobuf', protocol: 'http/protobuf', compression: 'none', contentType: 'application/x-protobuf' },
  { desc: 'protobuf, gzip', protocol: 'http/protobuf', compression: 'gzip', contentType: 'application/x-protobuf' },
  { desc: 'OTLP/JSON', protocol: 'http/json', compression: 'none', contentType: 'application/json' },
  { desc: 'OTLP/JSON, gzip', protocol: 'http/json', compression: 'gzip', contentType: 'application/json' },
])('from the $desc exporter', ({ protocol, compression, contentType }) => {
  beforeAll(async () => {
    receiver.clear();
    const scenario = { url: receiver.url, protocol, compression, traceId: TRACE_ID, remoteParentId: REMOTE_PARENT_ID, spanId: SPAN_ID, start: START, end: END };
    await promisify(execFile)(process.execPath, [EMITTER], {
      env: childEnvironment({ EMIT_SCENARIO: JSON.stringify(scenario) }),
      timeout: 20_000,
    });
  });

  it('sends every request in that encoding', () => {
    expect(receiver.requests().map((r) => [r.signal, r.contentType, r.contentEncoding, r.error])).toEqual([
      ['traces', contentType, compression === 'gzip' ? 'gzip' : undefined, undefined],
      ['traces', contentType, compression === 'gzip' ? 'gzip' : undefined, undefined],
      ['logs', contentType, compression === 'gzip' ? 'gzip' : undefined, undefined],
      ['logs', contentType, compression === 'gzip' ? 'gzip' : undefined, undefined],
    ]);
  });

  it('decodes a span with its ids, parent, kind, times, attributes, events and status', () => {
    expect(receiver.spans().find((s) => s.name === 'GET /users/:id')).toEqual({
      traceId: TRACE_ID,
      spanId: SPAN_ID,
      parentSpanId: REMOTE_PARENT_ID,
      name: 'GET /users/:id',
      kind: 'SERVER',
      serviceName: 'receiver-test',
      resource: RESOURCE,
      attributes: { 'request.id': 'abc', 'http.response.status_code': 503, ratio: 0.25, cached: false, tags: ['a', 'b'] },
      status: { code: SpanStatusCode.ERROR, message: 'upstream timed out' },
      events: [{ name: 'retry', timeUnixNano: START_NANOS, attributes: { attempt: 2 } }],
      startTimeUnixNano: START_NANOS,
      endTimeUnixNano: END_NANOS,
      scope: { name: 'receiver-test-scope', version: '0.0.1' },
    });
  });

  it('decodes a root span without a parent', () => {
    expect(receiver.spans().find((s) => s.name === 'startup')).toMatchObject({
      name: 'startup',
      parentSpanId: undefined,
      kind: 'INTERNAL',
      status: { code: SpanStatusCode.UNSET, message: '' },
      attributes: {},
      events: [],
    });
  });

  it('decodes log records with their trace context, severity, body, attributes and time', () => {
    // One export request per record (SimpleLogRecordProcessor): arrival order is not fixed.
    const logs = [...receiver.logs()].sort((a, b) => String(a.body).localeCompare(String(b.body)));
    expect(logs).toEqual([
      expect.objectContaining({
        traceId: undefined,
        spanId: undefined,
        severityText: undefined,
        severityNumber: SeverityNumber.INFO,
        body: 'outside any span',
      }),
      {
        traceId: TRACE_ID,
        spanId: SPAN_ID,
        serviceName: 'receiver-test',
        severityText: 'warn',
        severityNumber: SeverityNumber.WARN,
        body: 'upstream slow',
        attributes: { request_id: 'abc', attempt: 3, nested: { ok: true } },
        resource: RESOURCE,
        timeUnixNano: START_NANOS,
        scope: { name: 'winston-test', version: '0.0.2' },
      },
    ]);
  });
});

describe('the receiver itself', () => {
  beforeEach(() => receiver.clear());

  it('counts metrics exports without decoding them', async () => {
    const response = await fetch(`${receiver.url}/v1/metrics`, {
      method: 'POST',
      headers: { 'content-type': 'application/x-protobuf' },
      body: new Uint8Array([0x0a, 0x00]),
    });
    expect(response.status).toBe(200);
    expect(receiver.requests()).toEqual([expect.objectContaining({ signal: 'metrics' })]);
  });

  it.each([
    { desc: 'an unknown content type', headers: { 'content-type': 'text/plain' }, body: 'x', error: /Content-Type/ },
    { desc: 'an unknown encoding', headers: { 'content-type': 'application/json', 'content-encoding': 'br' }, body: '{}', error: /Content-Encoding/ },
    { desc: 'malformed JSON', headers: { 'content-type': 'application/json' }, body: '{', error: /JSON/ },
  ])('rejects $desc with 400 and remembers why', async ({ headers, body, error }) => {
    const response = await fetch(`${receiver.url}/v1/traces`, { method: 'POST', headers, body });
    expect(response.status).toBe(400);
    expect(receiver.requests()[0]?.error).toMatch(error);
  });

  it('answers 404 for paths that are not OTLP', async () => {
    expect((await fetch(`${receiver.url}/v1/profiles`, { method: 'POST' })).status).toBe(404);
  });

  it('waitFor rejects after the timeout, listing what did arrive', async () => {
    await expect(receiver.waitFor(({ spans }) => spans.length > 0, 100)).rejects.toThrow(
      /condition not met within 100 ms[\s\S]*Spans \(0\)/,
    );
  });

  it('setDelay holds each answer back, like a slow collector', async () => {
    receiver.setDelay(300);
    try {
      const started = Date.now();
      await fetch(`${receiver.url}/v1/traces`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: '{}',
      });
      expect(Date.now() - started).toBeGreaterThanOrEqual(250);
    } finally {
      receiver.setDelay(0);
    }
  });
});
