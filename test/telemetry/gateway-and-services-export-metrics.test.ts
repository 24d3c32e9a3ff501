/**
 * The four real processes from dist/ (as `npm start` runs them, telemetry bootstrap preloaded), exporting to a
 * test OTLP receiver: the gateway's prom-client registry goes out through the bridge (src/main.ts registers it),
 * the services' request durations from their instrumentations, all by the same OTLP metric exporter.
 */
import net from 'node:net';
import { METRIC, SERVICE_NAME } from '../../otel/wire-names';
import { prometheusName } from '../helpers/otlp-prometheus-bridge';
import { startOtlpReceiver, type OtlpReceiver, type ReceivedMetricPoint } from '../helpers/otlp-receiver';
import { startProcessStack, type ProcessStack } from '../helpers/process-stack';

let receiver: OtlpReceiver;
let stack: ProcessStack;

beforeAll(async () => {
  receiver = await startOtlpReceiver();
  stack = await startProcessStack({ OTEL_EXPORTER_OTLP_ENDPOINT: receiver.url, OTEL_METRIC_EXPORT_INTERVAL: '200' });
});
afterAll(async () => {
  await stack?.stop('SIGKILL');
  await receiver?.close();
});

function latest(points: readonly ReceivedMetricPoint[], service: string, name: string, attributes: Record<string, unknown>): ReceivedMetricPoint | undefined {
  return points.findLast((p) => p.serviceName === service && p.name === name && Object.entries(attributes).every(([key, value]) => p.attributes[key] === value));
}

it('exports the gateway’s RED metrics through the bridge and the services’ request durations, with exact counts', async () => {
  for (let i = 0; i < 3; i++) expect((await fetch(`${stack.gatewayUrl}/api/orders`)).status).toBe(401);
  const login = await fetch(`${stack.gatewayUrl}/api/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }),
  });
  const { token } = (await login.json()) as { token: string };
  for (let i = 0; i < 2; i++) {
    const response = await fetch(`${stack.gatewayUrl}/api/orders`, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(200);
    await response.arrayBuffer();
  }

  // The conventions' names and attribute keys, as the services' instrumentations send them (the status an int).
  // A 401 is the client's error: no error.type (as on the SERVER span), the gateway's code beside it.
  const refused = { 'http.route': '/api/orders/*', 'http.response.status_code': 401, 'gateway.error.code': 'missing_token' };
  const served = { 'http.route': '/api/orders/*', 'http.response.status_code': 200 };
  const ordersServer = { 'http.route': '/orders', 'http.request.method': 'GET' };
  const DURATION = 'http.server.request.duration';
  const { metrics } = await receiver.waitFor(
    ({ metrics }) =>
      latest(metrics, SERVICE_NAME.gateway, DURATION, refused)?.count === 3 &&
      latest(metrics, SERVICE_NAME.gateway, DURATION, served)?.count === 2 &&
      latest(metrics, SERVICE_NAME.orders, 'http.server.request.duration', ordersServer)?.count === 2,
    15_000,
  );

  expect(latest(metrics, SERVICE_NAME.gateway, DURATION, refused)).toMatchObject({
    type: 'histogram',
    temporality: 'cumulative',
    unit: 's',
    scope: { name: 'prom-client' },
    attributes: { ...refused, 'http.request.method': 'GET', 'url.scheme': 'http', 'gateway.route.name': 'orders' },
    count: 3,
  });
  expect(latest(metrics, SERVICE_NAME.gateway, DURATION, refused)!.attributes['error.type']).toBeUndefined();
  const servedPoint = latest(metrics, SERVICE_NAME.gateway, DURATION, served)!;
  expect(servedPoint.bucketCounts!.reduce((a, b) => a + b, 0)).toBe(2);
  expect(servedPoint.bucketCounts).toHaveLength(servedPoint.explicitBounds!.length + 1);
  expect(latest(metrics, SERVICE_NAME.gateway, 'gateway.auth.failures', { 'error.type': 'missing_token' })).toMatchObject({
    type: 'sum',
    monotonic: true,
    value: 3,
  });
  // An UpDownCounter in the conventions: a non-monotonic sum of {request}, not a gauge.
  expect(latest(metrics, SERVICE_NAME.gateway, 'http.server.active_requests', { 'http.request.method': 'GET', 'url.scheme': 'http' })).toMatchObject({
    type: 'sum',
    monotonic: false,
    unit: '{request}',
    value: 0,
  });
  // No series of the gateway ever went past its request count.
  expect(Math.max(...metrics.filter((p) => p.serviceName === SERVICE_NAME.gateway && p.name === DURATION).map((p) => p.count!))).toBe(3);
  // Prometheus' OTLP translation makes each of them the name the gateway's scrape has, so one query reads both.
  const gatewayNames = new Set(metrics.filter((p) => p.serviceName === SERVICE_NAME.gateway).map((p) => prometheusName(p)));
  expect([...gatewayNames].filter((name) => !(Object.values(METRIC) as string[]).includes(name))).toEqual([]);
  expect([METRIC.requestDuration, METRIC.activeRequests, METRIC.upstreamDuration, METRIC.authFailures, METRIC.rateLimitDecisions].filter((name) => !gatewayNames.has(name))).toEqual([]);

  // The services, from their instrumentations: order-service served the two GET /orders.
  expect(latest(metrics, SERVICE_NAME.orders, 'http.server.request.duration', ordersServer)).toMatchObject({
    scope: { name: '@opentelemetry/instrumentation-http' },
    attributes: { 'http.response.status_code': 200 },
    count: 2,
  });
});

it('counts a request a service’s HTTP parser refused before its app (400) in its http.server.request.duration', async () => {
  const service = new URL(stack.processes.find((running) => running.name === 'notification-service')!.url);
  // A header line without a colon: Node's parser answers 400 itself; instrumentation-http never sees the request.
  const statusLine = await new Promise<string>((resolve, reject) => {
    const socket = net.connect(Number(service.port), service.hostname, () => socket.write('GET /health HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n'));
    let received = '';
    socket.on('data', (chunk: Buffer) => (received += chunk.toString()));
    socket.on('close', () => resolve(received.split('\r\n')[0]!));
    socket.on('error', reject);
  });
  expect(statusLine).toMatch(/^HTTP\/1\.1 400 /);
  const rejected = { 'http.response.status_code': 400, 'http.request.method': '_OTHER' };
  const { metrics } = await receiver.waitFor(({ metrics }) => latest(metrics, SERVICE_NAME.notifications, 'http.server.request.duration', rejected)?.count === 1, 15_000);
  expect(latest(metrics, SERVICE_NAME.notifications, 'http.server.request.duration', rejected)).toMatchObject({
    type: 'histogram',
    unit: 's',
    attributes: { ...rejected, 'url.scheme': 'http' },
    count: 1,
  });
  expect(latest(metrics, SERVICE_NAME.notifications, 'http.server.request.duration', rejected)!.attributes['error.type']).toBeUndefined();
});
