import type { ChildProcess } from 'node:child_process';
import { scrapeWhen, valueOf } from '../helpers/openmetrics';
import { exitOf, spawnGateway as startGateway } from '../helpers/process-stack';
import { listen, type TestServer } from '../helpers/servers';

/** The gateway's internal listeners (admin: `ADMIN_PORT`, metrics: `METRICS_PORT`) as the real process opens them. */
describe('internal listeners (process)', () => {
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


  it('with ADMIN_PORT, logs its URL, serves the details there and not publicly, and closes on SIGTERM', async () => {
    const gateway = startGateway({ ...services(), ADMIN_PORT: '0' });
    child = gateway.child;
    const { url: adminUrl } = (await gateway.waitForLine('admin listener started')) as { url: string };
    const { url } = (await gateway.waitForLine('gateway listening')) as { url: string };
    expect(adminUrl).toMatch(/^http:\/\/127\.0\.0\.1:\d+$/);
    expect(adminUrl).not.toBe(url);

    const details = await fetch(`${adminUrl}/ready`);
    expect(details.status).toBe(200);
    expect(((await details.json()) as { services: { users: { instances: { origin: string }[] } } }).services.users.instances[0]!.origin).toBe(upstream.url);
    const publicAnswer = await fetch(`${url}/ready`);
    expect(await publicAnswer.json()).toEqual({ status: 'ready', services: { users: 'up', orders: 'up', notifications: 'up' } });

    child.kill('SIGTERM');
    expect(await exitOf(child)).toBe(0);
    await expect(fetch(`${adminUrl}/health`)).rejects.toThrow();
  });

  it('without ADMIN_PORT, opens no admin listener', async () => {
    const gateway = startGateway(services());
    child = gateway.child;
    await gateway.waitForLine('gateway listening');
    // The admin listener is opened and logged before the public one, so its line would be here by now.
    expect(gateway.lines.map((line) => line.message)).not.toContain('admin listener started');
    child.kill('SIGTERM');
    expect(await exitOf(child)).toBe(0);
  });


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
      valueOf(m, 'http_server_request_duration_seconds_count', { http_request_method: 'GET', url_scheme: 'http', http_route: 'unmatched', http_response_status_code: '404', gateway_route_name: '', error_type: '', gateway_error_code: 'route_not_found' }),
    ).toBe(1);

    child.kill('SIGTERM');
    expect(await exitOf(child)).toBe(0);
    await expect(fetch(`${metricsUrl}/metrics`)).rejects.toThrow();
  });

  // Node's own "listen EADDRINUSE: address already in use 127.0.0.1:9000" named neither the listener nor its setting.
  it.each([
    { desc: 'the public port', env: (port: string) => ({ PORT: port }), key: 'port (PORT)' },
    { desc: 'the admin port', env: (port: string) => ({ PORT: '0', ADMIN_PORT: port }), key: 'admin.port (ADMIN_PORT)' },
    { desc: 'the metrics port', env: (port: string) => ({ PORT: '0', METRICS_PORT: port }), key: 'metrics.port (METRICS_PORT)' },
  ])('stops with exit code 1 and a line naming the key when $desc is taken', async ({ env, key }) => {
    const port = new URL(upstream.url).port;
    const gateway = startGateway({ ...services(), ...env(port) });
    child = gateway.child;
    // 'close': exited and its output read to the end.
    await new Promise((resolve) => gateway.child.once('close', resolve));
    expect(gateway.child.exitCode).toBe(1);
    expect(gateway.stderr()).toContain(`gateway: failed to start: ${key}: 127.0.0.1:${port} is in use by another process (EADDRINUSE)\n`);
  });

  // The config takes a host name here; one that does not resolve failed with Node's bare `getaddrinfo ENOTFOUND`.
  it('stops with exit code 1 and a line naming admin.host when ADMIN_HOST names a host that does not resolve', async () => {
    const gateway = startGateway({ ...services(), PORT: '0', ADMIN_PORT: '0', ADMIN_HOST: 'no-such-host.invalid' });
    child = gateway.child;
    await new Promise((resolve) => gateway.child.once('close', resolve));
    expect(gateway.child.exitCode).toBe(1);
    expect(gateway.stderr()).toMatch(/gateway: failed to start: admin\.host \(ADMIN_HOST\): no-such-host\.invalid:\d+ names a host that (?:does not resolve|could not be resolved now)/);
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
