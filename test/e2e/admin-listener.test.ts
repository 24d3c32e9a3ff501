import type { ChildProcess } from 'node:child_process';
import { exitOf, spawnGateway as startGateway } from '../helpers/process-stack';
import { listen, type TestServer } from '../helpers/servers';

describe('admin listener (process)', () => {
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
});
