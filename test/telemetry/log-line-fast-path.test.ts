import { context, ROOT_CONTEXT, trace, TraceFlags } from '@opentelemetry/api';
import { AsyncLocalStorageContextManager } from '@opentelemetry/context-async-hooks';
import { Writable } from 'node:stream';
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
