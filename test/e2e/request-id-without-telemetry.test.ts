import { startGatewayProcess, type GatewayProcess } from '../helpers/gateway-process';
import { listen, refusedOrigin, type TestServer } from '../helpers/servers';
import { TEST_JWT_SECRET } from '../helpers/test-config';

/**
 * With telemetry off no context manager carries the request's baggage, so a line written inside a request named no
 * request id unless it named one itself: the line saying why a 5xx happened could not be found under the id its client
 * was given (README: "the logs under the requestId" explain a 500).
 */
jest.setTimeout(60_000);

describe('lines of a request with telemetry off', () => {
  let gateway: GatewayProcess | undefined;
  let refusingUsers: TestServer;
  afterEach(async () => {
    gateway?.child.kill('SIGKILL');
    await gateway?.exited();
    gateway = undefined;
  });
  beforeAll(async () => {
    // A users service that refuses every login with 403 (an account that may not log in).
    refusingUsers = await listen((_req, res) => void res.writeHead(403, { 'content-type': 'application/problem+json' }).end('{"code":"forbidden"}'));
  });
  afterAll(() => refusingUsers.close());

  it('name the request id: the failure of a 502 and a refused credential check', async () => {
    const refused = await refusedOrigin();
    gateway = await startGatewayProcess({
      config: {
        services: { users: { url: refusingUsers.url }, api: { url: refused } },
        routes: [{ name: 'api', prefix: '/api', service: 'api', upstreamPath: '', auth: 'public' }],
      },
      env: { JWT_SECRET: TEST_JWT_SECRET },
    });
    const failed = await fetch(`${gateway.url}/api/x`, { headers: { 'x-request-id': 'off-502' } });
    expect(failed.status).toBe(502);
    expect(failed.headers.get('x-request-id')).toBe('off-502');
    expect(await gateway.waitForLine((line) => line.message === 'request failed')).toMatchObject({ code: 'upstream_refused', request_id: 'off-502' });

    const login = await fetch(`${gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-request-id': 'off-login' }, body: JSON.stringify({ email: 'a@example.com', password: 'x' }) });
    expect(login.status).toBe(403);
    expect(await gateway.waitForLine((line) => line.message === 'credential check refused the login')).toMatchObject({ status: 403, request_id: 'off-login' });
  });
});
