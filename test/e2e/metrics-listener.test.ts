import type { ChildProcess } from 'node:child_process';
import { exitOf, spawnGateway as startGateway } from '../helpers/process-stack';
import { scrapeWhen, valueOf } from '../helpers/openmetrics';
import { listen, type TestServer } from '../helpers/servers';

describe('metrics listener (process)', () => {
  let upstream: TestServer;
  let child: ChildProcess | undefined;
  beforeAll(async () => {
    upstream = await listen((_req, res) => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{"status":"ok"}');
    });
  });
  afterEach(() => {
    if (child?.exitCode === null) child.kill('SIGKILL');
  });
  afterAll(() => upstream.close());

  const services = () => ({ USER_SERVICE_URL: upstream.url, ORDER_SERVICE_URL: upstream.url, NOTIF_SERVICE_URL: upstream.url });

  it('with METRICS_PORT, logs its URL, counts the public traffic there, not on the public port, and closes on SIGTERM', async () => {
    const gateway = startGateway({ ...services(), METRICS_PORT: '0' });
    child = gateway.child;
    const { url: metricsUrl } = (await gateway.waitForLine('metrics listener started')) as { url: string };
    const { url } = (await gateway.waitForLine('gateway listening')) as { url: string };
    expect(metricsUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(metricsUrl).not.toBe(url);

    const publicAnswer = await fetch(`${url}/metrics`);
    expect(publicAnswer.status).toBe(404);
    await publicAnswer.arrayBuffer();
    const m = await scrapeWhen(metricsUrl, (e) => e.samples.some((s) => s.name === 'http_server_request_duration_seconds_count'));
    expect(
      valueOf(m, 'http_server_request_duration_seconds_count', { http_request_method: 'GET', http_route: 'unmatched', http_response_status_code: '404', gateway_route_name: '', error_type: 'route_not_found' }),
    ).toBe(1);

    child.kill('SIGTERM');
    expect(await exitOf(child)).toBe(0);
    await expect(fetch(`${metricsUrl}/metrics`)).rejects.toThrow();
  });

  it('without METRICS_PORT, opens no metrics listener', async () => {
    const gateway = startGateway(services());
    child = gateway.child;
    await gateway.waitForLine('gateway listening');
    // The metrics listener is opened and logged before the public one, so its line would be here by now.
    expect(gateway.lines.map((line) => line.message)).not.toContain('metrics listener started');
    child.kill('SIGTERM');
    expect(await exitOf(child)).toBe(0);
  });
});
