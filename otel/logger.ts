import { context, propagation, trace, type Context } from '@opentelemetry/api';
import winston from 'winston';
import { isValidSpanContext } from './gateway-tracer';
import { isoTimestamp } from './iso-timestamp';
import { LOG_CONTEXT, OtlpLogTransport, Transport } from './otlp-log-transport';
import { isLogExportActive } from './telemetry';
import { BAGGAGE_REQUEST_ID, LOG_FIELD } from './wire-names';

export type Logger = winston.Logger;

export interface LoggerOptions {
  /** `service.name` written on every line. */
  serviceName: string;
  /** winston level; default `info`. */
  level?: string;
  /** Drop every line (tests that do not read logs). Default false. */
  silent?: boolean;
  /** Extra transports besides stdout (tests capture lines through one). */
  transports?: winston.transport[];
  /** Write the lines to stdout. Default true (tests that capture lines turn it off). */
  stdout?: boolean;
  /**
   * Also emit every line as an OpenTelemetry log record (OTLP, to Loki), with the line's trace context and its
   * fields as attributes. Default: on when the telemetry bootstrap (`otel/register`) is exporting logs.
   */
  exportToOtel?: boolean;
}

/**
 * Adds the correlation fields from the active OpenTelemetry context. Read at log time, so a line written
 * anywhere inside a request carries that request's trace, span and request id without passing them around.
 */
const correlation = winston.format((info) => {
  const active = context.active();
  const spanContext = trace.getSpanContext(active);
  if (spanContext && isValidSpanContext(spanContext)) {
    info[LOG_FIELD.traceId] ??= spanContext.traceId;
    info[LOG_FIELD.spanId] ??= spanContext.spanId;
  }
  const requestId = propagation.getBaggage(active)?.getEntry(BAGGAGE_REQUEST_ID)?.value;
  if (requestId !== undefined) info[LOG_FIELD.requestId] ??= requestId;
  // For OtlpLogTransport: winston may hand the line to transports after this context has ended.
  info[LOG_CONTEXT] = active;
  return info;
});

/** winston's JSON line with what JSON.stringify leaves raw and a terminal must not get escaped (TERMINAL_CONTROLS), as logLine's. */
const terminalControlsEscaped = winston.format((info) => {
  const line = info[MESSAGE];
  if (typeof line === 'string') info[MESSAGE] = withTerminalControlsEscaped(line);
  return info;
});

/** A JSON-lines winston logger on stdout, one per process, passed to whatever needs to log. */
export function createLogger(options: LoggerOptions): Logger {
  const stdout = (options.stdout ?? true) ? [new StdoutLineTransport()] : [];
  const otel = (options.exportToOtel ?? isLogExportActive()) ? [new OtlpLogTransport()] : [];
  return winston.createLogger({
    level: options.level ?? 'info',
    silent: options.silent ?? false,
    defaultMeta: { [LOG_FIELD.serviceName]: options.serviceName },
    format: winston.format.combine(winston.format.timestamp(), correlation(), winston.format.json(), terminalControlsEscaped()),
    transports: [...stdout, ...otel, ...(options.transports ?? [])],
  });
}

/** Where winston's formats leave the finished line, and the level it was logged at (triple-beam's symbols). */
const MESSAGE = Symbol.for('message');
const LEVEL = Symbol.for('level');

/** Field values `logLine` takes: what a JSON line holds without any conversion. */
export type LineValue = string | number | boolean | null;

/**
 * One line written straight to the logger's transports, without winston's stream pipeline (a Transform piped
 * into each transport): for the access log, one line per request on the gateway's hot path, where that
 * pipeline cost about 5% of the CPU per request (bench/RESULTS.md). The line is what `logger.log` would
 * write: defaultMeta, level, message, timestamp, the trace and span of `lineContext` and the fields, keys
 * sorted as winston's JSON format sorts them; every transport gets it at its own level (stdout, the OTLP
 * export with `lineContext` as the record's context, test captures). Fields must be flat JSON values.
 */
export function logLine(logger: Logger, level: string, message: string, fields: Readonly<Record<string, LineValue>>, lineContext: Context): void {
  const levels = logger.levels;
  const severity = levels[level];
  if (logger.silent || severity === undefined || levels[logger.level]! < severity) return;
  const line: Record<string, unknown> = { ...(logger.defaultMeta as Record<string, unknown> | undefined), ...fields, level, message, timestamp: isoTimestamp() };
  const spanContext = trace.getSpanContext(lineContext);
  if (spanContext && isValidSpanContext(spanContext)) {
    line[LOG_FIELD.traceId] ??= spanContext.traceId;
    line[LOG_FIELD.spanId] ??= spanContext.spanId;
  }
  const info = line as winston.Logform.TransformableInfo;
  info[MESSAGE] = sortedJson(line);
  info[LEVEL] = level;
  info[LOG_CONTEXT] = lineContext;
  for (const transport of logger.transports) {
    const threshold = transport.level ?? logger.level;
    if (transport.silent || levels[threshold]! < severity) continue;
    transport.log!(info, ignoreCallback);
  }
}

function ignoreCallback(): void {}

/**
 * A gate for a line that could repeat on every request or message (a store that is down, a refused message):
 * open at most once per `intervalMs`, so an outage is said, not flooded. The first call opens it.
 */
export function atMostEvery(intervalMs: number): () => boolean {
  let openedAt = -Infinity;
  return () => {
    const now = Date.now();
    if (now - openedAt < intervalMs) return false;
    openedAt = now;
    return true;
  };
}

/** A key shape seen before: its keys in the order they came, and the JSON text of each key in sorted order. */
interface KeyShape {
  keys: readonly string[];
  /** `,"key":` and `,"key":"` for each sorted key: a field's text up to its value, or into a string value. */
  names: KeyTexts;
  /** `{"key":` and `{"key":"`: the same for the line's first field. */
  firstNames: KeyTexts;
  /** Where each sorted key's value is among the line's values (Object.values, in the order of `keys`). */
  positions: readonly number[];
}

interface KeyTexts {
  bare: readonly string[];
  quoted: readonly string[];
}

/** The key shapes lines came in; bounded (each call site has one or two), beyond it a line's keys are sorted for it alone. */
const keyShapes: KeyShape[] = [];
const MAX_KEY_SHAPES = 16;

/**
 * What safe-stable-stringify (winston's JSON format) writes for a flat line: the keys sorted, each value as
 * JSON.stringify writes it. Built here rather than by JSON.stringify of a sorted copy: lines from one call site
 * come with their keys in one order, so the order and each key's JSON text are found once per shape, by
 * comparing the key list with the shapes seen (sorting fifteen keys per line, and then a JSON text of the key
 * list as the shape's name, were 2-3% of a request's instructions); and a string value with nothing to escape
 * (nearly all) is written between quotes without a call into V8's C++ serializer. Keys whose value JSON leaves
 * out (undefined, functions) are left out. Each key's text comes with what goes before it (`,` or `{`) and, for a
 * string, the opening quote: a string field is three string additions where it was five, each a cons string
 * allocated, and a node of the tree that writing the line to stdout flattens (25.0k -> 22.1k instructions per
 * access line written to stdout, /work/scratch/perf80/repro-logline.sh). Tried and slower: joining an array of
 * the pieces (31k: Array.prototype.join's generic loop) and JSON.stringify with the sorted keys as its replacer (33k).
 */
function sortedJson(line: Record<string, unknown>): string {
  const shape = keyShapeOf(Object.keys(line));
  // By position, not by name: `line[key]` with a new key each time is a megamorphic load and a string-table
  // lookup per field (~2k instructions per access line).
  const values = Object.values(line);
  let json = '';
  for (let index = 0; index < shape.positions.length; index++) {
    const value = values[shape.positions[index]!];
    const names = json === '' ? shape.firstNames : shape.names;
    if (typeof value === 'string') {
      // Tested once here: a string with something to escape goes straight to JSON.stringify, not through jsonValue's test again.
      json += NEEDS_ESCAPING.test(value) ? names.bare[index]! + escapedJson(value) : names.quoted[index]! + value + '"';
      continue;
    }
    const text = jsonValue(value);
    if (text !== undefined) json += names.bare[index]! + text;
  }
  return json === '' ? '{}' : `${json}}`;
}

function keyShapeOf(keys: string[]): KeyShape {
  for (const shape of keyShapes) if (sameKeys(shape.keys, keys)) return shape;
  const sorted = [...keys].sort();
  const texts = (start: string): KeyTexts => ({ bare: sorted.map((key) => `${start}${JSON.stringify(key)}:`), quoted: sorted.map((key) => `${start}${JSON.stringify(key)}:"`) });
  const shape = { keys, names: texts(','), firstNames: texts('{'), positions: sorted.map((key) => keys.indexOf(key)) };
  if (keyShapes.length < MAX_KEY_SHAPES) keyShapes.push(shape);
  return shape;
}

function sameKeys(a: readonly string[], b: readonly string[]): boolean {
  if (a.length !== b.length) return false;
  for (let index = 0; index < a.length; index++) if (a[index] !== b[index]) return false;
  return true;
}

/**
 * Characters a string field cannot be written with as it is: those JSON.stringify escapes (quote, backslash, C0
 * controls, lone surrogates; pairs are written as they are, by JSON.stringify too) and those it leaves raw that a
 * reader of the line must not get raw (TERMINAL_CONTROLS).
 */
const NEEDS_ESCAPING = /["\\\u0000-\u001f\u007f-\u009f\u2028\u2029\ud800-\udfff]/;

/**
 * DEL, the C1 controls and the line and paragraph separators, which JSON.stringify leaves raw: a client's `\u009b`
 * (an 8-bit CSI) in a URL reached the line as it came, for the terminal of whoever reads the log with `tail`, and
 * U+2028 ends a line for some readers. Written as `\uXXXX`, as JSON allows for any character.
 */
const TERMINAL_CONTROLS = /[\u007f-\u009f\u2028\u2029]/g;

/** JSON text with TERMINAL_CONTROLS escaped. */
function withTerminalControlsEscaped(json: string): string {
  return json.search(TERMINAL_CONTROLS) === -1 ? json : json.replace(TERMINAL_CONTROLS, (char) => `\\u${char.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

/** A string's JSON text with TERMINAL_CONTROLS escaped too. */
function escapedJson(value: string): string {
  return withTerminalControlsEscaped(JSON.stringify(value));
}

/** A field's JSON text for any value but a string (sortedJson writes those itself); undefined where JSON leaves the key out. */
function jsonValue(value: unknown): string | undefined {
  if (typeof value === 'number') return Number.isFinite(value) ? String(value) : 'null';
  if (value === null) return 'null';
  if (value === true) return 'true';
  if (value === false) return 'false';
  const json = JSON.stringify(value) as string | undefined;
  return json === undefined ? undefined : withTerminalControlsEscaped(json);
}

/**
 * stdout for every line, gathered per turn of the event loop. winston's Console transport writes each line
 * on its own (a synchronous write(2) when stdout is a file or pipe) and schedules an event per line; under
 * load that was about a twentieth of the gateway's CPU (bench/RESULTS.md). Lines logged while handling one
 * batch of I/O go out in one write, right after it (setImmediate), and whatever is pending is written
 * synchronously when the process exits, crash included. A stdout that failed or is not read drops lines (counted,
 * reported on stderr once a minute) rather than ending or growing the process.
 */
class StdoutLineTransport extends Transport {
  override log(info: winston.Logform.TransformableInfo, next: () => void): void {
    stdoutLines.write(`${String(info[MESSAGE])}\n`);
    next();
  }
}

/**
 * Bytes of lines stdout may hold unwritten (its reader slower than the traffic, or stopped) before new lines are
 * dropped instead: a stalled log shipper must not grow the process until it is killed.
 */
export const STDOUT_BACKLOG_BYTES = 8 * 1024 * 1024;

/** Least time between two reports of dropped lines on stderr, ms. */
const DROP_REPORT_INTERVAL_MS = 60_000;

const stdoutLines = (() => {
  let pending = '';
  let scheduled = false;
  /** stdout failed (its reader went away: EPIPE): every line is dropped from then on. */
  let failed: string | undefined;
  let dropped = 0;
  /** `dropped` as last said on stderr. */
  let reported = 0;
  let awaitingDrain = false;
  let reportedAt = -Infinity;
  const sayDropped = (why: string) => {
    reportedAt = Date.now();
    reported = dropped;
    process.stderr.write(`log: ${dropped} line(s) dropped so far: ${why}\n`);
  };
  const reportDropped = (why: string) => {
    if (Date.now() - reportedAt >= DROP_REPORT_INTERVAL_MS) sayDropped(why);
  };
  // The count at the end (and once lines flow again) is said whatever the interval: the first report of an
  // outage is made at its first drop, when the count is still small.
  const reportSettled = (why: string) => {
    if (dropped > reported) sayDropped(why);
  };
  // A reader that goes away (a log shipper restarted, `| tee` killed) must not take the process with it: with no
  // 'error' listener, the EPIPE of the next write ended the gateway, every worker and the primary. Lines still go
  // to OTLP when logs are exported there.
  process.stdout.on('error', (error: NodeJS.ErrnoException) => {
    failed = error.code ?? error.message;
    reportDropped(`stdout failed (${failed}); log lines are no longer written to it`);
  });
  // Nothing is left to tell about a stderr that failed too.
  process.stderr.on('error', () => undefined);
  const flush = () => {
    scheduled = false;
    if (pending === '') return;
    const chunk = pending;
    pending = '';
    if (failed !== undefined || process.stdout.writableLength > STDOUT_BACKLOG_BYTES) {
      if (!awaitingDrain && failed === undefined) {
        awaitingDrain = true;
        process.stdout.once('drain', () => {
          awaitingDrain = false;
          reportSettled('stdout is read again');
        });
      }
      for (let at = chunk.indexOf('\n'); at !== -1; at = chunk.indexOf('\n', at + 1)) dropped++;
      reportDropped(failed === undefined ? `stdout is not being read (over ${STDOUT_BACKLOG_BYTES} bytes waiting)` : `stdout failed (${failed})`);
      return;
    }
    process.stdout.write(chunk);
  };
  process.once('exit', () => {
    flush();
    reportSettled('at exit');
  });
  return {
    write(line: string) {
      pending += line;
      if (!scheduled) {
        scheduled = true;
        setImmediate(flush);
      }
    },
  };
})();
