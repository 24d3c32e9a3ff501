import http from 'node:http';
import { createGatewayMetrics, listenMetrics, type MetricsListener } from '../../src/metrics';
import { OPENMETRICS_CONTENT_TYPE, parseOpenMetrics, PROMETHEUS_ACCEPT } from '../helpers/openmetrics';
import { startStack, type TestStack } from '../helpers/stack';
import { asList, asMap, asString, readYaml } from '../stack/stack-files';

const timeouts = { headersMs: 5000, requestMs: 10_000, keepAliveMs: 5000 };

describe('the metrics listener (listenMetrics)', () => {
  let listener: MetricsListener;
  beforeAll(async () => {
    listener = await listenMetrics(createGatewayMetrics(), { port: 0, host: '127.0.0.1', timeouts });
  });
  afterAll(() => listener.close());

  it('serves GET /metrics to Prometheus in the OpenMetrics format, ending in # EOF', async () => {
    expect(listener.url).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    const response = await fetch(`${listener.url}/metrics`, { headers: { accept: PROMETHEUS_ACCEPT } });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toBe(OPENMETRICS_CONTENT_TYPE);
    const text = await response.text();
    expect(text.endsWith('# EOF\n')).toBe(true);
    expect(parseOpenMetrics(text).types.get('http_server_request_duration_seconds')).toBe('histogram');
  });

  it.each([
    { desc: 'a query string (ignored)', method: 'GET', path: '/metrics?name[]=up', status: 200 },
    { desc: 'HEAD', method: 'HEAD', path: '/metrics', status: 200 },
    { desc: 'the root', method: 'GET', path: '/', status: 404 },
    { desc: 'a trailing slash', method: 'GET', path: '/metrics/', status: 404 },
    { desc: 'another case', method: 'GET', path: '/METRICS', status: 404 },
    { desc: 'POST', method: 'POST', path: '/metrics', status: 404 },
  ])('answers $status to $desc', async ({ method, path, status }) => {
    const response = await fetch(`${listener.url}${path}`, { method });
    await response.arrayBuffer();
    expect(response.status).toBe(status);
  });

  /** A scrape with the Host a browser would send (fetch cannot set Host). */
  const scrape = (host: string) =>
    new Promise<number>((resolve, reject) => {
      http.get(`${listener.url}/metrics`, { headers: { host } }, (response) => {
        response.resume();
        resolve(response.statusCode!);
      }).on('error', reject);
    });

  // The series name instance addresses: a page that reached this listener by DNS rebinding must not read them.
  it.each([
    { host: 'attacker.example:9000', status: 421 },
    { host: 'localhost.attacker.example', status: 421 },
    { host: '127.0.0.1:9000', status: 200 },
    { host: '[::1]:9000', status: 200 },
    { host: 'localhost:9000', status: 200 },
    // Prometheus scraping a container by its service name (otel/prometheus.yaml's `gateway:9464`).
    { host: 'gateway:9464', status: 200 },
    { host: 'koa-gateway-metrics', status: 200 },
    { host: 'gateway.:9464', status: 421 },
    { host: 'gateway.attacker.example:9464', status: 421 },
    { host: '-gateway:9464', status: 421 },
  ])('answers a scrape with Host $host with $status', async ({ host, status }) => {
    expect(await scrape(host)).toBe(status);
  });

  it('answers the shipped Prometheus (otel/prometheus.yaml), which scrapes the gateway by its compose name', async () => {
    const jobs = asList(asMap(readYaml('otel/prometheus.yaml'), 'otel/prometheus.yaml').scrape_configs, 'scrape_configs').map((job) => asMap(job, 'scrape_configs[]'));
    const gateway = jobs.find((job) => job.job_name === 'gateway')!;
    const targets = asList(asMap(asList(gateway.static_configs, 'static_configs')[0], 'static_configs[0]').targets, 'targets').map((target) => asString(target, 'target'));
    expect(targets.length).toBeGreaterThan(0);
    for (const target of targets) expect(await scrape(target)).toBe(200);
  });

  it('stops answering once closed', async () => {
    const own = await listenMetrics(createGatewayMetrics(), { port: 0, host: '127.0.0.1', timeouts });
    expect((await fetch(`${own.url}/metrics`)).status).toBe(200);
    await own.close();
    await expect(fetch(`${own.url}/metrics`)).rejects.toThrow();
  });
});

describe('the public listener', () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack();
  });
  afterAll(() => stack.close());

  it('never serves the metrics: /metrics is an unmatched 404 there', async () => {
    const response = await fetch(`${stack.gateway.url}/metrics`);
    expect(response.status).toBe(404);
    expect(await response.json()).toMatchObject({ code: 'route_not_found' });
  });
});
