import { spawnSync } from 'node:child_process';
import { startStack, type TestStack } from '../helpers/stack';
import { signToken } from '../helpers/tokens';

/**
 * Ports on the Fetch standard's "bad port" list that Node's fetch refuses (`bad port`) and nothing standard
 * listens on. The proxy reaches a service on one; the gateway's own calls (the login's credential check, the
 * readiness probe) and order-service's call to user-service went through fetch and failed.
 */
const BAD_PORTS = [6665, 6666, 6667, 6668, 6669, 10080];

/**
 * The first of BAD_PORTS free on 127.0.0.1, found before the tests are collected (a child process binds and
 * releases each in turn), so that none free shows as skipped tests rather than passing ones.
 */
function freeBadPort(): number | undefined {
  const probe = `
    const net = require('node:net');
    const ports = ${JSON.stringify(BAD_PORTS)};
    (function next(i) {
      if (i === ports.length) return;
      const server = net.createServer();
      server.once('error', () => next(i + 1));
      server.listen(ports[i], '127.0.0.1', () => server.close(() => process.stdout.write(String(ports[i]))));
    })(0);`;
  const { stdout } = spawnSync(process.execPath, ['-e', probe], { encoding: 'utf8', timeout: 10_000, env: { PATH: process.env.PATH ?? '' } });
  return /^\d+$/.test(stdout) ? Number(stdout) : undefined;
}

const usersPort = freeBadPort();
const describeOnBadPort = usersPort === undefined ? describe.skip : describe;

describeOnBadPort(`user-service on a port fetch refuses (${usersPort ?? `skipped: none of ${BAD_PORTS.join(', ')} is free`})`, () => {
  let stack: TestStack;
  beforeAll(async () => {
    stack = await startStack({ usersPort });
  });
  afterAll(() => stack?.close());

  it('is where the stack put it', () => {
    expect(stack.users.url).toBe(`http://127.0.0.1:${usersPort}`);
  });

  it('logs in through the gateway (the credential check reaches user-service)', async () => {
    const response = await fetch(`${stack.gateway.url}/api/auth/login`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ email: 'alice@example.com', password: 'wonderland' }) });
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ tokenType: 'Bearer', user: { id: '1', email: 'alice@example.com' } });
    expect(stack.users.requests.some((request) => request.method === 'POST' && request.url === '/internal/credentials/verify')).toBe(true);
  });

  it('reports user-service up on /ready (the probe reaches it)', async () => {
    const response = await fetch(`${stack.gateway.url}/ready`);
    expect(await response.json()).toEqual({ status: 'ready', services: { users: 'up', orders: 'up', notifications: 'up' } });
    expect(response.status).toBe(200);
    const details = await fetch(`${stack.admin.url}/ready`);
    expect(await details.json()).toMatchObject({ services: { users: { status: 'up', instances: [{ origin: stack.users.url, probe: { status: 'up' } }] } } });
  });

  // The token minted here, not by a login: the row fails only for order-service's own call.
  it('creates an order (order-service checks the user with user-service directly)', async () => {
    const token = await signToken({ claims: { email: 'alice@example.com', role: 'user' } });
    const response = await fetch(`${stack.gateway.url}/api/orders`, {
      method: 'POST',
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ items: [{ sku: 'book-42', quantity: 1 }] }),
    });
    expect(response.status).toBe(201);
    expect(await response.json()).toMatchObject({ userId: '1', status: 'created' });
    expect(stack.users.requests.some((request) => request.method === 'GET' && request.url === '/users/1')).toBe(true);
  });

  it('proxies to it (as before: the forwarder never used fetch)', async () => {
    const token = await signToken({ claims: { email: 'alice@example.com', role: 'user' } });
    const response = await fetch(`${stack.gateway.url}/api/users/1`, { headers: { authorization: `Bearer ${token}` } });
    expect(response.status).toBe(200);
  });
});
