import { context, ROOT_CONTEXT, trace, TraceFlags } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { Writable } from 'node:stream';
import fc from 'fast-check';
import winston from 'winston';
import { createLogger, logLine, type LineValue } from '../../otel/logger';
import { LOG_CONTEXT } from '../../otel/otlp-log-transport';
import { LOG_FIELD } from '../../otel/wire-names';

/** A logger whose transports record what they were handed: the raw line and the info object. */
function capturingLogger(level = 'info') {
  const lines: string[] = [];
  const infos: winston.Logform.TransformableInfo[] = [];
  const stream = new winston.transports.Stream({
    stream: new Writable({
      write(chunk: Buffer, _encoding, done) {
        lines.push(chunk.toString().trimEnd());
        done();
      },
    }),
  });
  const recorder = new winston.transports.Stream({ stream: new Writable({ write: (_c, _e, done) => done() }), level: 'warn' });
  const originalLog = recorder.log!.bind(recorder);
  recorder.log = (info, next) => {
    infos.push(info);
    originalLog(info, next);
  };
  const logger = createLogger({ serviceName: 'gateway', level, stdout: false, exportToOtel: false, transports: [stream, recorder] });
  return { logger, lines, infos };
}

const spanContext = { traceId: '0af7651916cd43dd8448eb211c80319c', spanId: 'b7ad6b7169203331', traceFlags: TraceFlags.SAMPLED };
const fields: Record<string, LineValue> = { method: 'GET', url: '/api/users/1', status: 200, duration_ms: 1.25, request_id: 'abc', route: 'users', user_id: null, error_code: null };
const withoutTime = (line: string) => line.replace(/"timestamp":"[^"]+"/, '"timestamp":"T"');

describe('logLine (the access log fast path)', () => {
  // logger.log reads the active context, as in the running processes.
  beforeAll(() => context.setGlobalContextManager(new AsyncLocalStorageContextManager().enable()));
  afterAll(() => context.disable());

  it("writes exactly the line logger.log writes: same fields, same key order, the context's trace and span", async () => {
    const { logger, lines } = capturingLogger();
    const lineContext = trace.setSpanContext(ROOT_CONTEXT, spanContext);
    logLine(logger, 'info', 'request completed', fields, lineContext);
    context.with(lineContext, () => logger.info('request completed', fields));
    await new Promise((resolve) => setImmediate(resolve));
    expect(lines).toHaveLength(2);
    expect(withoutTime(lines[0]!)).toBe(withoutTime(lines[1]!));
    expect(JSON.parse(lines[0]!)).toMatchObject({ ...fields, level: 'info', message: 'request completed', [LOG_FIELD.serviceName]: 'gateway', [LOG_FIELD.traceId]: spanContext.traceId, [LOG_FIELD.spanId]: spanContext.spanId });
  });

  it('writes the line logger.log writes for any field set, in any key order, many shapes through one logger', async () => {
    // logLine sorts each shape of keys once and reuses the order: a wrong reuse (two shapes taken for one, a
    // list sorted for other keys) shows up as a line that differs from winston's own.
    const { logger, lines } = capturingLogger();
    const key = fc.oneof(fc.constantFrom('a', 'b', 'a\nb', 'b\na', '"', 'status', 'level', 'url', 'z', 'é', 'x1', '0', '2', '10', '01'), fc.string({ maxLength: 4 }));
    // Values JSON writes differently: quotes, backslashes, controls, lone and paired surrogates, U+2028,
    // non-ASCII, -0, fractions, exponents, non-finite numbers (null).
    const awkward = fc.constantFrom('"', '\\', 'a\nb', '\u0000', '\u001f', '\u007f', '\ud800', 'a\udc00b', '😀', '\u2028', 'é', '');
    const value = fc.oneof(
      fc.string({ maxLength: 6 }),
      fc.string({ unit: 'binary', maxLength: 6 }),
      awkward,
      // Long strings with an awkward character at their end.
      fc.tuple(fc.string({ minLength: 58, maxLength: 70 }), awkward).map(([text, end]) => text + end),
      fc.integer(),
      fc.double(),
      fc.constantFrom(-0, 1e21, 5e-7, Number.NaN, Number.POSITIVE_INFINITY),
      fc.boolean(),
      fc.constant(null),
    );
    await fc.assert(
      fc.asyncProperty(fc.array(fc.dictionary(key, value, { maxKeys: 6 }), { minLength: 1, maxLength: 8 }), async (fieldSets) => {
        lines.length = 0;
        for (const fieldSet of fieldSets) {
          // Left out: fields named like the line's own (level, message, timestamp), which winston lets win
          // differently. Array-index names ('2', which every JS object lists first) are in: both sort them as text.
          const own = Object.fromEntries(Object.entries(fieldSet).filter(([name]) => !['level', 'message', 'timestamp', '__proto__'].includes(name)));
          logLine(logger, 'info', 'm', own, ROOT_CONTEXT);
          logger.info('m', own);
        }
        await new Promise((resolve) => setImmediate(resolve));
        for (let index = 0; index < lines.length; index += 2) expect(withoutTime(lines[index]!)).toBe(withoutTime(lines[index + 1]!));
      }),
      { seed: 17, numRuns: 300 },
    );
  });

  it('stamps each line with the time it was written (the text is reused only within one millisecond)', async () => {
    const { logger, lines } = capturingLogger();
    const stamps: { before: number; after: number }[] = [];
    for (let index = 0; index < 3; index++) {
      const before = Date.now();
      logLine(logger, 'info', 'tick', fields, ROOT_CONTEXT);
      stamps.push({ before, after: Date.now() });
      // The next line in a later millisecond.
      while (Date.now() <= stamps[index]!.after) await new Promise((resolve) => setImmediate(resolve));
    }
    const written = lines.map((line) => Date.parse((JSON.parse(line) as { timestamp: string }).timestamp));
    written.forEach((time, index) => {
      expect(time).toBeGreaterThanOrEqual(stamps[index]!.before);
      expect(time).toBeLessThanOrEqual(stamps[index]!.after);
    });
  });

  // JSON.stringify leaves DEL, the C1 controls and U+2028/2029 raw: a client's \u009b (an 8-bit CSI) in a URL reached the
  // terminal of whoever read the log with `tail` as it came.
  it('writes DEL, C1 controls and the line separators escaped, on the fast path and through winston, as the same value', async () => {
    const { logger, lines } = capturingLogger();
    const hostile = { url: '/api/users/1?q=\u009b31m\u0085x\u007f\u2028\u2029', detail: { nested: '\u009d0;title\u0007' } };
    logLine(logger, 'info', 'request completed', { url: hostile.url }, ROOT_CONTEXT);
    logger.info('request failed', hostile);
    await new Promise((resolve) => setImmediate(resolve));
    expect(lines).toHaveLength(2);
    for (const line of lines) expect(line).not.toMatch(/[\u007f-\u009f\u2028\u2029]/);
    expect(JSON.parse(lines[0]!)).toMatchObject({ url: hostile.url });
    expect(JSON.parse(lines[1]!)).toMatchObject(hostile);
  });

  it("honours the logger's and each transport's level, and silence", () => {
    const { logger, lines, infos } = capturingLogger('warn');
    logLine(logger, 'info', 'below the logger level', fields, ROOT_CONTEXT);
    expect(lines).toHaveLength(0);
    logLine(logger, 'warn', 'client error', fields, ROOT_CONTEXT);
    logLine(logger, 'error', 'server error', fields, ROOT_CONTEXT);
    expect(lines.map((line) => (JSON.parse(line) as { message: string }).message)).toEqual(['client error', 'server error']);
    expect(infos.map((info) => info.message)).toEqual(['client error', 'server error']);
    logger.silent = true;
    logLine(logger, 'error', 'silenced', fields, ROOT_CONTEXT);
    expect(lines).toHaveLength(2);
  });

  it('hands the OTLP transport the line context as the record context, and no trace ids without a span', () => {
    const { logger, lines, infos } = capturingLogger();
    const lineContext = trace.setSpanContext(ROOT_CONTEXT, spanContext);
    logLine(logger, 'warn', 'with context', fields, lineContext);
    expect(infos[0]![LOG_CONTEXT]).toBe(lineContext);
    logLine(logger, 'warn', 'no span', fields, ROOT_CONTEXT);
    expect(JSON.parse(lines[1]!)).not.toHaveProperty(LOG_FIELD.traceId);
  });
});
