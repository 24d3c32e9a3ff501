/**
 * Metrics end to end: processes started with the telemetry bootstrap (`--require register.js`), a real OTLP/HTTP
 * receiver, and assertions on what the SDK's metric exporters actually sent.
 *   - a service (test/fixtures/telemetry-app.js, instrumented as the services are): the http and undici
 *     instrumentations' request durations;
 *   - a process with its own prom-client registry handed to the bootstrap after start, as the gateway does
 *     (test/fixtures/prom-registry-app.js): the registry through the bridge, over the same exporter.
 */
import path from 'node:path';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedMetricPoint } from '../helpers/otlp-receiver';
import { SERVICE_NAME } from '../../otel/wire-names';
import { newTraceparent, startInstrumentedApp, stopAllInstrumentedApps } from './instrumented-app';
import { refusedOrigin, resettingOrigin } from '../helpers/servers';
import { waitFor } from '../helpers/wait';

const REGISTRY_APP = path.resolve(__dirname, '../fixtures/prom-registry-app.js');
/** The semantic conventions' advice for HTTP durations, which both instrumentations use. */
const HTTP_DURATION_BOUNDS = [0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10];

let receiver: OtlpReceiver;

beforeAll(async () => {
  receiver = await startOtlpReceiver();
});
afterEach(() => receiver.clear());
afterAll(async () => {
  await stopAllInstrumentedApps();
  await receiver.close();
});

/** The newest point of a cumulative series: its totals so far. */
function latest(points: readonly ReceivedMetricPoint[], name: string, attributes: Record<string, unknown> = {}): ReceivedMetricPoint | undefined {
  return points.findLast((p) => p.name === name && Object.entries(attributes).every(([key, value]) => p.attributes[key] === value));
}

async function get(url: string, times = 1): Promise<void> {
  for (let i = 0; i < times; i++) {
    const response = await fetch(url);
    await response.arrayBuffer();
  }
}

describe.each([
  { protocol: 'http/protobuf', contentType: 'application/x-protobuf' },
  { protocol: 'http/json', contentType: 'application/json' },
])('over OTLP $protocol', ({ protocol, contentType }) => {
  it('exports a service’s server and client request durations with exact counts, and nothing about its own exports', async () => {
    const app = await startInstrumentedApp({
      OTEL_SERVICE_NAME: SERVICE_NAME.users,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
      OTEL_METRIC_EXPORT_INTERVAL: '200',
    });
    // 3 x /hello; 2 x /chain, each of which calls /hello once more through fetch; a health probe.
    await get(`${app.url}/hello`, 3);
    await get(`${app.url}/chain`, 2);
    await get(`${app.url}/health`);

    const server = (route: string) => ({ 'http.request.method': 'GET', 'http.route': route, 'http.response.status_code': 200 });
    const { metrics } = await receiver.waitFor(
      ({ metrics }) =>
        latest(metrics, 'http.server.request.duration', server('/hello'))?.count === 5 &&
        latest(metrics, 'http.server.request.duration', server('/chain'))?.count === 2 &&
        latest(metrics, 'http.client.request.duration')?.count === 2,
    );

    const hello = latest(metrics, 'http.server.request.duration', server('/hello'))!;
    expect(hello).toMatchObject({
      type: 'histogram',
      temporality: 'cumulative',
      unit: 's',
      serviceName: SERVICE_NAME.users,
      scope: { name: '@opentelemetry/instrumentation-http' },
      attributes: { ...server('/hello'), 'url.scheme': 'http' },
      count: 5,
      explicitBounds: HTTP_DURATION_BOUNDS,
    });
    expect(hello.bucketCounts!.reduce((a, b) => a + b, 0)).toBe(5);
    expect(hello.sum).toBeGreaterThan(0);
    expect(hello.resource).toMatchObject({ 'service.name': SERVICE_NAME.users, 'deployment.environment.name': 'test' });

    // The fetch calls, from the undici instrumentation; the exporters' own POSTs are not counted anywhere.
    const client = metrics.filter((p) => p.name === 'http.client.request.duration');
    expect(new Set(client.map((p) => p.scope.name))).toEqual(new Set(['@opentelemetry/instrumentation-undici']));
    expect(latest(metrics, 'http.client.request.duration')).toMatchObject({ attributes: { 'http.request.method': 'GET', 'http.response.status_code': 200 }, count: 2 });

    // Counted once each: no series ever went past its request count, and the probe made none.
    const servers = metrics.filter((p) => p.name === 'http.server.request.duration');
    expect(new Set(servers.map((p) => p.attributes['http.route']))).toEqual(new Set(['/hello', '/chain']));
    expect(Math.max(...servers.map((p) => p.count!))).toBe(5);
    // Cumulative: one start time per series, across every export.
    expect(new Set(servers.filter((p) => p.attributes['http.route'] === '/hello').map((p) => p.startTimeUnixNano)).size).toBe(1);
    expect(receiver.requests().every((r) => r.contentType === contentType && r.error === undefined)).toBe(true);
    app.kill();
  });

  it('exports a prom-client registry registered after start, bucket by bucket, through the same exporter', async () => {
    const app = await startInstrumentedApp(
      {
        OTEL_SERVICE_NAME: SERVICE_NAME.gateway,
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_EXPORTER_OTLP_PROTOCOL: protocol,
        OTEL_METRIC_EXPORT_INTERVAL: '200',
      },
      { fixture: REGISTRY_APP },
    );
    expect(app.logLines().find((line) => line.message === 'listening')).toMatchObject({ registered: true });
    // Buckets 0.1, 0.5, 1: /a gets one in each, and two above the last bound; /b one, as a 503.
    for (const seconds of [0.05, 0.3, 0.7, 2, 3]) await get(`${app.url}/observe?route=/a&seconds=${seconds}`);
    await get(`${app.url}/observe?route=/b&status=503&seconds=0.25`);

    const { metrics } = await receiver.waitFor(({ metrics }) => latest(metrics, 'fixture_requests', { route: '/a' })?.value === 5 && latest(metrics, 'fixture_requests', { route: '/b' })?.value === 1);
    const scope = { name: 'prom-registry-fixture', version: '0.0.1' };
    expect(latest(metrics, 'fixture_request_duration_seconds', { route: '/a' })).toMatchObject({
      type: 'histogram',
      temporality: 'cumulative',
      unit: 's',
      description: 'Observed durations.',
      serviceName: SERVICE_NAME.gateway,
      scope,
      attributes: { route: '/a', status: '200' },
      explicitBounds: [0.1, 0.5, 1],
      bucketCounts: [1, 1, 1, 2],
      count: 5,
      sum: 6.05,
      // prom-client keeps no min or max, and the SDK's data points carry no exemplars.
      min: undefined,
      max: undefined,
      exemplars: [],
    });
    expect(latest(metrics, 'fixture_request_duration_seconds', { route: '/b' })).toMatchObject({ attributes: { route: '/b', status: '503' }, bucketCounts: [0, 1, 0, 0], count: 1, sum: 0.25 });
    expect(latest(metrics, 'fixture_requests', { route: '/a' })).toMatchObject({ type: 'sum', temporality: 'cumulative', monotonic: true, scope, value: 5 });
    expect(latest(metrics, 'fixture_last_seconds')).toMatchObject({ type: 'gauge', attributes: {}, value: 0.25 });
    // The SDK's resource, not the bridge's: the gateway's series are found by service.name like any other.
    expect(latest(metrics, 'fixture_requests')!.resource).toMatchObject({ 'service.name': SERVICE_NAME.gateway, 'deployment.environment.name': 'test' });
    expect(receiver.requests().every((r) => r.signal !== 'metrics' || r.contentType === contentType)).toBe(true);
    app.kill();
  });
});

it('flushes metrics recorded since the last export when the process shuts down', async () => {
  const app = await startInstrumentedApp({
    OTEL_SERVICE_NAME: SERVICE_NAME.orders,
    OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
    // The default 60 s: no periodic export happens during this test, only the one at shutdown.
    FIXTURE_HANDLES_SIGTERM: '1',
  });
  await get(`${app.url}/hello`, 2);
  app.process.kill('SIGTERM');
  expect(await app.exited).toEqual({ code: 0, signal: null });

  expect(receiver.requests().filter((r) => r.signal === 'metrics')).toHaveLength(1);
  expect(latest(receiver.metrics(), 'http.server.request.duration', { 'http.route': '/hello' })).toMatchObject({ serviceName: SERVICE_NAME.orders, count: 2 });
  app.kill();
});

describe('with OTEL_METRICS_EXPORTER=none', () => {
  it('sends traces but no metrics from a service, to the very end', async () => {
    const app = await startInstrumentedApp({
      OTEL_SERVICE_NAME: SERVICE_NAME.notifications,
      OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
      OTEL_METRICS_EXPORTER: 'none',
      OTEL_METRIC_EXPORT_INTERVAL: '100',
      OTEL_BSP_SCHEDULE_DELAY: '100',
      FIXTURE_HANDLES_SIGTERM: '1',
    });
    const { traceparent, traceId } = newTraceparent();
    await fetch(`${app.url}/hello`, { headers: { traceparent } });
    // The positive marker: the span of that request arrived, so the process was exporting.
    await receiver.waitFor(({ spans }) => spans.some((s) => s.traceId === traceId && s.kind === 'SERVER'));
    // A shutdown flushes every reader there is: once the process has exited, nothing more can come.
    app.process.kill('SIGTERM');
    expect(await app.exited).toEqual({ code: 0, signal: null });

    expect(receiver.requests().filter((r) => r.signal === 'metrics')).toEqual([]);
    expect(app.stderr()).toContain(`telemetry: ${SERVICE_NAME.notifications} sends traces to ${receiver.url}/v1/traces and logs to ${receiver.url}/v1/logs (OTLP http/protobuf), exports no metrics.`);
    app.kill();
  });

  it('does not take the registry, and sends none of it', async () => {
    const app = await startInstrumentedApp(
      {
        OTEL_SERVICE_NAME: SERVICE_NAME.gateway,
        OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url,
        OTEL_METRICS_EXPORTER: 'none',
        OTEL_METRIC_EXPORT_INTERVAL: '100',
        FIXTURE_HANDLES_SIGTERM: '1',
      },
      { fixture: REGISTRY_APP },
    );
    expect(app.logLines().find((line) => line.message === 'listening')).toMatchObject({ registered: false });
    await get(`${app.url}/observe?route=/a&seconds=0.3`);
    // The positive marker: the process's log line reached the receiver.
    await receiver.waitFor(({ logs }) => logs.some((l) => l.body === 'listening' && l.serviceName === SERVICE_NAME.gateway));
    app.process.kill('SIGTERM');
    expect(await app.exited).toEqual({ code: 0, signal: null });
    expect(receiver.requests().filter((r) => r.signal === 'metrics')).toEqual([]);
    app.kill();
  });
});

describe('with nothing listening on the OTLP endpoint', () => {
  it('reports a failed export in one line naming the exporter’s error (connection refused)', async () => {
    const endpoint = await refusedOrigin();
    const app = await startInstrumentedApp({
      OTEL_SERVICE_NAME: 'outage-fixture',
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_METRIC_EXPORT_INTERVAL: '1000',
      OTEL_BSP_SCHEDULE_DELAY: '100',
      OTEL_BLRP_SCHEDULE_DELAY: '100',
      OTEL_EXPORTER_OTLP_TIMEOUT: '300', // each export gives up retrying well within the metric interval
    });
    await get(`${app.url}/hello`);
    await waitFor(() => app.stderr().includes('cannot export'), 'the first failed export to be reported', 10_000);
    expect(app.stderr().trim().split('\n')).toEqual([
      expect.stringMatching(/^telemetry: outage-fixture sends traces to .* and metrics to /),
      `telemetry: cannot export to ${endpoint} (connect ECONNREFUSED ${endpoint.slice('http://'.length)}); spans and logs are dropped until it answers. ` +
        'Repeated failures are reported at most every 60 s.',
    ]);
    app.kill();
  });

  // Counted where they fail (a refused port counts nothing): a fixed wait stood in for "three exports at least".
  it('says it once for many failed exports of every signal', async () => {
    const origin = await resettingOrigin();
    try {
      const app = await startInstrumentedApp({
        OTEL_SERVICE_NAME: 'outage-fixture',
        OTEL_EXPORTER_OTLP_ENDPOINT: origin.url,
        OTEL_METRIC_EXPORT_INTERVAL: '500',
        OTEL_BSP_SCHEDULE_DELAY: '100',
        OTEL_BLRP_SCHEDULE_DELAY: '100',
        OTEL_EXPORTER_OTLP_TIMEOUT: '300',
      });
      await get(`${app.url}/hello`);
      await waitFor(() => origin.attempts('/v1/traces') >= 1 && origin.attempts('/v1/logs') >= 1, 'spans and logs to fail', 10_000);
      // One attempt per export (the exporter's first retry waits 0.8-1.2 s, past the 300 ms timeout), and metric exports
      // run one after another, each over before the next starts: when the fifth arrives, the four before it have
      // failed and been reported, or not.
      const metricsBefore = origin.attempts('/v1/metrics');
      await get(`${app.url}/hello`);
      await waitFor(() => origin.attempts('/v1/metrics') >= metricsBefore + 4 && origin.attempts('/v1/traces') >= 2, 'more failed exports', 20_000);
      expect(app.stderr().trim().split('\n')).toEqual([
        expect.stringMatching(/^telemetry: outage-fixture sends traces to .* and metrics to /),
        expect.stringMatching(new RegExp(`^telemetry: cannot export to ${origin.url} \\(.+\\); spans and logs are dropped until it answers\\. Repeated failures are reported at most every 60 s\\.$`)),
      ]);
      app.kill();
    } finally {
      await origin.close();
    }
  });

  it('says the same when only metrics are exported', async () => {
    const endpoint = await refusedOrigin();
    const app = await startInstrumentedApp({
      OTEL_SERVICE_NAME: 'outage-fixture',
      OTEL_EXPORTER_OTLP_ENDPOINT: endpoint,
      OTEL_TRACES_EXPORTER: 'none',
      OTEL_LOGS_EXPORTER: 'none',
      OTEL_METRIC_EXPORT_INTERVAL: '500',
      OTEL_EXPORTER_OTLP_TIMEOUT: '200',
    });
    await get(`${app.url}/hello`);
    await waitFor(() => app.stderr().includes('cannot export'), 'the first failed export to be reported', 10_000);
    expect(app.stderr().trim().split('\n')).toEqual([
      `telemetry: outage-fixture sends metrics to ${endpoint}/v1/metrics (OTLP http/protobuf), exports no traces, exports no logs. ` +
        'Nothing listening there? Start the compose stack, or set OTEL_TRACES_EXPORTER=console, or OTEL_SDK_DISABLED=true.',
      expect.stringContaining(`telemetry: cannot export to ${endpoint} (connect ECONNREFUSED `),
    ]);
    app.kill();
  });

  it('says it once for many failed metric exports when only metrics are exported', async () => {
    const origin = await resettingOrigin();
    try {
      const app = await startInstrumentedApp({
        OTEL_SERVICE_NAME: 'outage-fixture',
        OTEL_EXPORTER_OTLP_ENDPOINT: origin.url,
        OTEL_TRACES_EXPORTER: 'none',
        OTEL_LOGS_EXPORTER: 'none',
        OTEL_METRIC_EXPORT_INTERVAL: '500',
        OTEL_EXPORTER_OTLP_TIMEOUT: '200',
      });
      await get(`${app.url}/hello`);
      // As above: when the fifth arrives, the four before it have failed and been reported, or not.
      await waitFor(() => origin.attempts('/v1/metrics') >= 5, 'five metric exports', 20_000);
      expect(app.stderr().trim().split('\n')).toEqual([expect.stringContaining('telemetry: outage-fixture sends metrics to '), expect.stringContaining(`telemetry: cannot export to ${origin.url} (`)]);
      expect([origin.attempts('/v1/traces'), origin.attempts('/v1/logs')]).toEqual([0, 0]);
      app.kill();
    } finally {
      await origin.close();
    }
  });
});
