import type { HistogramMetricData } from '@opentelemetry/sdk-metrics';
import { createGatewayApps } from '../../src/gateway';
import { createGatewayMetrics, metricsRequestListener } from '../../src/metrics';
import { createPromClientMetricProducer } from '../../otel/prom-client-otlp-bridge';
import { METRIC_LABEL_OTLP, METRIC_OTLP } from '../../otel/wire-names';
import { samplesOf, scrapeWhen } from '../helpers/openmetrics';
import { listen, memoryLogger, refusedOrigin, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';

/**
 * A request no route took has no route template, and semconv sets `http.route` on `http.server.request.duration`
 * "if and only if it's available" (the SERVER span already leaves it out). The scrape labels such a series
 * `http_route="unmatched"` (no template can be that: every one starts with `/`), a readable legend; over OTLP the
 * same series went out with `http.route: "unmatched"`, a route no OTLP consumer could tell from a real one.
 */
describe('requests no route took, over OTLP', () => {
  const metrics = createGatewayMetrics();
  let servers: TestServer[] = [];
  afterAll(async () => {
    await Promise.all(servers.map((server) => server.close()));
  });

  it('have no http.route attribute, where the scrape labels them http_route="unmatched"', async () => {
    const service = await listen((_req, res) => res.writeHead(200, { 'content-type': 'text/plain' }).end('answer'));
    const refused = await refusedOrigin();
    const routes = [{ name: 'echo', prefix: '/api/echo', service: 'users', upstreamPath: '/echo', auth: 'public' }];
    const config = testConfig({ users: service.url, orders: refused, notifications: refused }, { routes });
    const gateway = await listen(createGatewayApps(config, { logger: memoryLogger('quiet').logger, metrics }).gateway.callback());
    const scrapeEndpoint = await listen(metricsRequestListener(metrics));
    servers = [service, gateway, scrapeEndpoint];
    for (const [path, status] of [['/api/echo/1', 200], ['/nope', 404]] as const) {
      const response = await fetch(`${gateway.url}${path}`);
      await response.arrayBuffer();
      expect(`${path} ${response.status}`).toBe(`${path} ${status}`);
    }

    const exposition = await scrapeWhen(scrapeEndpoint.url, (e) => samplesOf(e, 'http_server_request_duration_seconds_count').length === 2);
    expect(samplesOf(exposition, 'http_server_request_duration_seconds_count').map((sample) => `${sample.labels.http_route} ${sample.labels.http_response_status_code}`).sort()).toEqual(['/api/echo/* 200', 'unmatched 404']);

    const { resourceMetrics } = await createPromClientMetricProducer(metrics.registry, { names: METRIC_OTLP, attributes: METRIC_LABEL_OTLP }).collect();
    const duration = resourceMetrics.scopeMetrics.flatMap((scope) => scope.metrics).find((metric) => metric.descriptor.name === 'http.server.request.duration') as HistogramMetricData;
    const routeOf = Object.fromEntries(duration.dataPoints.map((point) => [String(point.attributes['http.response.status_code']), 'http.route' in point.attributes ? point.attributes['http.route'] : 'absent']));
    expect(routeOf).toEqual({ '200': '/api/echo/*', '404': 'absent' });
  });
});
