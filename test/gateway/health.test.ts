import type http from 'node:http';
import net from 'node:net';
import type { InternalListener } from '../../otel/lifecycle';
import { listenAdmin } from '../../src/admin';
import { createGatewayApps } from '../../src/gateway';
import { startStack, type TestStack } from '../helpers/stack';
import { listen, memoryLogger, refusedOrigin, type TestServer } from '../helpers/servers';
import { testConfig } from '../helpers/test-config';
import { waitFor } from '../helpers/wait';

/** An upstream instance that answers everything and records when it was probed (`GET /health`). */
interface FakeInstance extends TestServer {
  probes: number[];
}

async function fakeInstance(): Promise<FakeInstance> {
  const probes: number[] = [];
  const server = await listen((req, res) => {
    if (req.method === 'GET' && req.url === '/health') probes.push(performance.now());
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end('{"status":"ok"}');
  });
  return Object.assign(server, { probes });
}

interface Gateway {
  /** The public listener. */
  url: string;
  /** The internal listener. */
  adminUrl: string;
  close(): Promise<void>;
}

/** The real gateway apps (public and admin) over the given service origins, both on ephemeral ports. */
async function startGateway(origins: { users: string; orders: string; notifications: string }, overrides: Record<string, unknown> = {}): Promise<Gateway> {
  const config = testConfig(origins, overrides);
  const apps = createGatewayApps(config, { logger: memoryLogger('gateway').logger });
  const [gateway, admin] = await Promise.all([listen(apps.gateway.callback()), listen(apps.admin.callback())]);
  return { url: gateway.url, adminUrl: admin.url, close: async () => void (await Promise.all([gateway.close(), admin.close()])) };
}

async function getJson(url: string): Promise<{ status: number; headers: Headers; text: string; body: any }> {
  const response = await fetch(url);
  const text = await response.text();
  return { status: response.status, headers: response.headers, text, body: JSON.parse(text) };
}

/** Polls until `condition` holds; fails after `timeoutMs`. */

describe('health', () => {
  let stack: TestStack;
  afterEach(() => stack?.close());

  it('GET /health answers for the gateway itself, without a token', async () => {
    stack = await startStack();
    const response = await fetch(`${stack.gateway.url}/health`);
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ status: 'ok', service: 'gateway' });
    expect(stack.serviceRequests()).toHaveLength(0);
  });

  // The probes exist for every method: another one is 405 with what they accept, as on the internal listener and
  // on every route, not the 404 `not_found` of a path the gateway does not know. Look-alike paths stay unknown.
  it('answers other methods to /health and /ready with 405 and Allow: GET, HEAD', async () => {
    stack = await startStack();
    for (const [method, path] of [['POST', '/health'], ['DELETE', '/ready'], ['PUT', '/health'], ['PATCH', '/ready']] as const) {
      const response = await fetch(`${stack.gateway.url}${path}`, { method });
      const body = (await response.json()) as { code?: string; requestId?: string };
      expect([method, path, response.status, response.headers.get('allow'), response.headers.get('content-type'), body.code]).toEqual([method, path, 405, 'GET, HEAD', 'application/problem+json', 'method_not_allowed']);
      expect(body.requestId).toBe(response.headers.get('x-request-id'));
    }
    expect((await fetch(`${stack.gateway.url}/ready`, { method: 'HEAD' })).status).toBe(200);
    expect((await fetch(`${stack.gateway.url}/health/`, { method: 'POST' })).status).toBe(404);
    expect((await fetch(`${stack.gateway.url}/HEALTH`, { method: 'POST' })).status).toBe(404);
    expect(stack.serviceRequests().filter((request) => !request.url.startsWith('/health'))).toHaveLength(0);
  });

  it('GET /ready is 200 with the real services up', async () => {
    stack = await startStack();
    const { status, body } = await getJson(`${stack.gateway.url}/ready`);
    expect(status).toBe(200);
    expect(body).toEqual({ status: 'ready', services: { users: 'up', orders: 'up', notifications: 'up' } });
  });
});

describe('public readiness', () => {
  let instances: FakeInstance[];
  let gateway: Gateway | undefined;
  beforeEach(async () => {
    instances = await Promise.all([fakeInstance(), fakeInstance(), fakeInstance(), fakeInstance()]);
  });
  afterEach(async () => {
    await gateway?.close();
    gateway = undefined;
    await Promise.all(instances.map((instance) => instance.close()));
  });
  /** users has two instances, so "one probe per instance" is not "one probe per service". */
  const origins = () => ({ users: `${instances[0]!.url},${instances[1]!.url}`, orders: instances[2]!.url, notifications: instances[3]!.url });
  const probeCounts = () => instances.map((instance) => instance.probes.length);

  it('says only up or down per service: no address, port, instance, latency or reason of any instance', async () => {
    gateway = await startGateway(origins());
    const { status, headers, text, body } = await getJson(`${gateway.url}/ready`);
    expect(status).toBe(200);
    expect(body).toEqual({ status: 'ready', services: { users: 'up', orders: 'up', notifications: 'up' } });
    // Headers carry a random request id, where a bare port number could appear by chance; `host:port` cannot.
    const headerText = [...headers].map(([name, value]) => `${name}: ${value}`).join('\n');
    for (const instance of instances) {
      const { host, port } = new URL(instance.url);
      expect(text).not.toContain(port);
      expect(headerText).not.toContain(host);
    }
    expect(text).not.toContain('127.0.0.1');
  });

  it('answers 503 with Retry-After and the service "down" when its only instance is down, without saying why', async () => {
    gateway = await startGateway({ ...origins(), notifications: await refusedOrigin() });
    const { status, headers, text, body } = await getJson(`${gateway.url}/ready`);
    expect(status).toBe(503);
    expect(Number(headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(body).toEqual({ status: 'degraded', services: { users: 'up', orders: 'up', notifications: 'down' } });
    expect(text).not.toContain('ECONNREFUSED');
    // The gateway itself keeps serving.
    expect((await fetch(`${gateway.url}/health`)).status).toBe(200);
  });

  it('counts a service up while one of its instances answers', async () => {
    gateway = await startGateway({ ...origins(), users: `${await refusedOrigin()},${instances[1]!.url}` });
    const { status, body } = await getJson(`${gateway.url}/ready`);
    expect(status).toBe(200);
    expect(body.services.users).toBe('up');
  });

  it('probes each instance once for 20 concurrent and 20 sequential calls within the cache window', async () => {
    gateway = await startGateway(origins(), { readinessCacheMs: 60_000 });
    const concurrent = await Promise.all(Array.from({ length: 20 }, () => getJson(`${gateway!.url}/ready`)));
    const sequential = [];
    for (let i = 0; i < 20; i++) sequential.push(await getJson(`${gateway.url}/ready`));
    expect([...concurrent, ...sequential].map((answer) => answer.status)).toEqual(Array(40).fill(200));
    expect(probeCounts()).toEqual([1, 1, 1, 1]);
  });

  it('probes again once the cache window has passed, and not before', async () => {
    const cacheMs = 300;
    gateway = await startGateway(origins(), { readinessCacheMs: cacheMs });
    await getJson(`${gateway.url}/ready`);
    expect(probeCounts()).toEqual([1, 1, 1, 1]);
    await waitFor(async () => {
      await getJson(`${gateway!.url}/ready`);
      return probeCounts().every((count) => count >= 2);
    });
    expect(probeCounts()).toEqual([2, 2, 2, 2]);
    // Called every few ms meanwhile, yet the second round came no sooner than the window allows.
    for (const { probes } of instances) expect(probes[1]! - probes[0]!).toBeGreaterThanOrEqual(cacheMs - 1);
  });

  it('probes on every call that does not overlap another with readinessCacheMs 0', async () => {
    gateway = await startGateway(origins(), { readinessCacheMs: 0 });
    for (let i = 0; i < 3; i++) await getJson(`${gateway.url}/ready`);
    expect(probeCounts()).toEqual([3, 3, 3, 3]);
  });

  it('shares one round between the public and the admin listener', async () => {
    gateway = await startGateway(origins(), { readinessCacheMs: 60_000 });
    await getJson(`${gateway.url}/ready`);
    await getJson(`${gateway.adminUrl}/ready`);
    expect(probeCounts()).toEqual([1, 1, 1, 1]);
  });
});

describe('admin listener', () => {
  let live: FakeInstance[];
  let dead: string;
  let gateway: Gateway | undefined;
  beforeEach(async () => {
    live = await Promise.all([fakeInstance(), fakeInstance(), fakeInstance()]);
    dead = await refusedOrigin();
  });
  afterEach(async () => {
    await gateway?.close();
    gateway = undefined;
    await Promise.all(live.map((instance) => instance.close()));
  });

  it('shows every instance with its origin, probe result and passive state', async () => {
    gateway = await startGateway({ users: `${dead},${live[0]!.url}`, orders: live[1]!.url, notifications: live[2]!.url });
    const { status, body } = await getJson(`${gateway.adminUrl}/ready`);
    expect(status).toBe(200);
    expect(body.status).toBe('ready');
    expect(new Date(body.checkedAt).toISOString()).toBe(body.checkedAt);
    expect(body.services.users).toEqual({
      status: 'up',
      instances: [
        { origin: dead, state: 'healthy', consecutiveFailures: 0, probe: { status: 'down', latencyMs: expect.any(Number), detail: 'ECONNREFUSED' } },
        { origin: live[0]!.url, state: 'healthy', consecutiveFailures: 0, probe: { status: 'up', latencyMs: expect.any(Number) } },
      ],
    });
    expect(body.services.orders).toEqual({ status: 'up', instances: [expect.objectContaining({ origin: live[1]!.url, probe: expect.objectContaining({ status: 'up' }) })] });
  });

  it('answers 503 with Retry-After and the reason when a service is down', async () => {
    gateway = await startGateway({ users: live[0]!.url, orders: live[1]!.url, notifications: dead });
    const { status, headers, body } = await getJson(`${gateway.adminUrl}/ready`);
    expect(status).toBe(503);
    expect(Number(headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(body).toMatchObject({ status: 'degraded', services: { notifications: { status: 'down', instances: [{ origin: dead, probe: { status: 'down', detail: 'ECONNREFUSED' } }] }, users: { status: 'up' } } });
  });

  it('shows an ejection the moment it happens, with when it ends and why, without a new probe round', async () => {
    gateway = await startGateway(
      { users: `${dead},${live[0]!.url}`, orders: live[1]!.url, notifications: live[2]!.url },
      { readinessCacheMs: 60_000, services: { users: { url: 'http://placeholder', ejectAfterFailures: 1, ejectMs: 60_000 }, orders: { url: 'http://placeholder' }, notifications: { url: 'http://placeholder' } } },
    );
    expect((await getJson(`${gateway.adminUrl}/ready`)).body.services.users.instances[0]).toMatchObject({ origin: dead, state: 'healthy' });
    // Round robin starts on the dead instance: its refusal ejects it, and the POST, its body read whole, goes on to the
    // live one (as nginx moves a buffered body on).
    const register = await fetch(`${gateway.url}/api/auth/register`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(register.status).toBe(200);
    const { body } = await getJson(`${gateway.adminUrl}/ready`);
    expect(body.services.users.instances[0]).toEqual({
      origin: dead,
      state: 'ejected',
      consecutiveFailures: 1,
      ejectedUntil: expect.any(String),
      lastFailure: expect.any(String),
      probe: expect.objectContaining({ status: 'down' }),
    });
    expect(Date.parse(body.services.users.instances[0].ejectedUntil)).toBeGreaterThan(Date.now());
    expect(live.map((instance) => instance.probes.length)).toEqual([1, 1, 1]);
  });

  it.each([
    { desc: 'whose body never ends (the head only, then silence)', detail: 'TimeoutError', finish: () => undefined },
    { desc: 'whose connection is reset in its body', detail: expect.any(String), finish: (res: http.ServerResponse) => setTimeout(() => res.socket?.destroy(), 50) },
  ])('reports an instance down whose /health answer is 200 $desc (undici\'s dump took it whole: up)', async ({ detail, finish }) => {
    const cut = await listen((req, res) => {
      res.writeHead(200, { 'content-type': 'application/json', 'content-length': '15' });
      res.write('{"status"');
      finish(res);
    });
    try {
      gateway = await startGateway({ users: live[0]!.url, orders: live[1]!.url, notifications: cut.url });
      const { status, body } = await getJson(`${gateway.adminUrl}/ready`);
      expect(status).toBe(503);
      expect(body.services.notifications).toMatchObject({ status: 'down', instances: [{ origin: cut.url, probe: { status: 'down', latencyMs: expect.any(Number), detail } }] });
    } finally {
      await cut.close();
    }
  });

  it('answers GET /health', async () => {
    gateway = await startGateway({ users: live[0]!.url, orders: live[1]!.url, notifications: live[2]!.url });
    const { status, body } = await getJson(`${gateway.adminUrl}/health`);
    expect(status).toBe(200);
    expect(body).toMatchObject({ status: 'ok', service: 'gateway' });
  });

  // The public listener's probes answered 405 with Allow, the internal listener's 404 as for a path it does not have.
  it.each([
    { method: 'POST', path: '/ready' },
    { method: 'DELETE', path: '/health' },
  ])('answers $method $path on the internal listener 405 with Allow: GET, HEAD, as the public listener does', async ({ method, path }) => {
    gateway = await startGateway({ users: live[0]!.url, orders: live[1]!.url, notifications: live[2]!.url });
    const response = await fetch(`${gateway.adminUrl}${path}`, { method });
    expect(response.status).toBe(405);
    expect(response.headers.get('allow')).toBe('GET, HEAD');
    expect(((await response.json()) as { code: string }).code).toBe('method_not_allowed');
    expect(live.every((instance) => instance.probes.length === 0)).toBe(true);
  });

  it.each([
    { desc: 'the root', method: 'GET', path: '/' },
    { desc: 'a public API path', method: 'GET', path: '/api/users' },
    { desc: 'the login path', method: 'POST', path: '/api/auth/login' },
    { desc: 'an endpoint not built yet', method: 'GET', path: '/metrics' },
    { desc: '/ready in another case', method: 'GET', path: '/READY' },
    { desc: '/ready with a trailing slash', method: 'GET', path: '/ready/' },
  ])('answers 404 problem+json for $desc', async ({ method, path }) => {
    gateway = await startGateway({ users: live[0]!.url, orders: live[1]!.url, notifications: live[2]!.url });
    const response = await fetch(`${gateway.adminUrl}${path}`, { method });
    expect(response.status).toBe(404);
    expect(response.headers.get('content-type')).toMatch(/^application\/problem\+json/);
    const body = (await response.json()) as { code: string; requestId: string };
    expect(body.code).toBe('route_not_found');
    expect(body.requestId).toBe(response.headers.get('x-request-id'));
    expect(live.every((instance) => instance.probes.length === 0)).toBe(true);
  });
});

// Node's timers end with the request and the keep-alive one starts once the answer is out: a client that pipelined
// requests and read none of the answers held its connection (and slot) for good.
describe('an internal listener and a client that stops reading', () => {
  it('closes the connection once its answers have waited sendTimeoutMs unread', async () => {
    const instance = await fakeInstance();
    const apps = createGatewayApps(testConfig({ users: instance.url, orders: instance.url, notifications: instance.url }), { logger: memoryLogger('gateway').logger });
    const admin = await listenAdmin(apps.admin, { port: 0, host: '127.0.0.1', timeouts: { headersMs: 60_000, requestMs: 60_000, keepAliveMs: 60_000 }, sendTimeoutMs: 300 });
    const socket = net.connect(Number(new URL(admin.url).port), '127.0.0.1');
    try {
      await new Promise((resolve) => socket.once('connect', resolve));
      socket.pause();
      let closed = false;
      socket.once('close', () => (closed = true)).on('error', () => undefined);
      // Far more answer than loopback's buffers take (each answer is a few hundred bytes, 100,000 of them).
      socket.write('GET /admin/config HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n'.repeat(100_000));
      await waitFor(() => closed, 'the listener to close the connection', 10_000);
    } finally {
      socket.destroy();
      await admin.close();
      await instance.close();
    }
  }, 20_000);
});

// RFC 9112 3.2 (one Host field line, else 400) and 3.2.2 (a server accepts the absolute form, whose authority
// stands for Host). The admin listener answered 200 to two Host lines, and served `GET http://attacker.example/ready`
// with a loopback Host: the DNS-rebinding check judged Host, not the authority the target named.
describe('the admin listener (listenAdmin): one authority per request', () => {
  let instance: FakeInstance;
  let admin: InternalListener;
  beforeAll(async () => {
    instance = await fakeInstance();
    const apps = createGatewayApps(testConfig({ users: instance.url, orders: instance.url, notifications: instance.url }), { logger: memoryLogger('gateway').logger });
    admin = await listenAdmin(apps.admin, { port: 0, host: '127.0.0.1', timeouts: { headersMs: 5_000, requestMs: 5_000, keepAliveMs: 1_000 } });
  });
  afterAll(async () => {
    await admin.close();
    await instance.close();
  });

  /** The answer to a request head sent as it is, on a connection of its own (fetch cannot send these heads). */
  const raw = (requestLine: string, hosts: readonly string[]) =>
    new Promise<{ status: number; head: string; body: string }>((resolve, reject) => {
      const head = `${requestLine}\r\n${hosts.map((host) => `${host}\r\n`).join('')}Connection: close\r\n\r\n`;
      const socket = net.connect(Number(new URL(admin.url).port), '127.0.0.1', () => socket.end(head));
      let answer = '';
      socket.setEncoding('latin1').on('data', (chunk: string) => (answer += chunk));
      socket.on('error', reject).on('close', () => {
        const [responseHead = '', body = ''] = answer.split('\r\n\r\n');
        resolve({ status: Number(/^HTTP\/1\.1 (\d{3}) /.exec(responseHead)?.[1] ?? NaN), head: responseHead.toLowerCase(), body });
      });
    });

  it.each([
    { desc: 'an absolute-form target naming a loopback address', line: 'GET http://127.0.0.1:9901/health HTTP/1.1', hosts: ['Host: 127.0.0.1'], status: 200 },
    { desc: 'an absolute-form target naming localhost, with a query', line: 'GET HTTP://localhost/health?x=1 HTTP/1.1', hosts: ['Host: localhost'], status: 200 },
    { desc: 'an absolute-form target whose authority is a rebinding name, whatever Host says', line: 'GET http://attacker.example/ready HTTP/1.1', hosts: ['Host: 127.0.0.1'], status: 421 },
    { desc: 'an absolute-form reload whose authority is a rebinding name', line: 'POST http://attacker.example:9901/admin/reload HTTP/1.1', hosts: ['Host: localhost', 'Content-Length: 0'], status: 421 },
    { desc: 'a rebinding name in Host', line: 'GET /ready HTTP/1.1', hosts: ['Host: attacker.example'], status: 421 },
    { desc: 'two Host field lines', line: 'GET /ready HTTP/1.1', hosts: ['Host: 127.0.0.1', 'Host: attacker.example'], status: 400 },
    // Not taken as absolute forms, these were judged by Host alone and served (Koa's parser found the path in them).
    { desc: 'an absolute-form target with userinfo before a rebinding name', line: 'GET http://x@attacker.example/admin/config HTTP/1.1', hosts: ['Host: 127.0.0.1'], status: 400 },
    { desc: 'an absolute-form target of another scheme', line: 'GET ftp://attacker.example/admin/config HTTP/1.1', hosts: ['Host: 127.0.0.1'], status: 400 },
    { desc: 'two Host field lines of one value', line: 'GET /health HTTP/1.1', hosts: ['Host: 127.0.0.1', 'host: 127.0.0.1'], status: 400 },
    // Node answered these itself, a bare status line without a body or id, and closed a CONNECT without a word.
    { desc: 'an HTTP/1.1 request without Host', line: 'GET /health HTTP/1.1', hosts: [], status: 400 },
    { desc: 'a request line the parser refuses', line: 'GET /he alth HTTP/1.1', hosts: ['Host: 127.0.0.1'], status: 400 },
    { desc: 'a CONNECT', line: 'CONNECT 127.0.0.1:443 HTTP/1.1', hosts: ['Host: 127.0.0.1:443'], status: 405, code: 'method_not_allowed' },
  ])('answers $status to $desc', async ({ line, hosts, status, code }) => {
    const answer = await raw(line, hosts);
    expect(answer.status).toBe(status);
    if (status === 200) return;
    expect(answer.head).toContain('content-type: application/problem+json');
    const problem = JSON.parse(answer.body) as { status: number; code: string; requestId: string };
    expect(problem).toMatchObject({ status, code: code ?? (status === 421 ? 'host_not_allowed' : 'bad_request') });
    expect(answer.head).toContain(`x-request-id: ${problem.requestId.toLowerCase()}`);
  });
});
