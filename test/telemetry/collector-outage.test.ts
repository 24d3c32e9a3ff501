/**
 * Telemetry never fails or slows a request: with the collector down or slow the service answers as usual,
 * and says so on stderr without flooding it.
 */
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver';
import { newTraceparent, startInstrumentedApp, stopAllInstrumentedApps } from './instrumented-app';
import { listen, refusedOrigin } from '../helpers/servers';
import { waitFor } from '../helpers/wait';

async function getTimes(url: string, times: number, gapMs = 0): Promise<number[]> {
  const statuses: number[] = [];
  for (let i = 0; i < times; i++) {
    const response = await fetch(url, { headers: { traceparent: newTraceparent().traceparent } });
    await response.arrayBuffer();
    statuses.push(response.status);
    if (gapMs > 0) await new Promise((resolve) => setTimeout(resolve, gapMs));
  }
  return statuses;
}

const failureLines = (stderr: string) => stderr.split('\n').filter((line) => line.includes('cannot export'));

afterAll(() => stopAllInstrumentedApps());

describe('with nothing listening on the OTLP endpoint', () => {
  it('answers every request and reports the export failure once', async () => {
    const endpoint = await refusedOrigin();
    const app = await startInstrumentedApp({
      OTEL_SERVICE_NAME: 'outage-fixture',
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_BSP_SCHEDULE_DELAY: '100',
      OTEL_BLRP_SCHEDULE_DELAY: '100',
      OTEL_EXPORTER_OTLP_TIMEOUT: '500', // give up retrying quickly, so failures are reported within the test
    });

    expect(await getTimes(`${app.url}/hello`, 20, 100)).toEqual(Array(20).fill(200));
    // Traces and logs both fail, several times over; one line says so.
    const deadline = Date.now() + 10_000;
    while (failureLines(app.stderr()).length === 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    expect(await getTimes(`${app.url}/hello`, 10, 100)).toEqual(Array(10).fill(200));

    // The start-up line, then one line for all the failures so far.
    expect(app.stderr().trim().split('\n')).toEqual([
      expect.stringMatching(/^telemetry: outage-fixture sends traces to /),
      expect.stringContaining(`telemetry: cannot export to ${endpoint} (connect ECONNREFUSED`),
    ]);
    app.kill();
  });

  it('still exits promptly on SIGTERM, giving up on the flush', async () => {
    const app = await startInstrumentedApp({
      OTEL_SERVICE_NAME: 'outage-fixture',
      OTEL_EXPORTER_OTLP_ENDPOINT: await refusedOrigin(),
      FIXTURE_HANDLES_SIGTERM: '1',
    });
    expect(await getTimes(`${app.url}/hello`, 3)).toEqual([200, 200, 200]);

    const started = Date.now();
    app.process.kill('SIGTERM');
    expect(await app.exited).toEqual({ code: 0, signal: null });
    expect(Date.now() - started).toBeLessThan(8_000); // the flush is bounded at 5 s
  });
});

// With OTEL_LOG_LEVEL set (`error`, to quiet the SDK) its own error handler wrote every failed export with the
// collector's whole answer: 12 MB of stderr in 10 s from one answering 400 with 4 MB.
describe('with OTEL_LOG_LEVEL set and a collector that refuses every export with a long answer', () => {
  it('reports the failures as without it: one short line', async () => {
    const collector = await listen((req, res) => {
      req.resume();
      res.writeHead(400, { 'content-type': 'text/plain' }).end('refused '.repeat(16_384));
    });
    try {
      const app = await startInstrumentedApp({
        OTEL_SERVICE_NAME: 'refused-fixture',
        OTEL_EXPORTER_OTLP_ENDPOINT: collector.url,
        OTEL_LOG_LEVEL: 'error',
        OTEL_BSP_SCHEDULE_DELAY: '50',
        OTEL_BLRP_SCHEDULE_DELAY: '50',
      });
      expect(await getTimes(`${app.url}/hello`, 20, 20)).toEqual(Array(20).fill(200));
      await waitFor(() => failureLines(app.stderr()).length > 0, 'the failure to be reported', 10_000);
      expect(await getTimes(`${app.url}/hello`, 10, 50)).toEqual(Array(10).fill(200));
      expect(failureLines(app.stderr())).toEqual([expect.stringContaining(`telemetry: cannot export to ${collector.url} (400 Bad Request)`)]);
      expect(app.stderr()).not.toContain('refused refused');
      app.kill();
    } finally {
      await collector.close();
    }
  });
});

describe('with a collector that takes 5 s to answer', () => {
  let receiver: OtlpReceiver;
  beforeAll(async () => {
    receiver = await startOtlpReceiver({ delayMs: 5_000 });
  });
  afterAll(() => receiver.close());

  it('does not hold up responses while exports wait', async () => {
    const app = await startInstrumentedApp({
      OTEL_SERVICE_NAME: 'slow-collector-fixture',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_BSP_SCHEDULE_DELAY: '50',
      OTEL_BLRP_SCHEDULE_DELAY: '50',
    });

    const started = Date.now();
    expect(await getTimes(`${app.url}/hello`, 30, 20)).toEqual(Array(30).fill(200));
    // 30 requests that waited on a 5 s export would take minutes; generous bound.
    expect(Date.now() - started).toBeLessThan(4_000);
    // The exports were under way meanwhile: the collector did receive them.
    await receiver.waitFor(({ spans }) => spans.length > 0);
    app.kill();
  });

  // sdk-logs drops records on a full queue without a word (the span processor warns): with a slow collector most
  // access records could go while stderr said nothing.
  it('says on stderr that log records were dropped on a full queue, as it says for spans', async () => {
    const app = await startInstrumentedApp({
      OTEL_SERVICE_NAME: 'slow-collector-fixture',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_BLRP_SCHEDULE_DELAY: '50',
      OTEL_BLRP_MAX_QUEUE_SIZE: '4',
      OTEL_BLRP_MAX_EXPORT_BATCH_SIZE: '2',
    });
    try {
      expect(await getTimes(`${app.url}/hello`, 20)).toEqual(Array(20).fill(200));
      await waitFor(() => /telemetry: warn: Dropped \d+ log records because maxQueueSize reached/.test(app.stderr()), 'the drop to be reported', 10_000);
    } finally {
      app.kill();
    }
  });

  // sdk-trace says "Dropped N spans" only when a later span is queued: a burst's drops with nothing after them, then
  // a shutdown, left no line at all.
  it('says how many spans were dropped on a full queue, by shutdown at the latest, with nothing traced after them', async () => {
    const app = await startInstrumentedApp({
      OTEL_SERVICE_NAME: 'slow-collector-fixture',
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_BSP_SCHEDULE_DELAY: '50',
      OTEL_BSP_MAX_QUEUE_SIZE: '4',
      OTEL_BSP_MAX_EXPORT_BATCH_SIZE: '2',
    });
    expect(await getTimes(`${app.url}/hello`, 20, 20)).toEqual(Array(20).fill(200));
    // The fixture has no SIGTERM handler of its own: register.ts flushes, then the signal ends it.
    app.process.kill('SIGTERM');
    expect(await app.exited).toEqual({ code: null, signal: 'SIGTERM' });
    const said = [...app.stderr().matchAll(/telemetry: warn: Dropped (\d+) spans because the span queue was full/g)].map((match) => Number(match[1]));
    expect(said.length).toBeGreaterThan(0);
    // 20 requests' spans through a queue of 4 with exports held 5 s: most were dropped, and every drop is said.
    expect(said.reduce((sum, count) => sum + count, 0)).toBeGreaterThanOrEqual(10);
  });
});
