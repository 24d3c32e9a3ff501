/**
 * Spans and log records still queued in the batch processors at SIGTERM reach the collector before the
 * process ends, whether the app handles the signal (and calls shutdownTelemetry) or leaves it to the bootstrap.
 */
import { startOtlpReceiver, type OtlpReceiver } from '../helpers/otlp-receiver';
import { newTraceparent, startInstrumentedApp, stopAllInstrumentedApps } from './instrumented-app';

let receiver: OtlpReceiver;

beforeAll(async () => {
  receiver = await startOtlpReceiver();
});
afterAll(async () => {
  await stopAllInstrumentedApps();
  await receiver.close();
});

it.each([
  {
    desc: 'the app closes its server, then calls shutdownTelemetry and exits',
    env: { FIXTURE_HANDLES_SIGTERM: '1' },
    exit: { code: 0, signal: null },
  },
  {
    desc: 'the app has no SIGTERM handler: the bootstrap flushes, then lets the signal end the process',
    env: {},
    exit: { code: null, signal: 'SIGTERM' },
  },
])('delivers the last request’s spans and logs on SIGTERM when $desc', async ({ env, exit }) => {
  const app = await startInstrumentedApp({
    ...env,
    OTEL_SERVICE_NAME: 'shutdown-fixture',
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    // Longer than the test: without the flush at exit nothing would be sent.
    OTEL_BSP_SCHEDULE_DELAY: '60000',
    OTEL_BLRP_SCHEDULE_DELAY: '60000',
  });
  const { traceparent, traceId } = newTraceparent();
  const response = await fetch(`${app.url}/hello`, { headers: { traceparent } });
  expect(response.status).toBe(200);
  expect(receiver.spans().filter((s) => s.traceId === traceId)).toEqual([]);

  app.process.kill('SIGTERM');

  expect(await app.exited).toEqual(exit);
  expect(receiver.spans().filter((s) => s.traceId === traceId && s.kind === 'SERVER')).toHaveLength(1);
  expect(receiver.logs().filter((l) => l.traceId === traceId && l.body === 'hello handled')).toHaveLength(1);
});

// One signal's refused export (a trace endpoint with a wrong path: 404, not retried) ended the shutdown at once: the
// flushes of the others were cut by the exit, and stderr said the export "did not finish within 5000 ms", which
// nothing had waited for.
it('still flushes the log records when the span export is refused, and says it was refused, not that it timed out', async () => {
  const app = await startInstrumentedApp({
    FIXTURE_HANDLES_SIGTERM: '1',
    OTEL_SERVICE_NAME: 'shutdown-refused-fixture',
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `${receiver.url}/no/such/path`,
    OTEL_BSP_SCHEDULE_DELAY: '60000',
    OTEL_BLRP_SCHEDULE_DELAY: '60000',
  });
  const { traceparent, traceId } = newTraceparent();
  expect((await fetch(`${app.url}/hello`, { headers: { traceparent } })).status).toBe(200);
  app.process.kill('SIGTERM');
  expect(await app.exited).toEqual({ code: 0, signal: null });
  expect(receiver.logs().filter((l) => l.traceId === traceId && l.body === 'hello handled')).toHaveLength(1);
  expect(app.stderr()).toContain('telemetry: the last export was refused');
  expect(app.stderr()).not.toContain('did not finish within');
});
