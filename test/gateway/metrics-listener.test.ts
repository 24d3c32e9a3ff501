import http from 'node:http';
import net from 'node:net';
import { gunzipSync } from 'node:zlib';
import { INTERNAL_MAX_CONNECTIONS } from '../../otel/lifecycle';
import { createGatewayMetrics, listenMetrics, type MetricsListener } from '../../src/metrics';
import { OPENMETRICS_CONTENT_TYPE, parseOpenMetrics, PROMETHEUS_ACCEPT } from '../helpers/openmetrics';
import { startStack, type TestStack } from '../helpers/stack';
import { asList, asMap, asString, readYaml } from '../stack/stack-files';
import { waitFor } from '../helpers/wait';

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

  it('closes connections past INTERNAL_MAX_CONNECTIONS at accept (it held as many silent connections as anyone opened), and serves again once they go', async () => {
    const { port } = new URL(listener.url);
    const held: net.Socket[] = [];
    const closedByListener = new Set<net.Socket>();
    try {
      for (let i = 0; i < INTERNAL_MAX_CONNECTIONS + 5; i++) {
        const socket = net.connect(Number(port), '127.0.0.1');
        socket.on('error', () => undefined);
        socket.resume();
        socket.once('close', () => closedByListener.add(socket));
        held.push(socket);
        await new Promise((resolve) => socket.once('connect', resolve));
      }
      // Five or more (a connection of an earlier test's client may still hold a slot).
      await waitFor(() => closedByListener.size >= 5, 'the connections over the bound to be closed');
      expect(held.length - closedByListener.size).toBeLessThanOrEqual(INTERNAL_MAX_CONNECTIONS);
      expect(await scrapedOnNewConnection()).toBe(false);
    } finally {
      held.forEach((socket) => socket.destroy());
    }
    // Counted out asynchronously: retried until a scrape on a new connection gets through.
    await waitFor(scrapedOnNewConnection, 'a scrape once the connections went');
  });

  /** Whether a scrape on a new connection is answered (false: the listener closed the connection first). */
  function scrapedOnNewConnection(): Promise<boolean> {
    const { port } = new URL(listener.url);
    return new Promise((resolve) => {
      const socket = net.connect(Number(port), '127.0.0.1', () => socket.write('GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n'));
      socket.once('data', () => {
        resolve(true);
        socket.destroy();
      });
      socket.once('close', () => resolve(false));
      socket.on('error', () => undefined);
    });
  }

  /** One scrape, its body as it came over the wire (fetch would decode it). */
  const rawScrape = (method: string, headers: http.OutgoingHttpHeaders) =>
    new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
      const request = http.request(`${listener.url}/metrics`, { method, headers }, (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () => resolve({ status: response.statusCode!, headers: response.headers, body: Buffer.concat(chunks) }));
      });
      request.on('error', reject).end();
    });

  // Prometheus sends `Accept-Encoding: gzip` on every scrape; the exposition was always sent as it is.
  it('gzips the exposition when asked (Vary: Accept-Encoding), and sends it as it is otherwise', async () => {
    const zipped = await rawScrape('GET', { accept: PROMETHEUS_ACCEPT, 'accept-encoding': 'gzip' });
    expect([zipped.status, zipped.headers['content-encoding'], zipped.headers.vary]).toEqual([200, 'gzip', 'Accept, Accept-Encoding']);
    const text = gunzipSync(zipped.body).toString();
    expect(text.endsWith('# EOF\n')).toBe(true);
    expect(parseOpenMetrics(text).types.get('http_server_request_duration_seconds')).toBe('histogram');
    const head = await rawScrape('HEAD', { accept: PROMETHEUS_ACCEPT, 'accept-encoding': 'gzip' });
    expect([head.status, head.headers['content-encoding'], head.body.length]).toEqual([200, 'gzip', 0]);
    for (const acceptEncoding of [undefined, 'gzip;q=0', 'br']) {
      const plain = await rawScrape('GET', { accept: PROMETHEUS_ACCEPT, ...(acceptEncoding === undefined ? {} : { 'accept-encoding': acceptEncoding }) });
      expect([plain.status, plain.headers['content-encoding'], plain.headers.vary, plain.body.toString().endsWith('# EOF\n')]).toEqual([200, undefined, 'Accept, Accept-Encoding', true]);
    }
  });

  it.each([
    { desc: 'a query string (ignored)', method: 'GET', path: '/metrics?name[]=up', status: 200 },
    { desc: 'HEAD', method: 'HEAD', path: '/metrics', status: 200 },
    { desc: 'the root', method: 'GET', path: '/', status: 404 },
    { desc: 'a trailing slash', method: 'GET', path: '/metrics/', status: 404 },
    { desc: 'another case', method: 'GET', path: '/METRICS', status: 404 },
    { desc: 'POST to another path', method: 'POST', path: '/', status: 404 },
  ])('answers $status to $desc', async ({ method, path, status }) => {
    const response = await fetch(`${listener.url}${path}`, { method });
    await response.arrayBuffer();
    expect(response.status).toBe(status);
  });

  // RFC 9110 15.5.6: /metrics exists; a method it does not take is 405 with the methods it does, not 404.
  it.each(['POST', 'PUT', 'DELETE', 'OPTIONS', 'PATCH'])('answers 405 with Allow: GET, HEAD to %s /metrics', async (method) => {
    const response = await fetch(`${listener.url}/metrics`, { method });
    await response.arrayBuffer();
    expect({ status: response.status, allow: response.headers.get('allow') }).toEqual({ status: 405, allow: 'GET, HEAD' });
  });

  // Every answer the gateway writes itself is problem+json with its request id (README's error table); these were
  // text/plain.
  it.each([
    { desc: 'another path', method: 'GET', path: '/', accept: '*/*', status: 404, code: 'route_not_found' },
    { desc: 'another method', method: 'DELETE', path: '/metrics', accept: '*/*', status: 405, code: 'method_not_allowed' },
    { desc: 'an Accept neither format meets', method: 'GET', path: '/metrics', accept: 'application/json', status: 406, code: 'not_acceptable' },
  ])('answers $desc as problem+json with a request id ($status $code)', async ({ method, path, accept, status, code }) => {
    const response = await fetch(`${listener.url}${path}`, { method, headers: { accept } });
    const problem = (await response.json()) as { status?: number; code?: string; type?: string; requestId?: string };
    expect([response.status, response.headers.get('content-type'), problem.status, problem.code, problem.type]).toEqual([status, 'application/problem+json', status, code, `urn:koa-gateway:problem:${code}`]);
    expect(problem.requestId).toMatch(/^[0-9a-f]{32}$/);
    expect(response.headers.get('x-request-id')).toBe(problem.requestId);
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

  /** The status of a request head sent as it is, on a connection of its own (fetch cannot send these heads). */
  const rawStatus = (requestLine: string, hosts: readonly string[]) =>
    new Promise<number>((resolve, reject) => {
      const head = `${requestLine}\r\n${hosts.map((host) => `${host}\r\n`).join('')}Connection: close\r\n\r\n`;
      const socket = net.connect(Number(new URL(listener.url).port), '127.0.0.1', () => socket.end(head));
      let answer = '';
      socket.setEncoding('latin1').on('data', (chunk: string) => (answer += chunk));
      socket.on('close', () => resolve(Number(/^HTTP\/1\.1 (\d{3}) /.exec(answer)?.[1] ?? NaN))).on('error', reject);
    });

  // RFC 9112 3.2 (one Host field line, else 400) and 3.2.2 (a server accepts the absolute form, whose
  // authority stands for Host): what a scraper behind a forward proxy sends, and what an HTTP conformance checker tries.
  it.each([
    { desc: 'an absolute-form target', line: 'GET http://127.0.0.1:9464/metrics HTTP/1.1', hosts: ['Host: 127.0.0.1'], status: 200 },
    { desc: 'an absolute-form target with a query, naming a compose service', line: 'GET HTTP://gateway:9464/metrics?x=1 HTTP/1.1', hosts: ['Host: gateway'], status: 200 },
    { desc: 'an absolute-form target whose authority is a rebinding name, whatever Host says', line: 'GET http://attacker.example/metrics HTTP/1.1', hosts: ['Host: 127.0.0.1'], status: 421 },
    { desc: 'an absolute-form target of another path', line: 'GET http://127.0.0.1/ HTTP/1.1', hosts: ['Host: 127.0.0.1'], status: 404 },
    { desc: 'two Host field lines', line: 'GET /metrics HTTP/1.1', hosts: ['Host: 127.0.0.1', 'Host: attacker.example'], status: 400 },
    { desc: 'two Host field lines of one value', line: 'GET /metrics HTTP/1.1', hosts: ['Host: 127.0.0.1', 'host: 127.0.0.1'], status: 400 },
  ])('answers $status to a scrape with $desc', async ({ line, hosts, status }) => {
    expect(await rawStatus(line, hosts)).toBe(status);
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
