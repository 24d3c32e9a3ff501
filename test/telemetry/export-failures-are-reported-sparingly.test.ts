import { droppedMessage, droppedRecordsReporter } from '../../otel/dropped-records';
import { createTelemetryDiagnostics, describeError, printable, withoutSdkSpanDrops } from '../../otel/telemetry-diagnostics';

function setup(intervalMs = 60_000) {
  let now = 0;
  const lines: string[] = [];
  const diagnostics = createTelemetryDiagnostics({
    destination: 'http://localhost:4318',
    write: (line) => lines.push(line),
    intervalMs,
    now: () => now,
  });
  return { diagnostics, lines, advance: (ms: number) => (now += ms) };
}

const refused = () =>
  new AggregateError(
    [Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:4318'), { code: 'ECONNREFUSED' })],
    '',
  );

it('reports the first export failure, then holds repeats back for the interval', () => {
  const { diagnostics, lines, advance } = setup();
  for (let i = 0; i < 20; i++) {
    diagnostics.reportExportError(refused());
    advance(1_000);
  }
  expect(lines).toEqual([
    'telemetry: cannot export to http://localhost:4318 (connect ECONNREFUSED 127.0.0.1:4318); spans and logs are ' +
      'dropped until it answers. Repeated failures are reported at most every 60 s.',
  ]);

  advance(60_000);
  diagnostics.reportExportError(new Error('Request timed out'));
  expect(lines).toHaveLength(2);
  expect(lines[1]).toMatch(/\(Request timed out\).*\(19 more since the last report; next report in 60 s at the earliest\)$/);
});

it('rate-limits each SDK warning on its own, and ignores info and debug', () => {
  const { diagnostics, lines } = setup();
  for (let i = 0; i < 5; i++) {
    diagnostics.logger.warn('Dropped %d spans because maxQueueSize reached', i);
    diagnostics.logger.error('something else');
    diagnostics.logger.info('chatty');
    diagnostics.logger.debug('chattier');
  }
  expect(lines).toEqual(['telemetry: warn: Dropped 0 spans because maxQueueSize reached', 'telemetry: error: something else']);
});

it('takes a warning with its count already in the text (as dropped-records.ts writes it) for one kind', () => {
  const { diagnostics, lines, advance } = setup();
  for (const count of [37, 512, 9, 1200]) {
    diagnostics.logger.warn(droppedMessage('spans', count));
    advance(5_000);
  }
  expect(lines).toEqual([`telemetry: warn: ${droppedMessage('spans', 37)}`]);
});

// sdk-trace says "Dropped N spans" only when a later span is queued; dropped-records.ts counts every drop and says
// it: both would count the same spans twice.
it("leaves sdk-trace's own count of dropped spans out", () => {
  const { diagnostics, lines } = setup();
  diagnostics.logger.warn('Dropped 37 spans because maxQueueSize reached');
  diagnostics.logger.warn(droppedMessage('spans', 37));
  expect(lines).toEqual([`telemetry: warn: ${droppedMessage('spans', 37)}`]);
});

it("leaves sdk-trace's own count out of the SDK's console logger too (OTEL_LOG_LEVEL set), and passes everything else on", () => {
  const said: string[] = [];
  const record = (level: string) => (message: string) => void said.push(`${level}: ${message}`);
  const logger = withoutSdkSpanDrops({ error: record('error'), warn: record('warn'), info: record('info'), debug: record('debug'), verbose: record('verbose') });
  logger.warn('Dropped 37 spans because maxQueueSize reached');
  logger.warn(droppedMessage('spans', 37));
  logger.error('e');
  logger.info('i');
  logger.debug('d');
  logger.verbose('v');
  expect(said).toEqual([`warn: ${droppedMessage('spans', 37)}`, 'error: e', 'info: i', 'debug: d', 'verbose: v']);
});

it('cuts a long text between characters, never inside a surrogate pair', () => {
  expect(printable(`${'a'.repeat(299)}😀tail`)).toBe(`${'a'.repeat(299)}...`);
  expect(printable(`${'a'.repeat(298)}😀tail`)).toBe(`${'a'.repeat(298)}😀...`);
  expect(printable('é € 日本 ß')).toBe('é € 日本 ß');
});

// At shutdown no later report comes: the counts of the reports held back since the last one were never said.
it('says at shutdown (flush) what each kind held back since its last report, once', () => {
  const { diagnostics, lines, advance } = setup();
  for (const count of [37, 512, 9]) {
    diagnostics.logger.warn(droppedMessage('log records', count));
    advance(1_000);
  }
  diagnostics.reportExportError(refused());
  diagnostics.reportExportError(new Error('Request timed out'));
  diagnostics.logger.error('said once');
  diagnostics.flush();
  diagnostics.flush();
  expect(lines).toEqual([
    `telemetry: warn: ${droppedMessage('log records', 37)}`,
    expect.stringMatching(/^telemetry: cannot export .*\(connect ECONNREFUSED/),
    'telemetry: error: said once',
    `telemetry: warn: ${droppedMessage('log records', 521)} (2 reports held back since the last one, counted in; said at shutdown)`,
    expect.stringMatching(/^telemetry: cannot export .*\(Request timed out\).* \(1 report held back since the last one; said at shutdown\)$/),
  ]);
});

it("counts a batch processor's drops on a full queue, says them a second later at most, and at once when flushed", () => {
  jest.useFakeTimers();
  try {
    const said: string[] = [];
    const reporter = droppedRecordsReporter('spans', (message) => said.push(message), 1_000);
    const processed = reporter.meterProvider.getMeter('@opentelemetry/sdk-trace').createCounter('otel.sdk.processor.span.processed');
    processed.add(3, { 'error.type': 'queue_full' });
    processed.add(50, {});
    processed.add(2, { 'error.type': 'queue_full' });
    jest.advanceTimersByTime(1_000);
    processed.add(4, { 'error.type': 'queue_full' });
    reporter.flush();
    reporter.flush();
    expect(said).toEqual([droppedMessage('spans', 5), droppedMessage('spans', 4)]);
  } finally {
    jest.useRealTimers();
  }
});

// The processors reset their count as they warn: each held-back message counted only its own second, and the report
// after the interval gave its own second's count alone (4,094 for a minute that dropped some 97,000 spans).
it('counts what the held-back "Dropped N" reports dropped into the next report of their kind', () => {
  const { diagnostics, lines, advance } = setup();
  for (const count of [37, 512, 9, 1200]) {
    diagnostics.logger.warn(droppedMessage('spans', count));
    advance(5_000);
  }
  diagnostics.logger.warn('Dropped %d log records because maxQueueSize reached', 4);
  advance(60_000);
  diagnostics.logger.warn(droppedMessage('spans', 100));
  expect(lines).toEqual([
    `telemetry: warn: ${droppedMessage('spans', 37)}`,
    'telemetry: warn: Dropped 4 log records because maxQueueSize reached',
    `telemetry: warn: ${droppedMessage('spans', 1821)} (since the last report, 3 more reports held back and counted in; next report in 60 s at the earliest)`,
  ]);
});

it('knows whether an export failed recently, to keep the flush at exit short', () => {
  const { diagnostics, advance } = setup(10_000);
  expect(diagnostics.exportFailedRecently()).toBe(false);
  diagnostics.reportExportError(refused());
  expect(diagnostics.exportFailedRecently()).toBe(true);
  advance(10_001);
  expect(diagnostics.exportFailedRecently()).toBe(false);
});

it.each([
  { desc: 'an AggregateError (both addresses of localhost refused)', error: refused(), text: 'connect ECONNREFUSED 127.0.0.1:4318' },
  { desc: 'an HTTP error from the collector', error: Object.assign(new Error('Bad Request'), { code: 400 }), text: '400 Bad Request' },
  { desc: 'a timeout', error: new Error('Request timed out'), text: 'Request timed out' },
  { desc: 'a string', error: 'Timeout', text: 'Timeout' },
  {
    desc: "a collector's status text with escape sequences and a bell",
    error: Object.assign(new Error('Bad\u001b[2J\u001b[31m telemetry: all exports OK \u0007\u009b'), { code: 400 }),
    text: '400 Bad\\x1b[2J\\x1b[31m telemetry: all exports OK \\x07\\x9b',
  },
  { desc: 'a message of a megabyte', error: new Error('x'.repeat(1 << 20)), text: `${'x'.repeat(300)}...` },
])('describes $desc in a few words', ({ error, text }) => {
  expect(describeError(error)).toBe(text);
});
