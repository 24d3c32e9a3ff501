import type { HistogramMetricData } from '@opentelemetry/sdk-metrics';
import { createGatewayApps } from '../../src/gateway';
import { createGatewayMetrics, metricsRequestListener } from '../../src/metrics';
import { createPromClientMetricProducer } from '../../otel/prom-client-otlp-bridge';
import { METRIC_LABEL_OTLP, METRIC_OTLP } from '../../otel/wire-names';
import { samplesOf, scrapeWhen } from '../helpers/openmetrics';
import { listen, memoryLogger, refusedOrigin, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';

/**
 * `gateway_upstream_request_duration_seconds` (over OTLP `gateway.upstream.request.duration`) has the attributes
 * of semconv's `http.client.request.duration`: `http.request.method` (Required; `_OTHER` outside the known set),
 * `http.response.status_code` (Conditionally Required: if and only if one was received), `error.type`
 * (Conditionally Required: if the request ended with an error; a client's 4xx is one), `server.address` and
 * `server.port` (Required), `url.scheme` (Opt-In). It had only the service, the instance and the outcome: a
 * service answering 503 to every POST was an `ok` attempt like any other.
 */
const UPSTREAM = 'gateway_upstream_request_duration_seconds';

describe('upstream attempts in the metrics, as http.client.request.duration', () => {
  let service: TestServer;
  let servers: TestServer[] = [];
  let refused: string;
  const metrics = createGatewayMetrics();

  beforeAll(async () => {
    // Answers the status its path names: `/echo/503` is a 503.
    service = await listen((req, res) => res.writeHead(Number(req.url!.split('/')[2]) || 200, { 'content-type': 'text/plain' }).end('answer'));
    refused = await refusedOrigin();
    const routes = [
      { name: 'echo', prefix: '/api/echo', service: 'users', upstreamPath: '/echo', auth: 'public' },
      { name: 'down', prefix: '/api/down', service: 'orders', upstreamPath: '/down', auth: 'public' },
    ];
    const config = testConfig({ users: service.url, orders: refused, notifications: refused }, { routes });
    const gateway = await listen(createGatewayApps(config, { logger: memoryLogger('quiet').logger, metrics }).gateway.callback());
    servers = [gateway, await listen(metricsRequestListener(metrics))];
  });
  afterAll(async () => {
    await Promise.all([service, ...servers].map((server) => server.close()));
  });

  it('labels each attempt with its method, the status received and error.type, and none of either when none came', async () => {
    const [gateway, scrapeEndpoint] = servers as [TestServer, TestServer];
    const sent: ReadonlyArray<readonly [string, string, number]> = [
      ['GET', '/api/echo/200', 200],
      ['POST', '/api/echo/201', 201],
      ['DELETE', '/api/echo/404', 404],
      ['GET', '/api/echo/503', 503],
      ['GET', '/api/echo/503', 503],
      ['PROPFIND', '/api/echo/207', 207],
      ['GET', '/api/down/1', 502],
    ];
    for (const [method, path, status] of sent) {
      const response = await fetch(`${gateway.url}${path}`, { method });
      await response.arrayBuffer();
      expect(`${method} ${path} ${response.status}`).toBe(`${method} ${path} ${status}`);
    }

    const counted = (e: Parameters<typeof samplesOf>[0]) => samplesOf(e, `${UPSTREAM}_count`).reduce((sum, sample) => sum + sample.value, 0);
    const exposition = await scrapeWhen(scrapeEndpoint.url, (e) => counted(e) === sent.length);
    const instance = (url: string) => `${new URL(url).hostname}:${new URL(url).port}`;
    const series = Object.fromEntries(
      samplesOf(exposition, `${UPSTREAM}_count`).map((s) => [
        [s.labels.http_request_method, s.labels.url_scheme, s.labels.gateway_upstream_service, `${s.labels.server_address}:${s.labels.server_port}`, `status=${s.labels.http_response_status_code}`, `error=${s.labels.error_type}`, s.labels.gateway_upstream_outcome].join(' '),
        s.value,
      ]),
    );
    expect(series).toEqual({
      [`GET http users ${instance(service.url)} status=200 error= ok`]: 1,
      [`POST http users ${instance(service.url)} status=201 error= ok`]: 1,
      // A client's view: a 4xx answer is an error of the request it sent (a SERVER span leaves 4xx alone).
      [`DELETE http users ${instance(service.url)} status=404 error=404 ok`]: 1,
      [`GET http users ${instance(service.url)} status=503 error=503 ok`]: 2,
      // A method outside the conventions' set mints no series of its own.
      [`_OTHER http users ${instance(service.url)} status=207 error= ok`]: 1,
      // Refused: no status was received, the outcome is the error.
      [`GET http orders ${instance(refused)} status= error=refused refused`]: 1,
    });

    // Over OTLP, under the conventions' keys: the status an integer, and no key at all for what did not happen.
    const producer = createPromClientMetricProducer(metrics.registry, { names: METRIC_OTLP, attributes: METRIC_LABEL_OTLP });
    const { resourceMetrics } = await producer.collect();
    const upstream = resourceMetrics.scopeMetrics.flatMap((scope) => scope.metrics).find((metric) => metric.descriptor.name === 'gateway.upstream.request.duration') as HistogramMetricData;
    const points = upstream.dataPoints.map((point) => point.attributes);
    expect(points).toContainEqual({
      'http.request.method': 'GET',
      'url.scheme': 'http',
      'gateway.upstream.service': 'users',
      'server.address': new URL(service.url).hostname,
      'server.port': Number(new URL(service.url).port),
      'http.response.status_code': 503,
      'error.type': '503',
      'gateway.upstream.outcome': 'ok',
    });
    expect(points).toContainEqual({
      'http.request.method': 'GET',
      'url.scheme': 'http',
      'gateway.upstream.service': 'orders',
      'server.address': new URL(refused).hostname,
      'server.port': Number(new URL(refused).port),
      'error.type': 'refused',
      'gateway.upstream.outcome': 'refused',
    });
    expect(points).toContainEqual(expect.objectContaining({ 'http.request.method': 'POST', 'http.response.status_code': 201 }));
    expect(points.filter((attributes) => attributes['http.response.status_code'] === 201 || attributes['http.response.status_code'] === 200).every((attributes) => !('error.type' in attributes))).toBe(true);
  });
});
